//! An agent simulator: many OpenVox agents doing runs against one address
//! (a VIP, or a compiler directly), timing each whole run. It is the
//! workload of the load-feedback benchmark (issue 16): with one compiler
//! slower than the others, what matters to an operator is the p99 of agent
//! run time, not requests per second.
//!
//! One run, on a fresh connection kept alive for its requests, as an agent
//! does: `GET /whoami` (the node request), `GET /catalog?bytes=B&compile_ms=C`
//! (the compile: the backend holds a simulated JRuby instance for it), `files`
//! downloads of `file_bytes` (`/large`), and `GET /whoami` again (the
//! report). Every run is bounded by `run_timeout`; a failed or timed-out run
//! is counted as an error, not timed.
//!
//! For a benchmark of a steady state, agents can start spread over `splay`
//! (as agents' run intervals are), stop starting runs after `duration`, and
//! leave the runs that start during `warmup` out of the figures (while the
//! compilers' pools fill and a balancer's controller settles).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::{self, Client};

/// What the agents do.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub target: SocketAddr,
    /// TLS client config and server name; `None` = plain HTTP.
    pub tls: Option<(Arc<ClientConfig>, String)>,
    /// Agents running at once.
    pub agents: usize,
    /// Runs each agent does, one after the other.
    pub runs_per_agent: usize,
    /// Compile time asked of the backend (before its slow factor).
    pub compile_ms: u64,
    pub catalog_bytes: u64,
    pub files: u32,
    pub file_bytes: u64,
    /// Pause between two runs of one agent.
    pub pause: Duration,
    pub run_timeout: Duration,
    /// Agent `i` of `n` starts its first run at `splay * i / n`.
    pub splay: Duration,
    /// Start no run after this long (runs in progress finish); `None`:
    /// `runs_per_agent` alone bounds the work.
    pub duration: Option<Duration>,
    /// Runs that start within this time are done but not recorded.
    pub warmup: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 8140)),
            tls: None,
            agents: 10,
            runs_per_agent: 5,
            compile_ms: 200,
            catalog_bytes: 256 * 1024,
            files: 2,
            file_bytes: 64 * 1024,
            pause: Duration::ZERO,
            run_timeout: Duration::from_secs(60),
            splay: Duration::ZERO,
            duration: None,
            warmup: Duration::ZERO,
        }
    }
}

/// The skewed pool of issue 16 on a topology's compilers: the first one
/// (`c1`) has `slow_jrubies` JRuby instances and is `slow_factor_pct`/100
/// times slower (compiles and paced downloads); the others have `jrubies`
/// and normal speed. Its load is what the agents' own requests make: no
/// phantom busy or waiting requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewedPool {
    pub jrubies: u32,
    pub slow_jrubies: u32,
    pub slow_factor_pct: u64,
}

impl Default for SkewedPool {
    fn default() -> Self {
        SkewedPool {
            jrubies: 4,
            slow_jrubies: 2,
            slow_factor_pct: 400,
        }
    }
}

impl SkewedPool {
    /// Sets every compiler's simulated pool (`POST /control/load`).
    pub fn apply(&self, topo: &crate::topology::Topology) -> anyhow::Result<()> {
        for (i, c) in topo.compilers.iter().enumerate() {
            let (jrubies, slow) = if i == 0 {
                (self.slow_jrubies, self.slow_factor_pct)
            } else {
                (self.jrubies, 100)
            };
            topo.control(
                c,
                "POST",
                &format!(
                    "/control/load?jrubies={jrubies}&busy=0&waiting=0&slow_factor_pct={slow}&compile_ms=0&status_delay_ms=0"
                ),
            )
            .with_context(|| format!("setting the load of {}", c.name))?;
        }
        Ok(())
    }
}

/// The outcome of all runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentReport {
    /// Durations of the successful runs, sorted.
    pub runs: Vec<Duration>,
    pub errors: u64,
    /// Successful runs per backend (the `X-Backend` of the catalog answer).
    pub per_backend: BTreeMap<String, u64>,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
    /// Successful runs that started during the warm-up (not in `runs`
    /// nor in `per_backend`).
    pub warmup_runs: u64,
}

impl AgentReport {
    /// Nearest-rank percentile (`p` in 0..=100) of the run times.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.runs, p)
    }

    /// One JSON object: counts and p50/p90/p99/max in ms.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        serde_json::json!({
            "runs": self.runs.len(),
            "errors": self.errors,
            "p50_ms": ms(self.percentile(50.0)),
            "p90_ms": ms(self.percentile(90.0)),
            "p99_ms": ms(self.percentile(99.0)),
            "max_ms": ms(self.runs.last().copied()),
            "per_backend": self.per_backend,
            "first_error": self.first_error,
            "warmup_runs": self.warmup_runs,
        })
    }
}

/// Nearest-rank percentile of sorted `values`.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the agents and collects every run.
pub async fn run_agents(config: &AgentConfig) -> AgentReport {
    let mut tasks = Vec::with_capacity(config.agents);
    let began = Instant::now();
    let n = config.agents.max(1) as u32;
    for agent in 0..config.agents {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(config.splay * agent as u32 / n).await;
            let mut results = Vec::new();
            for i in 0..config.runs_per_agent {
                if i > 0 && !config.pause.is_zero() {
                    tokio::time::sleep(config.pause).await;
                }
                if config.duration.is_some_and(|d| began.elapsed() >= d) {
                    break;
                }
                let start = Instant::now();
                let warm = start.duration_since(began) < config.warmup;
                let r = tokio::time::timeout(config.run_timeout, one_run(&config))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("run timed out")));
                results.push(r.map(|backend| (start.elapsed(), backend, warm)));
            }
            results
        }));
    }
    let mut report = AgentReport::default();
    for task in tasks {
        let results = task
            .await
            .unwrap_or_else(|e| vec![Err(anyhow::anyhow!("agent task failed: {e}"))]);
        for r in results {
            match r {
                Ok((_, _, true)) => report.warmup_runs += 1,
                Ok((d, backend, false)) => {
                    report.runs.push(d);
                    *report.per_backend.entry(backend).or_default() += 1;
                }
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    report.runs.sort();
    report
}

/// One agent run; returns the backend that compiled the catalog.
async fn one_run(config: &AgentConfig) -> anyhow::Result<String> {
    match &config.tls {
        None => requests(config, client::connect_plain(config.target).await?).await,
        Some((tls, name)) => {
            requests(
                config,
                client::connect_tls(config.target, name, tls.clone()).await?,
            )
            .await
        }
    }
}

async fn requests<S: AsyncRead + AsyncWrite + Unpin>(
    config: &AgentConfig,
    mut c: Client<S>,
) -> anyhow::Result<String> {
    let ok = |r: &client::Response, what: &str| -> anyhow::Result<()> {
        ensure!(r.status() == 200, "{what}: status {}", r.status());
        Ok(())
    };
    let r = c.get("/whoami").await.context("node request")?;
    ok(&r, "node request")?;
    let r = c
        .get(&format!(
            "/catalog?bytes={}&compile_ms={}",
            config.catalog_bytes, config.compile_ms
        ))
        .await
        .context("catalog")?;
    ok(&r, "catalog")?;
    ensure!(r.body.len() as u64 == config.catalog_bytes, "short catalog");
    let backend = r.header("X-Backend").unwrap_or("?").to_owned();
    for _ in 0..config.files {
        let r = c
            .get(&format!("/large?bytes={}", config.file_bytes))
            .await
            .context("file")?;
        ok(&r, "file")?;
    }
    let r = c.get("/whoami").await.context("report")?;
    ok(&r, "report")?;
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
    }
}
