//! The load balancers the benchmarks compare, on a [`Topology`]'s LB
//! namespace: voxlb (the daemon, XDP, DSR) and HAProxy (TCP mode,
//! `balance leastconn`, as the OpenVox/Puppet docs put it in front of
//! compilers). Shared by `voxlb-bench-e2e` and `voxlb-bench-load`, so that
//! both measure the same HAProxy and the same voxlb set-up.
//!
//! An [`LbProcess`] is one running balancer; dropping it stops it and
//! undoes what it set up (voxlb: detach the program; HAProxy: the VIP on
//! `lo`). Ctrl-C sets [`STOP`] (see [`install_stop_handler`]), which the
//! benchmarks poll between steps.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::{
    bench::{self, CG_LB, Cgroups},
    netns,
    topology::{self, COMPILER_VIP4, PORT, Topology},
};

/// Set by SIGINT/SIGTERM once [`install_stop_handler`] ran.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set [`STOP`] instead of killing the process, so that
/// the benchmark can remove what it made.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// An error once [`STOP`] is set.
pub fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A binary next to the running one (the benchmarks find `voxlb` and
/// `voxlb-testd` there).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.parent().context("exe dir")?.join(name);
    ensure!(
        p.exists(),
        "{} not found (build it: cargo build --release -p lb-userspace -p voxlb-tests --bins)",
        p.display()
    );
    Ok(p)
}

/// `sysctl -w KEY=VALUE` in namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    netns::exec(ns, "sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
}

/// Per-namespace settings every balancer gets (ports for many short
/// connections).
pub fn tune(topo: &Topology) -> anyhow::Result<()> {
    for ns in [&topo.client.ns, &topo.lb.ns] {
        sysctl(ns, "net.ipv4.ip_local_port_range", "1024 65000")?;
        sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
    }
    Ok(())
}

/// A path as `&str` (for command arguments).
pub fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// Writes `WORK/voxlb.toml`: one compiler service `compilers` on the IPv4
/// VIP with every compiler of the topology, an OpenVox health check over
/// TLS every 2 s, and `service_keys` (e.g. `balance = "load"`) added to
/// the service. Returns its path.
pub fn voxlb_config(topo: &Topology, service_keys: &str) -> anyhow::Result<PathBuf> {
    let work = &topo.work_dir;
    let mut s = format!(
        "# written by voxlb-tests (benchmarks)\n\
         interfaces = [\"{iface}\"]\n\
         xdp_mode = \"native\"\n\
         pin_dir = \"{pin}\"\n\
         control_socket = \"{work}/voxlb.sock\"\n\
         state_dir = \"{work}/voxlb-state\"\n\n\
         [[compiler_services]]\n\
         name = \"compilers\"\n\
         vip = \"{vip}:{PORT}\"\n\
         {service_keys}\n\n\
         [compiler_services.health_check]\n\
         type = \"https\"\n\
         ca_file = \"{work}/pki/ca.pem\"\n\
         host = \"{host}\"\n\
         path = \"/status/v1/simple\"\n\
         interval = \"2s\"\n\
         timeout = \"1s\"\n",
        iface = topology::IFACE,
        pin = topo.lb_pin_dir().display(),
        work = work.display(),
        vip = COMPILER_VIP4,
        host = topology::SERVICE_NAME,
    );
    for c in &topo.compilers {
        s += &format!(
            "\n[[compiler_services.backends]]\naddress = \"{}\"\nname = \"{}\"\n",
            c.ip4, c.name
        );
    }
    let path = work.join("voxlb.toml");
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Writes `WORK/haproxy.cfg`: HAProxy as the OpenVox/Puppet docs put it in
/// front of compilers: TCP mode (TLS passes through to the compilers, which
/// need the client certificates), least connections, and an HTTP check of
/// `/status/v1/simple` over TLS verified with the CA. Returns its path.
pub fn haproxy_config(topo: &Topology) -> anyhow::Result<PathBuf> {
    let work = &topo.work_dir;
    let host = topology::SERVICE_NAME;
    let mut s = format!(
        "# written by voxlb-tests (benchmarks)\n\
         global\n\
         \x20   maxconn 8000\n\
         \x20   nbthread 2\n\
         \x20   pidfile {work}/haproxy.pid\n\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 10m\n\
         \x20   timeout server 10m\n\
         \x20   retries 3\n\
         \x20   option redispatch\n\n\
         frontend puppet\n\
         \x20   bind {vip}:{PORT}\n\
         \x20   default_backend compilers\n\n\
         backend compilers\n\
         \x20   balance leastconn\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /status/v1/simple ver HTTP/1.1 hdr Host {host}\n\
         \x20   http-check expect status 200\n\
         \x20   default-server check check-ssl verify required ca-file {work}/pki/ca.pem \
         check-sni {host} verifyhost {host} inter 2s fall 3 rise 2\n",
        work = work.display(),
        vip = COMPILER_VIP4,
    );
    for c in &topo.compilers {
        s += &format!("    server {} {}:{PORT}\n", c.name, c.ip4);
    }
    let path = work.join("haproxy.cfg");
    std::fs::write(&path, s)?;
    Ok(path)
}

enum Kind {
    Voxlb { bin: PathBuf, config: PathBuf },
    Haproxy,
}

/// A balancer running in the topology's LB namespace, its process in
/// cgroup [`CG_LB`]. Dropping it stops it and undoes its set-up.
pub struct LbProcess<'a> {
    topo: &'a Topology,
    child: Option<Child>,
    kind: Kind,
    /// The XDP program's id (voxlb), for its run time.
    pub xdp_prog: Option<u32>,
}

