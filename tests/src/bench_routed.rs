//! The routed-compilers part of `voxlb-bench-e2e`: compilers in another
//! subnet behind a router ([`crate::routed`]), `voxlb decap` on each, and
//! the same `wrk` patterns as the main table, for three paths in the same
//! run: `direct` (the client straight to the compilers through the router:
//! the baseline), voxlb `ipip` and voxlb `gue` (client → LB → router →
//! compiler, replies compiler → router → client).
//!
//! CPU is not attributed here (the main table does that for the L2 path);
//! the XDP program's own run time per request is reported, which for the
//! routed paths includes the tail-called encapsulating program.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::{
    bench::{self, Cgroups, WrkResult, WrkRun, fmt_num, fmt_ratio, fmt_us, median, ms_per_10k},
    daemon::{self, Daemon},
    netns,
    routed::{RoutedSpec, RoutedTopology, VIP4, VIP6},
    topology::{IFACE, PORT, SERVICE_NAME},
};

const GUE_PORT: u16 = 6080;

/// What to run.
pub struct RoutedBench<'a> {
    pub testd: PathBuf,
    pub rounds: usize,
    pub duration: Duration,
    pub probe: Duration,
    pub threads: usize,
    pub short_connections: usize,
    pub keepalive_connections: usize,
    pub short_bytes: u64,
    pub catalog_bytes: u64,
    pub stop: &'a AtomicBool,
}

/// The paths measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Ipip,
    Gue,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Direct, Path::Ipip, Path::Gue];
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct via the router (no LB)",
            Path::Ipip => "voxlb, forwarding = \"ipip\"",
            Path::Gue => "voxlb, forwarding = \"gue\"",
        }
    }
}

/// One path, one pattern, one round.
#[derive(Clone, Debug)]
pub struct RoutedSample {
    pub round: usize,
    pub path: Path,
    /// `true`: keep-alive catalogs; `false`: a new TLS connection per request.
    pub keepalive: bool,
    pub loaded: WrkResult,
    pub probe: WrkResult,
    /// The XDP program's run time during the loaded run.
    pub xdp: Option<Duration>,
}

fn config(topo: &RoutedTopology, mode: &str) -> String {
    let work = &topo.work_dir;
    let mut s = format!(
        "interfaces = [\"{IFACE}\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\n\
         control_socket = \"{}\"\nstate_dir = \"{}\"\n\n[[compiler_services]]\n\
         name = \"compilers\"\nvip = \"{VIP4}:{PORT}\"\nforwarding = \"{mode}\"\n{}\
         [compiler_services.health_check]\ntype = \"https\"\nca_file = \"{}\"\nhost = \"{SERVICE_NAME}\"\n\
         path = \"/status/v1/simple\"\ninterval = \"2s\"\ntimeout = \"1s\"\n",
        topo.pin_dir.join("lb").display(),
        work.join("run/voxlb.sock").display(),
        work.join("state").display(),
        if mode == "gue" {
            format!("gue_port = {GUE_PORT}\n")
        } else {
            String::new()
        },
        work.join("pki/ca.pem").display(),
    );
    for c in &topo.compilers {
        s += &format!(
            "\n[[compiler_services.backends]]\naddress = \"{}\"\nname = \"{}\"\n",
            c.ip4, c.name
        );
    }
    s
}

