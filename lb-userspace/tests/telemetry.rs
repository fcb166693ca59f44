//! The metrics operators alert on, from a running daemon (in-memory data
//! plane, real control socket and metrics endpoint): flow-table fill and
//! entries per backend, table rebuilds and their duration, health-check
//! latency, health events, start time and build info. And the Grafana
//! dashboard: every query names a metric this daemon really exports.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::{FlowKey, FlowValue};
use lb_testkit::daemon_fixture;
use tokio::sync::{mpsc, watch};
use voxlb::{
    config::Config,
    control::{self, Request, Response},
    daemon::{self, CheckerSpawner, HealthUpdate, RunOptions},
    dataplane::FakeDataPlane,
    neigh::StaticResolver,
};

fn temp_dir(name: &str) -> PathBuf {
    daemon_fixture::temp_dir("voxlb-telemetry", name)
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    daemon_fixture::write_config(
        dir,
        &format!(
            r#"metrics_listen = "127.0.0.1:{port}"

[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = {{ type = "tcp" }}
[[compiler_services.backends]]
address = "10.0.0.1"
name = "c1"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
name = "c2"
mac = "02:00:00:00:00:02"

[[ca_services]]
name = "ca"
vip = "192.0.2.11:8140"
health_check = {{ type = "tcp" }}
primary = {{ address = "10.0.1.1", mac = "02:00:00:00:01:01" }}
"#
        ),
    )
}

async fn get(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        .parse()
        .unwrap()
}

/// A running daemon with a populated flow table; returns the metrics page
/// after a health failure, and the telemetry view.
async fn populated_page(name: &str) -> (String, voxlb::telemetry::TelemetryView) {
    let dir = temp_dir(name);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = write_config(&dir, port);
    let config = Config::load(&path).unwrap();
    let socket = config.control_socket.clone();
    // One flow entry for every (backend id, generation) a backend may get
    // here, plus stale ones: each live backend then holds exactly one.
    let mut dp = FakeDataPlane {
        flow_capacity: Some(4096),
        ..FakeDataPlane::default()
    };
    for id in 0..8u32 {
        for generation in 0..4u32 {
            let key = FlowKey {
                sport_be: (id * 4 + generation) as u16,
                ..FlowKey::default()
            };
            dp.flows.push((
                key,
                FlowValue {
                    backend_id: id,
                    generation,
                    ..FlowValue::default()
                },
            ));
        }
    }
    let health: Arc<Mutex<Option<mpsc::Sender<HealthUpdate>>>> = Arc::default();
    let h2 = health.clone();
    let spawner: CheckerSpawner = Arc::new(move |_, _, _, tx, _| {
        *h2.lock().unwrap() = Some(tx);
        tokio::spawn(async {})
    });
    let (stop, stop_rx) = watch::channel(false);
    let listener = control::bind(&socket).unwrap();
    let task = tokio::spawn(daemon::run(
        config,
        Some(path),
        Box::new(dp),
        listener,
        RunOptions {
            resolver: Box::new(StaticResolver::default()),
            spawner,
            signals: false,
            stop: Some(stop_rx),
        },
    ));
    let ask = |r: Request| {
        let s = socket.clone();
        async move {
            tokio::task::spawn_blocking(move || control::request(&s, &r, Duration::from_secs(5)))
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(Request::Status {}).await.is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Probes as the real checkers record them (same process).
    let c2: IpAddr = "10.0.0.2".parse().unwrap();
    voxlb::telemetry::record_probe("compilers", c2, Instant::now());
    voxlb::telemetry::record_probe("compilers", c2, Instant::now());
    // A first "up" confirms the assumed state (no event); a failure is an
    // event and a table rebuild.
    let tx = health.lock().unwrap().clone().unwrap();
    tx.send(HealthUpdate {
        service: "compilers".into(),
        addr: "10.0.0.1".parse().unwrap(),
        up: true,
        detail: "ok".into(),
    })
    .await
    .unwrap();
    tx.send(HealthUpdate {
        service: "compilers".into(),
        addr: c2,
        up: false,
        detail: "connect: refused".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        if let Ok(Response::Telemetry(t)) = ask(Request::Telemetry {}).await
            && !t.health_events.is_empty()
        {
            break t;
        }
        assert!(Instant::now() < deadline, "no health event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let page = get(([127, 0, 0, 1], port).into()).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (page, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_metrics_from_a_running_daemon() {
    let (page, t) = populated_page("ops").await;
    // Flow table: counted at start (32 entries in the fake table).
    assert_eq!(value(&page, "voxlb_flow_table_entries"), 32.0);
    assert_eq!(value(&page, "voxlb_flow_table_capacity"), 4096.0);
    assert!(value(&page, "voxlb_flow_table_census_timestamp_seconds") > 1.7e9);
    // Entries per backend: one per live backend (its id and generation).
    for (svc, addr, name) in [
        ("compilers", "10.0.0.1", "c1"),
        ("compilers", "10.0.0.2", "c2"),
        ("ca", "10.0.1.1", ""),
    ] {
        let series = format!(
            "voxlb_backend_flow_entries{{service=\"{svc}\",backend=\"{addr}\",name=\"{name}\"}}"
        );
        assert_eq!(value(&page, &series), 1.0, "{series}");
    }
    // Rebuilds: the start installed the compiler table, the health failure
    // another; each timed.
    assert_eq!(value(&page, "voxlb_table_rebuilds_total"), 2.0);
    assert!(value(&page, "voxlb_table_installs_total") >= 2.0);
    assert_eq!(
        value(&page, "voxlb_table_rebuild_duration_seconds_count{}"),
        2.0
    );
    assert_eq!(
        value(
            &page,
            "voxlb_table_rebuild_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        2.0
    );
    // Health-check latency of the probed backend only.
    assert!(
        value(
            &page,
            "voxlb_health_check_duration_seconds_count{service=\"compilers\",backend=\"10.0.0.2\"}"
        ) >= 2.0,
        "the probes recorded above (the other test of this binary records too)"
    );
    assert!(!page.contains(
        "voxlb_health_check_duration_seconds_count{service=\"compilers\",backend=\"10.0.0.1\"}"
    ));
    // Start time and build info.
    let start = value(&page, "voxlb_process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start <= now && start > now - 60.0, "{start} vs {now}");
    assert_eq!(
        value(
            &page,
            &format!(
                "voxlb_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    // The health event, for `voxlb top` (not the first "up" of c1).
    assert_eq!(t.health_events.len(), 1, "{:?}", t.health_events);
    assert!(!t.health_events[0].up);
    assert_eq!(t.health_events[0].detail, "connect: refused");
    // And the health gauge agrees.
    assert_eq!(
        value(
            &page,
            "voxlb_backend_healthy{service=\"compilers\",backend=\"10.0.0.2\"}"
        ),
        0.0
    );
}

/// Metric names a PromQL expression uses (identifiers starting `voxlb_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_string = false;
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch == '"' {
            in_string = !in_string;
        }
        if !in_string && (ch.is_ascii_alphanumeric() || ch == '_' || ch == ':') {
            cur.push(ch);
        } else {
            if cur.starts_with("voxlb_") {
                out.push(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

/// Every query of the dashboard: panel targets and template variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dashboards/voxlb.json"
    ))
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap().to_owned();
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        out.push((
            format!("variable {}", v["name"]),
            v["definition"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let (page, _) = populated_page("dashboard").await;
    let families: BTreeSet<String> = voxlb::metrics::family_names(&page).into_iter().collect();
    let histograms: BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    let exported = |m: &str| {
        families.contains(m)
            || ["_bucket", "_sum", "_count"].iter().any(|suf| {
                m.strip_suffix(suf)
                    .is_some_and(|base| histograms.contains(base))
            })
    };
    let queries = dashboard_queries();
    assert!(queries.len() >= 17, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{panel}: {expr} names no voxlb metric");
        for n in names {
            assert!(exported(&n), "{panel}: {n} is not exported by the daemon");
            used.insert(n);
        }
    }
    // The dashboard covers what the issue asks to graph.
    for m in [
        "voxlb_backend_new_flows_total",
        "voxlb_backend_healthy",
        "voxlb_reason_packets_total",
        "voxlb_flow_table_entries",
        "voxlb_flow_table_capacity",
        "voxlb_table_rebuilds_total",
        "voxlb_health_check_duration_seconds_bucket",
    ] {
        assert!(used.contains(m), "dashboard does not graph {m}");
    }
}

#[test]
fn the_name_extractor_sees_through_promql() {
    assert_eq!(
        metric_names(
            "sum by (le) (rate(voxlb_x_bucket{service=~\"voxlb_not_a_metric\"}[5m])) / voxlb_y"
        ),
        ["voxlb_x_bucket", "voxlb_y"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suggested_alert_names_an_exported_metric() {
    let (page, _) = populated_page("alerts").await;
    let families: BTreeSet<String> = voxlb::metrics::family_names(&page).into_iter().collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("### Suggested alerts").expect("alerts section");
    let block = &readme[start..];
    let block = &block[block.find("```yaml").unwrap()..];
    let block = &block[..block[7..].find("```").unwrap() + 7];
    let exprs: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    assert!(exprs.len() >= 8, "{block}");
    for e in exprs {
        for n in metric_names(e) {
            let base = n
                .strip_suffix("_bucket")
                .filter(|b| families.contains(*b))
                .unwrap_or(&n);
            assert!(families.contains(base), "alert {e}: {n} is not exported");
        }
    }
}
