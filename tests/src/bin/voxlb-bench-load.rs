//! `voxlb-bench-load`: load-aware balancing under a skewed workload (issue
//! 16): voxlb `balance = "static"`, voxlb `balance = "load"` and HAProxy
//! `balance leastconn`, in one run. `cargo xtask bench load` runs it.
//!
//! The topology of `voxlb_tests::topology` (client, LB, three compilers
//! running `voxlb-testd` over HTTPS) stays up for the whole run. The first
//! compiler is made slow with [`SkewedPool`]: fewer JRuby instances and 4×
//! slower compiles, so its load is what the agents' own requests make.
//! Per balancer, in turn: set it up on the LB namespace (`bench_lb`, the
//! same voxlb and HAProxy set-up as `voxlb-bench-e2e`), run the agents of
//! `voxlb_tests::agent` through the VIP for a fixed time, tear it down.
//!
//! What matters to an operator here is the agents' run time (p50, p99), not
//! requests per second; and the balancer's own CPU (its processes, plus the
//! XDP program's run time for voxlb) over the same time.
//!
//! Needs root. Everything it makes is removed at the end, on error and on
//! Ctrl-C.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::Parser;
use voxlb_tests::{
    agent::{AgentConfig, AgentReport, SkewedPool, run_agents},
    bench::{self, Cgroups, CpuMeter, fmt_num, fmt_ratio, markdown_table, median},
    bench_lb::{self, LbProcess, check_stop},
    netns,
    topology::Topology,
};

#[derive(Parser, Debug)]
#[command(about = "voxlb static / load vs HAProxy leastconn, a slow compiler, agent run times")]
struct Args {
    /// Shorter runs (about a minute and a half in all).
    #[arg(long)]
    quick: bool,
    /// Rounds (the report takes medians). Default 1.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of agent runs per balancer, warm-up included. Default 42,
    /// 16 with --quick.
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds at the start of each balancer's runs that are not counted.
    /// Default 8, 5 with --quick.
    #[arg(long)]
    warmup: Option<u64>,
    /// Agents running at once.
    #[arg(long, default_value_t = 16)]
    agents: usize,
    /// Pause between two runs of an agent (ms); first runs spread over it.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// Compile time of a catalog on a normal compiler (ms).
    #[arg(long, default_value_t = 250)]
    compile_ms: u64,
    /// Catalog size (bytes).
    #[arg(long, default_value_t = 128 * 1024)]
    catalog_bytes: u64,
    /// Files downloaded per run, and their size (bytes).
    #[arg(long, default_value_t = 2)]
    files: u32,
    #[arg(long, default_value_t = 32 * 1024)]
    file_bytes: u64,
    /// JRuby instances of the normal compilers and of the slow one.
    #[arg(long, default_value_t = 4)]
    jrubies: u32,
    #[arg(long, default_value_t = 2)]
    slow_jrubies: u32,
    /// How much slower the slow compiler is (4 = 4×).
    #[arg(long, default_value_t = 4)]
    slow_factor: u64,
    /// Only these balancers (comma-separated: static, load, haproxy).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Markdown report; a JSON file goes next to it. Default
    /// `bench/load.md` (the README's table), or `bench/load-quick.md` with
    /// --quick, which must not replace it.
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

/// The service keys of voxlb's `load` run: the shipped defaults but for the
/// poll interval (5 s by default), which an operator of a site this small
/// would shorten too, and the floor of a loaded or slow compiler's weight:
/// the default 25% still sends a compiler with half the JRuby instances and
/// a quarter of the speed more new runs than it can take (its capacity is
/// about 6% of the pool's here), so its queue never drains; at 5% it does
/// not queue. Its 4x borrow time keeps it at that floor whether it is busy
/// or idle (the slowness term of the controller).
const LOAD_KEYS: &str = "balance = \"load\"\nload_interval = \"1s\"\nmin_weight_percent = 5";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lb {
    Static,
    Load,
    Haproxy,
}

impl Lb {
    const ALL: [Lb; 3] = [Lb::Static, Lb::Load, Lb::Haproxy];
    fn key(self) -> &'static str {
        match self {
            Lb::Static => "static",
            Lb::Load => "load",
            Lb::Haproxy => "haproxy",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Lb::Static => "voxlb `static`",
            Lb::Load => "voxlb `load`",
            Lb::Haproxy => "HAProxy `leastconn`",
        }
    }
}

/// One balancer's measurement.
struct Sample {
    round: usize,
    lb: Lb,
    agents: AgentReport,
    /// The balancer's CPU over the agents' whole run: its processes (cgroup)
    /// plus, for voxlb, the XDP program's run time.
    cpu: Duration,
    wall: Duration,
}