/// Run it; the samples.
pub fn run(b: &RoutedBench) -> anyhow::Result<Vec<RoutedSample>> {
    let cg = Cgroups::create(&format!("vxbr-{}-0", std::process::id()))?;
    eprintln!("routed: building the topology (router, 3 compilers with voxlb decap)...");
    let topo = RoutedTopology::build(&RoutedSpec {
        kind: "vxbr",
        compilers: 3,
        return_mtu: None,
        client_vip_mtu: 1400,
        testd: b.testd.clone(),
    })?;
    let bin = daemon::voxlb_bin()?;
    for c in &topo.compilers {
        let out = netns::command_in(&c.ns, &bin)
            .args(["decap", "--interface", IFACE, "--vip"])
            .args([VIP4.to_string(), VIP6.to_string()])
            .args(["--gue-port", &GUE_PORT.to_string(), "--pin-dir"])
            .arg(topo.decap_pin_dir(c))
            .output()?;
        ensure!(
            out.status.success(),
            "voxlb decap on {}: {}",
            c.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The baseline: the client reaches the compilers through the router.
    netns::ip(
        &topo.client.ns,
        &[
            "route",
            "add",
            "10.78.2.0/24",
            "via",
            &topo.router.ip4.to_string(),
            "mtu",
            "1400",
        ],
    )?;
    std::fs::create_dir_all(topo.work_dir.join("run"))?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let mut samples = Vec::new();
    for round in 0..b.rounds {
        for path in Path::ALL {
            eprintln!("routed round {}/{}: {}", round + 1, b.rounds, path.name());
            let daemon = match path {
                Path::Direct => None,
                Path::Ipip | Path::Gue => {
                    let mode = if path == Path::Ipip { "ipip" } else { "gue" };
                    let work = &topo.work_dir;
                    let d = Daemon::start_in(
                        &topo.lb.ns,
                        work.join(format!("voxlb-{mode}.toml")),
                        &config(&topo, mode),
                        work.join("run/voxlb.sock"),
                        work.join(format!("voxlb-{mode}.log")),
                    )?;
                    wait_active(&d, 3)?;
                    Some(d)
                }
            };
            let prog = voxlb::xdp::link_pin(&topo.pin_dir.join("lb"), IFACE);
            let prog = daemon.as_ref().and_then(|_| bench::bpf_link_prog_id(&prog));
            for keepalive in [false, true] {
                let run = |probe: bool| {
                    let (threads, connections, duration) = if probe {
                        (1, 1, b.probe)
                    } else if keepalive {
                        (b.threads, b.keepalive_connections, b.duration)
                    } else {
                        (b.threads, b.short_connections, b.duration)
                    };
                    let bytes = if keepalive {
                        b.catalog_bytes
                    } else {
                        b.short_bytes
                    };
                    let (host, targets): (IpAddr, Vec<IpAddr>) = match path {
                        Path::Direct => (
                            topo.compilers[0].ip4.into(),
                            topo.compilers.iter().map(|c| c.ip4.into()).collect(),
                        ),
                        _ => (VIP4.into(), Vec::new()),
                    };
                    WrkRun {
                        url: format!("https://{host}:{PORT}/catalog?bytes={bytes}"),
                        threads,
                        connections: connections.max(threads),
                        duration,
                        close: !keepalive,
                        targets,
                        port: PORT,
                    }
                };
                let before = prog.and_then(bench::bpf_prog_runtime);
                let loaded =
                    bench::run_wrk(&topo.client.ns, &run(false), &topo.work_dir, &cg, b.stop)?;
                let after = prog.and_then(bench::bpf_prog_runtime);
                let probe =
                    bench::run_wrk(&topo.client.ns, &run(true), &topo.work_dir, &cg, b.stop)?;
                let xdp = match (before, after) {
                    (Some((a, _)), Some((z, _))) => Some(z.saturating_sub(a)),
                    _ => None,
                };
                eprintln!(
                    "  {:<10} {:>8} req/s  p50 {:>9}  p99 {:>9}  1-conn p50 {:>9}  errors {}",
                    if keepalive { "keepalive" } else { "short" },
                    fmt_num(loaded.rps()),
                    fmt_us(loaded.p50_us),
                    fmt_us(loaded.p99_us),
                    fmt_us(probe.p50_us),
                    loaded.errors + probe.errors,
                );
                samples.push(RoutedSample {
                    round,
                    path,
                    keepalive,
                    loaded,
                    probe,
                    xdp,
                });
            }
            drop(daemon);
        }
    }
    drop(topo);
    drop(cg);
    Ok(samples)
}

/// Wait (bounded) until the service has `n` usable compilers.
fn wait_active(d: &Daemon, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(voxlb::control::Response::Status(s)) = d.json(&["status"])
            && s.services.iter().all(|v| v.active == n)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "routed compilers not usable; log:\n{}",
                d.log_tail(30)
            ))
            .context("voxlb with routed compilers");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The markdown section of the report.
pub fn markdown(samples: &[RoutedSample], b: &RoutedBench) -> String {
    let mut s = String::from("\n### Routed compilers (IPIP and GUE through a router)\n\n");
    s += &format!(
        "Client → LB → router → compilers in another subnet (each running `voxlb decap`), \
         replies compiler → router → client. Same patterns as above (short: `wrk -t{t} -c{sc}` \
         with `Connection: close`, {sb} B; keep-alive: `wrk -t{t} -c{kc}`, {kb} KiB), \
         {r} round(s), medians. *XDP ms/10k* is the LB program's own run time per 10k \
         requests (the tail-called encapsulating program included); the baseline goes \
         through the router without an LB.\n\n",
        t = b.threads,
        sc = b.short_connections,
        sb = b.short_bytes,
        kc = b.keepalive_connections,
        kb = b.catalog_bytes / 1024,
        r = b.rounds,
    );
    let head = [
        "pattern",
        "path",
        "req/s",
        "p50",
        "p99",
        "1-conn p50",
        "1-conn p99",
        "1-conn p50 vs direct",
        "req/s vs direct",
        "XDP ms/10k",
        "errors",
    ];
    let mut rows = Vec::new();
    for keepalive in [false, true] {
        let of = |p: Path| {
            samples
                .iter()
                .filter(move |x| x.path == p && x.keepalive == keepalive)
        };
        for p in Path::ALL {
            if of(p).next().is_none() {
                continue;
            }
            let ratio = |f: &dyn Fn(&RoutedSample) -> f64| {
                median(of(p).filter_map(|x| {
                    of(Path::Direct)
                        .find(|d| d.round == x.round)
                        .map(|d| f(x) / f(d))
                }))
            };
            let errors: u64 = of(p).map(|x| x.loaded.errors + x.probe.errors).sum();
            let requests: u64 = of(p).map(|x| x.loaded.requests + x.probe.requests).sum();
            rows.push(vec![
                if keepalive {
                    "keep-alive, catalog"
                } else {
                    "short (new TLS conn/request)"
                }
                .to_owned(),
                p.name().to_owned(),
                fmt_num(median(of(p).map(|x| x.loaded.rps()))),
                fmt_us(median(of(p).map(|x| x.loaded.p50_us))),
                fmt_us(median(of(p).map(|x| x.loaded.p99_us))),
                fmt_us(median(of(p).map(|x| x.probe.p50_us))),
                fmt_us(median(of(p).map(|x| x.probe.p99_us))),
                if p == Path::Direct {
                    "1.00×".into()
                } else {
                    fmt_ratio(ratio(&|x| x.probe.p50_us))
                },
                if p == Path::Direct {
                    "1.00×".into()
                } else {
                    fmt_ratio(ratio(&|x| x.loaded.rps()))
                },
                match p {
                    Path::Direct => "–".into(),
                    _ => fmt_num(median(of(p).map(|x| {
                        x.xdp.map_or(f64::NAN, |d| ms_per_10k(d, x.loaded.requests))
                    }))),
                },
                format!("{errors} / {requests}"),
            ]);
        }
    }
    s += &bench::markdown_table(&head, &rows);
    s
}
