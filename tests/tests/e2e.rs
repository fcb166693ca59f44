//! End to end: real TCP/TLS traffic through the XDP data plane in network
//! namespaces (see `voxlb_tests::topology` for the layout and
//! `docs/e2e.md` for what each test proves).
//!
//! `lib_*` tests program the data plane directly through the library (the
//! `DataPlane` trait), the way the daemon does, to prove DSR forwarding on
//! its own. Each test builds its own topology; a static mutex keeps two
//! topologies from being built at once when the harness runs tests in
//! parallel.
//!
//! Needs root; prints "skipped: needs root" otherwise.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use lb_common::{
    BACKEND_ACTIVE, BackendInfo, KIND_CA, KIND_COMPILER, PROTO_TCP, Reason, VipInfo, VipKey,
    addr_bytes,
    maglev::{self, Entry},
    maps::DEFAULT_TABLE_SIZE,
};
use voxlb::{
    dataplane::DataPlane,
    xdp::{LoadOptions, XdpDataPlane, XdpMode},
};
use voxlb_tests::{
    backend, netns,
    topology::{self, Node, Spec, Topology},
};

static SERIAL: Mutex<()> = Mutex::new(());

/// One topology at a time; a failed test must not block the others.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

macro_rules! need_root {
    () => {
        if !netns::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn topology(compilers: usize) -> Topology {
    Topology::build(&Spec {
        kind: "vxe",
        compilers,
        client_addrs: 8,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })
    .expect("build the topology")
}

// ---------------------------------------------------------------------------
// The data plane programmed through the library.

const S_COMPILERS4: u32 = 0;
const S_COMPILERS6: u32 = 1;
const S_CA4: u32 = 2;
const S_CA6: u32 = 3;
/// Backend ids: compiler i (from 0) is `i` over IPv4 and `10 + i` over
/// IPv6; the CAs are 30/31 (IPv4 primary/standby) and 32/33 (IPv6).
const CA4_PRIMARY: u32 = 30;
const CA4_STANDBY: u32 = 31;
const CA6_PRIMARY: u32 = 32;
const CA6_STANDBY: u32 = 33;

fn backend_info(node: &Node, service_id: u32, v6: bool) -> BackendInfo {
    let addr: IpAddr = if v6 { node.ip6.into() } else { node.ip4.into() };
    let (addr, family) = addr_bytes(addr);
    BackendInfo {
        mac: node.mac,
        state: BACKEND_ACTIVE,
        generation: 1,
        service_id,
        addr,
        family,
        ..Default::default()
    }
}

/// Loads and attaches the data plane on the LB's `eth0` (native XDP, pins
/// under the topology's pin dir), and programs both compiler services and
/// both CA services, CA traffic steered to the primary.
fn lib_lb(topo: &Topology) -> XdpDataPlane {
    let opts = LoadOptions {
        interfaces: vec![topology::IFACE.to_owned()],
        mode: XdpMode::Native,
        pin_dir: topo.lb_pin_dir(),
        flow_capacity: 65536,
        replace: false,
    };
    let mut dp = netns::run_in(&topo.lb.ns, || XdpDataPlane::load(&opts))
        .unwrap()
        .expect("load and attach the data plane in the LB namespace");
    let vip = |addr: IpAddr| VipKey::new(addr, topology::PORT, PROTO_TCP);
    for (addr, service_id, kind) in [
        (topology::COMPILER_VIP4.into(), S_COMPILERS4, KIND_COMPILER),
        (topology::COMPILER_VIP6.into(), S_COMPILERS6, KIND_COMPILER),
        (topology::CA_VIP4.into(), S_CA4, KIND_CA),
        (topology::CA_VIP6.into(), S_CA6, KIND_CA),
    ] {
        dp.upsert_vip(vip(addr), VipInfo { service_id, kind })
            .unwrap();
    }
    for (service_id, v6, base) in [(S_COMPILERS4, false, 0), (S_COMPILERS6, true, 10)] {
        let mut entries = Vec::new();
        for (i, node) in topo.compilers.iter().enumerate() {
            let id = base + i as u32;
            dp.set_backend(id, backend_info(node, service_id, v6))
                .unwrap();
            let addr = if v6 { node.ip6.into() } else { node.ip4.into() };
            entries.push(Entry::from_addr(addr, 1, id));
        }
        let table = maglev::build(&entries, DEFAULT_TABLE_SIZE).unwrap();
        dp.install_table(service_id, &table).unwrap();
    }
    for (id, node, service_id, v6) in [
        (CA4_PRIMARY, &topo.ca, S_CA4, false),
        (CA4_STANDBY, &topo.ca_standby, S_CA4, false),
        (CA6_PRIMARY, &topo.ca, S_CA6, true),
        (CA6_STANDBY, &topo.ca_standby, S_CA6, true),
    ] {
        dp.set_backend(id, backend_info(node, service_id, v6))
            .unwrap();
    }
    dp.set_ca_target(S_CA4, CA4_PRIMARY).unwrap();
    dp.set_ca_target(S_CA6, CA6_PRIMARY).unwrap();
    dp
}

fn reason(dp: &XdpDataPlane, r: Reason) -> u64 {
    dp.reason_stats()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map(|(_, c)| c.packets)
        .unwrap_or(0)
}

/// Every compiler got its share of `total` connections within ±`tolerance`
/// (a fraction) of the even share, and nothing else answered.
///
/// Why ±25% is safe and still meaningful: with equal weights Maglev gives
/// each of N backends ⌊M/N⌋ or ⌈M/N⌉ of the M = 65537 slots, so each
/// connection (a fresh source port, hashed) lands on a given compiler with
/// p = 1/N. The count is Binomial(total, 1/N): for 2000 connections over 3
/// compilers the mean is 667 and the standard deviation √(2000·⅓·⅔) ≈ 21,
/// so ±25% (±167) is ~8 σ — a false failure has odds below 1e-14 — while a
/// broken spread (a compiler at 0, or one getting everything) fails by far.
fn assert_even(counts: &BTreeMap<String, usize>, compilers: &[Node], total: usize, tolerance: f64) {
    let expected = total as f64 / compilers.len() as f64;
    let served: usize = counts.values().sum();
    assert_eq!(served, total, "every connection answered: {counts:?}");
    for (name, n) in counts {
        assert!(
            compilers.iter().any(|c| &c.name == name),
            "{name} answered a compiler VIP connection: {counts:?}"
        );
        let dev = (*n as f64 - expected).abs() / expected;
        assert!(
            dev <= tolerance,
            "{name} got {n} of {total} (expected {expected:.0} ±{:.0}%): {counts:?}",
            tolerance * 100.0
        );
    }
    assert_eq!(
        counts.len(),
        compilers.len(),
        "every compiler served: {counts:?}"
    );
}

/// No connection reached the CAs (their only visitors would be us).
fn assert_cas_untouched(topo: &Topology) {
    for ca in [&topo.ca, &topo.ca_standby] {
        let s = topo.backend_stats(ca).unwrap();
        // The stats call itself is one connection on the control port.
        assert!(
            s.connections <= 1,
            "{} saw {} connections",
            ca.name,
            s.connections
        );
    }
}

#[test]
fn lib_distribution_v4() {
    need_root!();
    let _s = serial();
    let topo = topology(3);
    let dp = lib_lb(&topo);
    let total = 2000;
    let counts = topo
        .whoami_spread(topo.compiler_vip(false), total, 32)
        .unwrap();
    eprintln!(
        "IPv4 spread over {} compilers: {counts:?}",
        topo.compilers.len()
    );
    assert_even(&counts, &topo.compilers, total, 0.25);
    assert_cas_untouched(&topo);
    // The program forwarded them (not some other path).
    assert!(reason(&dp, Reason::TxCompiler) >= total as u64 * 3);
    assert_eq!(reason(&dp, Reason::TxCa), 0);
}

#[test]
fn lib_distribution_v6() {
    need_root!();
    let _s = serial();
    let topo = topology(3);
    let dp = lib_lb(&topo);
    // 1200 over 3: mean 400, σ ≈ 16; ±25% is ~6 σ.
    let total = 1200;
    let counts = topo
        .whoami_spread(topo.compiler_vip(true), total, 32)
        .unwrap();
    eprintln!("IPv6 spread: {counts:?}");
    assert_even(&counts, &topo.compilers, total, 0.25);
    assert_cas_untouched(&topo);
    assert!(reason(&dp, Reason::TxCompiler) >= total as u64 * 3);
}

#[test]
fn lib_ca_steering() {
    need_root!();
    let _s = serial();
    let topo = topology(3);
    let mut dp = lib_lb(&topo);
    for v6 in [false, true] {
        let vip = topo.ca_vip(v6);
        let counts = topo.whoami_spread(vip, 60, 8).unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([("ca1".to_owned(), 60)]),
            "all CA traffic to the primary ({vip})"
        );
    }
    // Fail over: new connections go to the standby.
    dp.set_ca_target(S_CA4, CA4_STANDBY).unwrap();
    dp.set_ca_target(S_CA6, CA6_STANDBY).unwrap();
    for v6 in [false, true] {
        let vip = topo.ca_vip(v6);
        let counts = topo.whoami_spread(vip, 60, 8).unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([("ca2".to_owned(), 60)]),
            "all CA traffic to the standby after the switch ({vip})"
        );
    }
    // No compiler saw CA traffic.
    for c in &topo.compilers {
        assert!(topo.backend_stats(c).unwrap().connections <= 1);
    }
    assert_eq!(reason(&dp, Reason::TxCompiler), 0);
}

