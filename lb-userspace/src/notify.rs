//! The systemd service protocol, spoken by hand: `sd_notify(3)` messages over
//! the `$NOTIFY_SOCKET` datagram socket, and journald detection for the logs.
//!
//! It is a few lines of `sendto(2)`, so voxlb does not pull in libsystemd or a
//! crate for it. Outside systemd (`NOTIFY_SOCKET` unset) every call does
//! nothing. Failures to notify are logged once and never stop the daemon: a
//! balancer that forwards without telling systemd beats one that exits.
//!
//! What voxlb says, and when (the unit is `Type=notify`):
//! - `READY=1` once the XDP program is attached, the first reconcile is in
//!   the maps and the control socket serves: `systemctl start` returns only
//!   then, so `voxlb status` right after it works.
//! - `RELOADING=1` (with `MONOTONIC_USEC`) before a reload, `READY=1` after,
//!   whether the new config was taken or refused (the daemon goes on either
//!   way; `STATUS=` says which).
//! - `STOPPING=1` when it exits on SIGTERM/SIGINT; forwarding goes on.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

/// Where sd_notify messages go; `None` when not started by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    warned: AtomicBool,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
    /// socket), or one that does nothing when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier::for_socket(std::env::var_os("NOTIFY_SOCKET").as_deref().map(Path::new))
    }

    /// A notifier for the given socket (`None`: does nothing).
    pub fn for_socket(socket: Option<&Path>) -> Notifier {
        let target = socket.and_then(|p| {
            let s = p.as_os_str().as_encoded_bytes();
            let addr = match s.first() {
                None => return None,
                Some(b'@') => SocketAddr::from_abstract_name(&s[1..]),
                Some(_) => SocketAddr::from_pathname(p),
            };
            match addr {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!("NOTIFY_SOCKET {}: {e}; not notifying systemd", p.display());
                    None
                }
            }
        });
        Notifier {
            target,
            warned: AtomicBool::new(false),
        }
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one message (newline-separated `KEY=value` lines).
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send_to(target, message)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    /// Attached, reconciled and serving.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload starts (`ExecReload`/SIGHUP or `voxlb reload`).
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
    }

    /// The daemon is exiting; the data plane keeps forwarding.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=exiting; the XDP program keeps forwarding");
    }
}

fn send_to(target: &SocketAddr, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(message.as_bytes(), target)?;
    if n != message.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in µs, as systemd wants with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Whether stderr is connected to journald: `$JOURNAL_STREAM` is
/// `device:inode` of the stream systemd gave us, and stderr is still that
/// stream (a child whose stderr was redirected inherits the variable, so the
/// variable alone is not enough; see `systemd.exec(5)`).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes into the stat buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 is only read; an invalid fd is an error return.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// The `<N>` prefix journald reads as the syslog priority of a line
/// (`SyslogLevelPrefix=`, on by default).
pub fn syslog_prefix(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "<3>",
        tracing::Level::WARN => "<4>",
        tracing::Level::INFO => "<6>",
        tracing::Level::DEBUG | tracing::Level::TRACE => "<7>",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(name: &str) -> (UnixDatagram, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("voxlb-notify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let s = UnixDatagram::bind(&path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (s, path)
    }

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (s, path) = bound("path");
        let n = Notifier::for_socket(Some(&path));
        assert!(n.enabled());
        n.ready("serving");
        assert_eq!(recv(&s), "READY=1\nSTATUS=serving");
        n.reloading();
        let m = recv(&s);
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        let usec: u64 = m.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping();
        assert!(recv(&s).starts_with("STOPPING=1\n"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("voxlb-notify-test-{}", std::process::id());
        let s = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::for_socket(Some(Path::new(&format!("@{name}"))));
        n.ready("x");
        assert_eq!(recv(&s), "READY=1\nSTATUS=x");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        let n = Notifier::for_socket(None);
        assert!(!n.enabled());
        n.ready("x");
        n.stopping();
        // A socket nobody listens on: logged once, no panic, no error out.
        let n = Notifier::for_socket(Some(Path::new("/nonexistent/voxlb-notify")));
        n.ready("x");
        n.ready("x");
        assert!(n.warned.load(Ordering::Relaxed));
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        // Not under systemd here (or stderr redirected by the test harness):
        // a bogus value must not switch the journald format on.
        // SAFETY of the check: reads the environment only.
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!stderr_is_journal());
        }
        assert_eq!(syslog_prefix(&tracing::Level::ERROR), "<3>");
        assert_eq!(syslog_prefix(&tracing::Level::INFO), "<6>");
    }
}
