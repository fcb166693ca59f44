//! A simulated JRuby pool for the test backend, so that it reports load the
//! way an OpenVox compiler does (`GET /status/v1/services?level=debug`) and
//! that load is real: catalog requests borrow an instance for their compile
//! time, wait when none is free, and are slowed by the slow factor.
//!
//! Knobs ([`LoadSettings`], set by `voxlb-testd` flags or
//! `POST /control/load?...`):
//! - `jrubies`: pool size;
//! - `busy`: instances held by phantom requests (background load that is not
//!   ours: they really take instances away from catalog requests);
//! - `waiting`: phantom requests reported as queued;
//! - `slow_factor_pct`: catalog compile time and download pacing × this/100
//!   (a compiler 4× slower: 400);
//! - `compile_ms`: the base compile time of a `/catalog` request that does
//!   not give its own `compile_ms`;
//! - `status_delay_ms`: the status answer itself comes this late.

use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tokio::sync::Notify;

/// The knobs of the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSettings {
    pub jrubies: u32,
    pub busy: u32,
    pub waiting: u32,
    pub slow_factor_pct: u64,
    pub compile_ms: u64,
    pub status_delay_ms: u64,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings {
            jrubies: 4,
            busy: 0,
            waiting: 0,
            slow_factor_pct: 100,
            compile_ms: 0,
            status_delay_ms: 0,
        }
    }
}

impl LoadSettings {
    /// Applies `key=value` pairs of a query string; unknown keys are errors
    /// so that a typo in a test does not silently do nothing.
    pub fn apply_query(&mut self, query: &str) -> Result<(), String> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let n: u64 = value
                .parse()
                .map_err(|_| format!("{key}={value:?} is not a number"))?;
            let small = || u32::try_from(n).map_err(|_| format!("{key}={n} is too large"));
            match key {
                "jrubies" if n >= 1 => self.jrubies = small()?,
                "jrubies" => return Err("jrubies must be at least 1".into()),
                "busy" => self.busy = small()?,
                "waiting" => self.waiting = small()?,
                "slow_factor_pct" if n >= 1 => self.slow_factor_pct = n,
                "slow_factor_pct" => return Err("slow_factor_pct must be at least 1".into()),
                "compile_ms" => self.compile_ms = n,
                "status_delay_ms" => self.status_delay_ms = n,
                _ => return Err(format!("unknown load setting {key:?}")),
            }
        }
        Ok(())
    }

    /// `d` slowed by the slow factor.
    pub fn slowed(&self, d: Duration) -> Duration {
        d.saturating_mul(self.slow_factor_pct as u32) / 100
    }
}

struct Request {
    id: u64,
    since: Instant,
    epoch_ms: u64,
    uri: String,
}

#[derive(Default)]
struct Pool {
    borrowed: Vec<Request>,
    waiting: Vec<Request>,
    next_id: u64,
    requested_count: u64,
    borrow_count: u64,
    return_count: u64,
    wait_total_ms: u64,
    borrow_total_ms: u64,
}

/// The pool and its settings.
pub struct JrubyPool {
    settings: Mutex<LoadSettings>,
    pool: Mutex<Pool>,
    freed: Notify,
}

impl Default for JrubyPool {
    fn default() -> Self {
        JrubyPool::new(LoadSettings::default())
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A borrowed (or awaited) instance; dropping it returns it, also when the
/// request is abandoned (the client went away).
pub struct Borrow<'a> {
    pool: &'a JrubyPool,
    id: u64,
}

impl Drop for Borrow<'_> {
    fn drop(&mut self) {
        let mut p = self.pool.pool.lock().unwrap();
        if let Some(i) = p.borrowed.iter().position(|r| r.id == self.id) {
            let r = p.borrowed.swap_remove(i);
            p.return_count += 1;
            p.borrow_total_ms += r.since.elapsed().as_millis() as u64;
        }
        p.waiting.retain(|r| r.id != self.id);
        drop(p);
        self.pool.freed.notify_waiters();
    }
}

impl JrubyPool {
    pub fn new(settings: LoadSettings) -> Self {
        JrubyPool {
            settings: Mutex::new(settings),
            pool: Mutex::new(Pool::default()),
            freed: Notify::new(),
        }
    }

    pub fn settings(&self) -> LoadSettings {
        *self.settings.lock().unwrap()
    }

    /// Changes the settings (a larger pool or fewer phantom requests free
    /// instances for waiting requests at once).
    pub fn set(&self, settings: LoadSettings) {
        *self.settings.lock().unwrap() = settings;
        self.freed.notify_waiters();
    }

