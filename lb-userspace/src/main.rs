//! `voxlb`: the daemon and its CLI in one binary (see [`voxlb::cli`]).

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use voxlb::{
    cli::{Cli, Command, EXIT_ERROR, EXIT_OK},
    config::{Config, XdpMode},
    control,
    daemon::{self, RunOptions},
    dataplane::DataPlane,
    neigh::NetlinkResolver,
    state::StateStore,
    xdp,
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
        Command::CheckConfig { config } => match Config::load(config)
            .map_err(|e| e.to_string())
            .and_then(|c| daemon::validate_checks(&c).map(|_| c))
        {
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
        Command::Decap(args) => {
            init_logging();
            ExitCode::from(voxlb::decap::run_cli(args, cli.json))
        }
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
    // Refuse a bad state directory or file, or a health check that cannot
    // be set up, before touching the data plane.
    StateStore::open(&config.state_dir)?.load()?;
    daemon::validate_checks(&config).map_err(anyhow::Error::msg)?;
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
            spawner: daemon::health_checkers(),
            signals: true,
            stop: None,
        };
        daemon::run(config, Some(config_path.to_owned()), dp, listener, opts).await?;
        Ok(())
    })
}

fn load_options(config: &Config, replace: bool) -> xdp::LoadOptions {
    xdp::LoadOptions {
        interfaces: config.interfaces.clone(),
        mode: match config.xdp_mode {
            XdpMode::Native => xdp::XdpMode::Native,
            XdpMode::Generic => xdp::XdpMode::Generic,
            XdpMode::Auto => xdp::XdpMode::Auto,
        },
        pin_dir: config.pin_dir.clone(),
        flow_capacity: config.flow_capacity,
        replace,
    }
}

/// Load the XDP data plane, reusing pinned maps and an attached program.
fn open_dataplane(config: &Config, replace: bool) -> anyhow::Result<Box<dyn DataPlane>> {
    let dp = xdp::XdpDataPlane::load(&load_options(config, replace))
        .context("loading the XDP data plane")?;
    Ok(Box::new(dp))
}

/// Remove the program and the pins on purpose: forwarding stops.
fn detach(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // A running daemon holds the maps and links open and puts deleted pins
    // back: detaching under it would not stick.
    let status = control::request(
        &config.control_socket,
        &control::Request::Status {},
        std::time::Duration::from_secs(2),
    );
    if let Ok(control::Response::Status(s)) = status {
        anyhow::bail!(
            "a voxlb daemon (pid {}) is running on {}: stop it first",
            s.pid,
            config.control_socket.display()
        );
    }
    xdp::detach(&load_options(&config, false)).context("detaching")?;
    println!(
        "detached from {}; pinned maps removed",
        config.interfaces.join(", ")
    );
    Ok(())
}