fn spawn_logged(cmd: &mut Command, log: &Path, cg: &Cgroups) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting the load balancer")?;
    cg.add(CG_LB, child.id() as i32)?;
    Ok(child)
}

impl<'a> LbProcess<'a> {
    /// `voxlb run --config CONFIG` (see [`voxlb_config`]); returns once
    /// every compiler answers through the VIP.
    pub fn start_voxlb(
        topo: &'a Topology,
        cg: &Cgroups,
        bin: &Path,
        config: &Path,
        log: &Path,
    ) -> anyhow::Result<LbProcess<'a>> {
        let mut lb = LbProcess {
            topo,
            child: None,
            kind: Kind::Voxlb {
                bin: bin.to_owned(),
                config: config.to_owned(),
            },
            xdp_prog: None,
        };
        lb.child = Some(spawn_logged(
            netns::command_in(&topo.lb.ns, bin)
                .arg("run")
                .arg("--config")
                .arg(config),
            log,
            cg,
        )?);
        wait_ready(topo, "voxlb")?;
        let pin = voxlb::xdp::link_pin(&topo.lb_pin_dir(), topology::IFACE);
        lb.xdp_prog = bench::bpf_link_prog_id(&pin);
        Ok(lb)
    }

    /// HAProxy with [`haproxy_config`], the VIP on the LB's `lo`; returns
    /// once every compiler answers through the VIP.
    pub fn start_haproxy(
        topo: &'a Topology,
        cg: &Cgroups,
        log: &Path,
    ) -> anyhow::Result<LbProcess<'a>> {
        let ns = &topo.lb.ns;
        let mut lb = LbProcess {
            topo,
            child: None,
            kind: Kind::Haproxy,
            xdp_prog: None,
        };
        netns::ip(
            ns,
            &["addr", "add", &format!("{COMPILER_VIP4}/32"), "dev", "lo"],
        )?;
        let config = haproxy_config(topo)?;
        netns::run("haproxy", &["-c", "-q", "-f", path_str(&config)?])
            .context("HAProxy rejects its configuration")?;
        lb.child = Some(spawn_logged(
            netns::command_in(ns, "haproxy").args(["-db", "-f", path_str(&config)?]),
            log,
            cg,
        )?);
        wait_ready(topo, "HAProxy")?;
        Ok(lb)
    }

    /// `voxlb --socket SOCK ARGS...` against this daemon (voxlb only).
    pub fn voxlb_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let Kind::Voxlb { bin, .. } = &self.kind else {
            bail!("not a voxlb daemon");
        };
        let out = crate::daemon::run_bounded(
            netns::command_in(&self.topo.lb.ns, bin)
                .arg("--socket")
                .arg(self.topo.work_dir.join("voxlb.sock"))
                .args(args),
            Duration::from_secs(30),
        )?;
        ensure!(
            out.code() == 0,
            "voxlb {}: {}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }
}

