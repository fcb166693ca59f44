//! `voxlb-testd`: the test backend (a stand-in OpenVox compiler) and its PKI
//! helper. See `voxlb_tests::backend` for the routes.
//!
//! ```text
//! voxlb-testd --name compiler1 --listen 10.0.0.1:8140 --listen 10.0.0.100:8140 \
//!     --cert pki/compiler1.pem --key pki/compiler1.key --control 127.0.0.1:9140
//! voxlb-testd pki --dir pki --ca-name "voxlb test CA" \
//!     --host compiler1=10.0.0.1 --host compiler2=10.0.0.2 --san 10.0.0.100
//! ```
//!
//! Once listening, the server prints one JSON line to stdout,
//! `{"ready":true,"name":...,"listen":[...],"control":...}` (actual addresses,
//! so `:0` ports can be found), and runs until `POST /control/stop`, SIGINT
//! or SIGTERM.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use voxlb_tests::{
    backend::{self, Config},
    jruby::LoadSettings,
    pki::{self, HostSpec},
};

#[derive(Parser)]
#[command(
    version,
    about = "voxlb test backend: HTTPS stand-in for an OpenVox compiler",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a CA (`ca.pem`) and per-host certificates (`NAME.pem`, `NAME.key`).
    Pki(PkiArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Name answered by /whoami and in the X-Backend header.
    #[arg(long, required = true)]
    name: Option<String>,
    /// Address to serve on (repeatable), e.g. 10.0.0.1:8140, [::]:8140.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Certificate chain (PEM).
    #[arg(long, required_unless_present = "plain")]
    cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, required_unless_present = "plain")]
    key: Option<PathBuf>,
    /// Plain-HTTP listener for the control routes (/control/...).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Serve plain HTTP instead of HTTPS on the --listen addresses.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    plain: bool,
    /// Simulated JRuby pool size (reported by /status/v1/services).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    jrubies: u32,
    /// JRuby instances held by simulated background requests.
    #[arg(long, default_value_t = 0)]
    busy_jrubies: u32,
    /// Simulated requests reported as waiting for an instance.
    #[arg(long, default_value_t = 0)]
    waiting: u32,
    /// Compile time and download pacing multiplier (4 = a compiler 4x slower).
    #[arg(long, default_value_t = 1.0, value_parser = parse_factor)]
    slow_factor: f64,
    /// Base compile time of a /catalog request (ms) without its own compile_ms.
    #[arg(long, default_value_t = 0)]
    compile_ms: u64,
    /// Delay of the /status/v1/services answer (ms).
    #[arg(long, default_value_t = 0)]
    status_delay_ms: u64,
}

fn parse_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && (0.01..=1000.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a factor in 0.01..=1000")),
    }
}

#[derive(Args)]
struct PkiArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, default_value = "voxlb test CA")]
    ca_name: String,
    /// NAME=IP[,IP...]: a certificate for NAME (DNS SAN) and its IPs (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<HostSpec>,
    /// A SAN added to every host certificate, e.g. the VIP (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Pki(args)) => {
            let pki = pki::generate(&args.dir, &args.ca_name, &args.hosts, &args.sans)?;
            for host in &pki.hosts {
                println!("{}", args.dir.join(format!("{}.pem", host.name)).display());
            }
            Ok(())
        }
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.cert, &args.key, args.plain) {
        (_, _, true) => None,
        (Some(cert), Some(key), false) => Some(backend::tls_config_from_files(cert, key)?),
        _ => anyhow::bail!("--cert and --key are required unless --plain"),
    };
    let config = Config {
        name: args.name.context("--name is required")?,
        listen: args.listen,
        tls,
        control: args.control,
    };
    let load = LoadSettings {
        jrubies: args.jrubies,
        busy: args.busy_jrubies,
        waiting: args.waiting,
        slow_factor_pct: (args.slow_factor * 100.0).round().max(1.0) as u64,
        compile_ms: args.compile_ms,
        status_delay_ms: args.status_delay_ms,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let backend = backend::spawn(config).await?;
        backend.set_load(load);
        let ready = serde_json::json!({
            "ready": true,
            "name": backend.name(),
            "listen": backend.addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "control": backend.control_addr().map(|a| a.to_string()),
        });
        println!("{ready}");

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let wait = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = backend.stopping() => {}
            }
        };
        wait.await;
        backend.stop();
        backend.wait().await;
        anyhow::Ok(())
    })?;
    // Connection tasks end with the runtime; don't wait for slow clients.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
