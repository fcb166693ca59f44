//! `voxlb-demo`: voxlb in network namespaces, with live traffic and a live
//! table. `cargo xtask demo` runs it (as root).
//!
//! ```text
//! voxlb-demo            build, run, show, clean up (~75 s)
//! voxlb-demo --keep     ... and leave it all running to explore
//! voxlb-demo --cleanup  remove what a --keep (or a crashed demo) left
//! ```
//!
//! Steps: build the topology (4 compilers, a CA and its standby), start
//! `voxlb run`, drive agent-like TLS traffic; then drain one compiler, then
//! kill another (its health check fails), then bring it back.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use voxlb_tests::{
    daemon::{self, COMPILERS, Daemon, HealthTiming, Options},
    netns,
    topology::{self, Load, Spec, Topology, Transfer},
};

/// Name kind of everything the demo makes (tests use `vxe`).
const KIND: &str = "vxd";

#[derive(Parser)]
#[command(about = "voxlb in network namespaces, with live traffic and a live table")]
struct Args {
    /// Leave the topology, the daemon and the backends running at the end,
    /// and print commands to explore them.
    #[arg(long)]
    keep: bool,
    /// Remove everything a previous demo left (namespaces, processes in them,
    /// pins, files), then exit.
    #[arg(long, conflicts_with = "keep")]
    cleanup: bool,
    /// Seconds per step.
    #[arg(long, default_value_t = 14)]
    step_secs: u64,
    /// Also serve the daemon's metrics and scrape them every 2 s into this
    /// file (JSON lines: seconds since start, page); `dashboards/render.py`
    /// draws the dashboard's queries from it (the README picture).
    #[arg(long)]
    metrics_log: Option<std::path::PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !netns::is_root() {
        anyhow::bail!("voxlb-demo needs root (network namespaces, XDP)");
    }
    if args.cleanup {
        let removed = netns::remove_all(KIND);
        println!(
            "removed {} namespaces ({}) and the demo's pins and files",
            removed.len(),
            removed.join(" ")
        );
        return Ok(());
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("executable dir")?
        .to_path_buf();
    if std::env::var_os("VOXLB_BIN").is_none() && exe_dir.join("voxlb").exists() {
        // SAFETY: still single-threaded; nothing reads the environment yet.
        unsafe { std::env::set_var("VOXLB_BIN", exe_dir.join("voxlb")) };
    }
    let mut demo = Demo::new(&exe_dir.join("voxlb-testd"), args.step_secs)?;
    demo.metrics_log = args.metrics_log.clone();
    let result = demo.run();
    if let Err(e) = &result {
        demo.event(format!("stopped: {e:#}"));
    }
    if args.keep && result.is_ok() {
        demo.keep();
    } else {
        println!("\ncleaning up (processes, namespaces, pins)...");
        drop(demo);
        println!("done.");
    }
    result
}

/// Client-side counters, shared with the traffic tasks.
#[derive(Default)]
struct Seen {
    per_backend: Mutex<BTreeMap<String, u64>>,
    failed: AtomicU64,
}

struct Demo {
    // Field order is drop order: traffic stops before the topology goes.
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    transfers: Vec<Transfer>,
    daemon: Option<Daemon>,
    topo: Topology,
    start: Instant,
    events: Vec<String>,
    phase: String,
    last_seen: BTreeMap<String, u64>,
    last_tick: Instant,
    step: Duration,
    tty: bool,
    redraws: u64,
    /// The previous `voxlb top` snapshot (rates are per redraw).
    top_prev: Option<voxlb::top::Snapshot>,
    metrics_log: Option<std::path::PathBuf>,
    scraper: Option<std::thread::JoinHandle<()>>,
}

impl Demo {
    fn new(testd: &std::path::Path, step_secs: u64) -> anyhow::Result<Demo> {
        println!("voxlb demo: building the topology (namespaces, bridge, veths, backends)...");
        let topo = Topology::build(&Spec {
            kind: KIND,
            compilers: 4,
            client_addrs: 16,
            testd: testd.to_path_buf(),
        })?;
        let now = Instant::now();
        let mut demo = Demo {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Seen::default()),
            transfers: Vec::new(),
            daemon: None,
            topo,
            start: now,
            events: Vec::new(),
            phase: "starting".into(),
            last_seen: BTreeMap::new(),
            last_tick: now,
            step: Duration::from_secs(step_secs.clamp(3, 120)),
            tty: std::io::stdout().is_terminal(),
            redraws: 0,
            top_prev: None,
            metrics_log: None,
            scraper: None,
        };
        demo.event(format!(
            "topology {} built: clients, LB, 4 compilers, CA + standby on one bridge",
            demo.topo.prefix
        ));
        Ok(demo)
    }