#[test]
fn lib_non_vip_traffic_untouched() {
    need_root!();
    let _s = serial();
    let topo = topology(3);
    let dp = lib_lb(&topo);
    // A plain HTTP server of the LB host itself, on the VIP port.
    let lb_rt = netns::NsRuntime::new(&topo.lb.ns, 1).unwrap();
    let listen = vec![
        SocketAddr::new(topo.lb.ip4.into(), topology::PORT),
        SocketAddr::new(topo.lb.ip6.into(), topology::PORT),
    ];
    let local = lb_rt
        .run(backend::spawn(backend::Config {
            name: "lb-local".into(),
            listen,
            tls: None,
            control: None,
        }))
        .unwrap()
        .unwrap();

    let tx_before = reason(&dp, Reason::TxCompiler) + reason(&dp, Reason::TxCa);
    let not_vip_before = reason(&dp, Reason::PassNotVip);
    let not_l4_before = reason(&dp, Reason::PassNotL4);

    // TCP to the LB's own addresses reaches the LB's own listener.
    for (src, dst) in [
        (IpAddr::from(topo.client.ip4), IpAddr::from(topo.lb.ip4)),
        (topo.client.ip6.into(), topo.lb.ip6.into()),
    ] {
        for _ in 0..5 {
            let name = topo
                .rt
                .run(async move {
                    let s = voxlb_tests::client::connect_from(
                        src,
                        SocketAddr::new(dst, topology::PORT),
                    )
                    .await?;
                    let mut c = voxlb_tests::client::plain_over(s)?;
                    anyhow::Ok(c.get("/whoami").await?.text())
                })
                .unwrap()
                .unwrap();
            assert_eq!(name, "lb-local", "TCP to {dst} answered by the LB itself");
        }
    }
    // ICMP echo to the LB, both families.
    for dst in [IpAddr::from(topo.lb.ip4), topo.lb.ip6.into()] {
        let answered = netns::ping(&topo.client.ns, dst, 3).unwrap();
        assert_eq!(answered, 3, "ping {dst} from the client");
    }
    // The VIP on a port that is not a VIP port is not forwarded either: the
    // LB passes it to its own stack, which does not route it.
    let refused = topo.rt.run(async {
        let vip = SocketAddr::new(topology::COMPILER_VIP4.into(), 22);
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(vip)).await
    });
    assert!(
        !matches!(refused, Ok(Ok(Ok(_)))),
        "nothing answers VIP:22 through the LB"
    );

    assert_eq!(local.stats().connections, 10);
    let tx_after = reason(&dp, Reason::TxCompiler) + reason(&dp, Reason::TxCa);
    assert_eq!(tx_after, tx_before, "no non-VIP packet was forwarded");
    assert!(reason(&dp, Reason::PassNotVip) >= not_vip_before + 10 * 3);
    assert!(reason(&dp, Reason::PassNotL4) >= not_l4_before + 6);
    for c in topo.backends() {
        assert!(
            topo.backend_stats(c).unwrap().connections <= 1,
            "{} got non-VIP traffic",
            c.name
        );
    }
    drop(local);
}
