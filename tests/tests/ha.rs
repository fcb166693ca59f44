//! No single point of failure, end to end in namespaces (layout in
//! `voxlb_tests::multi`): several LB hosts behind a BIRD router with ECMP,
//! each announcing the VIPs through its voxlb-managed BIRD; and an
//! active/standby pair under keepalived (VRRP) with `voxlb check --fit` as
//! its track script. Real TLS downloads must finish byte-exact through
//! host deaths, joins, drains and failovers.
//!
//! The tests print `figure:` lines (route convergence after a host's death,
//! VRRP failover time, transfers lost); they assert outcomes, never times.
//! Needs root, `bird` and `keepalived`; prints "skipped: ..." otherwise.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Mutex, MutexGuard},
    thread::sleep,
    time::{Duration, Instant},
};

use voxlb_tests::{
    daemon::COMPILERS,
    multi::{Multi, Upstream},
    netns,
    topology::{CA_VIP4, COMPILER_VIP4, Load, PORT, Spec, Transfer},
};

static SERIAL: Mutex<()> = Mutex::new(());

/// One topology at a time: several LB hosts with BIRDs and transfers are a
/// lot for a shared 2-CPU machine.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok()
}

macro_rules! need {
    ($($prog:literal),*) => {
        lb_testkit::require_root!("network namespaces, XDP, BIRD and keepalived");
        $(
            lb_testkit::skip_unless!(
                have($prog),
                format!("needs {} (cargo xtask setup installs it)", $prog),
                root: true
            );
        )*
    };
}

const SETTLE: Duration = Duration::from_secs(30);

