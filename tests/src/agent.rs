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
        }
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
    for _ in 0..config.agents {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::with_capacity(config.runs_per_agent);
            for i in 0..config.runs_per_agent {
                if i > 0 && !config.pause.is_zero() {
                    tokio::time::sleep(config.pause).await;
                }
                let start = Instant::now();
                let r = tokio::time::timeout(config.run_timeout, one_run(&config))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("run timed out")));
                results.push(r.map(|backend| (start.elapsed(), backend)));
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
                Ok((d, backend)) => {
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
