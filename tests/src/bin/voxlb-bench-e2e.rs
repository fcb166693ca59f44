//! `voxlb-bench-e2e`: voxlb against HAProxy and nftables DNAT on one
//! topology, in one run (issue 6). `cargo xtask bench e2e` runs it.
//!
//! The namespaces of `voxlb_tests::topology` (client, LB, three compilers
//! running the real HTTPS test server) stay up for the whole run; per round
//! each target is set up on the LB namespace in turn, measured with `wrk`
//! from the client namespace, and torn down:
//!
//! - `direct`: no LB, wrk's threads connect to the compilers' own addresses
//!   (the baseline for latency and for the CPU attribution);
//! - `voxlb`: the daemon (`voxlb run --config`), XDP on the LB's `eth0`, DSR;
//! - `haproxy`: Debian's HAProxy, TCP mode, OpenVox health check over TLS;
//! - `nftables`: DNAT with a hash over the flow; compilers route replies to
//!   the client via the LB.
//!
//! Two patterns: `short` (a new TCP + TLS connection per request, the agent
//! bootstrap pattern) and `keepalive` (catalog-sized answers on kept
//! connections). Each is run loaded (many connections: throughput, CPU,
//! latency under load) and with one connection (latency of the path).
//!
//! Needs root. Everything it makes (namespaces, processes, pins, cgroups,
//! nft tables, which live in the LB namespace) is removed at the end, on
//! error and on Ctrl-C. See `docs/bench.md`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::Parser;
use voxlb_tests::{
    bench::{
        self, Cgroups, CpuDelta, CpuMeter, WrkResult, WrkRun, fmt_num, fmt_ratio, fmt_us, median,
        ms_per_10k,
    },
    bench_lb::{self, LbProcess, STOP, check_stop, path_str, sibling, sysctl},
    bench_routed, netns,
    topology::{self, COMPILER_VIP4, PORT, Topology},
};

#[derive(Parser, Debug)]
#[command(about = "voxlb vs HAProxy vs nftables DNAT, end to end in namespaces")]
struct Args {
    /// One short round (the whole run in about a minute).
    #[arg(long)]
    quick: bool,
    /// Rounds (the report takes medians). Default 3, 1 with --quick.
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each loaded run. Default 10, 4 with --quick.
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds of each one-connection latency run. Default 4, 2 with --quick.
    #[arg(long)]
    probe: Option<u64>,
    /// Concurrent connections of the loaded short-connection runs.
    #[arg(long, default_value_t = 48)]
    short_connections: usize,
    /// Concurrent connections of the loaded keep-alive runs.
    #[arg(long, default_value_t = 12)]
    keepalive_connections: usize,
    /// wrk threads (the direct run sends thread i to compiler i).
    #[arg(long, default_value_t = 3)]
    threads: usize,
    /// Answer size of the short-connection requests (bytes).
    #[arg(long, default_value_t = 2048)]
    short_bytes: u64,
    /// Answer size of the keep-alive requests: a catalog (bytes).
    #[arg(long, default_value_t = 256 * 1024)]
    catalog_bytes: u64,
    /// Only these LBs (comma-separated: voxlb, haproxy, nftables, routed);
    /// the direct baseline always runs. `routed` is the routed-compilers
    /// part (IPIP and GUE through a router).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these patterns (comma-separated: short, keepalive).
    #[arg(long, value_delimiter = ',')]
    patterns: Vec<String>,
    /// Markdown report; a JSON file with every sample goes next to it.
    /// Default `bench/e2e.md` (the README's table is generated from it), or
    /// `bench/e2e-quick.md` with --quick, which must not replace it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not write the report files.
    #[arg(long)]
    no_write: bool,
    /// The voxlb binary (default: next to this one).
    #[arg(long)]
    voxlb: Option<PathBuf>,
    /// The voxlb-testd binary (default: next to this one).
    #[arg(long)]
    testd: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    Voxlb,
    Haproxy,
    Nftables,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Direct,
        Target::Voxlb,
        Target::Haproxy,
        Target::Nftables,
    ];
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct (no LB)",
            Target::Voxlb => "voxlb (XDP, DSR)",
            Target::Haproxy => "HAProxy (TCP)",
            Target::Nftables => "nftables DNAT",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Voxlb => "voxlb",
            Target::Haproxy => "haproxy",
            Target::Nftables => "nftables",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pattern {
    Short,
    KeepAlive,
}