fn spec() -> Spec {
    Spec {
        kind: "vxh",
        compilers: 3,
        client_addrs: 16,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(COMPILER_VIP4.into(), PORT)
}

/// Every transfer finished whole (pattern-checked), on the backend that
/// started it; returns how many there were.
fn all_intact(m: &Multi, transfers: Vec<Transfer>, load: Load) -> usize {
    let n = transfers.len();
    let mut lost = Vec::new();
    for (backend, r) in m.topo.finish_transfers(transfers) {
        match r {
            Ok(end) if end.bytes == load.bytes && end.backend_after == backend => {}
            Ok(end) => lost.push(format!("{backend}: {end:?}")),
            Err(e) => lost.push(format!("{backend}: {e:#}")),
        }
    }
    println!("figure: {n} transfers, {} lost", lost.len());
    assert!(
        lost.is_empty(),
        "transfers lost or moved:\n{}",
        lost.join("\n")
    );
    n
}

fn cli_ok(m: &Multi, i: usize, args: &[&str]) -> String {
    let out = m.daemon(i).unwrap().cli(args).unwrap();
    assert_eq!(
        out.code(),
        0,
        "voxlb {} on {}: {}{}",
        args.join(" "),
        m.lbs[i].name,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn announced(m: &Multi, i: usize, addr: IpAddr) -> bool {
    m.status(i)
        .ok()
        .and_then(|s| s.announce)
        .is_some_and(|a| a.vips.iter().any(|v| v.address == addr && v.announced))
}

/// Two LB hosts behind the router: a VIP is announced only once its
/// compilers are healthy, flows spread over both hosts, fingerprints agree
/// after CLI and config changes, `host drain` moves new flows away without
/// breaking the ones in flight, and a VIP whose compilers all fail is
/// withdrawn while the CA VIP stays.
#[test]
fn bgp_two_hosts_announce_spread_agree_drain_withdraw() {
    need!("bird", "birdc");
    let _s = serial();
    let mut m = Multi::build(&spec(), 2, Upstream::Bgp).expect("build");
    m.opts.compilers_in_config = 2;
    // Compilers down before the LB hosts start: nothing to announce for the
    // compiler VIP (health unknown does not count for announcing), the CA
    // VIP goes out.
    let compilers: Vec<_> = m.topo.compilers.clone();
    for c in &compilers {
        m.topo.kill_backend(c);
    }
    m.start_lb(0).unwrap();
    m.start_lb(1).unwrap();
    m.wait_nexthops(CA_VIP4, &[0, 1], SETTLE).unwrap();
    assert!(
        m.nexthops(COMPILER_VIP4).is_empty(),
        "announced without healthy compilers: {:?}\n{:?}\n{}",
        m.nexthops(COMPILER_VIP4),
        m.status(0).unwrap(),
        m.daemon(0).unwrap().log_tail(30)
    );
    assert!(!announced(&m, 0, COMPILER_VIP4.into()));
    for c in &compilers {
        m.topo.start_backend(c).unwrap();
    }
    m.wait_nexthops(COMPILER_VIP4, &[0, 1], SETTLE).unwrap();

    // Sessions are up and shown.
    let s = m.status(0).unwrap();
    let a = s.announce.expect("announce view");
    assert_eq!(a.mode, "managed");
    assert!(
        a.sessions.iter().any(|x| x.info == "Established"),
        "{:?}",
        a.sessions
    );
    let text = cli_ok(&m, 0, &["status"]);
    assert!(
        text.contains("announced") && text.contains("Established"),
        "{text}"
    );

    // Flows spread over both hosts; every connection answered.
    let before = [m.forwarded(0).unwrap(), m.forwarded(1).unwrap()];
    let spread = m.topo.whoami_spread(vip(), 64, 8).expect("connections");
    assert_eq!(spread.values().sum::<usize>(), 64);
    let after = [m.forwarded(0).unwrap(), m.forwarded(1).unwrap()];
    println!(
        "figure: 64 connections, packets forwarded by lb {} and lb2 {}",
        after[0] - before[0],
        after[1] - before[1]
    );
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "{before:?} -> {after:?}"
    );

    // Fingerprints: equal from the start, equal after the same CLI change
    // on both hosts, and unchanged when the config takes that change over
    // (no flow moves when the config catches up with the CLI).
    let fp0 = m.fingerprints(0).unwrap();
    assert_eq!(fp0, m.fingerprints(1).unwrap());
    let c3 = m.topo.compilers[2].ip4.to_string();
    for i in 0..2 {
        cli_ok(&m, i, &["backend", "add", COMPILERS, &c3, "--name", "c3"]);
    }
    // The new backend enters the tables once its MAC resolves.
    let fp1 = netns::wait_for(SETTLE, Duration::from_millis(100), || {
        let (a, b) = (m.fingerprints(0).ok()?, m.fingerprints(1).ok()?);
        (a != fp0 && a == b).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "fingerprints after the CLI add: {:?} / {:?} (before {fp0:?})",
            m.fingerprints(0),
            m.fingerprints(1)
        )
    });
    m.opts.compilers_in_config = 3;
    for i in 0..2 {
        std::fs::write(m.config_path(i), m.lb_config(i)).unwrap();
        cli_ok(&m, i, &["reload"]);
    }
    // compilers: the config now says what the CLI had done, the table (and
    // every flow) stays; compilers-v6 gains c3 from the config, on both
    // hosts alike once its MAC resolves.
    let fp2 = netns::wait_for(SETTLE, Duration::from_millis(100), || {
        let (a, b) = (m.fingerprints(0).ok()?, m.fingerprints(1).ok()?);
        (a[1] != fp1[1] && a == b).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "fingerprints after the reload: {:?} / {:?}",
            m.fingerprints(0),
            m.fingerprints(1)
        )
    });
    assert_eq!(
        fp2[0], fp1[0],
        "the config taking over the CLI change moved the table"
    );

    // Drain lb2 with transfers in flight: the router moves them to lb (whose
    // Maglev picks the same compilers), new flows avoid lb2.
    let load = Load::lasting(6);
    let transfers = m.topo.start_transfers(vip(), 12, load).unwrap();
    sleep(Duration::from_millis(1500));
    let drained = Instant::now();
    let out = m
        .daemon(1)
        .unwrap()
        .cli(&[
            "host",
            "drain",
            "--wait",
            "--quiet-secs",
            "1",
            "--timeout-secs",
            "20",
        ])
        .unwrap();
    assert_eq!(out.code(), 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("quiet"), "{}", out.stdout);
    println!(
        "figure: host drain --wait reported quiet after {:?}",
        drained.elapsed()
    );
    m.wait_nexthops(COMPILER_VIP4, &[0], SETTLE).unwrap();
    let st = m.status(1).unwrap();
    assert!(st.drained);
    let lb2_before = m.forwarded(1).unwrap();
    m.topo
        .whoami_spread(vip(), 32, 8)
        .expect("connections while lb2 is drained");
    assert_eq!(
        m.forwarded(1).unwrap(),
        lb2_before,
        "lb2 got traffic while drained"
    );
    // `check --fit` says drained (exit 5).
    let fit = m.daemon(1).unwrap().cli(&["check", "--fit"]).unwrap();
    assert_eq!(fit.code(), 5, "{}", fit.stdout);
    all_intact(&m, transfers, load);

    // The drain survives a restart; undrain announces again.
    {
        let d = m.daemons[1].as_mut().unwrap();
        d.stop().unwrap();
        d.spawn().unwrap();
    }
    assert!(m.status(1).unwrap().drained, "drain forgotten by a restart");
    sleep(Duration::from_secs(2));
    assert_eq!(m.nexthops(COMPILER_VIP4), vec![IpAddr::from(m.lbs[0].ip4)]);
    cli_ok(&m, 1, &["host", "undrain"]);
    m.wait_nexthops(COMPILER_VIP4, &[0, 1], SETTLE).unwrap();

    // Every compiler fails its health check (503): the compiler VIP is
    // withdrawn, the CA VIP stays.
    let t0 = Instant::now();
    for c in &compilers {
        m.topo.control(c, "POST", "/control/fail").unwrap();
    }
    m.wait_nexthops(COMPILER_VIP4, &[], SETTLE).unwrap();
    let t = t0.elapsed();

    println!(
        "figure: all compilers dead -> compiler VIP withdrawn after {t:?} (health 500 ms x fall 2)"
    );
    assert_eq!(
        m.nexthops(CA_VIP4).len(),
        2,
        "the CA VIP must stay announced"
    );
    let fit = m.daemon(0).unwrap().cli(&["check", "--fit"]).unwrap();
    assert_eq!(fit.code(), 6, "{}", fit.stdout);

    // Daemon stop withdraws (keep_announcing_on_stop is off).
    m.daemons[0].as_mut().unwrap().stop().unwrap();
    m.wait_nexthops(CA_VIP4, &[1], SETTLE).unwrap();
}

