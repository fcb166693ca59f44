//! `voxlb top`: a known pair of snapshots draws a known frame (ratatui's
//! TestBackend), the plain-text frame of `--once`, and the keys.

use std::net::IpAddr;
use voxlb::{
    control::{BackendState, ServiceKind},
    forwarding::Mode,
};

use ratatui::{Terminal, backend::TestBackend};
use voxlb::{
    control::{BackendStat, ReasonStat, ServiceStat, StatsView, StatusView},
    control::{BackendView, ServiceView},
    telemetry::{BackendEntries, FlowCensus, HealthEventView, RebuildStats, TelemetryView},
    top::{self, KeyAction, Options, Snapshot, SortKey, View},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn backend(addr: &str, name: &str, id: u32, weight: u32, state: &str, slots: u32) -> BackendView {
    BackendView {
        address: ip(addr),
        name: Some(name.into()),
        id,
        generation: 1,
        weight,
        state: state.parse().unwrap(),
        healthy: Some(state != "down"),
        mac: Some("02:00:00:00:00:01".into()),
        route: None,
        source: "config".into(),
        role: None,
        slots,
        retire_deadline_unix_ms: None,
        open_flows: None,
        tier: 0,
        effective_weight_milli: None,
        load_pressure_permille: None,
        load_borrow_ms: None,
        load_slowness_permille: None,
        load_permille: None,
        ramp_permille: None,
        weight_role: None,
    }
}

fn bstat(addr: &str, id: u32, packets: u64, bytes: u64, new_flows: u64) -> BackendStat {
    BackendStat {
        address: ip(addr),
        name: None,
        id,
        state: BackendState::Active,
        packets,
        bytes,
        new_flows,
    }
}

/// A compiler service of three (one drained, one down) and a CA service;
/// `k` scales the counters, so two snapshots 2 s apart give known rates.
fn snap(at: f64, k: u64) -> Snapshot {
    Snapshot {
        at,
        status: status(),
        stats: stats(k),
        telemetry: telemetry(),
    }
}

/// The services' status: a compiler service of three, one drained, one
/// down, and a CA service with a standby.
fn status() -> StatusView {
    let mut ca_primary = backend("10.0.0.21", "ca-1", 4, 0, "active", 0);
    ca_primary.role = Some("primary".into());
    let mut ca_standby = backend("10.0.0.22", "ca-2", 5, 0, "active", 0);
    ca_standby.role = Some("standby".into());
    StatusView {
        version: "0.1.0".into(),
        pid: 4242,
        uptime_secs: 3725,
        config: None,
        interfaces: vec!["eth0".into()],
        services: vec![
            ServiceView {
                name: "compilers".into(),
                kind: ServiceKind::Compiler,
                forwarding: Mode::L2,
                vip: "192.0.2.10:8140/tcp".into(),
                service_id: 0,
                table_size: Some(1009),
                active: 1,
                ca_target: None,
                backends: vec![
                    backend("10.0.0.1", "c1", 1, 100, "active", 1009),
                    backend("10.0.0.2", "c2", 2, 100, "draining", 0),
                    backend("10.0.0.3", "c3", 3, 50, "down", 0),
                ],
                fingerprint: None,
            },
            ServiceView {
                name: "ca".into(),
                kind: ServiceKind::Ca,
                forwarding: Mode::L2,
                vip: "192.0.2.11:8140/tcp".into(),
                service_id: 1,
                table_size: None,
                active: 1,
                ca_target: Some(ip("10.0.0.21")),
                backends: vec![ca_primary, ca_standby],
                fingerprint: None,
            },
        ],
        unresolved: vec![],
        last_reload_error: None,
        attached: true,
        drained: false,
        announce: None,
    }
}

/// Counters, `k` times a base amount (but for one drop, constant).
fn stats(k: u64) -> StatsView {
    StatsView {
        reasons: vec![
            ReasonStat {
                reason: "tx_compiler".into(),
                verdict: "tx".into(),
                packets: 1000 * k,
                bytes: 0,
            },
            ReasonStat {
                reason: "pass_not_vip".into(),
                verdict: "pass".into(),
                packets: 20 * k,
                bytes: 0,
            },
            ReasonStat {
                reason: "drop_bad_l4".into(),
                verdict: "drop".into(),
                packets: 7,
                bytes: 0,
            },
        ],
        services: vec![
            ServiceStat {
                name: "compilers".into(),
                kind: ServiceKind::Compiler,
                packets: 1000 * k,
                bytes: 1_500_000 * k,
                new_flows: 10 * k,
                no_backend: 0,
                backends: vec![
                    bstat("10.0.0.1", 1, 800 * k, 1_200_000 * k, 10 * k),
                    bstat("10.0.0.2", 2, 200 * k, 300_000 * k, 0),
                    bstat("10.0.0.3", 3, 0, 0, 0),
                ],
            },
            ServiceStat {
                name: "ca".into(),
                kind: ServiceKind::Ca,
                packets: 0,
                bytes: 0,
                new_flows: 0,
                no_backend: 0,
                backends: vec![
                    bstat("10.0.0.21", 4, 0, 0, 0),
                    bstat("10.0.0.22", 5, 0, 0, 0),
                ],
            },
        ],
        flood: Default::default(),
    }
}

/// A flow census, three table rebuilds and one health event.
fn telemetry() -> TelemetryView {
    TelemetryView {
        version: "0.1.0".into(),
        start_time: 0.0,
        flow_census: Some(FlowCensus {
            entries: 300,
            capacity: Some(4096),
            by_backend: [(1, 1, 250), (2, 0, 10), (2, 1, 40)]
                .into_iter()
                .map(|(id, generation, entries)| BackendEntries {
                    id,
                    generation,
                    entries,
                })
                .collect(),
        }),
        census_at: Some(0.0),
        rebuilds: RebuildStats {
            rebuilds: 3,
            tables: 4,
            last_seconds: 0.0012,
            ..RebuildStats::default()
        },
        health_events: vec![HealthEventView {
            at: 3600 * 7 + 65,
            service: "compilers".into(),
            address: ip("10.0.0.3"),
            up: false,
            detail: "connect: connection refused".into(),
        }],
        probe_latency: vec![],
    }
}

fn opts() -> Options {
    Options {
        sort: SortKey::Name,
        reverse: false,
        service: None,
        paused: false,
    }
}

fn frame(view: &View, w: u16, h: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| top::draw(f, view)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

#[test]
fn a_known_state_draws_a_known_frame() {
    let view = View::build(Some(&snap(10.0, 1)), &snap(12.0, 3), &opts());
    let got = frame(&view, 120, 24);
    let want = GOLDEN.lines().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(got, want);
}

const GOLDEN: &str = "\
voxlb 0.1.0 pid 4242  up 1h02m  eth0  rebuilds 3 (last 1.2 ms)
flow table 300/4096 (7.3%)
services────────────────────────────────────────────────────────────────────────────────────────────────────────────────
SERVICE    KIND      VIP                  USABLE  NEW/s  PKT/s  BYTES/s  NO-BACKEND/s
compilers  compiler  192.0.2.10:8140/tcp  1/3     10.0   1.0k   1.5M     0.0
ca         ca        192.0.2.11:8140/tcp  1/2     0.0    0.0    0.0      0.0
backends────────────────────────────────────────────────────────────────────────────────────────────────────────────────
SERVICE    BACKEND    NAME  STATE     HEALTH  WEIGHT   EFF      SHARE   NEW/s  PKT/s  BYTES/s  FLOWS
ca         10.0.0.21  ca-1  active    up      primary  serving  100.0%  0.0    0.0    0.0      0
ca         10.0.0.22  ca-2  active    up      standby  -        0.0%    0.0    0.0    0.0      0
compilers  10.0.0.1   c1    active    up      100      100      100.0%  10.0   800.0  1.2M     250
compilers  10.0.0.2   c2    draining  up      100      0        0.0%    0.0    200.0  300.0k   40
compilers  10.0.0.3   c3    down      DOWN    50       0        0.0%    0.0    0.0    0.0      0


packets/s by reason─────────────────────────────health events (newest first)────────────────────────────────────────────
tx_compiler          tx       1.0k              07:01:05 compilers 10.0.0.3 DOWN (connect: connection refused)
pass_not_vip         pass     20.0





sort: name  filter: all services   [s] sort [S] reverse [f] filter [p] pause [q] quit";

#[test]
fn sort_filter_and_pause_keys() {
    let (a, b) = (snap(10.0, 1), snap(12.0, 3));
    let mut o = opts();
    let names = vec!["compilers".to_string(), "ca".to_string()];
    assert_eq!(top::on_key(&mut o, 's', &names), KeyAction::Redraw);
    assert_eq!(o.sort, SortKey::Packets);
    let v = View::build(Some(&a), &b, &o);
    let order: Vec<String> = v.backends.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(order[..2], ["10.0.0.1", "10.0.0.2"], "busiest first");
    top::on_key(&mut o, 'S', &names);
    let v = View::build(Some(&a), &b, &o);
    assert_eq!(
        v.backends[4].address,
        ip("10.0.0.1"),
        "reversed: busiest last"
    );
    assert!(v.footer.contains("packets/s (reversed)"));

    // f cycles: compilers, ca, all.
    top::on_key(&mut o, 'f', &names);
    assert_eq!(o.service.as_deref(), Some("compilers"));
    let v = View::build(Some(&a), &b, &o);
    assert_eq!(v.services.len(), 1);
    assert!(v.backends.iter().all(|r| r.service == "compilers"));
    top::on_key(&mut o, 'f', &names);
    assert_eq!(o.service.as_deref(), Some("ca"));
    let v = View::build(Some(&a), &b, &o);
    assert!(v.events.is_empty(), "the event is about compilers");
    top::on_key(&mut o, 'f', &names);
    assert_eq!(o.service, None);

    top::on_key(&mut o, 'p', &names);
    assert!(o.paused);
    assert!(View::build(Some(&a), &b, &o).footer.contains("PAUSED"));
    top::on_key(&mut o, ' ', &names);
    assert!(!o.paused);
    assert_eq!(top::on_key(&mut o, 'x', &names), KeyAction::Ignore);
    assert_eq!(top::on_key(&mut o, 'q', &names), KeyAction::Quit);
}

#[test]
fn once_prints_plain_text() {
    let v = View::build(Some(&snap(10.0, 1)), &snap(12.0, 3), &opts());
    let t = top::render_text(&v);
    assert!(t.starts_with("voxlb 0.1.0 pid 4242  up 1h02m"), "{t}");
    assert!(!t.contains('\x1b'), "no escape sequences");
    assert!(!t.contains('─'), "no box drawing");
    assert!(
        t.contains("compilers  10.0.0.1   c1    active    up      100      100      100.0%  10.0   800.0  1.2M     250"),
        "{t}"
    );
    assert!(!t.contains("  drop_bad_l4"), "zero rates left out");
    assert!(t.contains("  tx_compiler          tx       1.0k"), "{t}");
    assert!(t.contains("07:01:05 compilers 10.0.0.3 DOWN"), "{t}");
}

#[test]
fn without_a_previous_snapshot_rates_are_unknown_not_zero() {
    let v = View::build(None, &snap(12.0, 3), &opts());
    assert!(v.backends.iter().all(|r| r.packets_s.is_none()));
    let t = top::render_text(&v);
    assert!(t.contains("packets/s by reason:\n  (none)"), "{t}");
}
