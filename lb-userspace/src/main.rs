//! `voxlb`: the daemon and its CLI in one binary (see [`voxlb::cli`]).

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use voxlb::{
    cli::{Cli, Command, EXIT_ERROR, EXIT_OK, HostCmd},
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
        Command::Check {
            min_healthy, quiet, ..
        } => voxlb::fitness::check_fit(&cli.socket, *min_healthy, *quiet),
        Command::Host(HostCmd::Drain {
            wait: true,
            quiet_secs,
            timeout_secs,
        }) => {
            let code = voxlb::cli::client(&cli);
            if code != ExitCode::from(EXIT_OK) {
                return code;
            }
            voxlb::fitness::wait_quiet(
                &cli.socket,
                std::time::Duration::from_secs(*quiet_secs),
                std::time::Duration::from_secs(*timeout_secs),
            )
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
        Command::Top {
            once,
            interval,
            service,
            sort,
        } => voxlb::top::main(&cli.socket, *once, *interval, service.clone(), *sort),
        Command::GenDocs { out } => match voxlb::docs::write_all(out) {
            Ok(files) => {
                println!("{} file(s) written under {}", files.len(), out.display());
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("voxlb: gen-docs {}: {e}", out.display());
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

/// Logs to stderr. Under journald (see [`voxlb::notify::stderr_is_journal`])
/// each line starts with its syslog priority (`<4>` = warning) and carries no
/// timestamp or colour of ours: journald stamps lines itself, and
/// `journalctl -p warning -u voxlb` then filters by level. tracing's fields
/// stay as `key=value` in the message.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if voxlb::notify::stderr_is_journal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .event_format(JournalFormat)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// `<priority>target: message key=value ...`, for journald.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "{}{}: ",
            voxlb::notify::syslog_prefix(meta.level()),
            meta.target()
        )?;
        use tracing_subscriber::fmt::FormatFields as _;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
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
    // Nothing forwards now: nothing may attract traffic either (a BIRD
    // left announcing by keep_announcing_on_stop included).
    if let Some(bgp) = &config.bgp {
        voxlb::announce::bird::withdraw_all(bgp, None);
    }
    println!(
        "detached from {}; pinned maps removed",
        config.interfaces.join(", ")
    );
    Ok(())
}
