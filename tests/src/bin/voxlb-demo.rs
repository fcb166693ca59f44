//! `voxlb-demo`: voxlb in network namespaces, with live traffic and the
//! live `voxlb top` frame of its LB hosts. `cargo xtask demo` runs it (as
//! root).
//!
//! ```text
//! voxlb-demo            build, run, show, clean up (~75 s)
//! voxlb-demo --keep     ... and leave it all running to explore
//! voxlb-demo --cleanup  remove what a --keep (or a crashed demo) left
//! voxlb-demo --metrics-log m.jsonl   ... and scrape lb's /metrics every 2 s
//! ```
//!
//! What a site runs in production: two LB hosts, each with `voxlb run` and
//! its BIRD announcing the VIPs to a router that spreads the agents' flows
//! over both (ECMP, L4 hash, BFD). Steps: build the topology (router, 2 LB
//! hosts, 4 compilers, a CA and its standby), start voxlb on both hosts,
//! drive agent-like TLS traffic; drain one compiler, kill another (its
//! health check fails), bring both back; then an LB host dies mid-transfer
//! (link cut, voxlb and BIRD killed) and the downloads finish through the
//! other; then it comes back.
//!
//! Every second it draws the frame `voxlb top --once` prints for the LB
//! host `lb` (the shared renderer, `voxlb::top`), a line per LB host
//! (announcement, BGP session, rates, table fingerprint), the router's route
//! and what the clients saw.

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
    daemon::{self, COMPILERS, Daemon},
    multi::{Multi, Upstream},
    netns,
    topology::{self, COMPILER_VIP4, Load, Spec, Transfer},
};

/// Name kind of everything the demo makes (tests use `vxe`).
const KIND: &str = "vxd";

#[derive(Parser)]
#[command(about = "voxlb in network namespaces, with live traffic and the live `voxlb top` frame")]
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
    /// Also serve the metrics of lb's daemon and scrape them every 2 s into
    /// this file (JSON lines: seconds since start, page);
    /// `dashboards/render.py` draws the dashboard's queries from it (the
    /// README picture).
    #[arg(long)]
    metrics_log: Option<PathBuf>,
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
    demo.stop_scraper();
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
    m: Multi,
    start: Instant,
    events: Vec<String>,
    phase: String,
    last_seen: BTreeMap<String, u64>,
    last_tick: Instant,
    step: Duration,
    tty: bool,
    redraws: u64,
    /// Each LB host's previous `voxlb top` snapshot (rates are per redraw).
    top_prev: Vec<Option<voxlb::top::Snapshot>>,
    metrics_log: Option<PathBuf>,
    scraper: Option<std::thread::JoinHandle<()>>,
}

