//! Config validation: the shipped example parses, and every class of error
//! names its key and the problem.

use std::{net::IpAddr, os::unix::fs::PermissionsExt, time::Duration};

use lb_common::maps::{DEFAULT_FLOW_CAPACITY, DEFAULT_TABLE_SIZE};
use voxlb::{
    config::{Config, ConfigError, XdpMode},
    health::CheckKind,
};

const EXAMPLE: &str = include_str!("../../examples/voxlb.toml");

const BASE: &str = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
health_check = { insecure = true }
[[compiler_services.backends]]
address = "10.0.0.1"
[[compiler_services.backends]]
address = "10.0.0.2"
"#;

/// The error message for `text`, which must not validate.
fn err(text: &str) -> String {
    match Config::parse(text) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(text: &str, key: &str, problem: &str) {
    let e = err(text);
    assert!(e.contains(key), "error {e:?} does not name {key:?}");
    assert!(e.contains(problem), "error {e:?} does not say {problem:?}");
}

#[test]
fn example_parses_with_openvox_defaults() {
    let c = Config::parse(EXAMPLE).unwrap();
    assert_eq!(c.interfaces, ["eth0"]);
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert_eq!(c.state_dir.to_str(), Some("/var/lib/voxlb"));
    assert_eq!(c.flow_capacity, DEFAULT_FLOW_CAPACITY);
    assert_eq!(c.compiler_services.len(), 2);
    let comp = &c.compiler_services[0];
    assert_eq!(comp.backends.len(), 3);
    assert_eq!(comp.backends[2].weight, 50);
    assert_eq!(
        comp.backends[2].mac,
        Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    let v6 = &c.compiler_services[1];
    assert!(v6.vip.addr.is_ipv6());
    assert_eq!(v6.table_size, DEFAULT_TABLE_SIZE);
    // The inline health check takes the OpenVox defaults for what it omits.
    let CheckKind::Https(http, tls) = &v6.health.kind else {
        panic!("expected https")
    };
    assert_eq!(http.path, "/status/v1/simple");
    assert_eq!(http.expect_status, 200);
    assert_eq!(http.expect_body.as_deref(), Some("running"));
    assert!(tls.ca_file.is_some() && !tls.insecure);
    assert_eq!(v6.health.port, 8140);
    let ca = &c.ca_services[0];
    assert_eq!(ca.primary.address, "192.0.2.31".parse::<IpAddr>().unwrap());
    assert!(ca.standby.is_some());
    assert_eq!(ca.health.rise, 3);
    assert_eq!(ca.health.interval, Duration::from_secs(2));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(c.control_socket.to_str(), Some("/run/voxlb/control.sock"));
    assert_eq!(c.pin_dir.to_str(), Some("/sys/fs/bpf/voxlb"));
    assert_eq!(c.compiler_services[0].backends[0].weight, 100);
    assert!(c.metrics_listen.is_none());
    assert_eq!(c.flood_threshold, voxlb::config::DEFAULT_FLOOD_THRESHOLD);
}

#[test]
fn flood_threshold_is_read_and_typed() {
    let c = Config::parse(&BASE.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\nflood_threshold = 0",
    ))
    .unwrap();
    assert_eq!(c.flood_threshold, 0, "0 turns flood mode off");
    let c = Config::parse(&BASE.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\nflood_threshold = 500",
    ))
    .unwrap();
    assert_eq!(c.flood_threshold, 500);
    assert_err(
        &BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nflood_threshold = -1",
        ),
        "flood_threshold",
        "invalid value",
    );
}

#[test]
fn icmp_steering_defaults_on_and_is_typed() {
    assert!(Config::parse(BASE).unwrap().icmp_steering);
    let c = Config::parse(&BASE.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\nicmp_steering = false",
    ))
    .unwrap();
    assert!(!c.icmp_steering);
    assert_err(
        &BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nicmp_steering = \"no\"",
        ),
        "icmp_steering",
        "invalid type",
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err(&BASE.replace(
        "address = \"10.0.0.1\"",
        "address = \"10.0.0.1\"\nwieght = 3",
    ));
    assert!(e.contains("wieght"), "{e}");
    assert!(e.contains("line"), "{e}");
    let e = err(&format!("{BASE}\nbogus_global = 1\n"));
    assert!(e.contains("bogus_global"), "{e}");
    let e = err(&BASE.replace("insecure = true", "insecure = true, intervl = \"1s\""));
    assert!(e.contains("intervl"), "{e}");
}

