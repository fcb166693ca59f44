//! Path-MTU discovery through the real voxlb data plane in L2 (DSR) mode.
//!
//! The L2 topology, plus a router on the compilers' return path to the
//! agent: the agent reaches the VIPs through the LB on the segment as
//! usual, but the compilers answer it through router `rt`, whose link to
//! the agent has MTU 1280 while the agent announced an MSS for 1500:
//!
//! ```text
//!  agent (cl) --eth0-- segment -- LB (voxlb) -- compiler c1
//!     |                   |                        |
//!     +--far-- (MTU 1280) rt <------ replies ------+
//! ```
//!
//! The router's *fragmentation needed* / *packet too big* goes to the
//! replies' source, the VIP, which `rt` routes to the LB. voxlb steers it to
//! the compiler of the quoted flow, which lowers its path MTU, and a
//! multi-MiB TLS download completes byte-exact. With `icmp_steering =
//! false` the same error is passed to the LB's kernel, the compiler never
//! learns, and the download stalls (Linux does no blackhole probing by
//! default): shown with a bounded wait.
//!
//! Needs root (namespaces, XDP).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context;
use voxlb::control::Response;
use voxlb_tests::{
    client,
    daemon::{Daemon, HealthTiming, Options},
    netns, pattern,
    topology::{self, Spec, Topology},
};

/// The router on the segment.
const RT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
fn rt6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x254)
}
/// The agent's address behind the narrow link.
const FAR4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
fn far6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 0x100)
}
/// MTU of the router's link toward the agent.
const NARROW_MTU: u32 = 1280;
/// Big enough that the download needs many full-size segments.
const BYTES: u64 = 4 * 1024 * 1024;

/// The L2 topology with one compiler and the router `rt` on the agent's
/// return path (see the module docs).
fn topology_with_narrow_return_path() -> anyhow::Result<Topology> {
    let mut topo = Topology::build(&Spec {
        kind: "vxp",
        compilers: 1,
        client_addrs: 1,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })?;
    let rt = topo.add_node("rt", RT4, rt6())?;
    let cl = topo.client.ns.clone();
    // The narrow link: `nar` in rt (MTU 1280), `far` in the agent's
    // namespace (MTU 1500, so the agent's MSS is 1460).
    netns::ip(
        &rt.ns,
        &[
            "link", "add", "nar", "type", "veth", "peer", "name", "far", "netns", &cl,
        ],
    )?;
    netns::ip(
        &rt.ns,
        &["link", "set", "nar", "mtu", &NARROW_MTU.to_string()],
    )?;
    for (ns, dev, a4, a6) in [
        (&rt.ns, "nar", "10.78.0.1/24", "fd78::1/64"),
        (&cl, "far", "10.78.0.100/24", "fd78::100/64"),
    ] {
        topology::offloads_off(ns, dev)?;
        netns::ip(ns, &["addr", "add", a4, "dev", dev])?;
        netns::ip(ns, &["-6", "addr", "add", a6, "dev", dev, "nodad"])?;
        netns::ip(ns, &["link", "set", dev, "up"])?;
    }
    // rt forwards, routes the VIPs to the LB (where its ICMP errors go),
    // and sends no redirects (it forwards back out of the segment).
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
    ] {
        netns::exec(&rt.ns, "sysctl", &["-qw", &format!("{k}={v}")])?;
    }
    let lb = topo.lb.clone();
    topology::route_vips_via_lb(&rt.ns, &lb)?;
    // The agent sends to the VIPs through the LB (eth0) and receives the
    // replies on `far`: no reverse-path filter.
    for dev in ["all", "default", "eth0", "far"] {
        netns::exec(
            &cl,
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{dev}.rp_filter=0")],
        )?;
    }
    // The compilers answer the agent's far addresses through rt.
    for c in &topo.compilers {
        netns::ip(
            &c.ns,
            &["route", "add", "10.78.0.0/24", "via", &RT4.to_string()],
        )?;
        netns::ip(
            &c.ns,
            &["-6", "route", "add", "fd78::/64", "via", &rt6().to_string()],
        )?;
    }
    Ok(topo)
}

/// A TLS download of `BYTES` from the VIP, from the agent's far address,
/// within `limit`; checks every byte.
fn download(topo: &Topology, v6: bool, limit: Duration) -> anyhow::Result<()> {
    let vip = topo.compiler_vip(v6);
    let source: IpAddr = if v6 { far6().into() } else { FAR4.into() };
    let tls = topo.tls.clone();
    topo.rt.run(async move {
        tokio::time::timeout(limit, async move {
            let stream = client::connect_from(source, vip).await?;
            let mut c = client::tls_over(stream, &vip.ip().to_string(), tls).await?;
            let r = c.get(&format!("/catalog?bytes={BYTES}")).await?;
            anyhow::ensure!(r.status() == 200, "status {}", r.status());
            anyhow::ensure!(
                r.body.len() as u64 == BYTES,
                "{} of {BYTES} bytes",
                r.body.len()
            );
            if let Some(at) = pattern::first_mismatch(0, &r.body) {
                anyhow::bail!("body differs at byte {at}");
            }
            Ok(())
        })
        .await
        .context("timed out")?
    })?
}

