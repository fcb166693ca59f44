//! The load a compiler reports: a parser of OpenVox Server's (and Puppet
//! Server's) `GET /status/v1/services?level=debug` answer.
//!
//! The JRuby pool lives under `jruby-metrics.status.experimental.metrics`.
//! The `experimental` in that path is the server's own warning that the
//! fields may change, so every field is optional here: a field that is
//! missing or of the wrong type is simply absent from [`JrubyMetrics`]. What
//! the weight controller needs is the pool size and the free instances; an
//! answer without them (the `level=info` answer, an HTML error page, a
//! truncated body, a server of another kind) is a [`StatusError`], which the
//! caller treats as "no load data": the compiler keeps its configured weight,
//! and its health check alone decides whether it is up.

use serde_json::Value;

/// The path of the status request.
pub const STATUS_PATH: &str = "/status/v1/services?level=debug";

/// Why an answer gives no load data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status answer is not JSON: {0}")]
    NotJson(String),
    #[error("status answer has no `jruby-metrics` service")]
    NoJrubyService,
    #[error(
        "status answer has no JRuby pool metrics (was it asked with level=debug?): \
         `{0}` is missing or not a number"
    )]
    NoPoolMetrics(&'static str),
    #[error("status answer reports a JRuby pool of size 0")]
    EmptyPool,
}

/// The JRuby pool metrics of one answer. Counts are as the server reports
/// them; `None` = missing or not a number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JrubyMetrics {
    /// `num-jrubies`: instances in the pool.
    pub size: u32,
    /// `num-free-jrubies`: instances free now.
    pub free: u32,
    /// `requested-instances`: requests waiting for an instance now (the
    /// length of the list).
    pub waiting: Option<u32>,
    /// `borrowed-instances`: instances borrowed now (the length of the list).
    pub borrowed: Option<u32>,
    /// `requested-count`: requests for an instance since start.
    pub requested_count: Option<u64>,
    /// `borrow-count`: borrows since start.
    pub borrow_count: Option<u64>,
    /// `average-wait-time`, ms: how long a request waited for an instance.
    pub average_wait_ms: Option<f64>,
    /// `average-borrow-time`, ms: how long an instance was held.
    pub average_borrow_ms: Option<f64>,
    /// `queue-limit-hit-count`: requests refused with a full queue.
    pub queue_limit_hits: Option<u64>,
    /// `jruby-metrics.state` (`running`, `starting`, `error`, ...).
    pub state: Option<String>,
}

/// The load signal the weight controller uses, in integer permille so that
/// every load balancer computes the same weights from the same answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoadSignal {
    /// Busy instances over pool size, 0..=1000.
    pub occupancy_permille: u32,
    /// Requests waiting for an instance over pool size, 0..=1000 (capped:
    /// a queue as long as the pool already means "saturated").
    pub queue_permille: u32,
    /// `average-borrow-time` rounded to whole ms: how long a compile holds
    /// an instance — the compiler's service time, which does not depend on
    /// how much work the balancer gives it. `None` when missing, or 0 (the
    /// server reports 0 until a borrow has been timed: no data yet).
    pub borrow_ms: Option<u32>,
}

impl LoadSignal {
    /// The single figure the controller maps to a weight: occupancy plus
    /// queue, 0..=2000. Above 1000 the pool is full and requests wait.
    pub fn pressure_permille(&self) -> u32 {
        self.occupancy_permille + self.queue_permille
    }
}

impl JrubyMetrics {
    /// The load signal: occupancy from `size - free` (the borrowed list may
    /// be capped by the server, the free count is not), queue from the
    /// waiting requests, service time from the average borrow time.
    pub fn signal(&self) -> LoadSignal {
        let size = self.size.max(1) as u64;
        let busy = self.size.saturating_sub(self.free) as u64;
        let waiting = self.waiting.unwrap_or(0) as u64;
        LoadSignal {
            occupancy_permille: (busy * 1000 / size).min(1000) as u32,
            queue_permille: (waiting * 1000 / size).min(1000) as u32,
            borrow_ms: self
                .average_borrow_ms
                .map(|ms| ms.round().min(u32::MAX as f64) as u32)
                .filter(|ms| *ms > 0),
        }
    }
}