/// Three LB hosts: one dies mid-transfer (link cut, daemon and BIRD
/// killed), another joins mid-transfer; every download finishes byte-exact
/// on its compiler.
#[test]
fn bgp_host_dies_and_host_joins_mid_transfer() {
    need!("bird", "birdc");
    let _s = serial();
    let mut m = Multi::build(&spec(), 3, Upstream::Bgp).expect("build");
    m.start_lb(0).unwrap();
    m.start_lb(1).unwrap();
    m.wait_nexthops(COMPILER_VIP4, &[0, 1], SETTLE).unwrap();

    // A host dies.
    let load = Load::lasting(8);
    let transfers = m.topo.start_transfers(vip(), 16, load).unwrap();
    sleep(Duration::from_millis(1500));
    let via_dead = m.forwarded(1).unwrap();
    assert!(
        via_dead > 0,
        "no transfer went through lb2: the test proves nothing"
    );
    let bfd = m.router_birdc(&["show", "bfd", "sessions"]);
    assert!(
        bfd.contains(&m.lbs[1].ip4.to_string()) && bfd.contains("Up"),
        "{bfd}"
    );
    // Death: the link goes first (the router sees nothing but silence),
    // then every process of the host.
    let t0 = Instant::now();
    netns::ip(&m.lbs[1].ns, &["link", "set", "eth0", "down"]).unwrap();
    let d = m.wait_nexthops(COMPILER_VIP4, &[0], SETTLE).unwrap();
    let dead = t0.elapsed();
    m.kill_lb(1).unwrap();
    println!(
        "figure: LB host death -> router stops using it after {} ms (BFD 100 ms x 3, hold 3 s)",
        dead.max(d).as_millis()
    );
    all_intact(&m, transfers, load);

    // A host joins. Longer downloads: starting a host takes seconds on a
    // loaded machine, and they must still be running when the router
    // rehashes.
    let load = Load::lasting(20);
    let transfers = m.topo.start_transfers(vip(), 16, load).unwrap();
    sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    m.start_lb(2).unwrap();
    let d = m.wait_nexthops(COMPILER_VIP4, &[0, 2], SETTLE).unwrap();
    println!(
        "figure: LB host start -> in the router's route after {} ms (voxlb start + BGP session + health)",
        (t0.elapsed().max(d)).as_millis()
    );
    m.topo
        .whoami_spread(vip(), 32, 8)
        .expect("connections after the join");
    assert!(m.forwarded(2).unwrap() > 0, "the new host got no traffic");
    all_intact(&m, transfers, load);
    assert_eq!(m.fingerprints(0).unwrap(), m.fingerprints(2).unwrap());

    // keep_announcing_on_stop: a stopped daemon leaves its BIRD announcing
    // (the pinned program forwards on), a restarted one adopts that BIRD,
    // and `voxlb detach` withdraws.
    m.daemons[0].as_mut().unwrap().stop().unwrap();
    m.wait_nexthops(COMPILER_VIP4, &[2], SETTLE).unwrap();
    m.keep_announcing = true;
    std::fs::write(m.config_path(0), m.lb_config(0)).unwrap();
    m.daemons[0].as_mut().unwrap().spawn().unwrap();
    m.wait_nexthops(COMPILER_VIP4, &[0, 2], SETTLE).unwrap();
    m.daemons[0].as_mut().unwrap().stop().unwrap();
    sleep(Duration::from_secs(4)); // past the 3 s hold time
    assert_eq!(
        m.nexthops(COMPILER_VIP4).len(),
        2,
        "withdrawn despite keep_announcing_on_stop"
    );
    m.topo
        .whoami_spread(vip(), 16, 4)
        .expect("served with the daemon stopped");
    m.daemons[0].as_mut().unwrap().spawn().unwrap();
    let a = m.status(0).unwrap().announce.unwrap();
    assert_eq!(a.bird_error, None);
    m.daemons[0].as_mut().unwrap().stop().unwrap();
    let config = m.config_path(0);
    let out = m
        .daemon(0)
        .unwrap()
        .cli(&["detach", "--config", config.to_str().unwrap()])
        .unwrap();
    assert_eq!(out.code(), 0, "{}{}", out.stdout, out.stderr);
    m.wait_nexthops(COMPILER_VIP4, &[2], SETTLE).unwrap();
}

