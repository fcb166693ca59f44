//! The fixture the daemon integration tests share: a fresh temporary
//! directory and a daemon config whose state, control socket and pins all
//! live under it, so tests never touch the host's paths or each other's;
//! and a daemon on that config with nothing around it.

use std::{
    future::Future,
    path::{Path, PathBuf},
};

use tokio::sync::watch;
use voxlb::{
    config::Config,
    control,
    daemon::{self, DaemonError, RunOptions},
    dataplane::DataPlane,
    neigh::StaticResolver,
};

/// A fresh, empty `$TMPDIR/{prefix}-{name}-{pid}`.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A daemon config on `eth0` with state_dir, control_socket and pin_dir
/// under `dir`, followed by `rest` (more top-level keys and the services).
pub fn config_text(dir: &Path, rest: &str) -> String {
    format!(
        r#"
interfaces = ["eth0"]
state_dir = "{dir}/state"
control_socket = "{dir}/run/control.sock"
pin_dir = "{dir}/pins"
{rest}"#,
        dir = dir.display()
    )
}

/// [`config_text`] written to `dir/voxlb.toml`; returns its path.
pub fn write_config(dir: &Path, rest: &str) -> PathBuf {
    let path = dir.join("voxlb.toml");
    std::fs::write(&path, config_text(dir, rest)).unwrap();
    path
}

/// A daemon made by [`quiet_daemon`]: it serves once `run` is spawned.
pub struct QuietDaemon<F> {
    /// Its control socket.
    pub socket: PathBuf,
    /// Send `true` to stop it.
    pub stop: watch::Sender<bool>,
    /// The daemon's run loop.
    pub run: F,
}

/// A daemon for the config at `path` on `dp`, with no health checks, a
/// neighbour table that knows no MAC, and signal handlers only if
/// `signals`. Its control socket is bound here, so call it inside a Tokio
/// runtime.
pub fn quiet_daemon(
    path: PathBuf,
    dp: Box<dyn DataPlane>,
    signals: bool,
) -> QuietDaemon<impl Future<Output = Result<(), DaemonError>> + Send + 'static> {
    let config = Config::load(&path).unwrap();
    let socket = config.control_socket.clone();
    let listener = control::bind(&socket).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let run = daemon::run(
        config,
        Some(path),
        dp,
        listener,
        RunOptions {
            resolver: Box::new(StaticResolver::default()),
            spawner: daemon::no_checks(),
            signals,
            stop: Some(stop_rx),
        },
    );
    QuietDaemon { socket, stop, run }
}