/// Parses an answer body. Never panics, whatever the bytes.
pub fn parse(body: &[u8]) -> Result<JrubyMetrics, StatusError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message says where; keep it short for the logs.
        let mut msg = e.to_string();
        msg.truncate(120);
        StatusError::NotJson(msg)
    })?;
    let service = root
        .get("jruby-metrics")
        .filter(|v| v.is_object())
        .ok_or(StatusError::NoJrubyService)?;
    let state = service
        .get("state")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let metrics = service
        .get("status")
        .and_then(|s| s.get("experimental"))
        .and_then(|s| s.get("metrics"))
        .filter(|m| m.is_object());
    let Some(m) = metrics else {
        return Err(StatusError::NoPoolMetrics("num-jrubies"));
    };
    let count = |k: &str| m.get(k).and_then(as_count);
    let size = count("num-jrubies").ok_or(StatusError::NoPoolMetrics("num-jrubies"))?;
    let free = count("num-free-jrubies").ok_or(StatusError::NoPoolMetrics("num-free-jrubies"))?;
    if size == 0 {
        return Err(StatusError::EmptyPool);
    }
    let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let list_len = |k: &str| {
        m.get(k)
            .and_then(Value::as_array)
            .map(|a| to_u32(a.len() as u64))
    };
    let millis = |k: &str| {
        m.get(k)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    Ok(JrubyMetrics {
        size: to_u32(size),
        // A server mid-resize could say free > size; a busy count below zero
        // means nothing, so clamp.
        free: to_u32(free.min(size)),
        waiting: list_len("requested-instances"),
        borrowed: list_len("borrowed-instances"),
        requested_count: count("requested-count"),
        borrow_count: count("borrow-count"),
        average_wait_ms: millis("average-wait-time"),
        average_borrow_ms: millis("average-borrow-time"),
        queue_limit_hits: count("queue-limit-hit-count"),
        state,
    })
}

/// The load signal of an answer, or `None` ("no load data") if it has none.
pub fn signal_of(body: &[u8]) -> Option<LoadSignal> {
    parse(body).ok().map(|m| m.signal())
}