impl Pattern {
    const ALL: [Pattern; 2] = [Pattern::Short, Pattern::KeepAlive];
    fn name(self) -> &'static str {
        match self {
            Pattern::Short => "short (new TLS conn/request)",
            Pattern::KeepAlive => "keep-alive, catalog",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Pattern::Short => "short",
            Pattern::KeepAlive => "keepalive",
        }
    }
}

/// One measurement: a loaded run and a one-connection run.
#[derive(Clone, Debug)]
struct Sample {
    round: usize,
    target: Target,
    pattern: Pattern,
    loaded: WrkResult,
    cpu: CpuDelta,
    probe: WrkResult,
    /// XDP program run time during the loaded run (voxlb only).
    xdp: Option<Duration>,
}

impl Sample {
    fn tasks_per_10k(&self) -> f64 {
        ms_per_10k(self.cpu.tasks, self.loaded.requests)
    }
    /// Share of the machine's CPU capacity that others used during the
    /// loaded run (machine busy minus ours): how noisy the figures are.
    fn foreign_share(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let capacity = self.cpu.wall.as_secs_f64() * cpus;
        let foreign = self.cpu.machine.as_secs_f64() - self.cpu.tasks.as_secs_f64();
        (foreign / capacity).clamp(0.0, 1.0)
    }
    fn machine_per_10k(&self) -> f64 {
        ms_per_10k(self.cpu.machine, self.loaded.requests)
    }
    /// The LB's own accountable CPU: its processes, plus the XDP program.
    fn own_per_10k(&self) -> f64 {
        match self.target {
            Target::Direct | Target::Nftables => f64::NAN,
            Target::Haproxy => ms_per_10k(self.cpu.lb_process, self.loaded.requests),
            Target::Voxlb => ms_per_10k(
                self.cpu.lb_process + self.xdp.unwrap_or_default(),
                self.loaded.requests,
            ),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    bench_lb::install_stop_handler();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxlb-bench-e2e: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Plan {
    rounds: usize,
    duration: Duration,
    probe: Duration,
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(netns::is_root(), "the e2e benchmark needs root");
    let plan = Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        duration: Duration::from_secs(args.duration.unwrap_or(if args.quick { 4 } else { 10 })),
        probe: Duration::from_secs(args.probe.unwrap_or(if args.quick { 2 } else { 4 })),
    };
    let (voxlb_bin, testd) = bench_lb::binaries(args.voxlb.as_ref(), args.testd.as_ref())?;
    for tool in ["wrk", "haproxy", "nft"] {
        netns::run("sh", &["-c", &format!("command -v {tool}")])
            .with_context(|| format!("{tool} is not installed"))?;
    }
    let started = Instant::now();
    let date = bench_lb::utc_date()?;
    let load_before = bench_lb::loadavg();

    // Declared before the topology: dropped after it, once its processes
    // are gone.
    let cg = Cgroups::create(&format!("vxb-{}-0", std::process::id()))?;
    let topo = bench_lb::bench_topology("vxb", &cg, testd)?;
    // XDP program run time for the report; released (and the kernel's stats
    // switched off again) when this fd is dropped.
    let _stats = bench_lb::run_time_stats();
    let meter = CpuMeter::new(&cg);
    let bench = Bench {
        topo: &topo,
        cg: &cg,
        meter: &meter,
        args,
        plan: &plan,
        voxlb_bin,
    };
    let (targets, patterns) = selection(args)?;
    let samples = run_rounds(&bench, &plan, &targets, &patterns)?;
    // The main topology goes before the routed one is built.
    drop(bench);
    drop(topo);
    let routed_plan = bench_routed::RoutedBench {
        testd: match &args.testd {
            Some(p) => p.clone(),
            None => sibling("voxlb-testd")?,
        },
        rounds: plan.rounds,
        duration: plan.duration,
        probe: plan.probe,
        threads: args.threads,
        short_connections: args.short_connections,
        keepalive_connections: args.keepalive_connections,
        short_bytes: args.short_bytes,
        catalog_bytes: args.catalog_bytes,
        stop: &STOP,
    };
    let routed = if args.only.is_empty() || args.only.iter().any(|k| k == "routed") {
        check_stop()?;
        bench_routed::run(&routed_plan)?
    } else {
        Vec::new()
    };
    let report = Report {
        samples: &samples,
        args,
        plan: &plan,
        date,
        elapsed: started.elapsed(),
        load: (load_before, bench_lb::loadavg()),
    };
    let mut md = report.markdown();
    if !routed.is_empty() {
        md += &bench_routed::markdown(&routed, &routed_plan);
    }
    println!("\n{md}");
    if !args.no_write {
        bench_lb::write_report(args.out.as_ref(), "e2e", args.quick, &md, &report.json())?;
    }
    drop(cg);
    Ok(())
}

/// The targets and traffic patterns `--only` and `--patterns` ask for.
fn selection(args: &Args) -> anyhow::Result<(Vec<Target>, Vec<Pattern>)> {
    for k in &args.only {
        ensure!(
            k == "routed" || Target::ALL.iter().any(|t| t.key() == k),
            "--only: unknown LB {k:?}"
        );
    }
    for k in &args.patterns {
        ensure!(
            Pattern::ALL.iter().any(|p| p.key() == k),
            "--patterns: unknown pattern {k:?}"
        );
    }
    let only_routed = !args.only.is_empty() && args.only.iter().all(|k| k == "routed");
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| {
            (*t == Target::Direct && !only_routed)
                || args.only.is_empty()
                || args.only.iter().any(|k| k == t.key())
        })
        .collect();
    let patterns: Vec<Pattern> = Pattern::ALL
        .into_iter()
        .filter(|p| args.patterns.is_empty() || args.patterns.iter().any(|k| k == p.key()))
        .collect();
    Ok((targets, patterns))
}

/// Every pattern against every target, `plan.rounds` times, in an order
/// rotated each round so that no target always runs first or last.
fn run_rounds(
    bench: &Bench,
    plan: &Plan,
    targets: &[Target],
    patterns: &[Pattern],
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        let mut order = targets.to_vec();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        for target in order {
            check_stop()?;
            eprintln!("round {}/{}: {}", round + 1, plan.rounds, target.name());
            let mode = bench.setup(target, round)?;
            for &pattern in patterns {
                check_stop()?;
                let s = bench.measure(round, target, pattern, &mode)?;
                print_sample(pattern, &s);
                samples.push(s);
            }
            drop(mode);
        }
    }
    Ok(samples)
}