#[test]
fn malformed_toml_is_reported() {
    assert!(err("interfaces = [\"eth0\"\n").contains("line"));
}

#[test]
fn wrong_types_and_enum_values() {
    let e = err(&BASE.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\nxdp_mode = \"turbo\"",
    ));
    assert!(e.contains("turbo") || e.contains("xdp_mode"), "{e}");
    let e = err(&BASE.replace("[\"eth0\"]", "\"eth0\""));
    assert!(e.contains("interfaces"), "{e}");
}

#[test]
fn bad_addresses() {
    assert_err(
        &BASE.replace("10.0.0.1", "10.0.0.x"),
        "compiler_services[0].backends[0].address",
        "\"10.0.0.x\" is not an IP address",
    );
    assert_err(
        &BASE.replace("10.0.0.2", "224.0.0.1"),
        "compiler_services[0].backends[1].address",
        "not a unicast address",
    );
    assert_err(
        &BASE.replace("192.0.2.10:8140", "192.0.2.10"),
        "compiler_services[0].vip",
        "not an address:port",
    );
    assert_err(
        &BASE.replace("192.0.2.10:8140", "2001:db8::1:8140"),
        "compiler_services[0].vip",
        "not an address:port",
    );
    assert_err(
        &BASE.replace("192.0.2.10:8140", "192.0.2.10:0"),
        "compiler_services[0].vip",
        "port 0",
    );
    assert_err(
        &BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nmetrics_listen = \"nowhere\"",
        ),
        "metrics_listen",
        "not an address:port",
    );
}

#[test]
fn table_size_must_be_prime_and_big_enough() {
    let with_size =
        |n: u32| BASE.replace("health_check", &format!("table_size = {n}\nhealth_check"));
    assert_err(
        &with_size(65536),
        "compiler_services[0].table_size",
        "65536 is not prime",
    );
    assert_err(
        &with_size(101),
        "compiler_services[0].table_size",
        "too small",
    );
    assert!(Config::parse(&with_size(211)).is_ok());
}

#[test]
fn duplicate_vips_and_names() {
    let second = r#"
[[compiler_services]]
name = "other"
vip = "192.0.2.10:8140"
health_check = { type = "tcp" }
"#;
    assert_err(
        &format!("{BASE}{second}"),
        "compiler_services[1].vip",
        "already used by compiler_services[0]",
    );
    // Same address and port but UDP is another VIP.
    assert!(
        Config::parse(&format!(
            "{BASE}{}",
            second.replace("health_check", "protocol = \"udp\"\nhealth_check")
        ))
        .is_ok()
    );
    let ca = r#"
[[ca_services]]
name = "compilers"
vip = "192.0.2.11:8140"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1" }
"#;
    assert_err(
        &format!("{BASE}{ca}"),
        "ca_services[0].name",
        "already used",
    );
    let ca_dup_vip = ca
        .replace("\"compilers\"", "\"ca\"")
        .replace("192.0.2.11", "192.0.2.10");
    assert_err(
        &format!("{BASE}{ca_dup_vip}"),
        "ca_services[0].vip",
        "already used",
    );
}

#[test]
fn backend_conflicts() {
    assert_err(
        &BASE.replace("10.0.0.2", "10.0.0.1"),
        "compiler_services[0].backends[1].address",
        "listed twice",
    );
    let other = r#"
[[compiler_services]]
name = "other"
vip = "192.0.2.12:8140"
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
"#;
    assert_err(
        &format!("{BASE}{other}"),
        "compiler_services[1].backends[0]",
        "also in compiler_services[0].backends[0] with a different mac",
    );
    // The same server described the same way in two services is fine.
    let same = other.replace("mac = \"02:00:00:00:00:01\"\n", "");
    assert!(Config::parse(&format!("{BASE}{same}")).is_ok());
    let ca = r#"
[[ca_services]]
name = "ca"
vip = "192.0.2.11:8140"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1" }
standby = { address = "10.0.1.1" }
"#;
    assert_err(
        &format!("{BASE}{ca}"),
        "ca_services[0].standby.address",
        "also the primary",
    );
}