/// A non-negative whole number: JSON integers, and floats with no fraction
/// (some Clojure metrics serialise counts as `1.0`).
fn as_count(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/puppetserver-7.9.5/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn busy_fixture() {
        let m = parse(&fixture("status-v1-services-debug-busy.json")).unwrap();
        assert_eq!(m.size, 1);
        assert_eq!(m.free, 0);
        assert_eq!(m.borrowed, Some(1));
        assert_eq!(m.waiting, Some(0));
        assert_eq!(m.requested_count, Some(1));
        assert_eq!(m.borrow_count, Some(1));
        assert_eq!(m.average_wait_ms, Some(1.0));
        assert_eq!(m.average_borrow_ms, Some(0.0));
        assert_eq!(m.queue_limit_hits, Some(0));
        assert_eq!(m.state.as_deref(), Some("running"));
        assert_eq!(
            m.signal(),
            LoadSignal {
                occupancy_permille: 1000,
                queue_permille: 0,
                // The fixture's server had not timed a borrow yet: 0.
                borrow_ms: None,
            }
        );
    }

    #[test]
    fn idle_fixture() {
        let m = parse(&fixture("status-v1-services-debug-idle.json")).unwrap();
        assert_eq!((m.size, m.free), (1, 1));
        assert_eq!(m.borrowed, Some(0));
        assert_eq!(m.signal().pressure_permille(), 0);
    }

    #[test]
    fn info_level_and_non_json_fixtures_give_no_load_data() {
        assert_eq!(
            parse(&fixture("status-v1-services-info.json")),
            Err(StatusError::NoPoolMetrics("num-jrubies"))
        );
        for name in [
            "status-v1-simple.body",
            "status-v1-simple.headers",
            "status-v1-services.headers",
            "README.md",
        ] {
            assert!(
                matches!(parse(&fixture(name)), Err(StatusError::NotJson(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn every_fixture_parses_or_says_why() {
        let dir = format!(
            "{}/tests/fixtures/puppetserver-7.9.5",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            let got = parse(&body);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(got.is_ok(), name.contains("debug"), "{name}: {got:?}");
            n += 1;
        }
        assert_eq!(n, 7);
    }

    fn with_metrics(metrics: &str) -> Vec<u8> {
        format!(
            r#"{{"jruby-metrics":{{"state":"running","status":{{"experimental":{{"metrics":{metrics}}}}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn missing_optional_fields_are_tolerated() {
        let m = parse(&with_metrics(r#"{"num-jrubies":4,"num-free-jrubies":1}"#)).unwrap();
        assert_eq!((m.size, m.free, m.waiting, m.borrowed), (4, 1, None, None));
        assert_eq!(m.signal().occupancy_permille, 750);
        assert_eq!(m.signal().queue_permille, 0);
    }

    #[test]
    fn queue_counts_and_is_capped() {
        let m = parse(&with_metrics(
            r#"{"num-jrubies":2,"num-free-jrubies":0,"requested-instances":[{},{},{},{},{}]}"#,
        ))
        .unwrap();
        assert_eq!(m.waiting, Some(5));
        assert_eq!(m.signal().pressure_permille(), 2000);
        let m = parse(&with_metrics(
            r#"{"num-jrubies":4,"num-free-jrubies":0,"requested-instances":[{}]}"#,
        ))
        .unwrap();
        assert_eq!(m.signal().pressure_permille(), 1250);
    }

    #[test]
    fn wrong_types_of_optional_fields_are_dropped() {
        let m = parse(&with_metrics(
            r#"{"num-jrubies":4.0,"num-free-jrubies":2,"borrowed-instances":"x",
                "average-wait-time":"slow","borrow-count":-3,"requested-count":1.5,
                "average-borrow-time":-1}"#,
        ))
        .unwrap();
        assert_eq!((m.size, m.free), (4, 2));
        assert_eq!(m.borrowed, None);
        assert_eq!(m.average_wait_ms, None);
        assert_eq!(m.average_borrow_ms, None);
        assert_eq!(m.borrow_count, None);
        assert_eq!(m.requested_count, None);
        assert_eq!(m.signal().borrow_ms, None);
    }

    #[test]
    fn borrow_time_is_whole_ms_and_zero_is_no_data() {
        let borrow = |v: &str| {
            let body = with_metrics(&format!(
                r#"{{"num-jrubies":4,"num-free-jrubies":4,"average-borrow-time":{v}}}"#
            ));
            parse(&body).unwrap().signal().borrow_ms
        };
        assert_eq!(borrow("1000"), Some(1000));
        assert_eq!(borrow("249.6"), Some(250));
        assert_eq!(borrow("0"), None);
        assert_eq!(borrow("0.2"), None);
        assert_eq!(borrow("1e300"), Some(u32::MAX));
        assert_eq!(borrow("null"), None);
    }

    #[test]
    fn free_above_size_is_clamped() {
        let m = parse(&with_metrics(r#"{"num-jrubies":2,"num-free-jrubies":9}"#)).unwrap();
        assert_eq!(m.free, 2);
        assert_eq!(m.signal().occupancy_permille, 0);
    }

    #[test]
    fn unusable_answers_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"<html><body>502 Bad Gateway</body></html>", "html"),
            (b"running", "simple"),
            (
                b"{\"jruby-metrics\": {\"status\": {\"experimental\"",
                "truncated",
            ),
            (b"[]", "array"),
            (b"{}", "no service"),
            (b"{\"jruby-metrics\": 3}", "service not an object"),
            (b"\xff\xfe\x00garbage", "binary"),
        ];
        for (body, what) in cases {
            assert!(parse(body).is_err(), "{what}");
            assert_eq!(signal_of(body), None, "{what}");
        }
        for metrics in [
            r#"{"num-free-jrubies":1}"#,
            r#"{"num-jrubies":"4","num-free-jrubies":1}"#,
            r#"{"num-jrubies":4}"#,
            r#"{"num-jrubies":4,"num-free-jrubies":null}"#,
            r#"{"num-jrubies":-4,"num-free-jrubies":1}"#,
            r#"[1,2]"#,
        ] {
            assert!(
                matches!(
                    parse(&with_metrics(metrics)),
                    Err(StatusError::NoPoolMetrics(_))
                ),
                "{metrics}"
            );
        }
        assert_eq!(
            parse(&with_metrics(r#"{"num-jrubies":0,"num-free-jrubies":0}"#)),
            Err(StatusError::EmptyPool)
        );
    }

    #[test]
    fn every_truncation_of_a_real_answer_is_handled() {
        let body = fixture("status-v1-services-debug-busy.json");
        for end in 0..body.len() {
            // A prefix is never a complete JSON document here (the object
            // closes at the last byte), so every one must be an error.
            let trimmed = String::from_utf8_lossy(&body[..end]);
            if trimmed.trim_end().ends_with('}') && serde_json::from_str::<Value>(&trimmed).is_ok()
            {
                continue;
            }
            assert!(parse(&body[..end]).is_err(), "prefix of {end} bytes");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn signal_is_bounded(size in 1u32..1000, free in 0u32..2000, waiting in 0u32..5000) {
            let m = JrubyMetrics { size, free: free.min(size), waiting: Some(waiting), ..Default::default() };
            let s = m.signal();
            proptest::prop_assert!(s.occupancy_permille <= 1000);
            proptest::prop_assert!(s.queue_permille <= 1000);
        }
    }
}
