//! Routed compilers, compiler side: `voxlb decap` on a compiler in another
//! subnet behind a router (`voxlb_tests::routed`), fed IPIP/GUE traffic by
//! a test-only encapsulating hop in the LB namespace
//! (`voxlb_tests::encap_hop`), so that every family pair of the compiler
//! side is proven with real TCP independently of the LB (the real data
//! plane on this topology: `routed_lb.rs`). Real TLS downloads, checked
//! byte for byte; the compilers answer
//! the clients directly through the router (DSR), so a completed TLS
//! handshake also proves the replies leave with the VIP as source.
//!
//! Needs root; otherwise each test prints a `SKIP:` line.

use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use voxlb_tests::{
    daemon,
    encap_hop::{Encap, EncapHop, HopSpec},
    netns,
    routed::{RoutedSpec, RoutedTopology, VIP4, VIP6},
    topology::{IFACE, Node},
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const GUE_PORT: u16 = 6080;

fn topology(compilers: usize) -> RoutedTopology {
    RoutedTopology::build(&RoutedSpec {
        kind: "vxr",
        compilers,
        return_mtu: None,
        client_vip_mtu: 1400,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })
    .expect("build the routed topology")
}

/// `voxlb decap ARGS... --pin-dir <the compiler's>` inside `node`.
fn decap(topo: &RoutedTopology, node: &Node, args: &[&str]) -> Output {
    let bin = daemon::voxlb_bin().expect("voxlb binary");
    netns::command_in(&node.ns, bin)
        .arg("decap")
        .args(args)
        .arg("--pin-dir")
        .arg(topo.decap_pin_dir(node))
        .output()
        .expect("run voxlb decap")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn attach(topo: &RoutedTopology, node: &Node) {
    let out = decap(
        topo,
        node,
        &[
            "--interface",
            IFACE,
            "--vip",
            &VIP4.to_string(),
            &VIP6.to_string(),
            "--gue-port",
            &GUE_PORT.to_string(),
        ],
    );
    ok(&out, "voxlb decap (attach)");
}

/// The decapsulator's packet counters by reason label.
fn stats(topo: &RoutedTopology, node: &Node) -> serde_json::Value {
    let bin = daemon::voxlb_bin().unwrap();
    let out = netns::command_in(&node.ns, bin)
        .args(["--json", "decap", "--stats", "--pin-dir"])
        .arg(topo.decap_pin_dir(node))
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out, "voxlb decap --stats")).expect("stats JSON")
}

fn packets(stats: &serde_json::Value, reason: &str) -> u64 {
    stats[reason]["packets"].as_u64().unwrap_or(0)
}

/// A TLS GET /catalog of `bytes` through the VIP, checked byte for byte.
/// Returns the serving backend.
fn download(
    topo: &RoutedTopology,
    vip: SocketAddr,
    bytes: u64,
    limit: Duration,
) -> anyhow::Result<String> {
    topo.download(vip, format!("/catalog?bytes={bytes}"), bytes, limit)
}

fn hop(topo: &RoutedTopology, vip: IpAddr, outer_v6: bool, encap: Encap) -> EncapHop {
    let c = &topo.compilers[0];
    EncapHop::start(&HopSpec {
        ns: topo.lb.ns.clone(),
        vips: vec![vip],
        src4: topo.lb.ip4.into(),
        src6: topo.lb.ip6.into(),
        compilers: vec![if outer_v6 { c.ip6.into() } else { c.ip4.into() }],
        encap,
        // Path MTU through the real data plane: `routed_lb.rs`.
        steer_icmp: false,
    })
    .expect("start the encapsulating hop")
}

