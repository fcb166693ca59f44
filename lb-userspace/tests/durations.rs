//! Durations: every duration of the config (and the CLI) accepts the forms
//! operators write, through one parser (humantime), and garbage is refused
//! with an error naming the key.

use std::time::Duration;

use voxlb::config::{Config, parse_duration};

const BASE: &str = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
health_check = { insecure = true, interval = "INTERVAL", timeout = "TIMEOUT" }
[[compiler_services.backends]]
address = "10.0.0.1"
"#;

fn with(interval: &str, timeout: &str) -> Result<Config, String> {
    Config::parse(
        &BASE
            .replace("INTERVAL", interval)
            .replace("TIMEOUT", timeout),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn operator_forms_parse() {
    for (text, want) in [
        ("1h", Duration::from_secs(3600)),
        ("90s", Duration::from_secs(90)),
        ("1m30s", Duration::from_secs(90)),
        ("1m 30s", Duration::from_secs(90)),
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("10ms", Duration::from_millis(10)),
    ] {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
}

#[test]
fn the_readme_range_is_accepted_in_the_config() {
    // "10 ms to 1 h": both ends, and the forms above, in a real config.
    let c = with("1h", "1m30s").expect("1h interval");
    let h = &c.compiler_services[0].health;
    assert_eq!(h.interval, Duration::from_secs(3600));
    assert_eq!(h.timeout, Duration::from_secs(90));
    let c = with("90s", "500ms").expect("90s interval");
    assert_eq!(
        c.compiler_services[0].health.interval,
        Duration::from_secs(90)
    );
    assert_eq!(
        c.compiler_services[0].health.timeout,
        Duration::from_millis(500)
    );
    let c = with("10ms", "10ms").expect("10ms");
    assert_eq!(
        c.compiler_services[0].health.interval,
        Duration::from_millis(10)
    );
}

#[test]
fn garbage_and_out_of_range_name_the_key() {
    for (interval, timeout, key, problem) in [
        ("soon", "1s", "health_check.interval", "not a duration"),
        ("2x", "1s", "health_check.interval", "not a duration"),
        ("", "1s", "health_check.interval", "not a duration"),
        ("-1s", "1s", "health_check.interval", "not a duration"),
        ("2s", "fast", "health_check.timeout", "not a duration"),
        ("1h1s", "1s", "health_check.interval", "out of range"),
        ("2s", "5ms", "health_check.timeout", "out of range"),
    ] {
        let e = with(interval, timeout).expect_err(interval);
        assert!(e.contains(key), "{e:?} does not name {key}");
        assert!(e.contains(problem), "{e:?} does not say {problem}");
    }
}
