//! Several LB hosts: the `[bgp]` config, the announcement rule, the BIRD
//! config voxlb generates (checked by the real `bird -p` when BIRD is
//! installed), session parsing, table fingerprints across hosts, and the
//! fitness verdict of `voxlb check --fit`.

use std::net::IpAddr;

use voxlb::{
    announce::{self, BgpMode, HostState, bird},
    config::Config,
    control::ServiceView,
    control::StatusView,
    fitness,
    reconcile::{HealthMap, MacMap, plan},
    state::State,
};

const SERVICES: &str = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
mac = "02:00:00:00:00:02"
[[compiler_services.backends]]
address = "10.0.0.3"
mac = "02:00:00:00:00:03"

[[ca_services]]
name = "ca"
vip = "192.0.2.10:8141"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1", mac = "02:00:00:00:01:01" }

[[compiler_services]]
name = "compilers-v6"
vip = "[2001:db8::10]:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "2001:db8:1::1"
mac = "02:00:00:00:00:01"
"#;

const BGP: &str = r#"
[bgp]
mode = "managed"
local_as = 65001
router_id = "10.0.0.250"
min_healthy = 2
bird_socket = "/run/voxlb-test/bird.ctl"
bird_config = "/run/voxlb-test/bird.conf"
[[bgp.neighbors]]
address = "10.0.0.254"
as = 65000
password = "s3cret"
hold_time = 3
keepalive_time = 1
bfd = true
[[bgp.neighbors]]
address = "2001:db8::fe"
as = 65000
[[bgp.vips]]
address = "192.0.2.10"
communities = ["65000:100", "65000:200"]
med = 50
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(extra: &str) -> Result<Config, String> {
    Config::parse(&format!("{SERVICES}{extra}")).map_err(|e| e.to_string())
}

/// Every backend of `cfg` checked and up, then `health` on top.
fn views(cfg: &Config, health: &HealthMap) -> Vec<ServiceView> {
    let mut all = HealthMap::new();
    for s in &cfg.compiler_services {
        for b in &s.backends {
            all.insert((s.name.clone(), b.address), true);
        }
    }
    for s in &cfg.ca_services {
        all.insert((s.name.clone(), s.primary.address), true);
    }
    all.extend(health.iter().map(|(k, v)| (k.clone(), *v)));
    plan(cfg, &mut State::new(), &all, &MacMap::new())
        .unwrap()
        .services
}

#[test]
fn unchecked_backends_do_not_count_for_announcing() {
    let c = config(BGP).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let unchecked = plan(&c, &mut State::new(), &HealthMap::new(), &MacMap::new())
        .unwrap()
        .services;
    assert_eq!(unchecked[0].active, 3, "they forward");
    let d = announce::decide(&bgp, &unchecked, FIT);
    assert!(d.iter().all(|v| !v.announced), "{d:?}");
    assert!(d[0].reason.contains("has 0 healthy"), "{:?}", d[0]);
}

const FIT: HostState = HostState {
    attached: true,
    drained: false,
};

#[test]
fn bgp_section_parses_with_defaults() {
    let c = config(BGP).unwrap();
    let b = c.bgp.unwrap();
    assert_eq!(b.mode, BgpMode::Managed);
    assert_eq!(b.local_as, 65001);
    assert_eq!(b.min_healthy, 2);
    assert_eq!(b.neighbors.len(), 2);
    assert_eq!(b.neighbors[0].hold_time, 3);
    assert_eq!(b.neighbors[1].hold_time, 9, "default hold time");
    assert_eq!(b.neighbors[1].keepalive_time, 3, "default: a third of hold");
    assert!(b.neighbors[0].bfd && !b.neighbors[1].bfd);
    assert_eq!(
        b.vips[&ip("192.0.2.10")].communities,
        vec![(65000, 100), (65000, 200)]
    );
    assert!(!b.keep_announcing_on_stop);
    assert!(config("").unwrap().bgp.is_none(), "no [bgp]: no BGP");
}

