//! Routed compilers, end to end through the real voxlb: the daemon in the
//! LB namespace with `forwarding = "ipip"` (IPv4 VIP) and `"gue"` (IPv6
//! VIP), compilers in another subnet behind a router running `voxlb
//! decap`. Real TLS downloads checked byte for byte; a drain, a failover
//! and a `kill -9` + restart of the daemon on that topology; a compiler
//! without a route reported and kept out.
//!
//! Needs root; otherwise each test prints a `SKIP:` line.

use std::{
    net::SocketAddr,
    process::Output,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use voxlb::control::Response;
use voxlb_tests::{
    daemon,
    daemon::Daemon,
    netns,
    routed::{RoutedSpec, RoutedTopology, VIP4, VIP6},
    topology::{IFACE, Node, SERVICE_NAME},
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const GUE_PORT: u16 = 6080;
const V4: &str = "routed4";
const V6: &str = "routed6";

fn topology(compilers: usize) -> RoutedTopology {
    topology_mtu(compilers, None)
}

fn topology_mtu(compilers: usize, return_mtu: Option<u32>) -> RoutedTopology {
    RoutedTopology::build(&RoutedSpec {
        kind: "vxl",
        compilers,
        return_mtu,
        client_vip_mtu: 1400,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })
    .expect("build the routed topology")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `voxlb decap` on a compiler: both VIPs, GUE on.
fn attach_decap(topo: &RoutedTopology, node: &Node) {
    let bin = daemon::voxlb_bin().expect("voxlb binary");
    let out = netns::command_in(&node.ns, bin)
        .args(["decap", "--interface", IFACE, "--vip"])
        .args([VIP4.to_string(), VIP6.to_string()])
        .args(["--gue-port", &GUE_PORT.to_string(), "--pin-dir"])
        .arg(topo.decap_pin_dir(node))
        .output()
        .expect("run voxlb decap");
    ok(&out, "voxlb decap");
}

fn decap_packets(topo: &RoutedTopology, node: &Node, reason: &str) -> u64 {
    let bin = daemon::voxlb_bin().unwrap();
    let out = netns::command_in(&node.ns, bin)
        .args(["--json", "decap", "--stats", "--pin-dir"])
        .arg(topo.decap_pin_dir(node))
        .output()
        .unwrap();
    ok(&out, "voxlb decap --stats");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[reason]["packets"].as_u64().unwrap_or(0)
}

/// The LB's config: the IPv4 VIP over IPIP to the compilers' IPv4
/// addresses, the IPv6 VIP over GUE to their IPv6 addresses, plus
/// `extra_v4` backends (addresses with no route, for the unresolved case).
fn config(topo: &RoutedTopology, extra_v4: &[&str]) -> String {
    let work = &topo.work_dir;
    let health = format!(
        "type = \"https\"\nca_file = \"{}\"\nhost = \"{SERVICE_NAME}\"\ninterval = \"500ms\"\n\
         timeout = \"400ms\"\nrise = 1\nfall = 2\n",
        work.join("pki/ca.pem").display()
    );
    let mut s = format!(
        "interfaces = [\"{IFACE}\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\n\
         control_socket = \"{}\"\nstate_dir = \"{}\"\nflow_capacity = 65536\n",
        topo.pin_dir.join("lb").display(),
        work.join("run/voxlb.sock").display(),
        work.join("state").display(),
    );
    for (name, vip, mode, v6) in [
        (V4, topo.vip(false), "ipip", false),
        (V6, topo.vip(true), "gue", true),
    ] {
        s.push_str(&format!(
            "\n[[compiler_services]]\nname = \"{name}\"\nvip = \"{vip}\"\nforwarding = \"{mode}\"\n\
             table_size = 1009\n{}\n[compiler_services.health_check]\n{health}",
            if mode == "gue" {
                format!("gue_port = {GUE_PORT}\n")
            } else {
                String::new()
            }
        ));
        for c in &topo.compilers {
            let a = if v6 {
                c.ip6.to_string()
            } else {
                c.ip4.to_string()
            };
            s.push_str(&format!(
                "\n[[compiler_services.backends]]\naddress = \"{a}\"\nname = \"{}\"\n",
                c.name
            ));
        }
        if !v6 {
            for a in extra_v4 {
                s.push_str(&format!(
                    "\n[[compiler_services.backends]]\naddress = \"{a}\"\n"
                ));
            }
        }
    }
    s
}

fn start_daemon(topo: &RoutedTopology, extra_v4: &[&str]) -> Daemon {
    let work = &topo.work_dir;
    std::fs::create_dir_all(work.join("run")).unwrap();
    Daemon::start_in(
        &topo.lb.ns,
        work.join("voxlb.toml"),
        &config(topo, extra_v4),
        work.join("run/voxlb.sock"),
        work.join("voxlb.log"),
    )
    .expect("start voxlb")
}

fn status(d: &Daemon) -> voxlb::control::StatusView {
    match d.json(&["status"]).expect("status") {
        Response::Status(s) => s,
        other => panic!("status: {other:?}"),
    }
}

/// Wait (bounded) until `service` has `n` usable backends.
fn wait_active(d: &Daemon, service: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(d);
        let svc = s.services.iter().find(|v| v.name == service).unwrap();
        if svc.active == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: {} active, waiting for {n}: {:?}\n{}",
            svc.active,
            svc.backends,
            d.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS download of `path` through `vip`, checked byte for byte; the
/// serving compiler.
fn download(
    topo: &RoutedTopology,
    vip: SocketAddr,
    path: String,
    bytes: u64,
    limit: Duration,
) -> anyhow::Result<String> {
    topo.download(vip, path, bytes, limit)
}

fn catalog(topo: &RoutedTopology, v6: bool, bytes: u64) -> String {
    download(
        topo,
        topo.vip(v6),
        format!("/catalog?bytes={bytes}"),
        bytes,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("download via the IPv{} VIP: {e:#}", if v6 { 6 } else { 4 }))
}

#[test]
fn tls_downloads_through_voxlb_to_routed_compilers_survive_drain_failover_and_restart() {
    lb_testkit::require_root!("network namespaces and XDP");
    let _s = serial();
    let mut topo = topology(2);
    let (c1, c2) = (topo.compilers[0].clone(), topo.compilers[1].clone());
    attach_decap(&topo, &c1);
    attach_decap(&topo, &c2);
    let mut d = start_daemon(&topo, &[]);
    wait_active(&d, V4, 2);
    wait_active(&d, V6, 2);

    // The status says how each compiler is reached.
    let s = status(&d);
    for svc in &s.services {
        let mode = if svc.name == V4 { "ipip" } else { "gue" };
        assert_eq!(svc.forwarding, mode);
        for b in &svc.backends {
            let route = b.route.as_deref().unwrap_or("");
            assert!(
                route.starts_with(mode) && route.contains(&format!("dev {IFACE}")),
                "{}: route {route:?}",
                b.address
            );
        }
    }

    // Byte-exact downloads over both modes reach both compilers, and each
    // compiler's decapsulator counted the mode's packets.
    let size = 3 * 1024 * 1024 + 17;
    for v6 in [false, true] {
        let mut served = std::collections::BTreeSet::new();
        for _ in 0..10 {
            served.insert(catalog(&topo, v6, 64 * 1024));
        }
        served.insert(catalog(&topo, v6, size));
        assert_eq!(
            served.len(),
            2,
            "IPv{}: served by {served:?}",
            if v6 { 6 } else { 4 }
        );
    }
    for c in [&c1, &c2] {
        assert!(
            decap_packets(&topo, c, "decap_ipip4") > 0,
            "{}: no IPIP",
            c.name
        );
        assert!(
            decap_packets(&topo, c, "decap_gue6") > 0,
            "{}: no GUE",
            c.name
        );
    }

    // Drain c1 of the IPIP service: every new connection goes to c2.
    let out = d
        .cli(&["backend", "drain", V4, &c1.ip4.to_string()])
        .unwrap();
    assert_eq!(out.code(), 0, "{out:?}");
    for _ in 0..8 {
        assert_eq!(
            catalog(&topo, false, 32 * 1024),
            c2.name,
            "drained c1 got a connection"
        );
    }
    let out = d
        .cli(&["backend", "undrain", V4, &c1.ip4.to_string()])
        .unwrap();
    assert_eq!(out.code(), 0, "{out:?}");

    // Failover: c2's server dies; its health check fails and every new
    // GUE connection goes to c1.
    topo.kill_backend(&c2.name);
    wait_active(&d, V6, 1);
    for _ in 0..8 {
        assert_eq!(
            catalog(&topo, true, 32 * 1024),
            c1.name,
            "dead c2 got a connection"
        );
    }
    topo.start_backend(&c2.name).unwrap();
    wait_active(&d, V6, 2);

    // kill -9 and restart the daemon in the middle of long transfers on
    // both modes: every byte arrives (the data plane keeps forwarding, and
    // the restarted daemon resolves the routes before it writes anything).
    let slow = |v6: bool| {
        download(
            &topo,
            topo.vip(v6),
            "/large?bytes=2097152&delay_ms=60&chunk=65536".into(),
            2 * 1024 * 1024,
            Duration::from_secs(60),
        )
    };
    let ids_before: Vec<(String, u32, u32)> = status(&d)
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(|b| (b.address.to_string(), b.id, b.generation))
        })
        .collect();
    std::thread::scope(|s| {
        let t4 = s.spawn(|| slow(false));
        let t6 = s.spawn(|| slow(true));
        std::thread::sleep(Duration::from_millis(600));
        d.kill9();
        d.spawn().expect("restart voxlb");
        t4.join()
            .unwrap()
            .expect("IPIP transfer across a daemon kill -9 and restart");
        t6.join()
            .unwrap()
            .expect("GUE transfer across a daemon kill -9 and restart");
    });
    let ids_after: Vec<(String, u32, u32)> = status(&d)
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(|b| (b.address.to_string(), b.id, b.generation))
        })
        .collect();
    assert_eq!(ids_before, ids_after, "backend ids and generations kept");
    wait_active(&d, V4, 2);
    catalog(&topo, false, size);
    catalog(&topo, true, size);
}