/// keepalived pair: the master is the one with the VRRP address; an unfit
/// master (drained) gives it up; the master dies mid-transfer and every
/// download finishes byte-exact through the standby.
#[test]
fn vrrp_failover_mid_transfer() {
    need!("keepalived");
    let _s = serial();
    let mut m = Multi::build(&spec(), 2, Upstream::Vrrp).expect("build");
    m.start_lb(0).unwrap();
    m.start_lb(1).unwrap();
    m.start_keepalived(0, 150).unwrap();
    m.start_keepalived(1, 100).unwrap();
    m.wait_vrrp_master(0, SETTLE).unwrap();
    let files = [m.vrrp_state_file(0), m.vrrp_state_file(1)];
    let role = |i: usize| std::fs::read_to_string(&files[i]).unwrap_or_default();
    netns::wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        role(0).starts_with("MASTER").then_some(())
    })
    .unwrap_or_else(|| panic!("notify hook: lb is {:?}", role(0)));
    m.topo
        .whoami_spread(vip(), 16, 4)
        .expect("through the master");

    // Unfit master: drained -> check --fit fails -> lb2 takes over; undrain
    // -> lb (higher priority) takes it back.
    cli_ok(&m, 0, &["host", "drain"]);
    let t = m.wait_vrrp_master(1, SETTLE).unwrap();
    println!("figure: drained master gave up VRRP mastership after {t:?} (track script every 1 s)");
    cli_ok(&m, 0, &["host", "undrain"]);
    m.wait_vrrp_master(0, SETTLE).unwrap();

    // The master dies mid-transfer.
    let load = Load::lasting(8);
    let transfers = m.topo.start_transfers(vip(), 16, load).unwrap();
    sleep(Duration::from_millis(1500));
    assert!(m.forwarded(0).unwrap() > 0);
    let before = m.forwarded(1).unwrap();
    // Death: the link first (the adverts stop), then every process.
    let t0 = Instant::now();
    netns::ip(&m.lbs[0].ns, &["link", "set", "eth0", "down"]).unwrap();
    m.wait_vrrp_master(1, SETTLE).unwrap();
    let took = t0.elapsed();
    m.kill_lb(0).unwrap();
    println!(
        "figure: VRRP master death -> standby holds the address after {} ms (advert 100 ms)",
        took.as_millis()
    );
    all_intact(&m, transfers, load);
    assert!(
        m.forwarded(1).unwrap() > before,
        "the standby forwarded nothing"
    );
    assert!(
        role(1).starts_with("MASTER"),
        "notify hook: lb2 is {:?}",
        role(1)
    );
}
