//! `voxlb-agent-sim`: simulated OpenVox agents doing whole runs against one
//! address (see `voxlb_tests::agent`), printing one JSON line with the run
//! count, errors, p50/p90/p99/max run time (ms) and runs per backend.
//!
//! ```text
//! voxlb-agent-sim --target 192.0.2.10:8140 --ca-file pki/ca.pem --server-name 192.0.2.10 \
//!     --agents 50 --runs 10 --compile-ms 200
//! ```
//!
//! Exit status 0 when every run succeeded, 1 when some failed, 2 when none
//! did.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use voxlb_tests::{
    agent::{AgentConfig, run_agents},
    client,
};

#[derive(Parser)]
#[command(
    version,
    about = "simulated OpenVox agents: p50/p99 of whole agent runs"
)]
struct Cli {
    /// Address to run against (a VIP or a compiler).
    #[arg(long)]
    target: SocketAddr,
    /// CA that signed the server certificate (PEM); HTTPS unless --plain.
    #[arg(long, required_unless_present = "plain")]
    ca_file: Option<PathBuf>,
    /// TLS server name (default: the target's IP).
    #[arg(long)]
    server_name: Option<String>,
    /// Plain HTTP.
    #[arg(long, conflicts_with_all = ["ca_file", "server_name"])]
    plain: bool,
    /// Agents running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    agents: u32,
    /// Runs per agent.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    runs: u32,
    /// Compile time asked of the backend (ms, before its slow factor).
    #[arg(long, default_value_t = 200)]
    compile_ms: u64,
    /// Catalog size (bytes).
    #[arg(long, default_value_t = 256 * 1024)]
    catalog_bytes: u64,
    /// Files downloaded per run.
    #[arg(long, default_value_t = 2)]
    files: u32,
    /// Size of each file (bytes).
    #[arg(long, default_value_t = 64 * 1024)]
    file_bytes: u64,
    /// Pause between two runs of one agent (ms).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Longest a run may take (s) before it counts as an error.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    run_timeout_s: u64,
    /// Spread the agents' first runs over this long (ms).
    #[arg(long, default_value_t = 0)]
    splay_ms: u64,
    /// Start no run after this long (s); with it, --runs is an upper bound.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_s: Option<u64>,
    /// Leave out of the figures the runs that start in the first S seconds.
    #[arg(long, default_value_t = 0)]
    warmup_s: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = match &cli.ca_file {
        None => None,
        Some(path) => {
            let ca = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = cli
                .server_name
                .clone()
                .unwrap_or_else(|| cli.target.ip().to_string());
            Some((client::tls_config(&ca)?, name))
        }
    };
    let config = AgentConfig {
        target: cli.target,
        tls,
        agents: cli.agents as usize,
        runs_per_agent: cli.runs as usize,
        compile_ms: cli.compile_ms,
        catalog_bytes: cli.catalog_bytes,
        files: cli.files,
        file_bytes: cli.file_bytes,
        pause: Duration::from_millis(cli.pause_ms),
        run_timeout: Duration::from_secs(cli.run_timeout_s),
        splay: Duration::from_millis(cli.splay_ms),
        duration: cli.duration_s.map(Duration::from_secs),
        warmup: Duration::from_secs(cli.warmup_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_agents(&config));
    println!("{}", report.to_json());
    std::process::exit(match (report.runs.len(), report.errors) {
        (_, 0) => 0,
        (0, _) => 2,
        _ => 1,
    });
}