impl Demo {
    fn new(testd: &std::path::Path, step_secs: u64) -> anyhow::Result<Demo> {
        println!(
            "voxlb demo: building the topology (namespaces, bridge, router, 2 LB hosts, backends)..."
        );
        let m = Multi::build(
            &Spec {
                kind: KIND,
                compilers: 4,
                client_addrs: 16,
                testd: testd.to_path_buf(),
            },
            2,
            Upstream::Bgp,
        )?;
        let now = Instant::now();
        let mut demo = Demo {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Seen::default()),
            transfers: Vec::new(),
            m,
            start: now,
            events: Vec::new(),
            phase: "starting".into(),
            last_seen: BTreeMap::new(),
            last_tick: now,
            step: Duration::from_secs(step_secs.clamp(3, 120)),
            tty: std::io::stdout().is_terminal(),
            redraws: 0,
            top_prev: Vec::new(),
            metrics_log: None,
            scraper: None,
        };
        demo.event(format!(
            "topology {} built: agents, a BGP router (BIRD, ECMP), LB hosts lb and lb2, 4 compilers, CA + standby",
            demo.m.topo.prefix
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
        self.phase = "starting voxlb on both LB hosts".into();
        for i in 0..2 {
            if i == 0
                && let Some(path) = self.metrics_log.clone()
            {
                self.start_lb_with_metrics(&path)?;
            } else {
                self.m.start_lb(i)?;
            }
            let d = self.m.daemon(i)?;
            self.event(format!(
                "voxlb run started on {} (pid {}), config {}, with its BIRD",
                self.m.lbs[i].name,
                d.pid().unwrap_or(0),
                d.config.display()
            ));
        }
        let t = self
            .m
            .wait_nexthops(COMPILER_VIP4, &[0, 1], Duration::from_secs(30))?;
        self.event(format!(
            "router: {COMPILER_VIP4} via both LB hosts after {:.1}s (announced once health checks passed)",
            t.as_secs_f64()
        ));
        self.start_traffic();
        self.event("clients: 6 agents opening TLS connections to the VIP, one /whoami each".into());

        self.phase =
            "1/6 balanced: the router spreads flows over 2 LB hosts, Maglev over 4 compilers"
                .into();
        self.show_for(self.step)?;

        let c2 = self.m.topo.compilers[1].clone();
        self.transfers = self.m.topo.start_transfers(
            self.m.topo.compiler_vip(false),
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
            "2/6 {} drained on both hosts: no new connections; its open ones (OPEN) continue",
            c2.name
        );
        self.show_for(self.step)?;

        let c3 = self.m.topo.compilers[2].clone();
        self.m.topo.kill_backend(&c3);
        self.event(format!(
            "killed the server on {} (kill -9): its health check will fail",
            c3.name
        ));
        self.phase = format!(
            "3/6 {} dead: out after fall x interval; its share goes to the others",
            c3.name
        );
        self.show_for(self.step + Duration::from_secs(4))?;

        self.cli(&["backend", "undrain", COMPILERS, &c2.ip4.to_string()])?;
        self.m.topo.start_backend(&c3)?;
        self.event(format!(
            "{} restarted, {} undrained: both come back (after `rise` checks)",
            c3.name, c2.name
        ));
        self.phase = "4/6 recovered: all four share again".into();
        self.show_for(self.step)?;
        self.report_transfers(&c3.name);

        // An LB host dies with downloads in flight.
        self.m.wait_agree(Duration::from_secs(30))?;
        self.transfers = self.m.topo.start_transfers(
            self.m.topo.compiler_vip(false),
            12,
            Load {
                bytes: 3 * 1024 * 1024,
                chunk: 16 * 1024,
                delay_ms: 100,
            },
        )?;
        self.event("12 long downloads started (~19 s each), through both LB hosts".into());
        std::thread::sleep(Duration::from_secs(2));
        let dead = Instant::now();
        netns::ip(&self.m.lbs[1].ns, &["link", "set", "eth0", "down"])?;
        self.m.kill_lb(1)?;
        self.event("lb2 DIED: link cut, voxlb and its BIRD killed (kill -9)".into());
        self.m
            .wait_nexthops(COMPILER_VIP4, &[0], Duration::from_secs(30))?;
        self.event(format!(
            "router: lb2 gone from the route {} ms after its death (BFD); its flows now reach lb, whose Maglev table sends them to the same compilers",
            dead.elapsed().as_millis()
        ));
        self.phase = "5/6 lb2 dead: every agent flow goes through lb; downloads continue".into();
        self.show_for(self.step)?;

        self.m.revive_lb(1)?;
        self.m.start_lb(1)?;
        let t = self
            .m
            .wait_nexthops(COMPILER_VIP4, &[0, 1], Duration::from_secs(30))?;
        self.event(format!(
            "lb2 back: voxlb restarted (same pinned flow table), announced again after {:.1}s",
            t.as_secs_f64()
        ));
        self.phase = "6/6 both LB hosts again: the router spreads flows over them".into();
        self.show_for(self.step)?;

        self.stop.store(true, Ordering::Relaxed);
        self.report_transfers("(none)");
        self.redraw();
        Ok(())
    }

    /// Starts voxlb on lb (like `Multi::start_lb`) with `metrics_listen`
    /// added (the generated config has none), and scrapes `/metrics` in lb's
    /// namespace every 2 s into `path`.
    fn start_lb_with_metrics(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        const LISTEN: &str = "127.0.0.1:9814";
        let text = self.m.lb_config(0);
        anyhow::ensure!(
            text.contains("\ninterfaces"),
            "generated config has no top-level `interfaces` line"
        );
        let text = text.replacen(
            "\ninterfaces",
            &format!("\nmetrics_listen = \"{LISTEN}\"\ninterfaces"),
            1,
        );
        let lb = &self.m.lbs[0];
        let d = Daemon::start_in(
            &lb.ns,
            self.m.config_path(0),
            &text,
            self.m.socket(0),
            self.m.topo.work_dir.join(format!("voxlb-{}.log", lb.name)),
        )?;
        self.m.daemons[0] = Some(d);
        let mut out =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let (stop, ns, start) = (self.stop.clone(), lb.ns.clone(), self.start);
        self.scraper = Some(std::thread::spawn(move || {
            // Bounded: at most an hour of scrapes.
            for _ in 0..1800 {
                if stop.load(Ordering::Relaxed) || INTERRUPTED.load(Ordering::Relaxed) {
                    break;
                }
                let page = netns::run_in(&ns, || {
                    use std::io::Read;
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
            "metrics of lb at http://{LISTEN}/metrics (in its namespace), scraped into {}",
            path.display()
        ));
        Ok(())
    }

    /// Stops the metrics scraper (if any) and waits for it.
    fn stop_scraper(&mut self) {
        if let Some(s) = self.scraper.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = s.join();
        }
    }

    /// Waits for the long downloads and reports how they ended.
    fn report_transfers(&mut self, may_break: &str) {
        let results = self
            .m
            .topo
            .finish_transfers(std::mem::take(&mut self.transfers));
        let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
        let broken: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(b, _)| b.as_str())
            .collect();
        self.event(format!(
            "long downloads: {ok} finished intact, {} broken {:?} (only those on the killed compiler {may_break} may break)",
            broken.len(),
            broken,
        ));
    }

    /// The same CLI change on every running LB host: hosts must keep
    /// identical tables (compare the fingerprints).
    fn cli(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let mut said = Vec::new();
        for i in 0..self.m.lbs.len() {
            let Some(d) = self.m.daemons[i].as_ref() else {
                continue;
            };
            let out = d.cli(args)?;
            anyhow::ensure!(
                out.code() == 0,
                "voxlb {} on {} failed: {}",
                args.join(" "),
                self.m.lbs[i].name,
                out.stderr
            );
            said.push(format!("{}: {}", self.m.lbs[i].name, out.stdout.trim()));
        }
        self.event(format!("voxlb {} -> {}", args.join(" "), said.join("; ")));
        Ok(())
    }

    /// Agents: 6 tasks, each opening one TLS connection after the other.
    fn start_traffic(&mut self) {
        let vip = self.m.topo.compiler_vip(false);
        let sources = self.m.topo.sources(false);
        for w in 0..6usize {
            let (stop, seen, tls) = (
                self.stop.clone(),
                self.seen.clone(),
                self.m.topo.tls.clone(),
            );
            let sources = sources.clone();
            self.m.topo.rt.spawn(async move {
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
            self.m.topo.prefix,
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

    /// The frame `voxlb top --once` prints for lb (the shared renderer), a
    /// line per LB host from its own `voxlb top` snapshot, the router's
    /// route, and what the clients saw.
    fn table(&mut self) -> anyhow::Result<String> {
        let opts = voxlb::top::Options {
            sort: voxlb::top::SortKey::Name,
            reverse: false,
            service: None,
            paused: false,
        };
        let n = self.m.lbs.len();
        self.top_prev.resize_with(n, || None);
        let mut out = String::new();
        let mut hosts = Vec::new();
        for i in 0..n {
            let name = self.m.lbs[i].name.clone();
            let addr = self.m.lbs[i].ip4.to_string();
            // A dead host has no daemon; its rates start over when it is back.
            let cur = self
                .m
                .daemons
                .get(i)
                .and_then(|d| d.as_ref())
                .map(|d| voxlb::top::snapshot(&d.socket, self.start));
            let Some(Ok(cur)) = cur else {
                self.top_prev[i] = None;
                if i == 0 {
                    let _ = writeln!(out, "--- voxlb top --once on {name}: no daemon ---\n");
                }
                hosts.push(format!("{name:<5} {addr:<10} DEAD (no daemon)"));
                continue;
            };
            let view = voxlb::top::View::build(self.top_prev[i].as_ref(), &cur, &opts);
            if i == 0 {
                let _ = writeln!(out, "--- voxlb top --once on {name} ---");
                out.push_str(&voxlb::top::render_text(&view));
                out.push('\n');
            }
            let svc = view.services.iter().find(|s| s.name == COMPILERS);
            let a = cur.status.announce.clone().unwrap_or_default();
            let vip = a
                .vips
                .iter()
                .find(|v| v.address == std::net::IpAddr::from(COMPILER_VIP4))
                .map(|v| {
                    if v.announced {
                        "announced"
                    } else {
                        "withdrawn"
                    }
                })
                .unwrap_or("-");
            let session = a
                .sessions
                .first()
                .map(|x| x.info.clone())
                .unwrap_or_else(|| "-".into());
            let fp = cur
                .status
                .services
                .iter()
                .find(|s| s.name == COMPILERS)
                .and_then(|s| s.fingerprint.clone())
                .unwrap_or_default();
            hosts.push(format!(
                "{name:<5} {addr:<10} {vip:<10} {session:<12} {:>6} {:>7} {:>7} {fp}",
                svc.map(|s| s.usable.as_str()).unwrap_or("-"),
                voxlb::top::si(svc.and_then(|s| s.new_flows_s)),
                voxlb::top::si(svc.and_then(|s| s.packets_s)),
            ));
            self.top_prev[i] = Some(cur);
        }
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:<10} {:<12} {:>6} {:>7} {:>7} FINGERPRINT",
            "LB", "ADDRESS", "VIP", "BGP SESSION", "USABLE", "NEW/S", "PKTS/S"
        );
        for h in &hosts {
            let _ = writeln!(out, "{h}");
        }
        let hops: Vec<String> = self
            .m
            .nexthops(COMPILER_VIP4)
            .iter()
            .map(|h| h.to_string())
            .collect();
        let _ = writeln!(
            out,
            "router: {COMPILER_VIP4} via {}",
            if hops.is_empty() {
                "nothing".to_string()
            } else {
                hops.join(", ")
            }
        );

        let seen = self.seen.per_backend.lock().unwrap().clone();
        let dt = self.last_tick.elapsed().as_secs_f64().max(0.1);
        self.last_tick = Instant::now();
        let per: Vec<String> = self
            .m
            .topo
            .compilers
            .iter()
            .map(|c| {
                let served = seen.get(&c.name).copied().unwrap_or(0);
                let before = self.last_seen.get(&c.name).copied().unwrap_or(0);
                let rate = served.saturating_sub(before) as f64 / dt;
                format!("{} {served} ({rate:.0}/s)", c.name)
            })
            .collect();
        self.last_seen = seen;
        let _ = writeln!(
            out,
            "\nclients: {} connections answered, {} failed; per compiler: {}",
            self.last_seen.values().sum::<u64>(),
            self.seen.failed.load(Ordering::Relaxed),
            per.join(", "),
        );
        let _ = writeln!(
            out,
            "(the frame: `voxlb top --once` on lb, rates per redraw; LB lines: each host's \
             `voxlb top` snapshot (compilers service) and announcement; clients: /whoami answers)"
        );
        Ok(out)
    }

    /// `--keep`: leave everything up and say how to explore and remove it.
    fn keep(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let sock = daemon::socket_path(&self.m.topo);
        let bin = self
            .m
            .daemon(0)
            .map(|d| d.bin.clone())
            .unwrap_or_else(|_| PathBuf::from("voxlb"));
        let lb = netns::ns_path(&self.m.topo.lb.ns);
        let cl = netns::ns_path(&self.m.topo.client.ns);
        let ca = self.m.topo.work_dir.join("pki/ca.pem");
        let vip: SocketAddr = self.m.topo.compiler_vip(false);
        let vip6: SocketAddr = self.m.topo.compiler_vip(true);
        let c1 = &self.m.topo.compilers[0];
        let demo = std::env::current_exe().unwrap_or_else(|_| "voxlb-demo".into());
        println!(
            "\nThe topology stays up ({}). To explore it:\n",
            self.m.topo.prefix
        );
        if let Some(rt) = &self.m.router {
            println!(
                "  ip netns exec {} ip route show {COMPILER_VIP4}     # the router's ECMP route",
                rt.ns
            );
            println!(
                "  nsenter --net={} birdc -s {} show protocols",
                netns::ns_path(&rt.ns),
                self.m.topo.work_dir.join("router-bird.ctl").display()
            );
        }
        println!(
            "  nsenter --net={} {} --socket {} status     # the other LB host",
            netns::ns_path(&self.m.lbs[1].ns),
            bin.display(),
            self.m.socket(1).display()
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
        println!("  ip netns list | grep {}", self.m.topo.prefix);
        println!(
            "  less {}",
            self.m.topo.work_dir.join("voxlb-lb.log").display()
        );
        println!("\nTo remove it all:\n\n  {} --cleanup\n", demo.display());
        for d in self.m.daemons.iter_mut() {
            if let Some(d) = d.take() {
                d.leave_running();
            }
        }
        self.m.topo.keep();
    }
}