/// One measurement's line on stderr, as the run goes.
fn print_sample(pattern: Pattern, s: &Sample) {
    eprintln!(
        "  {:<10} {:>8} req/s  p50 {:>9}  p99 {:>9}  1-conn p50 {:>9}  \
         CPU {:>7} ms/10k (machine {:>7}, own {:>6}, XDP {:>6})  others {:.0}%  \
         errors {}",
        pattern.key(),
        fmt_num(s.loaded.rps()),
        fmt_us(s.loaded.p50_us),
        fmt_us(s.loaded.p99_us),
        fmt_us(s.probe.p50_us),
        fmt_num(s.tasks_per_10k()),
        fmt_num(s.machine_per_10k()),
        fmt_num(s.own_per_10k()),
        fmt_num(s.xdp.map_or(f64::NAN, |d| ms_per_10k(d, s.loaded.requests))),
        s.foreign_share() * 100.0,
        s.loaded.errors + s.probe.errors,
    );
}

struct Bench<'a> {
    topo: &'a Topology,
    cg: &'a Cgroups,
    meter: &'a CpuMeter<'a>,
    args: &'a Args,
    plan: &'a Plan,
    voxlb_bin: PathBuf,
}

/// A target set up on the LB namespace; tears itself down on drop.
struct Mode<'a> {
    target: Target,
    topo: &'a Topology,
    /// voxlb or HAProxy (`bench_lb`, shared with `voxlb-bench-load`).
    lb: Option<LbProcess<'a>>,
}

