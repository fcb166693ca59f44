//! The fixture the daemon integration tests share: a fresh temporary
//! directory and a daemon config whose state, control socket and pins all
//! live under it, so tests never touch the host's paths or each other's.

use std::path::{Path, PathBuf};

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