impl Drop for LbProcess<'_> {
    fn drop(&mut self) {
        let lb = &self.topo.lb.ns;
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory preconditions; the pid is our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        match &self.kind {
            Kind::Voxlb { bin, config } => {
                // The daemon leaves the data plane forwarding on exit, on
                // purpose: detach it.
                let _ = netns::command_in(lb, bin)
                    .arg("detach")
                    .arg("--config")
                    .arg(config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Kind::Haproxy => {
                let _ = netns::ip(
                    lb,
                    &["addr", "del", &format!("{COMPILER_VIP4}/32"), "dev", "lo"],
                );
            }
        }
    }
}

/// Every compiler answers through the VIP (bounded by 30 s).
pub fn wait_ready(topo: &Topology, what: &str) -> anyhow::Result<()> {
    let vip = topo.compiler_vip(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        check_stop()?;
        match topo.whoami_spread(vip, 30, 6) {
            Ok(counts) if counts.len() == topo.compilers.len() => return Ok(()),
            Ok(counts) => last = format!("answers {counts:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("{what} not ready through the VIP: {last}")
}

/// The daemon and backend binaries a benchmark runs: the ones given, else
/// the ones next to the running binary.
pub fn binaries(
    voxlb: Option<&PathBuf>,
    testd: Option<&PathBuf>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let voxlb_bin = match voxlb {
        Some(p) => p.clone(),
        None => sibling("voxlb")?,
    };
    let testd = match testd {
        Some(p) => p.clone(),
        None => sibling("voxlb-testd")?,
    };
    Ok((voxlb_bin, testd))
}

/// Now, as a report's date (`2026-01-31 12:00 UTC`).
pub fn utc_date() -> anyhow::Result<String> {
    Ok(netns::run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?
        .trim()
        .to_owned())
}

/// The 1, 5 and 15 minute load averages (empty if unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The benchmarks' topology (3 compilers, 1 client address, namespaces
/// named `kind`), tuned, its compilers' processes in `cg`'s load group.
/// `cg` must outlive it.
pub fn bench_topology(
    kind: &'static str,
    cg: &Cgroups,
    testd: PathBuf,
) -> anyhow::Result<Topology> {
    eprintln!("building the topology (3 compilers)...");
    let topo = Topology::build(&topology::Spec {
        kind,
        compilers: 3,
        client_addrs: 1,
        testd,
    })?;
    tune(&topo)?;
    for c in &topo.compilers {
        for pid in netns::pids_in(&c.ns) {
            cg.add(bench::CG_LOAD, pid)?;
        }
    }
    Ok(topo)
}

/// Turns on the kernel's BPF run-time statistics (the XDP program's run
/// time in the reports) until the returned fd is dropped; `None`, with a
/// note, where the kernel refuses.
pub fn run_time_stats() -> Option<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| eprintln!("note: BPF run-time stats unavailable: {e}"))
        .ok()
}

/// Writes a benchmark's report: the Markdown to `out`, by default
/// `bench/NAME.md` (`bench/NAME-quick.md` for a quick run), and the JSON
/// next to it.
pub fn write_report(
    out: Option<&PathBuf>,
    name: &str,
    quick: bool,
    md: &str,
    json: &serde_json::Value,
) -> anyhow::Result<()> {
    let out = out.cloned().unwrap_or_else(|| {
        let file = if quick {
            format!("{name}-quick.md")
        } else {
            format!("{name}.md")
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bench")
            .join(file)
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    let json_path = out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(json)?)?;
    eprintln!("wrote {} and {}", out.display(), json_path.display());
    Ok(())
}