impl Bench<'_> {
    fn setup(&self, target: Target, round: usize) -> anyhow::Result<Mode<'_>> {
        let mut mode = Mode {
            target,
            topo: self.topo,
            lb: None,
        };
        let log = |name: &str| self.topo.work_dir.join(format!("{name}-r{round}.log"));
        match target {
            Target::Direct => {}
            Target::Voxlb => {
                let config = bench_lb::voxlb_config(self.topo, "")?;
                mode.lb = Some(LbProcess::start_voxlb(
                    self.topo,
                    self.cg,
                    &self.voxlb_bin,
                    &config,
                    &log("voxlb"),
                )?);
            }
            Target::Haproxy => {
                mode.lb = Some(LbProcess::start_haproxy(
                    self.topo,
                    self.cg,
                    &log("haproxy"),
                )?);
            }
            Target::Nftables => {
                let lb = &self.topo.lb.ns;
                sysctl(lb, "net.ipv4.ip_forward", "1")?;
                // The LB forwards out of the interface it received on: it
                // would tell the hosts to go direct, which breaks the NAT.
                sysctl(lb, "net.ipv4.conf.all.send_redirects", "0")?;
                sysctl(
                    lb,
                    &format!("net.ipv4.conf.{}.send_redirects", topology::IFACE),
                    "0",
                )?;
                let rules = self.topo.work_dir.join("nat.nft");
                std::fs::write(&rules, self.nft_rules())?;
                netns::exec(lb, "nft", &["-f", path_str(&rules)?])?;
                for c in &self.topo.compilers {
                    for client in &self.topo.client_addrs4 {
                        netns::ip(
                            &c.ns,
                            &[
                                "route",
                                "add",
                                &format!("{client}/32"),
                                "via",
                                &self.topo.lb.ip4.to_string(),
                            ],
                        )?;
                    }
                }
                bench_lb::wait_ready(self.topo, target.name())?;
            }
        }
        Ok(mode)
    }

    /// DNAT of the VIP to a compiler picked by a hash of the client's address
    /// and port (the flow; the VIP side is constant). Conntrack keeps the
    /// choice for the connection and undoes the NAT on the replies.
    fn nft_rules(&self) -> String {
        let map: Vec<String> = self
            .topo
            .compilers
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : {}", c.ip4))
            .collect();
        format!(
            "table ip {NFT_TABLE} {{\n\
             \x20   chain prerouting {{\n\
             \x20       type nat hook prerouting priority dstnat; policy accept;\n\
             \x20       ip daddr {vip} tcp dport {PORT} dnat to jhash ip saddr . tcp sport mod {n} \
             seed 0x766f78 map {{ {map} }}\n\
             \x20   }}\n\
             }}\n",
            vip = COMPILER_VIP4,
            n = self.topo.compilers.len(),
            map = map.join(", "),
        )
    }

    fn wrk_run(&self, target: Target, pattern: Pattern, probe: bool) -> WrkRun {
        let path = match pattern {
            Pattern::Short => format!("/catalog?bytes={}", self.args.short_bytes),
            Pattern::KeepAlive => format!("/catalog?bytes={}", self.args.catalog_bytes),
        };
        let (host, targets): (IpAddr, Vec<IpAddr>) = match target {
            Target::Direct => (
                self.topo.compilers[0].ip4.into(),
                self.topo.compilers.iter().map(|c| c.ip4.into()).collect(),
            ),
            _ => (COMPILER_VIP4.into(), Vec::new()),
        };
        let (threads, connections, duration) = if probe {
            (1, 1, self.plan.probe)
        } else {
            let c = match pattern {
                Pattern::Short => self.args.short_connections,
                Pattern::KeepAlive => self.args.keepalive_connections,
            };
            (
                self.args.threads,
                c.max(self.args.threads),
                self.plan.duration,
            )
        };
        WrkRun {
            url: format!("https://{host}:{PORT}{path}"),
            threads,
            connections,
            duration,
            close: pattern == Pattern::Short,
            targets,
            port: PORT,
        }
    }

    fn measure(
        &self,
        round: usize,
        target: Target,
        pattern: Pattern,
        mode: &Mode,
    ) -> anyhow::Result<Sample> {
        let ns = &self.topo.client.ns;
        let dir = &self.topo.work_dir;
        let loaded_run = self.wrk_run(target, pattern, false);
        let xdp_prog = mode.lb.as_ref().and_then(|lb| lb.xdp_prog);
        let xdp_before = xdp_prog.and_then(bench::bpf_prog_runtime);
        let before = self.meter.snapshot();
        let loaded = bench::run_wrk(ns, &loaded_run, dir, self.cg, &STOP)?;
        let after = self.meter.snapshot();
        let xdp_after = xdp_prog.and_then(bench::bpf_prog_runtime);
        let xdp = match (xdp_before, xdp_after) {
            (Some((a, _)), Some((b, _))) => Some(b.saturating_sub(a)),
            _ => None,
        };
        check_stop()?;
        let probe = bench::run_wrk(
            ns,
            &self.wrk_run(target, pattern, true),
            dir,
            self.cg,
            &STOP,
        )?;
        Ok(Sample {
            round,
            target,
            pattern,
            loaded,
            cpu: before.delta(&after),
            probe,
            xdp,
        })
    }
}