    /// Waits for a free instance and holds it until the [`Borrow`] drops.
    pub async fn borrow(&self, uri: &str) -> Borrow<'_> {
        let id = {
            let mut p = self.pool.lock().unwrap();
            p.next_id += 1;
            p.requested_count += 1;
            let id = p.next_id;
            p.waiting.push(Request {
                id,
                since: Instant::now(),
                epoch_ms: epoch_ms(),
                uri: uri.to_owned(),
            });
            id
        };
        let guard = Borrow { pool: self, id };
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let size = self.settings().jrubies;
                let busy = self.settings().busy;
                let mut p = self.pool.lock().unwrap();
                if (p.borrowed.len() as u64) + (busy as u64) < size as u64 {
                    let i = p.waiting.iter().position(|r| r.id == id).expect("ours");
                    let mut r = p.waiting.swap_remove(i);
                    p.borrow_count += 1;
                    p.wait_total_ms += r.since.elapsed().as_millis() as u64;
                    r.since = Instant::now();
                    r.epoch_ms = epoch_ms();
                    p.borrowed.push(r);
                    return guard;
                }
            }
            freed.await;
        }
    }

    /// The `jruby-metrics` service status, at `debug` level or not.
    pub fn service_status(&self, debug: bool) -> Value {
        let s = self.settings();
        let p = self.pool.lock().unwrap();
        let now = epoch_ms();
        let busy = (p.borrowed.len() as u64 + s.busy as u64).min(s.jrubies as u64);
        let entry = |r: &Request| {
            json!({
                "duration-millis": r.since.elapsed().as_millis() as u64,
                "reason": {"request": {
                    "request-method": "get",
                    "route-id": "puppet-v3-catalog-/*/",
                    "uri": r.uri,
                }},
                "time": r.epoch_ms,
            })
        };
        let phantom = |what: &str| {
            json!({
                "duration-millis": 0,
                "reason": {"request": {
                    "request-method": "post",
                    "route-id": "puppet-v3-catalog-/*/",
                    "uri": format!("/puppet/v3/catalog/{what}.example.test"),
                }},
                "time": now,
            })
        };
        let mut borrowed: Vec<Value> = p.borrowed.iter().map(entry).collect();
        borrowed.extend((0..s.busy).map(|i| phantom(&format!("busy{i}"))));
        let mut requested: Vec<Value> = p.waiting.iter().map(entry).collect();
        requested.extend((0..s.waiting).map(|i| phantom(&format!("waiting{i}"))));
        let avg = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        let status = if debug {
            json!({"experimental": {
                "jruby-pool-lock-status": {
                    "current-state": ":not-in-use",
                    "last-change-time": "1970-01-01T00:00:00.000Z",
                },
                "metrics": {
                    "average-borrow-time": avg(p.borrow_total_ms, p.return_count),
                    "average-free-jrubies": (s.jrubies as u64 - busy) as f64,
                    "average-lock-held-time": 0,
                    "average-lock-wait-time": 0,
                    "average-requested-jrubies": requested.len() as f64,
                    "average-wait-time": avg(p.wait_total_ms, p.borrow_count),
                    "borrow-count": p.borrow_count,
                    "borrow-retry-count": 0,
                    "borrow-timeout-count": 0,
                    "borrow-timers": {"total": {"count": p.return_count, "max": 0, "mean": 0, "rate": 0.0}},
                    "borrowed-instances": borrowed,
                    "num-free-jrubies": s.jrubies as u64 - busy,
                    "num-jrubies": s.jrubies,
                    "num-pool-locks": 0,
                    "queue-limit-hit-count": 0,
                    "queue-limit-hit-rate": 0.0,
                    "requested-count": p.requested_count,
                    "requested-instances": requested,
                    "return-count": p.return_count,
                },
            }})
        } else {
            json!({})
        };
        let level = if debug { "debug" } else { "info" };
        let service = |version: &str, status: Value| {
            json!({
                "active_alerts": [],
                "detail_level": level,
                "service_status_version": 1,
                "service_version": version,
                "state": "running",
                "status": status,
            })
        };
        json!({
            "jruby-metrics": service("7.9.5", status),
            "master": service("7.9.5", json!({})),
            "puppet-profiler": service("7.9.5", json!({})),
            "server": service("7.9.5", json!({})),
            "status-service": service("1.1.1", json!({})),
        })
    }

    /// Instances borrowed by real requests now, and requests waiting.
    pub fn in_use(&self) -> (usize, usize) {
        let p = self.pool.lock().unwrap();
        (p.borrowed.len(), p.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn settings_from_a_query() {
        let mut s = LoadSettings::default();
        s.apply_query("jrubies=2&busy=1&slow_factor_pct=400")
            .unwrap();
        assert_eq!((s.jrubies, s.busy, s.slow_factor_pct), (2, 1, 400));
        assert_eq!(
            s.slowed(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert!(s.apply_query("jrubies=0").is_err());
        assert!(s.apply_query("bogus=1").is_err());
        assert!(s.apply_query("busy=x").is_err());
    }

    #[tokio::test]
    async fn borrows_wait_for_a_free_instance() {
        let pool = Arc::new(JrubyPool::new(LoadSettings {
            jrubies: 2,
            busy: 1,
            ..LoadSettings::default()
        }));
        let first = pool.borrow("/a").await;
        // The pool is full (one phantom, one real): the next one waits.
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move {
            let _b = p2.borrow("/b").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.in_use(), (1, 1));
        let m = pool.service_status(true);
        let metrics = &m["jruby-metrics"]["status"]["experimental"]["metrics"];
        assert_eq!(metrics["num-free-jrubies"], 0);
        assert_eq!(metrics["requested-instances"].as_array().unwrap().len(), 1);
        assert_eq!(metrics["borrowed-instances"].as_array().unwrap().len(), 2);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pool.in_use(), (0, 0));
    }

    #[tokio::test]
    async fn an_abandoned_wait_leaves_the_queue() {
        let pool = JrubyPool::new(LoadSettings {
            jrubies: 1,
            busy: 1,
            ..LoadSettings::default()
        });
        let r = tokio::time::timeout(Duration::from_millis(50), pool.borrow("/x")).await;
        assert!(r.is_err());
        assert_eq!(pool.in_use(), (0, 0));
    }
}
