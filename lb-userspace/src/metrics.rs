//! Prometheus text-format metrics at `GET /metrics`.
//!
//! The endpoint asks the daemon loop for `stats` and `status` through the
//! same channel as the control socket, so it reads nothing the loop does not
//! own. HTTP handling is deliberately minimal: one request per connection,
//! head bounded to 8 KiB and 5 s.

use std::{fmt::Write as _, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};

use crate::control::{BackendStat, Call, Request, Response, ServiceStat, StatsView, StatusView};

/// A counter family: name, help text, and how to read it from a row.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

const MAX_HEAD: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Serve until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    calls: mpsc::Sender<Call>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::control::stopped(&mut shutdown) => return,
            a = listener.accept() => if let Ok((s, _)) = a {
                let calls = calls.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(TIMEOUT, serve_one(s, calls)).await;
                });
            },
        }
    }
}

async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Option<Response> {
    let (tx, rx) = oneshot::channel();
    calls.send(Call { request, reply: tx }).await.ok()?;
    rx.await.ok()
}

async fn serve_one(mut s: TcpStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = if method != Some(b"GET") {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != Some(b"/metrics") {
        ("404 Not Found", "see /metrics\n".to_string())
    } else {
        match (
            ask(&calls, Request::Stats {}).await,
            ask(&calls, Request::Status {}).await,
            ask(&calls, Request::Telemetry {}).await,
        ) {
            (
                Some(Response::Stats(stats)),
                Some(Response::Status(status)),
                Some(Response::Telemetry(t)),
            ) => {
                let mut page = render(&stats, &status);
                page.push_str(&render_telemetry(&t, &status));
                ("200 OK", page)
            }
            _ => (
                "503 Service Unavailable",
                "daemon busy or stopping\n".to_string(),
            ),
        }
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// Label values are names we validated (no quotes or backslashes), but
/// escape anyway.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics page.
pub fn render(stats: &StatsView, status: &StatusView) -> String {
    let mut o = String::new();
    counters(&mut o, stats);
    service_gauges(&mut o, status);
    compiler_gauges(&mut o, status);
    flow_gauges(&mut o, status);
    render_multi_host(&mut o, status);
    o
}

/// `# HELP` and `# TYPE` of a metric family.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The data plane's counters: reasons, services, backends, flood mode.
fn counters(o: &mut String, stats: &StatsView) {
    reason_counters(o, stats);
    service_counters(o, stats);
    backend_counters(o, stats);
    flood_metrics(o, stats);
}

/// Packets and bytes by reason (passes and drops, and the derived tx ones).
fn reason_counters(o: &mut String, stats: &StatsView) {
    family(
        o,
        "voxlb_reason_packets_total",
        "counter",
        "Packets by outcome of the XDP program.",
    );
    for r in &stats.reasons {
        let _ = writeln!(
            o,
            "voxlb_reason_packets_total{{reason=\"{}\",verdict=\"{}\"}} {}",
            r.reason, r.verdict, r.packets
        );
    }
    family(
        o,
        "voxlb_reason_bytes_total",
        "counter",
        "Bytes by outcome of the XDP program.",
    );
    for r in &stats.reasons {
        let _ = writeln!(
            o,
            "voxlb_reason_bytes_total{{reason=\"{}\",verdict=\"{}\"}} {}",
            r.reason, r.verdict, r.bytes
        );
    }
}

fn service_counters(o: &mut String, stats: &StatsView) {
    let svc_metrics: [Metric<ServiceStat>; 4] = [
        (
            "voxlb_service_packets_total",
            "Packets forwarded per service.",
            |s| s.packets,
        ),
        (
            "voxlb_service_bytes_total",
            "Bytes forwarded per service.",
            |s| s.bytes,
        ),
        (
            "voxlb_service_new_flows_total",
            "Flows given a backend per service.",
            |s| s.new_flows,
        ),
        (
            "voxlb_service_no_backend_drops_total",
            "Packets dropped for want of a usable backend.",
            |s| s.no_backend,
        ),
    ];
    for (name, help, get) in svc_metrics {
        family(o, name, "counter", help);
        for s in &stats.services {
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",kind=\"{}\"}} {}",
                esc(&s.name),
                s.kind,
                get(s)
            );
        }
    }
}

fn backend_counters(o: &mut String, stats: &StatsView) {
    let be_metrics: [Metric<BackendStat>; 3] = [
        (
            "voxlb_backend_packets_total",
            "Packets forwarded per backend.",
            |b| b.packets,
        ),
        (
            "voxlb_backend_bytes_total",
            "Bytes forwarded per backend.",
            |b| b.bytes,
        ),
        (
            "voxlb_backend_new_flows_total",
            "Flows given to each backend.",
            |b| b.new_flows,
        ),
    ];
    for (name, help, get) in be_metrics {
        family(o, name, "counter", help);
        for s in &stats.services {
            for b in &s.backends {
                let _ = writeln!(
                    o,
                    "{name}{{service=\"{}\",backend=\"{}\",name=\"{}\"}} {}",
                    esc(&s.name),
                    b.address,
                    esc(b.name.as_deref().unwrap_or("")),
                    get(b)
                );
            }
        }
    }
}

/// Flood mode: its threshold, the CPUs in it, what it forwarded.
fn flood_metrics(o: &mut String, stats: &StatsView) {
    let f = &stats.flood;
    for (name, kind, help, v) in [
        (
            "voxlb_flood_threshold",
            "gauge",
            "New-flow inserts per second per CPU above which SYNs are not recorded (0 = off).",
            u64::from(f.threshold),
        ),
        (
            "voxlb_flood_cpus",
            "gauge",
            "CPUs in flood mode now (SYNs forwarded by the Maglev table alone).",
            u64::from(f.cpus_in_flood),
        ),
        (
            "voxlb_flood_syns_total",
            "counter",
            "SYNs forwarded in flood mode, without a flow entry.",
            f.flood_syns,
        ),
        (
            "voxlb_flood_windows_total",
            "counter",
            "One-second windows in which a CPU went into flood mode.",
            f.flood_windows,
        ),
    ] {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
}

/// Per service and backend: usable, up, healthy, the service's kind and mode.
fn service_gauges(o: &mut String, status: &StatusView) {
    family(
        o,
        "voxlb_service_usable_backends",
        "gauge",
        "Backends usable for new flows.",
    );
    for s in &status.services {
        let _ = writeln!(
            o,
            "voxlb_service_usable_backends{{service=\"{}\",kind=\"{}\"}} {}",
            esc(&s.name),
            s.kind,
            s.active
        );
    }
    family(
        o,
        "voxlb_service_info",
        "gauge",
        "1 per service: its kind and forwarding mode (l2, ipip, gue); join on service for per-mode totals.",
    );
    for s in &status.services {
        let _ = writeln!(
            o,
            "voxlb_service_info{{service=\"{}\",kind=\"{}\",forwarding=\"{}\"}} 1",
            esc(&s.name),
            s.kind,
            s.forwarding
        );
    }
    family(
        o,
        "voxlb_backend_up",
        "gauge",
        "1 if the backend takes new flows (compiler) or may serve (CA), else 0; state says why.",
    );
    for s in &status.services {
        for b in &s.backends {
            let _ = writeln!(
                o,
                "voxlb_backend_up{{service=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                esc(&s.name),
                b.address,
                b.state,
                (b.state == crate::control::BackendState::Active) as u8
            );
        }
    }
    family(
        o,
        "voxlb_backend_healthy",
        "gauge",
        "Last health-check verdict (1 up, 0 down; not yet checked counts as 1).",
    );
    for s in &status.services {
        for b in &s.backends {
            let _ = writeln!(
                o,
                "voxlb_backend_healthy{{service=\"{}\",backend=\"{}\"}} {}",
                esc(&s.name),
                b.address,
                b.healthy.unwrap_or(true) as u8
            );
        }
    }
}

/// Per compiler: configured and effective weight, tier, JRuby pressure.
fn compiler_gauges(o: &mut String, status: &StatusView) {
    let compilers = || {
        status
            .services
            .iter()
            .filter(|s| s.kind == crate::control::ServiceKind::Compiler)
            .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
    };
    let labels = |s: &crate::control::ServiceView, b: &crate::control::BackendView| {
        format!("service=\"{}\",backend=\"{}\"", esc(&s.name), b.address)
    };
    family(
        o,
        "voxlb_backend_configured_weight",
        "gauge",
        "Compiler weight from the config or `voxlb backend weight`.",
    );
    for (s, b) in compilers() {
        let _ = writeln!(
            o,
            "voxlb_backend_configured_weight{{{}}} {}",
            labels(s, b),
            b.weight
        );
    }
    family(
        o,
        "voxlb_backend_effective_weight",
        "gauge",
        "Weight new flows follow: configured x load factor x slow-start ramp; 0 = no new flows (drained, down, or its tier is standby).",
    );
    for (s, b) in compilers() {
        if let Some(m) = b.effective_weight_milli {
            let _ = writeln!(
                o,
                "voxlb_backend_effective_weight{{{}}} {}",
                labels(s, b),
                m as f64 / 1000.0
            );
        }
    }
    family(
        o,
        "voxlb_backend_tier",
        "gauge",
        "Priority tier of the compiler (0 preferred).",
    );
    for (s, b) in compilers() {
        let _ = writeln!(o, "voxlb_backend_tier{{{}}} {}", labels(s, b), b.tier);
    }
    family(
        o,
        "voxlb_backend_jruby_pressure_ratio",
        "gauge",
        "Smoothed JRuby pool pressure behind the load factor: occupancy + queued/size, 0..2 (balance = \"load\" with load data only).",
    );
    for (s, b) in compilers() {
        if let Some(p) = b.load_pressure_permille {
            let _ = writeln!(
                o,
                "voxlb_backend_jruby_pressure_ratio{{{}}} {}",
                labels(s, b),
                p as f64 / 1000.0
            );
        }
    }
    family(
        o,
        "voxlb_backend_jruby_borrow_seconds",
        "gauge",
        "Smoothed average JRuby borrow time (compile time) the compiler reports (load data only).",
    );
    for (s, b) in compilers() {
        if let Some(ms) = b.load_borrow_ms {
            let _ = writeln!(
                o,
                "voxlb_backend_jruby_borrow_seconds{{{}}} {}",
                labels(s, b),
                ms as f64 / 1000.0
            );
        }
    }
    family(
        o,
        "voxlb_backend_slowness_ratio",
        "gauge",
        "Borrow time over the lower median of the serving compilers' (4 = compiles take 4x their peers'; load data only).",
    );
    for (s, b) in compilers() {
        if let Some(r) = b.load_slowness_permille {
            let _ = writeln!(
                o,
                "voxlb_backend_slowness_ratio{{{}}} {}",
                labels(s, b),
                r as f64 / 1000.0
            );
        }
    }
}

/// Open connections per backend, and what retiring backends still hold.
fn flow_gauges(o: &mut String, status: &StatusView) {
    family(
        o,
        "voxlb_backend_open_flows",
        "gauge",
        "Connections open on the backend (no FIN/RST from the agent yet; UDP: seen within 30 s) at the last flow-table scan.",
    );
    for s in &status.services {
        for b in &s.backends {
            if let Some(n) = b.open_flows {
                let _ = writeln!(
                    o,
                    "voxlb_backend_open_flows{{service=\"{}\",backend=\"{}\"}} {}",
                    esc(&s.name),
                    b.address,
                    n
                );
            }
        }
    }
    family(
        o,
        "voxlb_backend_retiring_open_flows",
        "gauge",
        "Retiring (removed) backends: connections still open on it at the last flow-table scan.",
    );
    let retiring = || {
        status.services.iter().flat_map(|s| {
            s.backends
                .iter()
                .filter_map(move |b| b.retire_deadline_unix_ms.map(|d| (s, b, d)))
        })
    };
    for (s, b, _) in retiring() {
        let _ = writeln!(
            o,
            "voxlb_backend_retiring_open_flows{{service=\"{}\",backend=\"{}\"}} {}",
            esc(&s.name),
            b.address,
            b.open_flows.unwrap_or(0)
        );
    }
    family(
        o,
        "voxlb_backend_retiring_seconds_left",
        "gauge",
        "Retiring (removed) backends: seconds until its grace ends and its remaining flows are re-picked.",
    );
    let now = crate::state::unix_ms_now();
    for (s, b, deadline) in retiring() {
        let _ = writeln!(
            o,
            "voxlb_backend_retiring_seconds_left{{service=\"{}\",backend=\"{}\"}} {}",
            esc(&s.name),
            b.address,
            deadline.saturating_sub(now) / 1000
        );
    }
}

fn histogram(o: &mut String, name: &str, labels: &str, h: &crate::telemetry::Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cum = 0;
    for (i, le) in crate::telemetry::LATENCY_BUCKETS.iter().enumerate() {
        cum += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(o, "{name}_count{{{labels}}} {}", h.count);
}

/// The families from the `telemetry` request: flow-table fill, entries per
/// backend, table rebuilds, health-check latency, start time, build info.
pub fn render_telemetry(t: &crate::telemetry::TelemetryView, status: &StatusView) -> String {
    let mut o = String::new();
    family(
        &mut o,
        "voxlb_build_info",
        "gauge",
        "Always 1; the version of the running daemon.",
    );
    let _ = writeln!(o, "voxlb_build_info{{version=\"{}\"}} 1", esc(&t.version));
    family(
        &mut o,
        "voxlb_process_start_time_seconds",
        "gauge",
        "Unix time the daemon started.",
    );
    let _ = writeln!(o, "voxlb_process_start_time_seconds {}", t.start_time);
    if let (Some(c), Some(at)) = (&t.flow_census, t.census_at) {
        flow_census(&mut o, c, at, status);
    }
    rebuilds(&mut o, &t.rebuilds);
    family(
        &mut o,
        "voxlb_health_check_duration_seconds",
        "histogram",
        "Duration of health probes (failed ones included: a timeout shows as slow).",
    );
    for p in &t.probe_latency {
        let labels = format!("service=\"{}\",backend=\"{}\"", esc(&p.service), p.address);
        histogram(
            &mut o,
            "voxlb_health_check_duration_seconds",
            &labels,
            &p.histogram,
        );
    }
    o
}

/// The flow table's size and each backend's share of it, counted at `at`.
fn flow_census(o: &mut String, c: &crate::telemetry::FlowCensus, at: f64, status: &StatusView) {
    family(
        o,
        "voxlb_flow_table_entries",
        "gauge",
        "Entries in the flow table (LRU), counted every 10 s.",
    );
    let _ = writeln!(o, "voxlb_flow_table_entries {}", c.entries);
    if let Some(cap) = c.capacity {
        family(
            o,
            "voxlb_flow_table_capacity",
            "gauge",
            "Capacity of the flow table (max entries).",
        );
        let _ = writeln!(o, "voxlb_flow_table_capacity {cap}");
    }
    family(
        o,
        "voxlb_flow_table_census_timestamp_seconds",
        "gauge",
        "Unix time of the last flow-table count.",
    );
    let _ = writeln!(o, "voxlb_flow_table_census_timestamp_seconds {at}");
    family(
        o,
        "voxlb_backend_flow_entries",
        "gauge",
        "Flow-table entries pointing at each backend (recent flows: an entry stays until the LRU evicts it).",
    );
    for s in &status.services {
        for b in &s.backends {
            let n = c.of(b.id, b.generation);
            let _ = writeln!(
                o,
                "voxlb_backend_flow_entries{{service=\"{}\",backend=\"{}\",name=\"{}\"}} {n}",
                esc(&s.name),
                b.address,
                esc(b.name.as_deref().unwrap_or(""))
            );
        }
    }
}

/// Maglev table rebuilds: how many, how many tables, how long.
fn rebuilds(o: &mut String, r: &crate::telemetry::RebuildStats) {
    family(
        o,
        "voxlb_table_rebuilds_total",
        "counter",
        "Changes that installed at least one Maglev table.",
    );
    let _ = writeln!(o, "voxlb_table_rebuilds_total {}", r.rebuilds);
    family(
        o,
        "voxlb_table_installs_total",
        "counter",
        "Maglev tables installed (a rebuild may install several).",
    );
    let _ = writeln!(o, "voxlb_table_installs_total {}", r.tables);
    family(
        o,
        "voxlb_table_rebuild_duration_seconds",
        "histogram",
        "Time of a rebuild: Maglev build plus map writes.",
    );
    histogram(o, "voxlb_table_rebuild_duration_seconds", "", &r.duration);
}

/// Every metric family name the daemon exports (the dashboard test checks
/// its queries against this list).
pub fn family_names(page: &str) -> Vec<String> {
    let mut v: Vec<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What several LB hosts must agree on and what they announce: the table
/// fingerprint (an info metric: compare the label across hosts), the host's
/// fitness, each VIP's announcement and each BGP session.
fn render_multi_host(o: &mut String, status: &StatusView) {
    let family = |o: &mut String, name: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    family(
        o,
        "voxlb_service_table_fingerprint",
        "Always 1; the label is a hash of the active Maglev table by backend address, equal on hosts that pick the same compilers.",
    );
    for s in &status.services {
        if let Some(f) = &s.fingerprint {
            let _ = writeln!(
                o,
                "voxlb_service_table_fingerprint{{service=\"{}\",fingerprint=\"{f}\"}} 1",
                esc(&s.name)
            );
        }
    }
    family(
        o,
        "voxlb_host_attached",
        "1 if the XDP program is attached on every interface.",
    );
    let _ = writeln!(o, "voxlb_host_attached {}", status.attached as u8);
    family(
        o,
        "voxlb_host_drained",
        "1 while voxlb host drain is in effect.",
    );
    let _ = writeln!(o, "voxlb_host_drained {}", status.drained as u8);
    if let Some(a) = &status.announce {
        family(
            o,
            "voxlb_vip_announced",
            "1 if this host announces the VIP address over BGP.",
        );
        for v in &a.vips {
            let _ = writeln!(
                o,
                "voxlb_vip_announced{{vip=\"{}\"}} {}",
                v.address, v.announced as u8
            );
        }
        family(
            o,
            "voxlb_bgp_session_established",
            "1 if the BGP session with the neighbour is established.",
        );
        for x in &a.sessions {
            let _ = writeln!(
                o,
                "voxlb_bgp_session_established{{neighbor=\"{}\"}} {}",
                x.neighbor,
                (x.info == "Established") as u8
            );
        }
    }
}
