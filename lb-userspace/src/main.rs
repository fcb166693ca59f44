//! `voxlb`: the daemon and its CLI in one binary (see [`voxlb::cli`]).

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use voxlb::{
    cli::{Cli, Command, EXIT_ERROR, EXIT_OK},
    config::Config,
    control,
    daemon::{self, RunOptions},
    dataplane::DataPlane,
    neigh::NetlinkResolver,
    state::StateStore,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { config, replace } => {
            init_logging();
            report(run(config, *replace))
        }
        Command::Detach { config } => {
            init_logging();
            report(detach(config))
        }
        Command::CheckConfig { config } => match Config::load(config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} compiler service(s), {} CA service(s))",
                    config.display(),
                    c.compiler_services.len(),
                    c.ca_services.len()
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("voxlb: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        _ => voxlb::cli::client(&cli),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("voxlb: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(config_path: &Path, replace: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // Refuse a bad state directory or file before touching the data plane.
    StateStore::open(&config.state_dir)?.load()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        // Bound first: a second daemon fails here, before the maps.
        let listener = control::bind(&config.control_socket)?;
        let dp = open_dataplane(&config, replace)?;
        let opts = RunOptions {
            resolver: Box::new(NetlinkResolver::new(&config.interfaces)),
            spawner: health_checkers(),
            signals: true,
            stop: None,
        };
        daemon::run(config, Some(config_path.to_owned()), dp, listener, opts).await?;
        Ok(())
    })
}

/// The health-check spawner.
// TODO(merge): wrap `health::spawn_checker` once health.rs has it.
fn health_checkers() -> daemon::CheckerSpawner {
    tracing::warn!("this build has no health checker yet: every backend counts as up");
    daemon::no_checks()
}

/// Load (or reuse) the XDP data plane.
// TODO(merge): `xdp::XdpDataPlane::load(&LoadOptions { .. })` once xdp.rs is here.
fn open_dataplane(config: &Config, replace: bool) -> anyhow::Result<Box<dyn DataPlane>> {
    let _ = (config, replace);
    anyhow::bail!("this build has no XDP data plane (xdp.rs not merged yet)")
}

fn detach(config_path: &Path) -> anyhow::Result<()> {
    let _config = Config::load(config_path)?;
    // TODO(merge): `xdp::detach(&LoadOptions { .. })`.
    anyhow::bail!("this build has no XDP data plane (xdp.rs not merged yet)")
}