#[test]
fn bgp_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "mode = \"managed\"",
            "mode = \"auto\"",
            "bgp.mode: \"auto\" is not",
        ),
        (
            "local_as = 65001",
            "local_as = 0",
            "bgp.local_as: 0 is not an AS number",
        ),
        (
            "router_id = \"10.0.0.250\"",
            "router_id = \"x\"",
            "bgp.router_id: \"x\" is not an IPv4",
        ),
        (
            "keepalive_time = 1",
            "keepalive_time = 2",
            "bgp.neighbors[0].keepalive_time: 2 s is more than a third",
        ),
        (
            "hold_time = 3",
            "hold_time = 2",
            "bgp.neighbors[0].hold_time: 2 is out of range",
        ),
        (
            "password = \"s3cret\"",
            "password = \"a\\\"b\"",
            "bgp.neighbors[0].password: must be",
        ),
        (
            "address = \"192.0.2.10\"",
            "address = \"192.0.2.99\"",
            "bgp.vips[0].address: 192.0.2.99 is not the address of any service's VIP",
        ),
        (
            "\"65000:200\"",
            "\"65000:70000\"",
            "bgp.vips[0].communities[1]: \"65000:70000\" is not a standard community",
        ),
        (
            "bird_socket = \"/run/voxlb-test/bird.ctl\"",
            "bird_socket = \"bird.ctl\"",
            "bgp.bird_socket: bird.ctl is not an absolute path",
        ),
        (
            "min_healthy = 2",
            "min_healthy = 0",
            "bgp.min_healthy: 0 is out of range",
        ),
    ];
    for (from, to, want) in cases {
        assert!(BGP.contains(from), "{from}");
        let err = config(&BGP.replacen(from, to, 1)).unwrap_err();
        assert!(err.contains(want), "{to}: got {err:?}, want {want:?}");
    }
    let err = config(&BGP.replace("hold_time = 3", "hold_time = 3\nholdtime = 3")).unwrap_err();
    assert!(err.contains("holdtime"), "unknown key: {err}");
    let err =
        config("[bgp]\nmode = \"managed\"\nlocal_as = 1\nrouter_id = \"1.1.1.1\"\n").unwrap_err();
    assert!(err.contains("bgp.neighbors: at least one"), "{err}");
}

#[test]
fn a_vip_is_announced_only_while_every_service_on_it_is_fit() {
    let c = config(BGP).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let mut health = HealthMap::new();
    let d = announce::decide(&bgp, &views(&c, &health), FIT);
    let v4 = d.iter().find(|v| v.address == ip("192.0.2.10")).unwrap();
    assert!(v4.announced, "{v4:?}");
    // v6 has one compiler, min_healthy is 2: not announced.
    let v6 = d.iter().find(|v| v.address == ip("2001:db8::10")).unwrap();
    assert!(!v6.announced);
    assert_eq!(
        v6.reason,
        "service compilers-v6 has 1 healthy backend(s), needs 2"
    );

    // Two of three compilers down: below min_healthy = 2.
    health.insert(("compilers".into(), ip("10.0.0.1")), false);
    let d = announce::decide(&bgp, &views(&c, &health), FIT);
    assert!(d[0].announced, "two usable is enough: {:?}", d[0]);
    health.insert(("compilers".into(), ip("10.0.0.2")), false);
    let d = announce::decide(&bgp, &views(&c, &health), FIT);
    assert!(!d[0].announced);
    assert!(
        d[0].reason.contains("compilers has 1 healthy"),
        "{:?}",
        d[0]
    );

    // The CA on the same address, down: the address is withdrawn even with
    // every compiler up.
    let mut health = HealthMap::new();
    health.insert(("ca".into(), ip("10.0.1.1")), false);
    let d = announce::decide(&bgp, &views(&c, &health), FIT);
    assert!(!d[0].announced);
    assert!(d[0].reason.contains("service ca has 0"), "{:?}", d[0]);

    // Drained or not attached: nothing.
    let health = HealthMap::new();
    for (host, why) in [
        (
            HostState {
                attached: true,
                drained: true,
            },
            "host drained",
        ),
        (
            HostState {
                attached: false,
                drained: false,
            },
            "program not attached",
        ),
    ] {
        let d = announce::decide(&bgp, &views(&c, &health), host);
        assert!(d.iter().all(|v| !v.announced && v.reason == why), "{d:?}");
    }
}

