//! What operators watch besides the packet counters: flow-table fill (and
//! entries per backend), table rebuilds and their duration, health-check
//! latency, the last health events, process start time and build info.
//!
//! The daemon loop owns a [`Telemetry`]; `voxlb top` and `/metrics` read it
//! through the `telemetry` control request.
//!
//! **Flow-table census**: counting a 1 Mi-entry LRU table entry by entry is
//! two syscalls per entry. The census reads it in batches
//! (`BPF_MAP_LOOKUP_BATCH`, 4096 entries a call, values included, so
//! entries are also counted per backend) on a timer ([`CENSUS_INTERVAL`]),
//! and scrapes read the cached result: a scrape never walks the table.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{FlowKey, FlowValue};
use serde::{Deserialize, Serialize};

/// How often the flow table is counted.
pub const CENSUS_INTERVAL: Duration = Duration::from_secs(10);
/// Health events kept for `voxlb top`.
pub const EVENTS_KEPT: usize = 32;
/// Buckets of the health-latency and rebuild-duration histograms (seconds).
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A histogram with [`LATENCY_BUCKETS`] (cumulative at render time).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += secs;
    }
}

/// The flow table, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCensus {
    pub entries: u64,
    /// `max_entries` of the IPv4 and IPv6 flow tables together (None for an
    /// in-memory data plane).
    pub capacity: Option<u64>,
    /// Entries per backend id and generation, by id: an entry whose
    /// generation is not its backend's current one is stale and not counted
    /// for it.
    pub by_backend: Vec<BackendEntries>,
}

/// Flow-table entries of one backend id and generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntries {
    pub id: u32,
    pub generation: u32,
    pub entries: u64,
}

impl FlowCensus {
    /// Count `(key, value)` pairs.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a (FlowKey, FlowValue)>,
        capacity: Option<u64>,
    ) -> FlowCensus {
        let mut c = FlowCensus {
            capacity,
            ..FlowCensus::default()
        };
        for (_, v) in entries {
            c.add(v);
        }
        c
    }

    /// Entries of backend `id` in its current `generation`.
    pub fn of(&self, id: u32, generation: u32) -> u64 {
        self.by_backend
            .binary_search_by_key(&(id, generation), |b| (b.id, b.generation))
            .map(|i| self.by_backend[i].entries)
            .unwrap_or(0)
    }

    /// Count one entry.
    pub fn add(&mut self, v: &FlowValue) {
        self.entries += 1;
        let k = (v.backend_id, v.generation);
        match self
            .by_backend
            .binary_search_by_key(&k, |b| (b.id, b.generation))
        {
            Ok(i) => self.by_backend[i].entries += 1,
            Err(i) => self.by_backend.insert(
                i,
                BackendEntries {
                    id: k.0,
                    generation: k.1,
                    entries: 1,
                },
            ),
        }
    }
}

/// A health verdict change, as `voxlb top` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEventView {
    /// Unix time, seconds.
    pub at: u64,
    pub service: String,
    pub address: IpAddr,
    pub up: bool,
    pub detail: String,
}

/// Health-check latency of one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeLatency {
    pub service: String,
    pub address: IpAddr,
    /// The last probe's duration, seconds.
    pub last: f64,
    pub histogram: Histogram,
}

/// Table rebuilds: changes that installed at least one Maglev table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RebuildStats {
    /// Rebuilds (changes that installed tables).
    pub rebuilds: u64,
    /// Tables installed over all rebuilds.
    pub tables: u64,
    /// Plan (Maglev build) + apply (map writes), seconds.
    pub duration: Histogram,
    pub last_seconds: f64,
}

/// Everything the `telemetry` request returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryView {
    pub version: String,
    /// Unix time the daemon started, seconds.
    pub start_time: f64,
    pub flow_census: Option<FlowCensus>,
    /// Unix time of the census, seconds.
    pub census_at: Option<f64>,
    pub rebuilds: RebuildStats,
    pub health_events: Vec<HealthEventView>,
    pub probe_latency: Vec<ProbeLatency>,
}

/// The daemon's side.
#[derive(Debug)]
pub struct Telemetry {
    start_time: SystemTime,
    census: Option<(FlowCensus, SystemTime)>,
    rebuilds: RebuildStats,
    events: VecDeque<HealthEventView>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            start_time: SystemTime::now(),
            census: None,
            rebuilds: RebuildStats::default(),
            events: VecDeque::new(),
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Telemetry {
    /// A change installed `tables` tables in `took` (plan + apply).
    pub fn rebuilt(&mut self, tables: usize, took: Duration) {
        if tables == 0 {
            return;
        }
        self.rebuilds.rebuilds += 1;
        self.rebuilds.tables += tables as u64;
        self.rebuilds.duration.observe(took.as_secs_f64());
        self.rebuilds.last_seconds = took.as_secs_f64();
    }

    /// A backend's health verdict changed.
    pub fn health_event(&mut self, service: &str, address: IpAddr, up: bool, detail: &str) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(HealthEventView {
            at: unix(SystemTime::now()) as u64,
            service: service.into(),
            address,
            up,
            detail: detail.into(),
        });
    }