    fn event(&mut self, what: String) {
        let line = format!("[{:5.1}s] {what}", self.start.elapsed().as_secs_f64());
        if !self.tty {
            println!("{line}");
        }
        self.events.push(line);
    }

    fn run(&mut self) -> anyhow::Result<()> {
        self.phase = "starting voxlb".into();
        let d = Daemon::start(
            &self.topo,
            &Options {
                compilers_in_config: 4,
                health: HealthTiming::default(),
            },
        )?;
        self.event(format!(
            "voxlb run started in {} (pid {}), config {}",
            self.topo.lb.ns,
            d.pid().unwrap_or(0),
            d.config.display()
        ));
        self.daemon = Some(d);
        if let Some(path) = self.metrics_log.clone() {
            self.start_scraper(&path)?;
        }
        self.start_traffic();
        self.event("clients: 6 agents opening TLS connections to the VIP, one /whoami each".into());

        self.phase = "1/4 balanced: Maglev spreads new connections evenly".into();
        self.show_for(self.step)?;

        let c2 = self.topo.compilers[1].clone();
        self.transfers = self.topo.start_transfers(
            self.topo.compiler_vip(false),
            12,
            Load {
                bytes: 4 * 1024 * 1024,
                chunk: 16 * 1024,
                delay_ms: 100,
            },
        )?;
        self.event("12 long downloads started (~25 s each)".into());
        self.cli(&["backend", "drain", COMPILERS, &c2.ip4.to_string()])?;
        self.phase = format!(
            "2/4 {} drained: no new connections; its open ones (OPEN) continue",
            c2.name
        );
        self.show_for(self.step)?;

        let c3 = self.topo.compilers[2].clone();
        self.topo.kill_backend(&c3);
        self.event(format!(
            "killed the server on {} (kill -9): its health check will fail",
            c3.name
        ));
        self.phase = format!(
            "3/4 {} dead: out after fall x interval; its share goes to the others",
            c3.name
        );
        self.show_for(self.step + Duration::from_secs(4))?;

        self.cli(&["backend", "undrain", COMPILERS, &c2.ip4.to_string()])?;
        self.topo.start_backend(&c3)?;
        self.event(format!(
            "{} restarted, {} undrained: both come back (after `rise` checks)",
            c3.name, c2.name
        ));
        self.phase = "4/4 recovered: all four share again".into();
        self.show_for(self.step)?;

        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.scraper.take() {
            let _ = s.join();
        }
        let results = self
            .topo
            .finish_transfers(std::mem::take(&mut self.transfers));
        let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
        let broken: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(b, _)| b.as_str())
            .collect();
        self.event(format!(
            "long downloads: {ok} finished intact, {} broken {:?} (only those on the killed {} may break)",
            broken.len(),
            broken,
            c3.name
        ));
        self.redraw();
        Ok(())
    }

    fn cli(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let d = self.daemon.as_ref().context("daemon")?;
        let out = d.cli(args)?;
        anyhow::ensure!(
            out.code() == 0,
            "voxlb {} failed: {}",
            args.join(" "),
            out.stderr
        );
        self.event(format!("voxlb {}: {}", args.join(" "), out.stdout.trim()));
        Ok(())
    }

    /// Restart the daemon with `metrics_listen` (the generated config has
    /// none) and scrape `/metrics` in the LB namespace every 2 s.
    fn start_scraper(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        const LISTEN: &str = "127.0.0.1:9814";
        let d = self.daemon.as_mut().context("daemon")?;
        d.stop()?;
        let text = std::fs::read_to_string(&d.config)?;
        std::fs::write(
            &d.config,
            text.replacen(
                "\ninterfaces",
                &format!("\nmetrics_listen = \"{LISTEN}\"\ninterfaces"),
                1,
            ),
        )?;
        d.spawn()?;
        let mut out = std::fs::File::create(path)?;
        let (stop, ns, start) = (self.stop.clone(), self.topo.lb.ns.clone(), self.start);
        self.scraper = Some(std::thread::spawn(move || {
            // Bounded: at most an hour of scrapes.
            for _ in 0..1800 {
                if stop.load(Ordering::Relaxed) || INTERRUPTED.load(Ordering::Relaxed) {
                    break;
                }
                let page = netns::run_in(&ns, || {
                    use std::io::{Read, Write as _};
                    let mut s = std::net::TcpStream::connect(LISTEN).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
                    let mut body = String::new();
                    s.read_to_string(&mut body).ok()?;
                    Some(body.split_once("\r\n\r\n")?.1.to_owned())
                });
                if let Ok(Some(page)) = page {
                    let line = serde_json::json!({
                        "t": start.elapsed().as_secs_f64(),
                        "page": page,
                    });
                    let _ = writeln!(out, "{line}");
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }));
        self.event(format!(
            "metrics at http://{LISTEN}/metrics, scraped into {}",
            path.display()
        ));
        Ok(())
    }

    /// Agents: 6 tasks, each opening one TLS connection after the other.
    fn start_traffic(&mut self) {
        let vip = self.topo.compiler_vip(false);
        let sources = self.topo.sources(false);
        for w in 0..6usize {
            let (stop, seen, tls) = (self.stop.clone(), self.seen.clone(), self.topo.tls.clone());
            let sources = sources.clone();
            self.topo.rt.spawn(async move {
                // Bounded: at most a million connections per agent.
                for i in 0..1_000_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let src = sources[(w + i * 6) % sources.len()];
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        topology::whoami(src, vip, tls.clone()),
                    )
                    .await;
                    match r {
                        Ok(Ok(name)) => {
                            *seen.per_backend.lock().unwrap().entry(name).or_default() += 1;
                        }
                        _ => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    }

    /// Redraws about once a second for `d`; stops early on Ctrl-C.
    fn show_for(&mut self, d: Duration) -> anyhow::Result<()> {
        self.event(format!("step: {}", self.phase));
        let end = Instant::now() + d;
        // Bounded: one redraw a second for at most the step's length.
        for _ in 0..=d.as_secs() {
            let tick = Instant::now() + Duration::from_secs(1);
            self.redraw();
            if Instant::now() >= end {
                break;
            }
            while Instant::now() < tick.min(end) {
                if INTERRUPTED.load(Ordering::Relaxed) {
                    anyhow::bail!("interrupted (Ctrl-C)");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn redraw(&mut self) {
        // Without a terminal (logs, CI), a table every 5 s is enough.
        self.redraws += 1;
        if !self.tty && self.redraws % 5 != 1 {
            return;
        }
        let table = self
            .table()
            .unwrap_or_else(|e| format!("(no data: {e:#})\n"));
        let mut out = String::new();
        if self.tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        let _ = writeln!(
            out,
            "voxlb demo  t={:.0}s  ({})\n\nSTEP {}\n",
            self.start.elapsed().as_secs_f64(),
            self.topo.prefix,
            self.phase
        );
        out.push_str(&table);
        if self.tty {
            out.push_str("\nevents:\n");
            let from = self.events.len().saturating_sub(12);
            for e in &self.events[from..] {
                let _ = writeln!(out, "  {e}");
            }
            out.push_str("\n(Ctrl-C stops and cleans up)\n");
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// The frame `voxlb top --once` prints (the shared renderer), and what
    /// the clients saw.
    fn table(&mut self) -> anyhow::Result<String> {
        let d = self.daemon.as_ref().context("daemon not running")?;
        let cur = voxlb::top::snapshot(&d.socket, self.start)?;
        let opts = voxlb::top::Options {
            sort: voxlb::top::SortKey::Name,
            reverse: false,
            service: None,
            paused: false,
        };
        let view = voxlb::top::View::build(self.top_prev.as_ref(), &cur, &opts);
        let mut out = voxlb::top::render_text(&view);
        self.top_prev = Some(cur);

        let seen = self.seen.per_backend.lock().unwrap().clone();
        let dt = self.last_tick.elapsed().as_secs_f64().max(0.1);
        self.last_tick = Instant::now();
        let per: Vec<String> = self
            .topo
            .compilers
            .iter()
            .map(|n| {
                let served = seen.get(&n.name).copied().unwrap_or(0);
                let rate = (served - self.last_seen.get(&n.name).copied().unwrap_or(0)) as f64 / dt;
                format!("{} {rate:.0}/s", n.name)
            })
            .collect();
        self.last_seen = seen;
        let _ = writeln!(
            out,
            "\nclients: {} connections answered ({}), {} failed",
            self.last_seen.values().sum::<u64>(),
            per.join(", "),
            self.seen.failed.load(Ordering::Relaxed),
        );
        Ok(out)
    }

    /// `--keep`: leave everything up and say how to explore and remove it.
    fn keep(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let sock = daemon::socket_path(&self.topo);
        let bin = self
            .daemon
            .as_ref()
            .map(|d| d.bin.clone())
            .unwrap_or_else(|| PathBuf::from("voxlb"));
        let lb = netns::ns_path(&self.topo.lb.ns);
        let cl = netns::ns_path(&self.topo.client.ns);
        let ca = self.topo.work_dir.join("pki/ca.pem");
        let vip: SocketAddr = self.topo.compiler_vip(false);
        let vip6: SocketAddr = self.topo.compiler_vip(true);
        let c1 = &self.topo.compilers[0];
        let demo = std::env::current_exe().unwrap_or_else(|_| "voxlb-demo".into());
        println!(
            "\nThe topology stays up ({}). To explore it:\n",
            self.topo.prefix
        );
        println!(
            "  nsenter --net={lb} {} --socket {} status",
            bin.display(),
            sock.display()
        );
        println!(
            "  nsenter --net={lb} {} --socket {} backend list",
            bin.display(),
            sock.display()
        );
        println!(
            "  nsenter --net={lb} {} --socket {} stats",
            bin.display(),
            sock.display()
        );
        println!(
            "  nsenter --net={lb} {} --socket {} flows --limit 20",
            bin.display(),
            sock.display()
        );
        println!(
            "  nsenter --net={lb} {} --socket {} backend drain {COMPILERS} {}",
            bin.display(),
            sock.display(),
            c1.ip4
        );
        println!(
            "  nsenter --net={cl} curl -s --cacert {} https://{vip}/whoami",
            ca.display()
        );
        println!(
            "  nsenter --net={cl} curl -s --cacert {} https://{vip6}/whoami",
            ca.display()
        );
        println!(
            "  nsenter --net={cl} curl -s -X POST http://{}/control/fail     # fail {}'s health check",
            c1.control(),
            c1.name
        );
        println!("  ip netns list | grep {}", self.topo.prefix);
        println!("  less {}", self.topo.work_dir.join("voxlb.log").display());
        println!("\nTo remove it all:\n\n  {} --cleanup\n", demo.display());
        if let Some(d) = self.daemon.take() {
            d.leave_running();
        }
        self.topo.keep();
    }
}