#[test]
fn weights_and_macs() {
    assert_err(
        &BASE.replace(
            "address = \"10.0.0.1\"",
            "address = \"10.0.0.1\"\nweight = 0",
        ),
        "compiler_services[0].backends[0].weight",
        "out of range",
    );
    assert_err(
        &BASE.replace(
            "address = \"10.0.0.1\"",
            "address = \"10.0.0.1\"\nweight = -4",
        ),
        "backends[0].weight",
        "out of range",
    );
    assert_err(
        &BASE.replace(
            "address = \"10.0.0.1\"",
            "address = \"10.0.0.1\"\nmac = \"52:54:00:zz:00:01\"",
        ),
        "compiler_services[0].backends[0].mac",
        "not a MAC address",
    );
    assert_err(
        &BASE.replace(
            "address = \"10.0.0.1\"",
            "address = \"10.0.0.1\"\nmac = \"01:00:5e:00:00:01\"",
        ),
        "backends[0].mac",
        "not a unicast MAC",
    );
}

#[test]
fn health_check_errors() {
    assert_err(
        &BASE.replace("{ insecure = true }", "{ host = \"x\" }"),
        "compiler_services[0].health_check.ca_file",
        "insecure = true",
    );
    assert_err(
        &BASE.replace("{ insecure = true }", "{ type = \"icmp\" }"),
        "compiler_services[0].health_check.type",
        "\"icmp\"",
    );
    assert_err(
        &BASE.replace("{ insecure = true }", "{ type = \"tcp\", path = \"/\" }"),
        "health_check.path",
        "only used by http",
    );
    assert_err(
        &BASE.replace(
            "{ insecure = true }",
            "{ insecure = true, interval = \"two seconds\" }",
        ),
        "health_check.interval",
        "not a duration",
    );
    assert_err(
        &BASE.replace(
            "{ insecure = true }",
            "{ insecure = true, interval = \"1s\", timeout = \"2s\" }",
        ),
        "health_check.timeout",
        "longer than the interval",
    );
    assert_err(
        &BASE.replace("{ insecure = true }", "{ insecure = true, rise = 0 }"),
        "health_check.rise",
        "out of range",
    );
    assert_err(
        &BASE.replace(
            "{ insecure = true }",
            "{ type = \"http\", path = \"status\" }",
        ),
        "health_check.path",
        "absolute URL path",
    );
    assert_err(
        &BASE.replace(
            "{ insecure = true }",
            "{ insecure = true, client_cert = \"/c.pem\" }",
        ),
        "health_check.client_key",
        "go together",
    );
    // A missing health check means the OpenVox default, which needs a CA file.
    assert_err(
        &BASE.replace("health_check = { insecure = true }\n", ""),
        "compiler_services[0].health_check.ca_file",
        "CA file",
    );
}

#[test]
fn global_errors() {
    assert_err(
        &BASE.replace("[\"eth0\"]", "[]"),
        "interfaces",
        "at least one",
    );
    assert_err(
        &BASE.replace("[\"eth0\"]", "[\"eth0\", \"eth0\"]"),
        "interfaces[1]",
        "listed twice",
    );
    assert_err(
        &BASE.replace("[\"eth0\"]", "[\"a-very-long-interface-name\"]"),
        "interfaces[0]",
        "1 to 15",
    );
    assert_err(
        &BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nstate_dir = \"var/lib\"",
        ),
        "state_dir",
        "absolute",
    );
    assert_err(
        &BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nflow_capacity = 0",
        ),
        "flow_capacity",
        "out of range",
    );
    assert_err(
        &BASE.replace("\"compilers\"", "\"comp ilers\""),
        "compiler_services[0].name",
        "may only contain",
    );
}

#[test]
fn world_writable_config_is_refused() {
    let dir = std::env::temp_dir().join(format!("voxlb-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("voxlb.toml");
    std::fs::write(&path, BASE).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
    assert!(matches!(
        Config::load(&path),
        Err(ConfigError::WorldWritable { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Config::load(&path).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retire_grace_defaults_to_ten_minutes_and_is_checked() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(
        c.compiler_services[0].retire_grace,
        Duration::from_secs(600)
    );
    let with = |g: &str| {
        BASE.replace(
            "health_check",
            &format!("retire_grace = {g:?}\nhealth_check"),
        )
    };
    let c = Config::parse(&with("90s")).unwrap();
    assert_eq!(c.compiler_services[0].retire_grace, Duration::from_secs(90));
    assert_err(
        &with("ten minutes"),
        "compiler_services[0].retire_grace",
        "is not a duration",
    );
    assert_err(
        &with("1500m"),
        "compiler_services[0].retire_grace",
        "longer than the maximum of 24h",
    );
}