const NFT_TABLE: &str = "vxb_nat";

impl Drop for Mode<'_> {
    fn drop(&mut self) {
        // voxlb and HAProxy stop and undo their set-up themselves.
        drop(self.lb.take());
        if self.target != Target::Nftables {
            return;
        }
        let topo = self.topo;
        let lb = &topo.lb.ns;
        let _ = netns::exec(lb, "nft", &["delete", "table", "ip", NFT_TABLE]);
        for c in &topo.compilers {
            for client in &topo.client_addrs4 {
                let _ = netns::ip(&c.ns, &["route", "del", &format!("{client}/32")]);
            }
        }
        let _ = sysctl(lb, "net.ipv4.ip_forward", "0");
        let _ = sysctl(lb, "net.ipv4.conf.all.send_redirects", "1");
        let _ = sysctl(
            lb,
            &format!("net.ipv4.conf.{}.send_redirects", topology::IFACE),
            "1",
        );
    }
}

// ---------------------------------------------------------------------------
// The report.

struct Report<'a> {
    samples: &'a [Sample],
    args: &'a Args,
    plan: &'a Plan,
    date: String,
    elapsed: Duration,
    load: (String, String),
}

/// Medians over rounds for one target and pattern.
struct Row {
    rps: f64,
    p50: f64,
    p99: f64,
    probe_p50: f64,
    probe_p99: f64,
    /// LB CPU: benchmark tasks' CPU per 10k minus the direct run's.
    lb_cpu: f64,
    /// The same from the machine-wide /proc/stat busy time.
    lb_cpu_machine: f64,
    own: f64,
    errors: u64,
    requests: u64,
}