#[test]
fn per_vip_min_healthy_overrides_the_global_one() {
    let c = config(&BGP.replace("med = 50", "med = 50\nmin_healthy = 3")).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let mut health = HealthMap::new();
    health.insert(("compilers".into(), ip("10.0.0.1")), false);
    let d = announce::decide(&bgp, &views(&c, &health), FIT);
    assert!(!d[0].announced, "needs 3, has 2: {:?}", d[0]);
}

#[test]
fn generated_bird_config_carries_routes_attributes_and_sessions() {
    let c = config(BGP).unwrap();
    let bgp = c.bgp.unwrap();
    let text = bird::managed_config(&bgp, &[ip("192.0.2.10"), ip("2001:db8::10")]);
    for want in [
        "router id 10.0.0.250;",
        "route 192.0.2.10/32 blackhole { bgp_med = 50; bgp_community.add((65000,100)); bgp_community.add((65000,200)); };",
        "route 2001:db8::10/128 blackhole;",
        "protocol bgp voxlb_n0 {",
        "neighbor 10.0.0.254 as 65000;",
        "local as 65001;",
        "hold time 3;",
        "keepalive time 1;",
        "password \"s3cret\";",
        "bfd on;",
        "min rx interval 100 ms;",
        "neighbor 2001:db8::fe as 65000;",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // Nothing announced: the static protocols are empty, sessions stay.
    let empty = bird::managed_config(&bgp, &[]);
    assert!(!empty.contains("route "), "{empty}");
    assert!(empty.contains("protocol bgp voxlb_n1"));
    // No kernel protocol: the blackhole routes never reach the host's table.
    assert!(!text.contains("protocol kernel"));
    // Include mode writes protocols only (the site's file has router id etc.).
    let inc = bird::protocols(&bgp, &[ip("192.0.2.10")]);
    assert!(!inc.contains("router id") && inc.contains("route 192.0.2.10/32"));
}

/// The real BIRD parses what voxlb generates (skipped without BIRD).
#[test]
fn bird_accepts_the_generated_config() {
    let out = std::process::Command::new("bird").arg("--version").output();
    lb_testkit::skip_unless!(
        out.is_ok(),
        "bird not installed (cargo xtask setup installs bird2)",
        root: true
    );
    let out = out.unwrap();
    assert!(out.status.success() || !out.stderr.is_empty());
    let c = config(BGP).unwrap();
    let bgp = c.bgp.unwrap();
    let dir = std::env::temp_dir().join(format!("voxlb-announce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, announced) in [vec![], vec![ip("192.0.2.10"), ip("2001:db8::10")]]
        .iter()
        .enumerate()
    {
        let path = dir.join(format!("bird{i}.conf"));
        std::fs::write(&path, bird::managed_config(&bgp, announced)).unwrap();
        let r = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "bird -p rejected:\n{}\n{}",
            String::from_utf8_lossy(&r.stderr),
            std::fs::read_to_string(&path).unwrap()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_are_read_from_birdc_show_protocols() {
    let c = config(BGP).unwrap();
    let bgp = c.bgp.unwrap();
    let text = "BIRD 2.0.12 ready.\n\
        Name       Proto      Table      State  Since         Info\n\
        device1    Device     ---        up     05:42:58.151  \n\
        voxlb_vips4 Static    master4    up     05:42:58.151  \n\
        voxlb_n0   BGP        ---        up     05:42:58.151  Established   \n\
        voxlb_n1   BGP        ---        start  2026-11-30    Active        Socket: Connection refused\n\
        other      BGP        ---        up     05:42:58.151  Established\n";
    let s = bird::parse_protocols(&bgp, text);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].neighbor, ip("10.0.0.254"));
    assert_eq!(
        (s[0].state.as_str(), s[0].info.as_str()),
        ("up", "Established")
    );
    assert_eq!(s[1].neighbor, ip("2001:db8::fe"));
    assert_eq!(s[1].state, "start");
    assert!(s[1].info.starts_with("Active"), "{:?}", s[1].info);
}

/// Two hosts with the same config but different backend ids (another
/// history of CLI changes) have the same fingerprint; any change of the
/// table changes it.
#[test]
fn fingerprints_agree_across_hosts_whatever_the_ids() {
    let c = config("").unwrap();
    let health = HealthMap::new();
    let fp = |v: &[ServiceView]| v[0].fingerprint.clone().unwrap();
    let a = plan(&c, &mut State::new(), &health, &MacMap::new()).unwrap();

    // Host b: the same backends listed in another order, and ids taken by
    // a service it had first (so every id differs).
    let reordered = SERVICES.replacen(
        "10.0.0.1\"\nmac = \"02:00:00:00:00:01",
        "10.0.0.9\"\nmac = \"02:00:00:00:00:09",
        1,
    );
    let mut state_b = State::new();
    let other = Config::parse(&reordered).unwrap();
    plan(&other, &mut state_b, &health, &MacMap::new()).unwrap();
    let b = plan(&c, &mut state_b, &health, &MacMap::new()).unwrap();
    let ids_a: Vec<u32> = a.services[0].backends.iter().map(|x| x.id).collect();
    let ids_b: Vec<u32> = b.services[0].backends.iter().map(|x| x.id).collect();
    assert_ne!(ids_a, ids_b, "the hosts must differ in ids for this test");
    assert_eq!(fp(&a.services), fp(&b.services));
    assert_ne!(
        a.desired.tables[&a.services[0].service_id], b.desired.tables[&b.services[0].service_id],
        "raw tables (of ids) differ"
    );
    assert_eq!(fp(&a.services).len(), 16);

    // A compiler down: another table, another fingerprint.
    let mut h2 = HealthMap::new();
    h2.insert(("compilers".into(), ip("10.0.0.2")), false);
    let c2 = plan(&c, &mut State::new(), &h2, &MacMap::new()).unwrap();
    assert_ne!(fp(&a.services), fp(&c2.services));
    // A weight change too.
    let w = Config::parse(&SERVICES.replacen(
        "mac = \"02:00:00:00:00:03\"",
        "mac = \"02:00:00:00:00:03\"\nweight = 200",
        1,
    ))
    .unwrap();
    let c3 = plan(&w, &mut State::new(), &health, &MacMap::new()).unwrap();
    assert_ne!(fp(&a.services), fp(&c3.services));
    // CA services have no table.
    assert!(
        a.services
            .iter()
            .find(|s| s.kind == "ca")
            .unwrap()
            .fingerprint
            .is_none()
    );
}

fn status(c: &Config, health: &HealthMap, attached: bool, drained: bool) -> StatusView {
    StatusView {
        version: "0".into(),
        pid: 1,
        uptime_secs: 0,
        config: None,
        interfaces: vec![],
        services: views(c, health),
        unresolved: vec![],
        last_reload_error: None,
        attached,
        drained,
        announce: None,
    }
}

#[test]
fn fitness_exit_codes() {
    let c = config("").unwrap();
    let mut health = HealthMap::new();
    assert_eq!(fitness::evaluate(&status(&c, &health, true, false), 1).0, 0);
    assert_eq!(
        fitness::evaluate(&status(&c, &health, false, false), 1).0,
        4
    );
    assert_eq!(fitness::evaluate(&status(&c, &health, true, true), 1).0, 5);
    // compilers-v6 has one backend: fit at 1, unfit at 2.
    let (code, why) = fitness::evaluate(&status(&c, &health, true, false), 2);
    assert_eq!(code, 6);
    assert_eq!(
        why,
        vec!["service compilers-v6 has 1 healthy backend(s), needs 2"]
    );
    health.insert(("ca".into(), ip("10.0.1.1")), false);
    let (code, why) = fitness::evaluate(&status(&c, &health, true, false), 1);
    assert_eq!(code, 6);
    assert!(why[0].contains("service ca has 0"), "{why:?}");
}

/// Include mode against a real BIRD (the "site's"), run in a namespace of
/// its own so that its BGP session attempts stay inside it: voxlb writes
/// the protocol file, reloads BIRD through its socket, and the VIP routes
/// appear in and vanish from BIRD's table. Needs root and BIRD.
#[test]
fn include_mode_drives_a_sites_bird() {
    use std::process::Command;
    lb_testkit::require_root!("network namespaces and a BIRD of its own");
    lb_testkit::skip_unless!(
        Command::new("bird").arg("--version").output().is_ok(),
        "bird not installed (cargo xtask setup installs bird2)",
        root: true
    );
    let tag = format!("vxa-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let (site, file, sock, pid) = (
        dir.join("bird.conf"),
        dir.join("voxlb.conf"),
        dir.join("bird.ctl"),
        dir.join("bird.pid"),
    );
    // The site's own config: router id, device, and the include. The file
    // must exist before BIRD starts.
    std::fs::write(
        &site,
        format!(
            "router id 10.0.0.250;\nprotocol device {{}}\ninclude \"{}\";\n",
            file.display()
        ),
    )
    .unwrap();
    std::fs::write(&file, "").unwrap();
    struct Cleanup(String, std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = std::fs::read_to_string(&self.2)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: signalling the BIRD this test started.
                unsafe { libc::kill(p, libc::SIGTERM) };
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    assert!(
        Command::new("ip")
            .args(["netns", "add", &tag])
            .status()
            .unwrap()
            .success()
    );
    let _cleanup = Cleanup(tag.clone(), dir.clone(), pid.clone());
    let st = Command::new("ip")
        .args(["netns", "exec", &tag, "bird", "-c"])
        .arg(&site)
        .arg("-s")
        .arg(&sock)
        .arg("-P")
        .arg(&pid)
        .status()
        .unwrap();
    assert!(st.success(), "bird did not start");

    let text = BGP
        .replace("mode = \"managed\"", "mode = \"include\"")
        .replace("/run/voxlb-test/bird.ctl", sock.to_str().unwrap())
        .replace("/run/voxlb-test/bird.conf", file.to_str().unwrap());
    let c = config(&text).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let mut a = bird::Announcer::new(bgp.clone());
    let routes =
        || bird::birdc(&bgp.birdc_binary, &bgp.bird_socket, &["show", "route"]).unwrap_or_default();
    a.set(
        announce::decide(&bgp, &views(&c, &HealthMap::new()), FIT),
        false,
    );
    a.tick();
    let v = a.view();
    assert_eq!(v.bird_error, None, "{v:?}");
    assert_eq!(
        v.sessions.len(),
        2,
        "both neighbours' protocols loaded: {v:?}"
    );
    let r = routes();
    assert!(r.contains("192.0.2.10/32"), "VIP not in BIRD's table:\n{r}");

    // Drained: withdrawn from the site's BIRD, which keeps running.
    let drained = HostState {
        attached: true,
        drained: true,
    };
    a.set(
        announce::decide(&bgp, &views(&c, &HealthMap::new()), drained),
        true,
    );
    let r = routes();
    assert!(!r.contains("192.0.2.10/32"), "still announced:\n{r}");
    assert!(a.view().bird_error.is_none());

    // Announced again; then the daemon stops: withdrawn.
    a.set(
        announce::decide(&bgp, &views(&c, &HealthMap::new()), FIT),
        false,
    );
    assert!(routes().contains("192.0.2.10/32"));
    a.stop();
    let r = routes();
    assert!(!r.contains("192.0.2.10/32"), "stop must withdraw:\n{r}");
}

#[test]
fn metrics_show_fingerprints_fitness_announcements_and_sessions() {
    let c = config(BGP).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let mut st = status(&c, &HealthMap::new(), true, false);
    let fp = st.services[0].fingerprint.clone().unwrap();
    st.announce = Some(Box::new(announce::AnnounceView {
        mode: "managed".into(),
        drained: false,
        vips: announce::decide(&bgp, &st.services, FIT),
        sessions: bird::parse_protocols(
            &bgp,
            "voxlb_n0   BGP        ---        up     05:42:58.151  Established\n",
        ),
        bird_error: None,
    }));
    let stats = voxlb::control::StatsView {
        reasons: vec![],
        services: vec![],
        flood: Default::default(),
    };
    let text = voxlb::metrics::render(&stats, &st);
    for want in [
        format!("voxlb_service_table_fingerprint{{service=\"compilers\",fingerprint=\"{fp}\"}} 1"),
        "voxlb_host_attached 1".into(),
        "voxlb_host_drained 0".into(),
        "voxlb_vip_announced{vip=\"192.0.2.10\"} 1".into(),
        "voxlb_vip_announced{vip=\"2001:db8::10\"} 0".into(),
        "voxlb_bgp_session_established{neighbor=\"10.0.0.254\"} 1".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
}
