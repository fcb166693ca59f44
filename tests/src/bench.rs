//! Measurement pieces of the end-to-end benchmark (`voxlb-bench-e2e`):
//! CPU accounting from the kernel, `wrk` runs, medians and the report.
//!
//! CPU is taken from the kernel's accounting, never from the load balancer's
//! process alone, because XDP and netfilter run in softirq. See
//! `docs/bench.md` for the method and its limits; in short:
//!
//! - every process of the benchmark (load generator, backends, the LB's own
//!   processes) is put in a cpuacct cgroup we create, whose usage counts the
//!   tasks' time *including the softirq work that ran in their context* (the
//!   kernel here has tick-based accounting without IRQ time accounting);
//!   softirq work deferred to `ksoftirqd/N` is added from its own counters.
//!   That sum is the benchmark's CPU, mostly blind to other users' builds;
//! - the machine's busy time from `/proc/stat` (all CPUs, user + nice +
//!   system + irq + softirq) is recorded too: complete, but it also counts
//!   whatever else runs on the machine.
//!
//! The LB's share is then the CPU per request with the LB minus the CPU per
//! request of the direct run (clients straight to the compilers), same round,
//! same pattern.

use std::{
    fmt::Write as _,
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns;

// ---------------------------------------------------------------------------
// Kernel CPU accounting.

/// Clock ticks per second of `/proc/stat` and `/proc/PID/stat`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn ticks(n: u64) -> Duration {
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / clock_ticks())
}

/// Busy ticks of the `cpu` line of `/proc/stat` (all CPUs): user, nice,
/// system, irq and softirq. Idle, iowait and steal are not ours.
pub fn parse_proc_stat_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    (v.len() >= 7).then(|| v[0] + v[1] + v[2] + v[5] + v[6])
}

/// utime + stime (ticks) from the text of `/proc/PID/stat`.
pub fn parse_pid_stat_time(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ... utime is field 14, stime 15 of the full line.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine_busy() -> Duration {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat_busy(&t))
        .map(ticks)
        .unwrap_or_default()
}

fn pid_time(pid: i32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_pid_stat_time(&t))
        .map(ticks)
        .unwrap_or_default()
}

/// The `ksoftirqd/N` kernel threads.
fn ksoftirqd_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// Where cpuacct lives: cgroup v1 `cpuacct` or the v2 unified hierarchy.
#[derive(Clone, Copy, Debug)]
enum CgroupKind {
    V1,
    V2,
}

/// The benchmark's cgroups, `ROOT/PREFIX/{group}`; removed on drop.
pub struct Cgroups {
    base: PathBuf,
    kind: CgroupKind,
    groups: Vec<String>,
}

/// The group of the load balancer's own processes.
pub const CG_LB: &str = "lb";
/// The group of everything else of the benchmark (wrk, backends).
pub const CG_LOAD: &str = "load";

const CG_V1_ROOT: &str = "/sys/fs/cgroup/cpuacct";
const CG_V2_ROOT: &str = "/sys/fs/cgroup";

impl Cgroups {
    /// Creates `PREFIX/lb` and `PREFIX/load` (and sweeps `vxb-PID` groups of
    /// runs that died).
    pub fn create(prefix: &str) -> anyhow::Result<Cgroups> {
        let (root, kind) = if Path::new(CG_V1_ROOT).join("cpuacct.usage").exists() {
            (CG_V1_ROOT, CgroupKind::V1)
        } else if Path::new(CG_V2_ROOT).join("cgroup.controllers").exists() {
            (CG_V2_ROOT, CgroupKind::V2)
        } else {
            bail!("no cpuacct cgroup (v1 {CG_V1_ROOT} or v2 {CG_V2_ROOT})");
        };
        sweep_stale_cgroups(Path::new(root), prefix);
        let base = Path::new(root).join(prefix);
        let mut cg = Cgroups {
            base,
            kind,
            groups: Vec::new(),
        };
        for g in [CG_LB, CG_LOAD] {
            let dir = cg.base.join(g);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            cg.groups.push(g.to_owned());
        }
        Ok(cg)
    }

    /// Moves process `pid` (all its threads) into `group`.
    pub fn add(&self, group: &str, pid: i32) -> anyhow::Result<()> {
        let file = self.base.join(group).join("cgroup.procs");
        std::fs::write(&file, pid.to_string())
            .with_context(|| format!("moving {pid} into {}", file.display()))
    }

    /// CPU time of `group` since it was made (tasks' user + system time,
    /// including softirq that ran in their context).
    pub fn usage(&self, group: &str) -> Duration {
        let dir = self.base.join(group);
        match self.kind {
            CgroupKind::V1 => std::fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .map(Duration::from_nanos),
            CgroupKind::V2 => std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse().ok())
                })
                .map(Duration::from_micros),
        }
        .unwrap_or_default()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // The processes are gone by now (the topology is dropped first); an
        // exiting task may linger in a group for a moment: retry, bounded.
        for _ in 0..50 {
            for g in &self.groups {
                let _ = std::fs::remove_dir(self.base.join(g));
            }
            if std::fs::remove_dir(&self.base).is_ok() || !self.base.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        eprintln!("warning: could not remove cgroup {}", self.base.display());
    }
}

