//! Load-aware balancing end to end with load the agents make themselves
//! (issue 16): a compiler with half the JRuby instances and 4× slower
//! compiles, no phantom load configured. Its occupancy and queue are the
//! agents' own catalog requests in flight in `voxlb-testd`; voxlb reads them
//! from the status API like an OpenVox compiler's.
//!
//! With `balance = "load"` the slow compiler must get a smaller share of
//! new connections than with `static`, its weight must hold still (its
//! borrow time, 4x its peers', keeps it low when it is idle too), and the
//! agents' p99 run time must fall, in the same test on the same topology. Only comparisons, with a
//! generous margin: no absolute time is asserted (figures are
//! `cargo xtask bench load`'s job).
//!
//! Needs root; otherwise the test prints a `SKIP:` line (lb_testkit::skip).

use std::time::Duration;

use voxlb::control::{BackendView, Response};
use voxlb_tests::{
    agent::{AgentConfig, AgentReport, SkewedPool, run_agents},
    daemon::{COMPILERS, Daemon, HealthTiming, Options},
    netns,
    topology::{Spec, Topology},
};

/// The keys `cargo xtask bench load` runs voxlb `load` with.
const LOAD_KEYS: &str = "balance = \"load\"\nload_interval = \"1s\"";

fn c1_view(d: &Daemon, addr: &str) -> Option<BackendView> {
    match d.json(&["backend", "list", COMPILERS]).ok()? {
        Response::Backends { services } => services
            .into_iter()
            .find(|s| s.name == COMPILERS)?
            .backends
            .into_iter()
            .find(|b| b.address.to_string() == addr),
        _ => None,
    }
}

/// Runs the agents; meanwhile samples c1's load factor (permille) from the
/// daemon every 500 ms.
fn run(topo: &Topology, d: &Daemon, c1: &str, config: &AgentConfig) -> (AgentReport, Vec<u32>) {
    let config = config.clone();
    std::thread::scope(|s| {
        let agents = s.spawn(|| topo.rt.run(async move { run_agents(&config).await }));
        let mut factors = Vec::new();
        // Bounded: the agents stop starting runs after their duration.
        for _ in 0..600 {
            if agents.is_finished() {
                break;
            }
            if let Some(f) = c1_view(d, c1).and_then(|v| v.load_permille) {
                factors.push(f);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let report = agents
            .join()
            .expect("agent thread")
            .expect("agents in the client namespace");
        (report, factors)
    })
}

fn share(r: &AgentReport, backend: &str) -> f64 {
    let all: u64 = r.per_backend.values().sum();
    r.per_backend.get(backend).copied().unwrap_or(0) as f64 / all.max(1) as f64
}

#[test]
fn load_balance_gives_a_compiler_slowed_by_agents_fewer_connections_and_cuts_p99() {
    lb_testkit::require_root!("network namespaces and XDP");
    let topo = Topology::build(&Spec {
        kind: "vxe",
        compilers: 3,
        client_addrs: 1,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })
    .expect("build the topology");
    let d = Daemon::start(
        &topo,
        &Options {
            compilers_in_config: 3,
            health: HealthTiming::default(),
        },
    )
    .expect("start voxlb run");
    let skew = SkewedPool::default();
    skew.apply(&topo).unwrap();
    let c1 = &topo.compilers[0];
    let c1_addr = c1.ip4.to_string();
    let agents = AgentConfig {
        target: topo.compiler_vip(false),
        tls: Some((topo.tls.clone(), topo.compiler_vip(false).ip().to_string())),
        agents: 14,
        runs_per_agent: 10_000,
        compile_ms: 250,
        catalog_bytes: 32 * 1024,
        files: 1,
        file_bytes: 16 * 1024,
        pause: Duration::from_millis(800),
        run_timeout: Duration::from_secs(60),
        splay: Duration::from_millis(800),
        duration: Some(Duration::from_secs(24)),
        warmup: Duration::from_secs(6),
    };

    let (fixed, _) = run(&topo, &d, &c1_addr, &agents);
    eprintln!("static: {}", fixed.to_json());

    d.reload_with_service_keys(COMPILERS, LOAD_KEYS).unwrap();
    // The poller's first reading of c1 (idle now: the agents stopped).
    netns::wait_for(Duration::from_secs(20), Duration::from_millis(250), || {
        c1_view(&d, &c1_addr)?.load_pressure_permille
    })
    .unwrap_or_else(|| panic!("no load reading of c1\n{}", d.log_tail(30)));
    let (load, factors) = run(&topo, &d, &c1_addr, &agents);
    eprintln!("load: {}", load.to_json());
    eprintln!("c1 load factor (permille) every 500 ms: {factors:?}");

    assert_eq!(
        (fixed.errors, load.errors),
        (0, 0),
        "{:?} {:?}",
        fixed.first_error,
        load.first_error
    );
    // The agents' own requests loaded c1: the controller lowered its weight.
    let lowest = factors.iter().min().copied().unwrap_or(1000);
    assert!(
        lowest < 1000,
        "c1's weight was never lowered: {factors:?}\n{}",
        d.log_tail(30)
    );
    // c1's compiles take 4x its peers' whatever work it is given: the
    // slowness the controller reads from its borrow time says so, and the
    // factor holds still instead of chasing c1's occupancy.
    let slowness = c1_view(&d, &c1_addr).and_then(|v| v.load_slowness_permille);
    assert!(
        slowness.is_some_and(|s| s >= 3000),
        "c1's slowness (borrow time over its peers', permille): {slowness:?}"
    );
    let changes = factors.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(changes <= 2, "c1's load factor oscillated: {factors:?}");
    let (s_static, s_load) = (share(&fixed, &c1.name), share(&load, &c1.name));
    assert!(
        s_load < s_static * 0.8,
        "c1's share of new connections: static {s_static:.3}, load {s_load:.3}"
    );
    let p99 = |r: &AgentReport| r.percentile(99.0).expect("runs");
    let (p_static, p_load) = (p99(&fixed), p99(&load));
    assert!(
        p_load.as_secs_f64() < p_static.as_secs_f64() * 0.9,
        "agent p99: static {p_static:?}, load {p_load:?}"
    );
}