impl Sample {
    fn p(&self, p: f64) -> f64 {
        self.agents
            .percentile(p)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
    /// Runs that went to the slow compiler, of all counted runs.
    fn slow_share(&self, slow: &str) -> f64 {
        let all: u64 = self.agents.per_backend.values().sum();
        let s = self.agents.per_backend.get(slow).copied().unwrap_or(0);
        if all == 0 {
            f64::NAN
        } else {
            s as f64 / all as f64
        }
    }
    /// CPU per 1000 agent runs (warm-up runs included: the CPU is theirs
    /// too).
    fn cpu_per_1k(&self) -> f64 {
        let runs = self.agents.runs.len() as u64 + self.agents.warmup_runs;
        if runs == 0 {
            return f64::NAN;
        }
        self.cpu.as_secs_f64() * 1e3 * 1e3 / runs as f64
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    bench_lb::install_stop_handler();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxlb-bench-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Plan {
    duration: Duration,
    warmup: Duration,
    skew: SkewedPool,
    agents: AgentConfig,
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(netns::is_root(), "the load benchmark needs root");
    check_args(args)?;
    let duration = Duration::from_secs(args.duration.unwrap_or(if args.quick { 16 } else { 42 }));
    let warmup = Duration::from_secs(args.warmup.unwrap_or(if args.quick { 5 } else { 8 }));
    ensure!(
        warmup < duration,
        "--warmup must be shorter than --duration"
    );
    let (voxlb_bin, testd) = bench_lb::binaries(args.voxlb.as_ref(), args.testd.as_ref())?;
    netns::run("sh", &["-c", "command -v haproxy"]).context("haproxy is not installed")?;
    let started = Instant::now();
    let date = bench_lb::utc_date()?;
    let load_before = bench_lb::loadavg();

    // Declared before the topology: dropped after it, once its processes
    // are gone.
    let cg = Cgroups::create(&format!("vxl-{}-0", std::process::id()))?;
    let topo = bench_lb::bench_topology("vxl", &cg, testd)?;
    let _stats = bench_lb::run_time_stats();
    let meter = CpuMeter::new(&cg);
    let plan = Plan {
        duration,
        warmup,
        skew: SkewedPool {
            jrubies: args.jrubies,
            slow_jrubies: args.slow_jrubies,
            slow_factor_pct: args.slow_factor * 100,
        },
        agents: AgentConfig {
            target: topo.compiler_vip(false),
            tls: Some((topo.tls.clone(), topo.compiler_vip(false).ip().to_string())),
            agents: args.agents,
            // Time bounds the work, not a count.
            runs_per_agent: usize::MAX,
            compile_ms: args.compile_ms,
            catalog_bytes: args.catalog_bytes,
            files: args.files,
            file_bytes: args.file_bytes,
            pause: Duration::from_millis(args.pause_ms),
            run_timeout: Duration::from_secs(60),
            splay: Duration::from_millis(args.pause_ms),
            duration: Some(duration),
            warmup,
        },
    };
    let slow = topo.compilers[0].name.clone();
    let lbs: Vec<Lb> = Lb::ALL
        .into_iter()
        .filter(|l| args.only.is_empty() || args.only.iter().any(|k| k == l.key()))
        .collect();
    let mut samples = Vec::new();
    for round in 0..args.rounds {
        let mut order = lbs.clone();
        let n = order.len();
        order.rotate_left(round % n);
        for lb in order {
            check_stop()?;
            eprintln!("round {}/{}: {}", round + 1, args.rounds, lb.name());
            let s = measure(&topo, &cg, &meter, &plan, &voxlb_bin, lb, round)?;
            print_sample(&s, &slow);
            samples.push(s);
        }
    }
    let report = Report {
        samples: &samples,
        args,
        plan: &plan,
        slow: &slow,
        date,
        elapsed: started.elapsed(),
        load: (load_before, bench_lb::loadavg()),
    };
    let md = report.markdown();
    println!("\n{md}");
    if !args.no_write {
        bench_lb::write_report(args.out.as_ref(), "load", args.quick, &md, &report.json())?;
    }
    drop(topo);
    drop(cg);
    Ok(())
}

/// The arguments' ranges.
fn check_args(args: &Args) -> anyhow::Result<()> {
    for k in &args.only {
        ensure!(
            Lb::ALL.iter().any(|l| l.key() == k),
            "--only: unknown balancer {k:?} (static, load, haproxy)"
        );
    }
    ensure!(args.rounds >= 1, "--rounds: at least 1");
    ensure!(
        (1..=1000).contains(&args.agents),
        "--agents: 1 to 1000 agents"
    );
    ensure!(
        (1..=100).contains(&args.slow_factor),
        "--slow-factor: 1 to 100"
    );
    ensure!(
        args.jrubies >= 1 && args.slow_jrubies >= 1,
        "--jrubies, --slow-jrubies: at least 1"
    );
    Ok(())
}

/// One measurement's line on stderr, as the run goes (`slow`: the slow
/// compiler's name).
fn print_sample(s: &Sample, slow: &str) {
    eprintln!(
        "  {} runs ({} warm-up), {} errors; p50 {} ms, p99 {} ms; {} to {slow}: {:.0}%; \
         LB CPU {} ms ({} ms/1k runs){}",
        s.agents.runs.len(),
        s.agents.warmup_runs,
        s.agents.errors,
        fmt_num(s.p(50.0)),
        fmt_num(s.p(99.0)),
        s.agents
            .per_backend
            .iter()
            .map(|(b, n)| format!("{b} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.slow_share(slow) * 100.0,
        fmt_num(s.cpu.as_secs_f64() * 1e3),
        fmt_num(s.cpu_per_1k()),
        s.agents
            .first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default(),
    );
}

/// One balancer: set the compilers' pools, start it, run the agents
/// through it, stop it.
fn measure(
    topo: &Topology,
    cg: &Cgroups,
    meter: &CpuMeter,
    plan: &Plan,
    voxlb_bin: &Path,
    lb: Lb,
    round: usize,
) -> anyhow::Result<Sample> {
    plan.skew.apply(topo)?;
    let log = topo.work_dir.join(format!("{}-r{round}.log", lb.key()));
    let running = match lb {
        Lb::Static => {
            let config = bench_lb::voxlb_config(topo, "")?;
            LbProcess::start_voxlb(topo, cg, voxlb_bin, &config, &log)?
        }
        Lb::Load => {
            let config = bench_lb::voxlb_config(topo, LOAD_KEYS)?;
            LbProcess::start_voxlb(topo, cg, voxlb_bin, &config, &log)?
        }
        Lb::Haproxy => LbProcess::start_haproxy(topo, cg, &log)?,
    };
    check_stop()?;
    let xdp = || running.xdp_prog.and_then(bench::bpf_prog_runtime);
    let xdp_before = xdp();
    let before = meter.snapshot();
    let config = plan.agents.clone();
    let agents = topo.rt.run(async move { run_agents(&config).await })?;
    let after = meter.snapshot();
    let xdp_cpu = match (xdp_before, xdp()) {
        (Some((a, _)), Some((b, _))) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    if lb == Lb::Load {
        // What the controller made of the slow compiler, for the log.
        if let Ok(list) = running.voxlb_cli(&["backend", "list", "compilers"]) {
            eprint!("{list}");
        }
    }
    drop(running);
    let cpu = before.delta(&after);
    Ok(Sample {
        round,
        lb,
        agents,
        cpu: cpu.lb_process + xdp_cpu,
        wall: cpu.wall,
    })
}

struct Report<'a> {
    samples: &'a [Sample],
    args: &'a Args,
    plan: &'a Plan,
    slow: &'a str,
    date: String,
    elapsed: Duration,
    load: (String, String),
}

impl Report<'_> {
    fn of(&self, lb: Lb, f: impl Fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().filter(|s| s.lb == lb).map(f))
    }

    /// `a`'s figure over `b`'s, per round, median.
    fn ratio(&self, a: Lb, b: Lb, f: impl Fn(&Sample) -> f64) -> f64 {
        median((0..self.args.rounds).filter_map(|r| {
            let x = self.samples.iter().find(|s| s.round == r && s.lb == a)?;
            let y = self.samples.iter().find(|s| s.round == r && s.lb == b)?;
            Some(f(x) / f(y))
        }))
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let p = self.plan;
        let mut s = String::new();
        s += "<!-- generated by `cargo xtask bench load` (voxlb-bench-load); do not edit -->\n";
        s += "## Load-aware balancing: a slow compiler, voxlb `static` / `load` vs HAProxy `leastconn`\n\n";
        s += &format!(
            "{date}; `{cmd}`; {rounds} round(s){med}; {cpus} CPUs, load average {l0} before, \
             {l1} after; {el:.0} s in all.\n\n",
            date = self.date,
            cmd = if a.quick {
                "cargo xtask bench load --quick"
            } else {
                "cargo xtask bench load"
            },
            rounds = a.rounds,
            med = if a.rounds > 1 { ", medians" } else { "" },
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            l0 = self.load.0,
            l1 = self.load.1,
            el = self.elapsed.as_secs_f64(),
        );
        s += &format!(
            "Three compilers (`voxlb-testd`, HTTPS) on one topology for every balancer. \
             **{slow}** has {sj} JRuby instances and is {sf}× slower; the other two have {j} \
             and normal speed; the load they report is what the agents' own requests make \
             (JRuby instances borrowed by compiles in flight, requests queued for one). \
             {n} agents, each run on a new TLS connection through the VIP: node request, \
             catalog ({cb} KiB, {cm} ms of compile on a normal compiler), {nf} files of \
             {fb} KiB, report; {pause} ms between two runs of an agent, first runs spread \
             over as long. {d} s of runs per balancer, of which the runs that start in the \
             first {w} s are not counted. *to {slow}*: share of the counted runs (= new \
             connections) that went to the slow compiler. voxlb `load`: `{keys}`, the other \
             load keys at their defaults. *LB CPU*: the balancer's processes (cgroup: voxlb's \
             daemon with its health checks and load polls; HAProxy) + the XDP program's run \
             time, over the whole {d} s, per 1000 agent runs.\n\n",
            slow = self.slow,
            sj = p.skew.slow_jrubies,
            sf = p.skew.slow_factor_pct / 100,
            j = p.skew.jrubies,
            n = p.agents.agents,
            cb = p.agents.catalog_bytes / 1024,
            cm = p.agents.compile_ms,
            nf = p.agents.files,
            fb = p.agents.file_bytes / 1024,
            pause = p.agents.pause.as_millis(),
            d = p.duration.as_secs(),
            w = p.warmup.as_secs(),
            keys = LOAD_KEYS.replace('\n', "`, `"),
        );
        let to_slow = format!("to {}", self.slow);
        let head = [
            "balancer",
            "runs",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            to_slow.as_str(),
            "LB CPU ms",
            "LB CPU ms/1k runs",
        ];
        let mut rows = Vec::new();
        for lb in Lb::ALL {
            if !self.samples.iter().any(|s| s.lb == lb) {
                continue;
            }
            let runs: usize = self
                .samples
                .iter()
                .filter(|s| s.lb == lb)
                .map(|s| s.agents.runs.len())
                .sum();
            let errors: u64 = self
                .samples
                .iter()
                .filter(|s| s.lb == lb)
                .map(|s| s.agents.errors)
                .sum();
            rows.push(vec![
                lb.name().to_owned(),
                runs.to_string(),
                errors.to_string(),
                fmt_num(self.of(lb, |s| s.p(50.0))),
                fmt_num(self.of(lb, |s| s.p(90.0))),
                fmt_num(self.of(lb, |s| s.p(99.0))),
                fmt_num(self.of(lb, |s| s.p(100.0))),
                format!("{:.0}%", self.of(lb, |s| s.slow_share(self.slow)) * 100.0),
                fmt_num(self.of(lb, |s| s.cpu.as_secs_f64() * 1e3)),
                fmt_num(self.of(lb, Sample::cpu_per_1k)),
            ]);
        }
        s += &markdown_table(&head, &rows);
        s += "\nRatios (lower is better; target: voxlb `load` p99 at or below HAProxy \
              `leastconn`'s, with voxlb's CPU advantage kept):\n\n";
        let head = ["", "p50", "p99", "LB CPU per run"];
        let mut rows = Vec::new();
        for (x, y) in [
            (Lb::Load, Lb::Static),
            (Lb::Load, Lb::Haproxy),
            (Lb::Static, Lb::Haproxy),
        ] {
            let has = |l: Lb| self.samples.iter().any(|s| s.lb == l);
            if !has(x) || !has(y) {
                continue;
            }
            rows.push(vec![
                format!("{} / {}", x.name(), y.name()),
                fmt_ratio(self.ratio(x, y, |s| s.p(50.0))),
                fmt_ratio(self.ratio(x, y, |s| s.p(99.0))),
                fmt_ratio(self.ratio(x, y, Sample::cpu_per_1k)),
            ]);
        }
        s += &markdown_table(&head, &rows);
        s
    }

    fn json(&self) -> serde_json::Value {
        let samples: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "round": s.round,
                    "lb": s.lb.key(),
                    "agents": s.agents.to_json(),
                    "slow_share": s.slow_share(self.slow),
                    "lb_cpu_ms": s.cpu.as_secs_f64() * 1e3,
                    "lb_cpu_ms_per_1k_runs": s.cpu_per_1k(),
                    "wall_ms": s.wall.as_secs_f64() * 1e3,
                })
            })
            .collect();
        serde_json::json!({
            "date": self.date,
            "quick": self.args.quick,
            "rounds": self.args.rounds,
            "duration_s": self.plan.duration.as_secs(),
            "warmup_s": self.plan.warmup.as_secs(),
            "agents": self.plan.agents.agents,
            "slow_compiler": self.slow,
            "voxlb_load_keys": LOAD_KEYS,
            "load_before": self.load.0,
            "load_after": self.load.1,
            "samples": samples,
        })
    }
}