/// A small request: proves the path works apart from the MTU (the answer
/// fits in 1280 bytes).
fn small_request(topo: &Topology, v6: bool) -> anyhow::Result<()> {
    let vip: SocketAddr = topo.compiler_vip(v6);
    let source: IpAddr = if v6 { far6().into() } else { FAR4.into() };
    let tls = topo.tls.clone();
    topo.rt.run(async move {
        tokio::time::timeout(Duration::from_secs(5), async move {
            let stream = client::connect_from(source, vip).await?;
            let mut c = client::tls_over(stream, &vip.ip().to_string(), tls).await?;
            let r = c.get("/catalog?bytes=100").await?;
            anyhow::ensure!(r.status() == 200, "status {}", r.status());
            Ok(())
        })
        .await
        .context("timed out")?
    })?
}

/// The daemon's reason counter `label` (packets), from `voxlb stats`.
fn reason_count(d: &Daemon, label: &str) -> u64 {
    match d.json(&["stats"]).expect("voxlb stats") {
        Response::Stats(s) => s
            .reasons
            .iter()
            .find(|r| r.reason == label)
            .map(|r| r.packets)
            .unwrap_or_else(|| panic!("no reason {label} in voxlb stats")),
        other => panic!("voxlb stats: {other:?}"),
    }
}

/// The "too big" errors the router has sent so far (its kernel's SNMP
/// counters: ICMP destination unreachable for IPv4, packet too big for IPv6).
fn router_errors(topo: &Topology, v6: bool) -> u64 {
    let ns = format!("{}-rt", topo.prefix);
    if v6 {
        let t = netns::exec(&ns, "cat", &["/proc/net/snmp6"]).expect("snmp6");
        t.lines()
            .find_map(|l| l.strip_prefix("Icmp6OutPktTooBigs"))
            .and_then(|n| n.trim().parse().ok())
            .expect("Icmp6OutPktTooBigs")
    } else {
        let t = netns::exec(&ns, "cat", &["/proc/net/snmp"]).expect("snmp");
        let rows: Vec<Vec<&str>> = t
            .lines()
            .filter(|l| l.starts_with("Icmp:"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let at = rows[0]
            .iter()
            .position(|h| *h == "OutDestUnreachs")
            .expect("OutDestUnreachs");
        rows[1][at].parse().expect("a count")
    }
}

#[test]
fn l2_a_narrow_return_path_stalls_downloads_unless_voxlb_steers_the_routers_icmp() {
    lb_testkit::require_root!("network namespaces and XDP");
    let topo = topology_with_narrow_return_path().expect("build the topology");
    let d = Daemon::start(
        &topo,
        &Options {
            compilers_in_config: 1,
            health: HealthTiming::default(),
        },
    )
    .expect("start voxlb run");
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        // The compiler's health check passes, then small answers go through.
        netns::wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            small_request(&topo, v6).ok()
        })
        .unwrap_or_else(|| panic!("{fam}: no small answer through the LB and rt"));
        // Steering off: the router's error reaches the LB and is passed to
        // its kernel; the compiler keeps sending 1500-byte segments.
        d.set_icmp_steering(false);
        let (passed, sent) = (reason_count(&d, "pass_not_l4"), router_errors(&topo, v6));
        let r = download(&topo, v6, Duration::from_secs(6));
        assert!(
            r.is_err(),
            "{fam}: the download crossed the narrow link without steering"
        );
        assert!(
            router_errors(&topo, v6) > sent,
            "{fam}: the router sent no too-big error"
        );
        assert!(
            reason_count(&d, "pass_not_l4") > passed,
            "{fam}: no ICMP error from the router reached the LB"
        );
        // Steering on: the error goes to the compiler of the quoted flow.
        d.set_icmp_steering(true);
        let sent = router_errors(&topo, v6);
        if let Err(e) = download(&topo, v6, Duration::from_secs(30)) {
            panic!(
                "{fam}: with ICMP steering: {e:#}; daemon log:\n{}",
                d.log_tail(30)
            );
        }
        assert!(
            router_errors(&topo, v6) > sent,
            "{fam}: the download needed no path-MTU discovery"
        );
    }
}