#[test]
fn tls_downloads_reach_a_routed_compiler_over_ipip_and_gue_in_every_family() {
    lb_testkit::require_root!("network namespaces and XDP");
    let _s = serial();
    let topo = topology(1);
    let c1 = topo.compilers[0].clone();

    // Without the decapsulator the compiler's kernel (no ipip/fou here)
    // cannot unwrap: nothing gets through.
    {
        let _hop = hop(&topo, VIP4.into(), false, Encap::Ipip);
        let r = download(&topo, topo.vip(false), 1024, Duration::from_secs(3));
        assert!(r.is_err(), "a download got through without voxlb decap");
    }

    attach(&topo, &c1);
    // The fixture prepared the compiler as the README says: --check agrees.
    let check = decap(&topo, &c1, &["--check", "--interface", IFACE]);
    ok(&check, "voxlb decap --check");

    let size = 3 * 1024 * 1024 + 17;
    for (encap, outer_v6, vip_v6, reason) in [
        (Encap::Ipip, false, false, "decap_ipip4"),
        (Encap::Gue(GUE_PORT), false, false, "decap_gue4"),
        (Encap::Ipip, true, true, "decap_ipip6"),
        (Encap::Gue(GUE_PORT), true, true, "decap_gue6"),
        (Encap::Ipip, true, false, "decap_ipip6"),
        (Encap::Gue(GUE_PORT), false, true, "decap_gue4"),
    ] {
        let what = format!(
            "{encap:?}, IPv{} VIP in IPv{} outer",
            if vip_v6 { 6 } else { 4 },
            if outer_v6 { 6 } else { 4 }
        );
        let vip: IpAddr = if vip_v6 { VIP6.into() } else { VIP4.into() };
        let before = packets(&stats(&topo, &c1), reason);
        let h = hop(&topo, vip, outer_v6, encap);
        let backend = download(&topo, topo.vip(vip_v6), size, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(backend, c1.name, "{what}");
        let after = packets(&stats(&topo, &c1), reason);
        let sent = h.sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent > 0, "{what}: the hop sent nothing");
        assert!(
            after - before >= sent.min(3),
            "{what}: {reason} moved by {} for {sent} packets sent",
            after - before
        );
        drop(h);
    }
    let s = stats(&topo, &c1);
    assert_eq!(packets(&s, "pass_adjust_failed"), 0);

    // Re-running the attach (a restart of the tool, an upgrade) keeps the
    // counters and the forwarding.
    let total_before: u64 = ["decap_ipip4", "decap_gue4", "decap_ipip6", "decap_gue6"]
        .iter()
        .map(|r| packets(&s, r))
        .sum();
    attach(&topo, &c1);
    let s2 = stats(&topo, &c1);
    let total_after: u64 = ["decap_ipip4", "decap_gue4", "decap_ipip6", "decap_gue6"]
        .iter()
        .map(|r| packets(&s2, r))
        .sum();
    assert!(total_after >= total_before, "counters were reset");
    {
        let _h = hop(&topo, VIP4.into(), false, Encap::Gue(GUE_PORT));
        download(&topo, topo.vip(false), size, Duration::from_secs(30)).expect("after re-attach");
    }

    // Detached: nothing gets through any more, and no pin is left.
    ok(&decap(&topo, &c1, &["--detach"]), "voxlb decap --detach");
    assert!(!topo.decap_pin_dir(&c1).exists());
    let _h = hop(&topo, VIP4.into(), false, Encap::Ipip);
    assert!(download(&topo, topo.vip(false), 1024, Duration::from_secs(3)).is_err());
}

#[test]
fn decap_check_names_what_a_compiler_lacks() {
    lb_testkit::require_root!("network namespaces and XDP");
    let _s = serial();
    let topo = topology(1);
    let c1 = topo.compilers[0].clone();
    // Undo the fixture's preparation: VIP not on lo, ARP sysctls off,
    // strict rp_filter, a tiny MTU; nothing attached.
    netns::ip(&c1.ns, &["addr", "del", &format!("{VIP4}/32"), "dev", "lo"]).unwrap();
    for k in [
        "net.ipv4.conf.all.arp_ignore=0",
        "net.ipv4.conf.all.arp_announce=0",
        "net.ipv4.conf.all.rp_filter=1",
    ] {
        netns::exec(&c1.ns, "sysctl", &["-qw", k]).unwrap();
    }
    netns::ip(&c1.ns, &["link", "set", IFACE, "mtu", "1300"]).unwrap();
    let out = decap(
        &topo,
        &c1,
        &["--check", "--interface", IFACE, "--vip", &VIP4.to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "unfit host must exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    for check in [
        "attached",
        "vip_on_lo",
        "arp_ignore",
        "arp_announce",
        "rp_filter",
        "mtu",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("FAIL") && l.contains(check)),
            "{check} not reported as failing:\n{text}"
        );
    }
    // Usage errors name the flag.
    let bad = decap(&topo, &c1, &["--interface", IFACE, "--vip", "10.0.0.300"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--vip"));
    let bad = decap(&topo, &c1, &["--interface", "nosuch0", "--vip", "10.0.0.1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--interface"));
    let bad = decap(&topo, &c1, &["--stats"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--pin-dir"));
}