#[test]
fn a_routed_compiler_without_a_route_is_reported_and_kept_out() {
    lb_testkit::require_root!("network namespaces and XDP");
    let _s = serial();
    let topo = topology(1);
    let c1 = topo.compilers[0].clone();
    attach_decap(&topo, &c1);
    // 10.99.0.5: no route in the LB namespace.
    let d = start_daemon(&topo, &["10.99.0.5"]);
    wait_active(&d, V4, 1);
    let s = status(&d);
    assert!(
        s.unresolved.contains(&"10.99.0.5".parse().unwrap()),
        "{:?}",
        s.unresolved
    );
    let b = s
        .services
        .iter()
        .flat_map(|v| v.backends.iter())
        .find(|b| b.address.to_string() == "10.99.0.5")
        .unwrap();
    assert_eq!(b.state, "unresolved");
    assert!(
        b.route.as_deref().unwrap_or("").contains("no route"),
        "{:?}",
        b.route
    );
    let text = d.cli(&["status"]).unwrap().stdout;
    assert!(text.contains("10.99.0.5: no route"), "{text}");
    // Every connection goes to the one routed compiler that resolved.
    for _ in 0..6 {
        assert_eq!(catalog(&topo, false, 16 * 1024), c1.name);
    }
    // A route appears (via the router, which has none onward): resolved,
    // now in the table, without a restart.
    netns::ip(
        &topo.lb.ns,
        &["route", "add", "10.99.0.0/24", "via", "10.78.0.1"],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&d);
        if !s.unresolved.contains(&"10.99.0.5".parse().unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "route change not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A compiler added at run time is resolved like a configured one; a
    // MAC for it is refused, naming the flag.
    let out = d
        .cli(&[
            "backend",
            "add",
            V4,
            "10.99.0.9",
            "--mac",
            "02:00:00:00:00:09",
        ])
        .unwrap();
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("--mac"), "{out:?}");
    let out = d.cli(&["backend", "add", V4, "10.99.0.9"]).unwrap();
    assert_eq!(out.code(), 0, "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&d);
        let b = s
            .services
            .iter()
            .flat_map(|v| v.backends.iter())
            .find(|b| b.address.to_string() == "10.99.0.9")
            .cloned();
        if let Some(b) = &b
            && b.route.as_deref() == Some("ipip via 10.78.0.1 dev eth0")
        {
            assert_eq!(b.source, "cli");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CLI-added compiler not resolved: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The LB's packets-passed count of one reason.
fn reason_packets(d: &Daemon, label: &str) -> u64 {
    match d.json(&["stats"]).expect("stats") {
        Response::Stats(s) => s
            .reasons
            .iter()
            .find(|r| r.reason == label)
            .map_or(0, |r| r.packets),
        other => panic!("stats: {other:?}"),
    }
}

#[test]
fn a_narrow_return_path_stalls_routed_downloads_unless_voxlb_steers_the_routers_icmp() {
    lb_testkit::require_root!("network namespaces and XDP");
    let _s = serial();
    // The router's link toward the clients has MTU 1280: the compiler's
    // 1400-byte segments (the clients' MSS) do not fit, and the router says
    // so to their source, the VIP, which routes to the LB. voxlb must send
    // that error to the compiler of the quoted flow, encapsulated like the
    // flow's packets (IPIP for the IPv4 VIP, GUE for the IPv6 one).
    let topo = topology_mtu(1, Some(1280));
    let c1 = topo.compilers[0].clone();
    attach_decap(&topo, &c1);
    let d = start_daemon(&topo, &[]);
    wait_active(&d, V4, 1);
    wait_active(&d, V6, 1);
    let size = 2 * 1024 * 1024;
    let get = |v6: bool, limit: u64| {
        download(
            &topo,
            topo.vip(v6),
            format!("/catalog?bytes={size}"),
            size,
            Duration::from_secs(limit),
        )
    };
    for v6 in [false, true] {
        let fam = if v6 {
            "IPv6 over GUE"
        } else {
            "IPv4 over IPIP"
        };
        // Steering off: the errors are passed to the LB's own kernel, the
        // compiler never learns, the download stalls (Linux does no
        // blackhole probing by default).
        d.set_icmp_steering(false);
        let passed = reason_packets(&d, "pass_not_l4");
        assert!(
            get(v6, 6).is_err(),
            "{fam}: a download crossed the narrow link with steering off"
        );
        assert!(
            reason_packets(&d, "pass_not_l4") > passed,
            "{fam}: no ICMP error from the router reached voxlb"
        );
        // Steering on: the router's error reaches the compiler through the
        // tunnel, path MTU discovery works, every byte arrives.
        d.set_icmp_steering(true);
        let decap_before = decap_packets(&topo, &c1, if v6 { "decap_gue6" } else { "decap_ipip4" });
        if let Err(e) = get(v6, 30) {
            panic!("{fam}: steered ICMP: {e:#}\n{}", d.log_tail(20));
        }
        assert!(
            decap_packets(&topo, &c1, if v6 { "decap_gue6" } else { "decap_ipip4" }) > decap_before
        );
    }
}