    pub fn set_census(&mut self, c: FlowCensus) {
        self.census = Some((c, SystemTime::now()));
    }

    /// The view; `live` keeps only the latencies of these backends (a
    /// removed backend's checker is gone).
    pub fn view(&self, live: &[(String, IpAddr)]) -> TelemetryView {
        let lat = PROBES.lock().unwrap_or_else(|e| e.into_inner());
        let probe_latency = live
            .iter()
            .filter_map(|k| {
                lat.get(k).map(|(last, h)| ProbeLatency {
                    service: k.0.clone(),
                    address: k.1,
                    last: *last,
                    histogram: h.clone(),
                })
            })
            .collect();
        TelemetryView {
            version: env!("CARGO_PKG_VERSION").into(),
            start_time: unix(self.start_time),
            flow_census: self.census.as_ref().map(|c| c.0.clone()),
            census_at: self.census.as_ref().map(|c| unix(c.1)),
            rebuilds: self.rebuilds.clone(),
            health_events: self.events.iter().rev().cloned().collect(),
            probe_latency,
        }
    }
}

type ProbeMap = HashMap<(String, IpAddr), (f64, Histogram)>;

/// Probe latencies, written by the checker tasks (one entry per backend,
/// under a lock taken once per probe), read by the daemon for views.
static PROBES: LazyLock<Mutex<ProbeMap>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A checker finished a probe of `address` in `took` (success or not: a
/// timing-out backend shows as slow).
pub fn record_probe(service: &str, address: IpAddr, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let mut m = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry((service.to_owned(), address)).or_default();
    e.0 = secs;
    e.1.observe(secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 2.0] {
            h.observe(s);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[2], 2);
        assert_eq!(h.buckets[LATENCY_BUCKETS.len()], 1);
        assert!((h.sum - 2.0065).abs() < 1e-9);
    }

    #[test]
    fn rebuilds_count_only_changes_that_installed_tables() {
        let mut t = Telemetry::default();
        t.rebuilt(0, Duration::from_millis(5));
        t.rebuilt(2, Duration::from_millis(3));
        let v = t.view(&[]);
        assert_eq!(v.rebuilds.rebuilds, 1);
        assert_eq!(v.rebuilds.tables, 2);
        assert_eq!(v.rebuilds.duration.count, 1);
    }

    #[test]
    fn events_are_bounded_newest_first() {
        let mut t = Telemetry::default();
        for i in 0..(EVENTS_KEPT + 5) {
            t.health_event("c", "10.0.0.1".parse().unwrap(), i % 2 == 0, &i.to_string());
        }
        let v = t.view(&[]);
        assert_eq!(v.health_events.len(), EVENTS_KEPT);
        assert_eq!(v.health_events[0].detail, (EVENTS_KEPT + 4).to_string());
    }

    #[test]
    fn census_counts_per_backend_generation() {
        let v = |b, g| {
            (
                FlowKey::default(),
                FlowValue {
                    backend_id: b,
                    generation: g,
                    ..FlowValue::default()
                },
            )
        };
        let entries = [v(1, 0), v(1, 0), v(2, 3), v(1, 1)];
        let c = FlowCensus::from_entries(&entries, Some(1024));
        assert_eq!(c.entries, 4);
        assert_eq!(c.of(1, 0), 2);
        assert_eq!(c.of(1, 1), 1);
        assert_eq!(c.of(2, 3), 1);
        assert_eq!(c.of(2, 0), 0);
        // It crosses the control socket as JSON.
        let back: FlowCensus = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn probe_latency_is_kept_for_live_backends_only() {
        let a: IpAddr = "10.9.9.1".parse().unwrap();
        let b: IpAddr = "10.9.9.2".parse().unwrap();
        record_probe("lat-test", a, Instant::now());
        record_probe("lat-test", b, Instant::now());
        let v = Telemetry::default().view(&[("lat-test".into(), a)]);
        assert_eq!(v.probe_latency.len(), 1);
        assert_eq!(v.probe_latency[0].address, a);
        assert_eq!(v.probe_latency[0].histogram.count, 1);
    }
}