/// Removes empty groups `ROOT/PREFIX-KIND-PID-*` left by runs that died.
fn sweep_stale_cgroups(root: &Path, prefix: &str) {
    // prefix is KIND-PID-N: stale ones are KIND-OTHERPID-N.
    let Some(kind) = prefix.split('-').next() else {
        return;
    };
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let pid = name
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            for g in [CG_LB, CG_LOAD] {
                let _ = std::fs::remove_dir(e.path().join(g));
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// Counters at one instant.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    machine: Duration,
    ksoftirqd: Duration,
    lb: Duration,
    load: Duration,
}

/// CPU spent between two snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuDelta {
    pub wall: Duration,
    /// All CPUs busy (`/proc/stat`), whoever used them.
    pub machine: Duration,
    /// The benchmark's tasks (both cgroups) plus `ksoftirqd`.
    pub tasks: Duration,
    /// The LB's own processes (HAProxy, the voxlb daemon) alone.
    pub lb_process: Duration,
}

/// Takes [`CpuSnapshot`]s.
pub struct CpuMeter<'a> {
    cg: &'a Cgroups,
    ksoftirqd: Vec<i32>,
}

impl<'a> CpuMeter<'a> {
    pub fn new(cg: &'a Cgroups) -> Self {
        CpuMeter {
            cg,
            ksoftirqd: ksoftirqd_pids(),
        }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            machine: machine_busy(),
            ksoftirqd: self.ksoftirqd.iter().map(|&p| pid_time(p)).sum(),
            lb: self.cg.usage(CG_LB),
            load: self.cg.usage(CG_LOAD),
        }
    }
}

impl CpuSnapshot {
    /// What was spent from `self` to `later`.
    pub fn delta(&self, later: &CpuSnapshot) -> CpuDelta {
        let d = |a: Duration, b: Duration| b.saturating_sub(a);
        CpuDelta {
            wall: later.at.duration_since(self.at),
            machine: d(self.machine, later.machine),
            tasks: d(self.lb, later.lb)
                + d(self.load, later.load)
                + d(self.ksoftirqd, later.ksoftirqd),
            lb_process: d(self.lb, later.lb),
        }
    }
}

/// Milliseconds of `cpu` per 10,000 of `requests`.
pub fn ms_per_10k(cpu: Duration, requests: u64) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    cpu.as_secs_f64() * 1e3 * 1e4 / requests as f64
}

// ---------------------------------------------------------------------------
// XDP program run time (BPF_ENABLE_STATS).

/// Run time and run count of BPF program `id` (needs stats enabled, see
/// `aya::sys::enable_stats`), via `bpftool`.
pub fn bpf_prog_runtime(id: u32) -> Option<(Duration, u64)> {
    let out = netns::run("bpftool", &["-j", "prog", "show", "id", &id.to_string()]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let ns = v["run_time_ns"].as_u64().unwrap_or(0);
    let cnt = v["run_cnt"].as_u64().unwrap_or(0);
    Some((Duration::from_nanos(ns), cnt))
}

/// The id of the program behind a pinned BPF link, via `bpftool`.
pub fn bpf_link_prog_id(pin: &Path) -> Option<u32> {
    let out = netns::run("bpftool", &["-j", "link", "show", "pinned", pin.to_str()?]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["prog_id"].as_u64().map(|x| x as u32)
}

// ---------------------------------------------------------------------------
// wrk.

/// One `wrk` run.
#[derive(Clone, Debug)]
pub struct WrkRun {
    /// `https://HOST:PORT/PATH`.
    pub url: String,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    /// Send `Connection: close`: a new TCP + TLS connection per request.
    pub close: bool,
    /// When not empty, thread i connects to `targets[i % len]` instead of the
    /// URL's host (the direct baseline spreads over the compilers this way).
    pub targets: Vec<IpAddr>,
    pub port: u16,
}

/// What `wrk` measured (from the script's `done()` line).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    /// connect + read + write + timeout + non-2xx/3xx.
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 * 1e6 / self.duration_us as f64
    }
}

/// The marker of the script's result line.
const WRK_MARK: &str = "VXB-RESULT ";