impl Report<'_> {
    fn sample(&self, round: usize, t: Target, p: Pattern) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.round == round && s.target == t && s.pattern == p)
    }

    fn rounds(&self) -> impl Iterator<Item = usize> + '_ {
        0..self.plan.rounds
    }

    /// `f(sample of t, sample of direct)` per round, median.
    fn per_round(&self, t: Target, p: Pattern, f: impl Fn(&Sample, &Sample) -> f64) -> f64 {
        median(
            self.rounds()
                .filter_map(|r| Some(f(self.sample(r, t, p)?, self.sample(r, Target::Direct, p)?))),
        )
    }

    fn row(&self, t: Target, p: Pattern) -> Row {
        let of = |f: &dyn Fn(&Sample) -> f64| {
            median(self.rounds().filter_map(|r| self.sample(r, t, p).map(f)))
        };
        let all: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.target == t && s.pattern == p)
            .collect();
        Row {
            rps: of(&|s| s.loaded.rps()),
            p50: of(&|s| s.loaded.p50_us),
            p99: of(&|s| s.loaded.p99_us),
            probe_p50: of(&|s| s.probe.p50_us),
            probe_p99: of(&|s| s.probe.p99_us),
            lb_cpu: if t == Target::Direct {
                f64::NAN
            } else {
                self.per_round(t, p, |s, d| s.tasks_per_10k() - d.tasks_per_10k())
            },
            lb_cpu_machine: if t == Target::Direct {
                f64::NAN
            } else {
                self.per_round(t, p, |s, d| s.machine_per_10k() - d.machine_per_10k())
            },
            own: of(&|s| s.own_per_10k()),
            errors: all.iter().map(|s| s.loaded.errors + s.probe.errors).sum(),
            requests: all
                .iter()
                .map(|s| s.loaded.requests + s.probe.requests)
                .sum(),
        }
    }

    /// voxlb's figure over a peer's, per round (same round), median.
    fn ratio(&self, peer: Target, p: Pattern, f: impl Fn(&Sample, &Sample) -> f64) -> f64 {
        median(self.rounds().filter_map(|r| {
            let v = self.sample(r, Target::Voxlb, p)?;
            let o = self.sample(r, peer, p)?;
            Some(f(v, o))
        }))
    }

    fn cpu_ratio(&self, peer: Target, p: Pattern) -> f64 {
        median(self.rounds().filter_map(|r| {
            let d = self.sample(r, Target::Direct, p)?.tasks_per_10k();
            let v = self.sample(r, Target::Voxlb, p)?.tasks_per_10k() - d;
            let o = self.sample(r, peer, p)?.tasks_per_10k() - d;
            // Below the noise (voxlb's share ≤ 0) a ratio means nothing.
            (v > 0.0 && o > 0.0).then_some(v / o)
        }))
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let mut s = String::new();
        s += "<!-- generated by `cargo xtask bench e2e` (voxlb-bench-e2e); do not edit -->\n";
        s += "## End to end: voxlb vs HAProxy vs nftables\n\n";
        s += &format!(
            "{date}; `{cmd}`; {rounds} round(s), medians; loaded runs {d} s, one-connection \
             runs {pr} s; {cpus} CPUs, load average {l0} before, {l1} after; other processes used \
             {fg:.0}% of the CPUs during the loaded runs (median; 0% is a quiet machine); \
             {el:.0} s in all.\n\n",
            date = self.date,
            cmd = if a.quick {
                "cargo xtask bench e2e --quick"
            } else {
                "cargo xtask bench e2e"
            },
            rounds = self.plan.rounds,
            d = self.plan.duration.as_secs(),
            pr = self.plan.probe.as_secs(),
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            l0 = self.load.0,
            l1 = self.load.1,
            fg = median(self.samples.iter().map(Sample::foreign_share)) * 100.0,
            el = self.elapsed.as_secs_f64(),
        );
        s += &format!(
            "Same namespaces, compilers (3 × `voxlb-testd`, HTTPS), client and requests for \
             every LB. **short**: `wrk -t{t} -c{sc} -H 'Connection: close'`, a new TCP + TLS \
             connection per request for a {sb} B answer (agent bootstrap). **keep-alive**: \
             `wrk -t{t} -c{kc}`, {kb} KiB answers (catalogs) on kept connections. \
             Latency under load is wrk's (from the request being written: for *short*, after \
             the TLS handshake); the 1-conn columns are `-t1 -c1` runs (the path's own \
             latency). LB CPU = CPU of the benchmark's tasks (cgroup, softirq in their \
             context included) + ksoftirqd, per 10k requests, minus the same for the direct \
             run; *machine* = the same from /proc/stat; *own* = the LB's processes \
             (+ the XDP program's run time for voxlb): a lower bound for HAProxy (its kernel \
             TCP work in softirq is not all in its context), while *LB CPU* also holds the \
             extra work an extra hop causes in the client's and compilers' stacks, which share \
             the 2 CPUs here. See docs/bench.md.\n\n",
            t = a.threads,
            sc = a.short_connections,
            sb = a.short_bytes,
            kc = a.keepalive_connections,
            kb = a.catalog_bytes / 1024,
        );
        let head = [
            "pattern",
            "LB",
            "req/s",
            "p50",
            "p99",
            "1-conn p50",
            "1-conn p99",
            "LB CPU ms/10k req",
            "(machine)",
            "own ms/10k",
            "errors",
        ];
        let mut rows = Vec::new();
        for p in Pattern::ALL {
            for t in Target::ALL {
                if !self.samples.iter().any(|s| s.target == t && s.pattern == p) {
                    continue;
                }
                let r = self.row(t, p);
                rows.push(vec![
                    p.name().to_owned(),
                    t.name().to_owned(),
                    fmt_num(r.rps),
                    fmt_us(r.p50),
                    fmt_us(r.p99),
                    fmt_us(r.probe_p50),
                    fmt_us(r.probe_p99),
                    fmt_num(r.lb_cpu),
                    fmt_num(r.lb_cpu_machine),
                    fmt_num(r.own),
                    format!("{} / {}", r.errors, r.requests),
                ]);
            }
        }
        s += &bench::markdown_table(&head, &rows);
        s += "\nvoxlb's ratios (per round, median; throughput: higher is better, CPU and \
              latency: lower is better):\n\n";
        let head = [
            "pattern",
            "req/s vs HAProxy",
            "req/s vs nftables",
            "LB CPU vs HAProxy (target ≤ 0.10)",
            "LB CPU vs nftables",
            "own CPU vs HAProxy",
            "1-conn p50 vs direct (target ≤ 1.05)",
            "p50 vs HAProxy",
            "p50 vs nftables",
        ];
        let mut rows = Vec::new();
        for p in Pattern::ALL {
            if !self.samples.iter().any(|s| s.pattern == p) {
                continue;
            }
            let rps = |peer| self.ratio(peer, p, |v, o| v.loaded.rps() / o.loaded.rps());
            let p50 = |peer| self.ratio(peer, p, |v, o| v.loaded.p50_us / o.loaded.p50_us);
            rows.push(vec![
                p.name().to_owned(),
                fmt_ratio(rps(Target::Haproxy)),
                fmt_ratio(rps(Target::Nftables)),
                fmt_ratio(self.cpu_ratio(Target::Haproxy, p)),
                fmt_ratio(self.cpu_ratio(Target::Nftables, p)),
                fmt_ratio(self.ratio(Target::Haproxy, p, |v, o| v.own_per_10k() / o.own_per_10k())),
                fmt_ratio(self.ratio(Target::Direct, p, |v, o| v.probe.p50_us / o.probe.p50_us)),
                fmt_ratio(p50(Target::Haproxy)),
                fmt_ratio(p50(Target::Nftables)),
            ]);
        }
        s += &bench::markdown_table(&head, &rows);
        s
    }

    fn json(&self) -> serde_json::Value {
        let samples: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|s| {
                let w = |r: &WrkResult| {
                    serde_json::json!({
                        "requests": r.requests, "duration_us": r.duration_us, "bytes": r.bytes,
                        "errors": r.errors, "rps": r.rps(), "p50_us": r.p50_us,
                        "p90_us": r.p90_us, "p99_us": r.p99_us, "max_us": r.max_us,
                        "mean_us": r.mean_us,
                    })
                };
                serde_json::json!({
                    "round": s.round,
                    "target": s.target.key(),
                    "pattern": s.pattern.key(),
                    "loaded": w(&s.loaded),
                    "probe": w(&s.probe),
                    "cpu_ms": {
                        "wall": s.cpu.wall.as_secs_f64() * 1e3,
                        "machine": s.cpu.machine.as_secs_f64() * 1e3,
                        "tasks": s.cpu.tasks.as_secs_f64() * 1e3,
                        "lb_process": s.cpu.lb_process.as_secs_f64() * 1e3,
                        "xdp_prog": s.xdp.map(|d| d.as_secs_f64() * 1e3),
                    },
                    "per_10k_ms": {
                        "tasks": s.tasks_per_10k(),
                        "machine": s.machine_per_10k(),
                        "own": s.own_per_10k(),
                    },
                    "foreign_share": s.foreign_share(),
                })
            })
            .collect();
        let mut by: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for p in Pattern::ALL {
            for t in Target::ALL {
                let r = self.row(t, p);
                by.insert(
                    format!("{}/{}", p.key(), t.key()),
                    serde_json::json!({
                        "rps": r.rps, "p50_us": r.p50, "p99_us": r.p99,
                        "probe_p50_us": r.probe_p50, "probe_p99_us": r.probe_p99,
                        "lb_cpu_ms_per_10k": r.lb_cpu,
                        "lb_cpu_machine_ms_per_10k": r.lb_cpu_machine,
                        "own_ms_per_10k": r.own,
                        "errors": r.errors, "requests": r.requests,
                    }),
                );
            }
        }
        serde_json::json!({
            "date": self.date,
            "quick": self.args.quick,
            "rounds": self.plan.rounds,
            "duration_s": self.plan.duration.as_secs(),
            "probe_s": self.plan.probe.as_secs(),
            "load_before": self.load.0,
            "load_after": self.load.1,
            "medians": by,
            "samples": samples,
        })
    }
}
