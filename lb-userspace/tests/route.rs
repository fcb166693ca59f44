//! Next-hop resolution against a real kernel: a load-balancer namespace
//! with two routers in front of it, compilers' subnets routed through them.
//! The resolver must return the gateway's MAC and the egress interface,
//! tell why an address is unresolved, and see route and neighbour changes
//! through its netlink subscription. Needs root (namespaces, links).

use std::{
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use voxlb::route::{NextHop, NextHops, RouteWatcher, Unresolved};

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ipn(ns: &str, rest: &str) -> String {
    let mut a = vec!["ip", "-n", ns];
    a.extend(rest.split_whitespace());
    run(&a)
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = ipn(ns, &format!("-br link show {dev}"));
    let m = out.split_whitespace().nth(2).expect("mac column");
    let mut mac = [0u8; 6];
    for (i, p) in m.split(':').enumerate() {
        mac[i] = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Deletes the namespaces on drop (pass or fail).
struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Refresh until `done` holds, at most 50 rounds of 100 ms.
fn refresh_until(
    hops: &mut NextHops,
    what: &str,
    mut done: impl FnMut(&NextHops) -> bool,
) -> Vec<IpAddr> {
    let mut changed = Vec::new();
    let start = Instant::now();
    for _ in 0..50 {
        changed.extend(hops.refresh().expect("refresh"));
        if done(hops) {
            return changed;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what}: not reached after {:?}: {:?}",
        start.elapsed(),
        hops.iter().collect::<Vec<_>>()
    );
}

fn hop(hops: &NextHops, a: &str) -> Option<NextHop> {
    hops.get(&addr(a)).and_then(|r| r.as_ref().ok().cloned())
}

#[test]
fn resolves_through_routers_and_follows_route_and_neighbour_changes() {
    lb_testkit::require_root!("network namespaces");
    let p = format!("vxr{}", std::process::id());
    let (lb, r1, r2) = (format!("{p}-lb"), format!("{p}-r1"), format!("{p}-r2"));
    let _guard = Namespaces(vec![lb.clone(), r1.clone(), r2.clone()]);
    for n in [&lb, &r1, &r2] {
        run(&["ip", "netns", "add", n]);
        ipn(n, "link set lo up");
    }
    ipn(
        &lb,
        &format!("link add up0 type veth peer name down0 netns {r1}"),
    );
    ipn(
        &lb,
        &format!("link add up1 type veth peer name down0 netns {r2}"),
    );
    for (ns, dev, a4, a6) in [
        (&lb, "up0", "10.81.0.2/24", "fd81::2/64"),
        (&r1, "down0", "10.81.0.1/24", "fd81::1/64"),
        (&lb, "up1", "10.83.0.2/24", "fd83::2/64"),
        (&r2, "down0", "10.83.0.1/24", "fd83::1/64"),
    ] {
        ipn(ns, &format!("addr add {a4} dev {dev}"));
        ipn(ns, &format!("-6 addr add {a6} dev {dev} nodad"));
        ipn(ns, &format!("link set {dev} up"));
    }
    ipn(&lb, "route add 10.82.0.0/24 via 10.81.0.1");
    ipn(&lb, "-6 route add fd82::/64 via fd81::1");
    ipn(&lb, "route add blackhole 10.84.0.0/24");
    ipn(&lb, "route add 10.85.0.0/24 via 10.81.0.99");
    let r1_mac = mac_of(&r1, "down0");
    let r2_mac = mac_of(&r2, "down0");

    let ns_file = std::fs::File::open(format!("/run/netns/{lb}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a valid namespace fd; setns moves only this thread.
            assert_eq!(
                unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut watcher = RouteWatcher::new().expect("subscribe");
            let mut hops = NextHops::new(
                [
                    "10.82.0.11",
                    "fd82::11",
                    "10.81.0.1",
                    "10.99.0.1",
                    "10.84.0.5",
                    "10.81.0.2",
                    "10.85.0.5",
                ]
                .map(addr),
            );
            refresh_until(&mut hops, "compilers behind r1", |h| {
                hop(h, "10.82.0.11").is_some()
                    && hop(h, "fd82::11").is_some()
                    && hop(h, "10.81.0.1").is_some()
            });
            let c4 = hop(&hops, "10.82.0.11").unwrap();
            assert_eq!(c4.gateway, Some(addr("10.81.0.1")));
            assert_eq!(c4.mac, r1_mac, "the gateway's MAC, not the compiler's");
            assert_eq!(c4.ifname, "up0");
            assert_eq!(c4.src, Some(addr("10.81.0.2")));
            let c6 = hop(&hops, "fd82::11").unwrap();
            assert_eq!(c6.gateway, Some(addr("fd81::1")));
            assert_eq!(c6.mac, r1_mac);
            assert_eq!(c6.src, Some(addr("fd81::2")));
            // On the connected subnet: no gateway, the host's own MAC.
            let direct = hop(&hops, "10.81.0.1").unwrap();
            assert_eq!(direct.gateway, None);
            assert_eq!(direct.mac, r1_mac);
            // Unresolved, each with its reason.
            let why = |a: &str| hops.get(&addr(a)).unwrap().clone().unwrap_err();
            assert!(
                matches!(why("10.99.0.1"), Unresolved::NoRoute { .. }),
                "{:?}",
                why("10.99.0.1")
            );
            // A blackhole route: the kernel answers the query with an
            // error (EINVAL) or a non-unicast route, depending on version.
            assert!(
                matches!(
                    why("10.84.0.5"),
                    Unresolved::NotUnicast { .. } | Unresolved::NoRoute { .. }
                ),
                "{:?}",
                why("10.84.0.5")
            );
            assert!(matches!(why("10.81.0.2"), Unresolved::Local { .. }));
            match why("10.85.0.5") {
                Unresolved::NoNeighbour {
                    next_hop, ifname, ..
                } => {
                    assert_eq!(next_hop, addr("10.81.0.99"));
                    assert_eq!(ifname, "up0");
                }
                other => panic!("10.85.0.5: {other:?}"),
            }

            // A route change: the compilers' subnet moves behind r2.
            while watcher.wait(Duration::from_millis(50)).unwrap() {}
            ipn(&lb, "route replace 10.82.0.0/24 via 10.83.0.1");
            assert!(
                watcher.wait(Duration::from_secs(5)).unwrap(),
                "no notification of the route change"
            );
            let changed = refresh_until(&mut hops, "route change", |h| {
                hop(h, "10.82.0.11").is_some_and(|n| n.ifname == "up1")
            });
            assert!(changed.contains(&addr("10.82.0.11")));
            let moved = hop(&hops, "10.82.0.11").unwrap();
            assert_eq!(moved.gateway, Some(addr("10.83.0.1")));
            assert_eq!(moved.mac, r2_mac);
            assert_eq!(moved.src, Some(addr("10.83.0.2")));
            // The v6 compiler did not move.
            assert_eq!(hop(&hops, "fd82::11").unwrap().mac, r1_mac);

            // A neighbour change: r2's MAC as the LB knows it changes.
            while watcher.wait(Duration::from_millis(50)).unwrap() {}
            ipn(
                &lb,
                "neigh replace 10.83.0.1 lladdr 02:00:00:00:83:77 dev up1 nud permanent",
            );
            assert!(
                watcher.wait(Duration::from_secs(5)).unwrap(),
                "no notification of the neighbour change"
            );
            let changed = refresh_until(&mut hops, "neighbour change", |h| {
                hop(h, "10.82.0.11").is_some_and(|n| n.mac == [2, 0, 0, 0, 0x83, 0x77])
            });
            assert_eq!(changed, vec![addr("10.82.0.11")]);

            // Route removed: unresolved again, with the reason.
            ipn(&lb, "route del 10.82.0.0/24");
            refresh_until(&mut hops, "route removed", |h| {
                matches!(
                    h.get(&addr("10.82.0.11")),
                    Some(Err(Unresolved::NoRoute { .. }))
                )
            });
            // Nothing changes: a quiet watcher times out.
            while watcher.wait(Duration::from_millis(50)).unwrap() {}
            assert!(!watcher.wait(Duration::from_millis(200)).unwrap());
        })
        .join()
        .unwrap();
    });
}