/// The Lua script: per-thread targets and a one-line JSON result. wrk does
/// not verify certificates, so the test CA needs no trust setup.
fn wrk_script(run: &WrkRun) -> String {
    let targets: Vec<String> = run.targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"-- written by voxlb-bench-e2e
local targets = {{ {targets} }}
local next_target = 0

function setup(thread)
   if #targets > 0 then
      local host = targets[(next_target % #targets) + 1]
      next_target = next_target + 1
      thread.addr = wrk.lookup(host, "{port}")[1]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{mark}{{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect + e.read + e.write + e.status + e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
"#,
        targets = targets.join(", "),
        port = run.port,
        mark = WRK_MARK,
    )
}

/// Parses the script's result line out of wrk's output.
pub fn parse_wrk_output(out: &str) -> anyhow::Result<WrkResult> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(WRK_MARK))
        .context("no result line in wrk's output")?;
    let v: serde_json::Value = serde_json::from_str(line).context("wrk result line")?;
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(WrkResult {
        requests: u("requests"),
        duration_us: u("duration_us"),
        bytes: u("bytes"),
        errors: u("errors"),
        p50_us: f("p50_us"),
        p90_us: f("p90_us"),
        p99_us: f("p99_us"),
        max_us: f("max_us"),
        mean_us: f("mean_us"),
    })
}

/// Kills the child on drop unless it was waited for.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `wrk` in namespace `ns`, its process in cgroup `CG_LOAD` of `cg`.
/// Bounded: killed at duration + 30 s, or as soon as `stop` is set.
pub fn run_wrk(
    ns: &str,
    run: &WrkRun,
    script_dir: &Path,
    cg: &Cgroups,
    stop: &AtomicBool,
) -> anyhow::Result<WrkResult> {
    let script = script_dir.join("wrk.lua");
    std::fs::write(&script, wrk_script(run))?;
    let mut cmd = netns::command_in(ns, "wrk");
    cmd.arg(format!("-t{}", run.threads))
        .arg(format!("-c{}", run.connections))
        .arg(format!("-d{}s", run.duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(&script);
    if run.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&run.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting wrk (is it installed?)")?;
    let mut guard = ChildGuard(Some(child));
    let pid = guard.0.as_ref().map(|c| c.id() as i32).unwrap_or(0);
    cg.add(CG_LOAD, pid)?;
    // Read the pipes on threads so a full pipe never blocks wrk.
    let child = guard.0.as_mut().context("wrk child")?;
    let reader = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + run.duration + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("wrk did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.0 = None;
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}): {}{}", out.trim(), err.trim());
    }
    parse_wrk_output(&out).with_context(|| format!("wrk said: {}{}", out.trim(), err.trim()))
}

// ---------------------------------------------------------------------------
// Statistics and formatting.

/// Median of the finite values (NaN when there are none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A number for a table: `-` when missing, 3 significant figures or so.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Microseconds as `123 µs` or `4.56 ms`.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        return "–".to_owned();
    }
    if us >= 1000.0 {
        format!("{} ms", fmt_num(us / 1000.0))
    } else {
        format!("{us:.0} µs")
    }
}

/// A ratio as `1.23×` (`–` when undefined).
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() && r.abs() < 0.1 {
        format!("{r:.3}×")
    } else if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".to_owned()
    }
}

/// A markdown table.
pub fn markdown_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_counts_user_nice_system_irq_softirq() {
        let text = "cpu  100 1 20 900 5 3 7 50 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_proc_stat_busy(text), Some(100 + 1 + 20 + 3 + 7));
        assert_eq!(parse_proc_stat_busy("intr 1 2"), None);
    }

    #[test]
    fn pid_stat_time_survives_odd_names() {
        let text = "42 (a) b (c)) S 1 42 42 0 -1 4194560 10 0 0 0 17 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_pid_stat_time(text), Some(22));
    }

    #[test]
    fn wrk_result_line_parses() {
        let out = "Running 1s test\nVXB-RESULT {\"requests\":200,\"duration_us\":2000000,\
                   \"bytes\":5,\"errors\":1,\"p50_us\":300,\"p90_us\":400,\"p99_us\":900,\
                   \"max_us\":1000,\"mean_us\":310.5}\n";
        let r = parse_wrk_output(out).unwrap();
        assert_eq!(r.requests, 200);
        assert_eq!(r.errors, 1);
        assert_eq!(r.p99_us, 900.0);
        assert_eq!(r.rps(), 100.0);
        assert!(parse_wrk_output("nothing").is_err());
    }

    #[test]
    fn median_ignores_missing_values() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median([f64::NAN]).is_nan());
    }

    #[test]
    fn script_lists_targets() {
        let run = WrkRun {
            url: "https://10.0.0.1:8140/".into(),
            threads: 2,
            connections: 2,
            duration: Duration::from_secs(1),
            close: false,
            targets: vec!["10.0.0.2".parse().unwrap()],
            port: 8140,
        };
        let s = wrk_script(&run);
        assert!(s.contains("{ \"10.0.0.2\" }"));
        assert!(s.contains("\"8140\""));
    }
}
