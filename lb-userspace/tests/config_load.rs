//! Config keys of load-aware balancing (issue 16): defaults keep static
//! weights, one tier and no slow start; every bad value names its key.

use std::time::Duration;

use voxlb::{
    config::{Balancing, Config},
    load::{Balance, ControllerConfig},
};

const BASE: &str = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
health_check = { insecure = true }
"#;

const BACKENDS: &str = r#"
[[compiler_services.backends]]
address = "10.0.0.1"
[[compiler_services.backends]]
address = "10.0.0.2"
"#;

/// BASE with `service` lines added to the service table, then `backends`.
fn with(service: &str, backends: &str) -> String {
    format!("{BASE}{service}\n{backends}")
}

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
fn defaults_keep_todays_behaviour() {
    let c = Config::parse(&with("", BACKENDS)).unwrap();
    let s = &c.compiler_services[0];
    assert_eq!(s.balancing, Balancing::default());
    assert_eq!(s.balancing.controller.balance, Balance::Static);
    assert_eq!(s.balancing.controller.slow_start, Duration::ZERO);
    assert_eq!(s.balancing.controller.min_healthy, 1);
    assert!(s.backends.iter().all(|b| b.tier == 0));
    // The shipped example keeps them too.
    let c = Config::parse(include_str!("../../examples/voxlb.toml")).unwrap();
    assert!(
        c.compiler_services
            .iter()
            .all(|s| s.balancing.controller.balance == Balance::Static)
    );
}

#[test]
fn every_key_is_read() {
    let c = Config::parse(&with(
        r#"balance = "load"
min_weight_percent = 40
min_healthy = 2
slow_start = "90s"
load_interval = "3s"
load_smoothing_percent = 50
load_hysteresis_percent = 5
max_rewrites_per_minute = 6"#,
        r#"
[[compiler_services.backends]]
address = "10.0.0.1"
[[compiler_services.backends]]
address = "10.0.1.1"
tier = 1
"#,
    ))
    .unwrap();
    let s = &c.compiler_services[0];
    assert_eq!(
        s.balancing,
        Balancing {
            controller: ControllerConfig {
                balance: Balance::Load,
                min_weight_percent: 40,
                min_healthy: 2,
                slow_start: Duration::from_secs(90),
                smoothing_percent: 50,
                hysteresis_percent: 5,
                max_rewrites_per_minute: 6,
            },
            load_interval: Duration::from_secs(3),
        }
    );
    assert_eq!(s.backends[0].tier, 0);
    assert_eq!(s.backends[1].tier, 1);
}

#[test]
fn tiers_and_slow_start_work_with_static_balance() {
    let c = Config::parse(&with(
        "min_healthy = 2\nslow_start = \"1m\"",
        "[[compiler_services.backends]]\naddress = \"10.0.0.1\"\ntier = 3\n",
    ))
    .unwrap();
    let b = &c.compiler_services[0].balancing.controller;
    assert_eq!(b.balance, Balance::Static);
    assert_eq!(b.slow_start, Duration::from_secs(60));
    assert_eq!(c.compiler_services[0].backends[0].tier, 3);
}

#[test]
fn bad_values_name_their_key() {
    let k = "compiler_services[0]";
    assert_err(
        &with("balance = \"leastconn\"", BACKENDS),
        &format!("{k}.balance"),
        "is not \"static\" or \"load\"",
    );
    for (line, key, problem) in [
        (
            "min_weight_percent = 0",
            "min_weight_percent",
            "out of range 1..=100",
        ),
        (
            "min_weight_percent = 101",
            "min_weight_percent",
            "out of range 1..=100",
        ),
        ("min_healthy = 0", "min_healthy", "out of range 1..=1000"),
        ("slow_start = \"61m\"", "slow_start", "out of range"),
        ("slow_start = \"soon\"", "slow_start", "is not a duration"),
        ("load_interval = \"100ms\"", "load_interval", "out of range"),
        (
            "load_smoothing_percent = 0",
            "load_smoothing_percent",
            "out of range 1..=100",
        ),
        (
            "load_hysteresis_percent = 60",
            "load_hysteresis_percent",
            "out of range 0..=50",
        ),
        (
            "max_rewrites_per_minute = 0",
            "max_rewrites_per_minute",
            "out of range 1..=600",
        ),
    ] {
        assert_err(
            &with(&format!("balance = \"load\"\n{line}"), BACKENDS),
            &format!("{k}.{key}"),
            problem,
        );
    }
    assert_err(
        &with(
            "",
            "[[compiler_services.backends]]\naddress = \"10.0.0.1\"\ntier = 16\n",
        ),
        &format!("{k}.backends[0].tier"),
        "out of range 0..=15",
    );
    assert_err(
        &with(
            "",
            "[[compiler_services.backends]]\naddress = \"10.0.0.1\"\ntier = -1\n",
        ),
        &format!("{k}.backends[0].tier"),
        "out of range",
    );
}

#[test]
fn load_keys_need_balance_load() {
    for key in [
        "min_weight_percent = 30",
        "load_interval = \"5s\"",
        "load_smoothing_percent = 30",
        "load_hysteresis_percent = 10",
    ] {
        let name = key.split(' ').next().unwrap();
        assert_err(
            &with(key, BACKENDS),
            &format!("compiler_services[0].{name}"),
            "only used with balance = \"load\"",
        );
    }
}

#[test]
fn load_needs_an_http_health_check() {
    let text = BASE.replace("{ insecure = true }", "{ type = \"tcp\" }")
        + "balance = \"load\"\n"
        + BACKENDS;
    assert_err(
        &text,
        "compiler_services[0].balance",
        "health_check.type must be \"http\" or \"https\"",
    );
}

#[test]
fn unknown_balancing_keys_are_refused() {
    let e = err(&with("balanse = \"load\"", BACKENDS));
    assert!(e.contains("balanse"), "{e}");
    let e = err(&with(
        "",
        "[[compiler_services.backends]]\naddress = \"10.0.0.1\"\nteir = 1\n",
    ));
    assert!(e.contains("teir"), "{e}");
}
