//! Is this host fit to take agent traffic? `voxlb check --fit` answers with
//! an exit code, for keepalived's `track_script` (a non-zero exit makes an
//! unfit master give up its VRRP mastership) or any monitoring check; and
//! `voxlb host drain --wait` watches the traffic die down.
//!
//! | exit | meaning |
//! |------|---------|
//! | 0 | fit: daemon up, program attached, not drained, every service has enough usable backends |
//! | 3 | the daemon cannot be reached (the same code as every CLI command) |
//! | 4 | the XDP program is not attached on every interface |
//! | 5 | the host is drained (`voxlb host drain`) |
//! | 6 | a service has fewer healthy usable backends than `--min-healthy` (a CA service: none); a backend counts once its health check has passed |

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    cli::{CLIENT_TIMEOUT, EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE},
    control::{self, Request, Response, StatusView},
};

/// Exit code: not attached.
pub const EXIT_NOT_ATTACHED: u8 = 4;
/// Exit code: drained.
pub const EXIT_DRAINED: u8 = 5;
/// Exit code: a service has too few usable backends.
pub const EXIT_UNHEALTHY: u8 = 6;

/// Whether an XDP program is attached on every interface through the links
/// voxlb pins (`pin_dir/link_IFACE`): the interface exists and the pin is
/// there. A running daemon holds its links open and puts deleted pins back.
pub fn program_attached(pin_dir: &Path, interfaces: &[String]) -> bool {
    !interfaces.is_empty()
        && interfaces.iter().all(|i| {
            let Ok(c) = std::ffi::CString::new(i.as_bytes()) else {
                return false;
            };
            // SAFETY: `c` is a valid C string.
            let exists = unsafe { libc::if_nametoindex(c.as_ptr()) } != 0;
            exists && crate::xdp::link_pin(pin_dir, i).exists()
        })
}

/// The verdict on a status: exit code and the reasons (empty when fit).
pub fn evaluate(status: &StatusView, min_healthy: u32) -> (u8, Vec<String>) {
    if !status.attached {
        return (
            EXIT_NOT_ATTACHED,
            vec!["the XDP program is not attached on every interface".into()],
        );
    }
    if status.drained {
        return (
            EXIT_DRAINED,
            vec!["the host is drained (voxlb host drain)".into()],
        );
    }
    let mut why = Vec::new();
    for s in &status.services {
        let (have, need) = (
            crate::announce::healthy_usable(s),
            crate::announce::needed(s, min_healthy),
        );
        if have < need {
            why.push(format!(
                "service {} has {have} healthy backend(s), needs {need}",
                s.name
            ));
        }
    }
    if why.is_empty() {
        (EXIT_OK, why)
    } else {
        (EXIT_UNHEALTHY, why)
    }
}

/// `voxlb check --fit`: prints `fit` or the reasons, returns the exit code.
pub fn check_fit(socket: &Path, min_healthy: u32, quiet: bool) -> ExitCode {
    // keepalived runs the script every interval with its own timeout: answer
    // within a few seconds whatever the daemon does.
    match control::request(socket, &Request::Status {}, Duration::from_secs(3)) {
        Ok(Response::Status(s)) => {
            let (code, why) = evaluate(&s, min_healthy);
            if !quiet {
                if why.is_empty() {
                    println!("fit");
                } else {
                    for w in why {
                        println!("unfit: {w}");
                    }
                }
            }
            ExitCode::from(code)
        }
        Ok(other) => {
            if !quiet {
                println!("unfit: unexpected answer {other:?}");
            }
            ExitCode::from(EXIT_ERROR)
        }
        Err(e) => {
            if !quiet {
                println!("unfit: {e}");
            }
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Packets forwarded to every service so far.
fn forwarded(socket: &Path) -> Result<u64, String> {
    match control::request(socket, &Request::Stats {}, CLIENT_TIMEOUT) {
        Ok(Response::Stats(s)) => Ok(s.services.iter().map(|v| v.packets).sum()),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `voxlb host drain --wait`: after the drain, wait until no packet has
/// been forwarded for `quiet`, at most `timeout`. Prints progress; exit 0
/// when quiet, 1 on timeout, 3 when the daemon is unreachable.
pub fn wait_quiet(socket: &Path, quiet: Duration, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    let mut last = match forwarded(socket) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("voxlb: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut since = Instant::now();
    let mut reported = Instant::now();
    loop {
        if since.elapsed() >= quiet {
            println!(
                "quiet: no packet forwarded for {:.0?}; drained after {:.1?}",
                quiet,
                start.elapsed()
            );
            return ExitCode::from(EXIT_OK);
        }
        if start.elapsed() >= timeout {
            println!(
                "still forwarding after {timeout:?} (flows that keep sending: long-lived agent connections)"
            );
            return ExitCode::from(EXIT_ERROR);
        }
        std::thread::sleep(Duration::from_millis(250));
        match forwarded(socket) {
            Ok(n) if n != last => {
                if reported.elapsed() >= Duration::from_secs(5) {
                    println!(
                        "still forwarding: {} packets in the last interval",
                        n - last
                    );
                    reported = Instant::now();
                }
                last = n;
                since = Instant::now();
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("voxlb: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    }
}
