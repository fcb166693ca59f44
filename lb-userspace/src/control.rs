//! The control socket: a Unix stream socket, one JSON request per line and
//! one JSON response per line, one exchange per connection.
//!
//! The socket is the daemon's only input besides its config file, so it is
//! bounded: mode 0600 in a 0700 directory, peers other than root or the
//! daemon's own user refused (SO_PEERCRED), requests at most
//! [`MAX_REQUEST`] bytes and [`READ_TIMEOUT`] to arrive, at most
//! [`MAX_CONNECTIONS`] at a time. Anything malformed gets an error reply; the
//! daemon itself never sees it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot, watch},
};

/// Largest request accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Time a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent connections served; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest response the client reads (a long flow listing).
pub const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    BackendAdd {
        service: String,
        address: String,
        weight: Option<i64>,
        name: Option<String>,
        mac: Option<String>,
        /// Priority tier (default 0); absent from an older CLI's request.
        #[serde(default)]
        tier: Option<i64>,
    },
    BackendRemove {
        service: String,
        address: String,
        /// Remove at once, cutting its connections (re-picked), instead of
        /// retiring it.
        #[serde(default)]
        now: bool,
    },
    BackendDrain {
        service: String,
        address: String,
    },
    BackendUndrain {
        service: String,
        address: String,
    },
    BackendWeight {
        service: String,
        address: String,
        weight: i64,
    },
    BackendList {
        service: Option<String>,
    },
    /// Open connections of one backend, counted now (one flow-table walk):
    /// what `voxlb backend drain --wait` polls.
    BackendConnections {
        service: String,
        address: String,
    },
    // Empty braces rather than unit variants: serde ignores extra keys on
    // unit variants of a tagged enum, and the socket refuses them.
    Status {},
    Stats {},
    Flows {
        limit: usize,
    },
    Reload {},
    /// Flow-table census, rebuilds, health events and latency, start time.
    Telemetry {},
    /// Withdraw every VIP of this host (maintenance); forwarding goes on.
    HostDrain {},
    /// Announce again.
    HostUndrain {},
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// A change was made (or was already in effect).
    Ok {
        message: String,
    },
    /// Nothing was changed.
    Error {
        message: String,
    },
    Backends {
        services: Vec<ServiceView>,
    },
    Status(StatusView),
    Stats(StatsView),
    Flows {
        flows: Vec<FlowView>,
    },
    Telemetry(crate::telemetry::TelemetryView),
    Connections(ConnectionsView),
}

/// The connections of one backend, counted at the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsView {
    pub service: String,
    pub address: IpAddr,
    pub state: BackendState,
    /// Agent has not closed ([`lb_common::FlowValue::is_open`]).
    pub open: u64,
    /// Closed within the last few seconds (last ACKs in flight).
    pub closing: u64,
}

impl Response {
    /// An error response.
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
        }
    }
}

/// Declare a closed set of names shown by the CLI and in JSON: an enum that
/// serializes as its lower-case name, displays as it and parses from it, so
/// that the daemon matches on variants (a typo is a compile error) while the
/// wire format stays the plain word. It also compares equal to its word
/// (`state == "active"`), for tests that read the CLI's JSON; the daemon's
/// own code compares variants.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("{other:?} is not a {}", stringify!($name))),
                }
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

pub(crate) use named;

named! {
    /// What the CLI says of a backend: the data plane's state, except that a
    /// backend down for want of a MAC or a route is `unresolved`.
    BackendState {
        /// Serving: in the table (compilers) or steerable (CA).
        Active = "active",
        /// Out of the table, keeps its established flows.
        Draining = "draining",
        /// Removed, keeps its established flows until they end or its grace passes.
        Retiring = "retiring",
        /// Failing its health check: out of the table, its flows re-picked.
        Down = "down",
        /// No MAC (L2) or no route (routed) yet: out of the tables.
        Unresolved = "unresolved",
    }
}

named! {
    /// The kind of a service.
    ServiceKind {
        /// Catalog compilers behind one VIP, balanced with Maglev.
        Compiler = "compiler",
        /// The certificate authority: primary, else standby.
        Ca = "ca",
    }
}

impl ServiceKind {
    /// The data plane's `KIND_*` code.
    pub const fn code(self) -> u32 {
        match self {
            ServiceKind::Compiler => lb_common::KIND_COMPILER,
            ServiceKind::Ca => lb_common::KIND_CA,
        }
    }
}

/// One service as `voxlb status` / `backend list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub kind: ServiceKind,
    /// How its packets reach its backends.
    #[serde(default)]
    pub forwarding: crate::forwarding::Mode,
    pub vip: String,
    pub service_id: u32,
    /// Maglev table size (compiler services).
    pub table_size: Option<u32>,
    /// Backends in the table (compiler) or serving (CA: 0 or 1).
    pub active: usize,
    /// CA services: address of the backend that gets the flows, if any.
    pub ca_target: Option<IpAddr>,
    pub backends: Vec<BackendView>,
    /// Compiler services: [`table_fingerprint`] of the active table. Equal
    /// on two hosts = they send every new flow to the same compiler.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// One backend as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: IpAddr,
    pub name: Option<String>,
    pub id: u32,
    pub generation: u32,
    pub weight: u32,
    pub state: BackendState,
    /// Last health verdict; `None` = not checked yet (counted as up).
    pub healthy: Option<bool>,
    pub mac: Option<String>,
    /// Routed backends: the route (`gue via 10.1.0.1 dev eth0`), or why it
    /// is unresolved. `None` for L2 backends.
    #[serde(default)]
    pub route: Option<String>,
    /// `config`, `cli` (added at run time) or `removed` (retiring).
    pub source: String,
    /// CA services: `primary` or `standby`.
    pub role: Option<String>,
    /// Maglev slots held (compiler services).
    pub slots: u32,
    /// Retiring backends: when the grace ends (ms since the Unix epoch).
    #[serde(default)]
    pub retire_deadline_unix_ms: Option<u64>,
    /// Open connections ([`lb_common::FlowValue::is_open`]) at the last
    /// flow-table scan (`None` until the first scan). Every backend.
    #[serde(default)]
    pub open_flows: Option<u64>,
    /// Priority tier (compiler services).
    #[serde(default)]
    pub tier: u32,
    /// The weight new flows follow, in thousandths of a weight unit
    /// (configured weight x load factor x slow-start ramp; 0 = no new
    /// flows). `None` where the weight controller does not apply.
    #[serde(default)]
    pub effective_weight_milli: Option<u32>,
    /// The smoothed JRuby pressure behind the load factor, permille
    /// (occupancy + queue, 0..2000); `None` = no load data.
    #[serde(default)]
    pub load_pressure_permille: Option<u32>,
    /// The smoothed average borrow time (compile time) the compiler
    /// reports, ms; `None` = no load data or none timed yet.
    #[serde(default)]
    pub load_borrow_ms: Option<u32>,
    /// That borrow time over the serving compilers' lower median, permille
    /// (4000 = compiles take 4x its peers'); `None` = no data.
    #[serde(default)]
    pub load_slowness_permille: Option<u32>,
    /// Load factor, permille of the configured weight.
    #[serde(default)]
    pub load_permille: Option<u32>,
    /// Slow-start share, permille (1000 = warm).
    #[serde(default)]
    pub ramp_permille: Option<u32>,
    /// `serving`, `standby` (usable, not in the active tier) or `unusable`.
    #[serde(default)]
    pub weight_role: Option<String>,
}

/// Copy the controller's answer for one compiler into its view.
pub fn show_weight(view: &mut BackendView, w: &crate::load::EffectiveWeight) {
    view.effective_weight_milli = Some(w.maglev_weight);
    view.load_pressure_permille = w.pressure_permille;
    view.load_borrow_ms = w.borrow_ms;
    view.load_slowness_permille = w.slowness_permille;
    view.load_permille = Some(w.load_permille);
    view.ramp_permille = Some(w.ramp_permille);
    view.weight_role = Some(
        match w.role {
            crate::load::Role::Serving => "serving",
            crate::load::Role::Standby => "standby",
            crate::load::Role::Unusable => "unusable",
        }
        .into(),
    );
}

/// `voxlb status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: Option<PathBuf>,
    pub interfaces: Vec<String>,
    pub services: Vec<ServiceView>,
    /// Backends without a MAC yet (kept out of the tables).
    pub unresolved: Vec<IpAddr>,
    /// The last reload's error, if it failed (the old config stays).
    pub last_reload_error: Option<String>,
    /// The XDP program is attached on every interface (its link pins are
    /// in place).
    #[serde(default)]
    pub attached: bool,
    /// `voxlb host drain` is in effect.
    #[serde(default)]
    pub drained: bool,
    /// BGP announcements and sessions (with `[bgp]`).
    #[serde(default)]
    pub announce: Option<Box<crate::announce::AnnounceView>>,
}

/// `voxlb stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub reasons: Vec<ReasonStat>,
    pub services: Vec<ServiceStat>,
    /// Flood mode (absent from an older daemon's answer: all zero).
    #[serde(default)]
    pub flood: crate::dataplane::FloodStatus,
}

/// Counters of one reason code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonStat {
    pub reason: String,
    /// `tx`, `pass` or `drop`.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of one service and its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStat {
    pub name: String,
    pub kind: ServiceKind,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
    pub backends: Vec<BackendStat>,
}

/// Counters of one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStat {
    pub address: IpAddr,
    pub name: Option<String>,
    pub id: u32,
    pub state: BackendState,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// One flow-table entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub client: String,
    pub vip: String,
    pub proto: String,
    pub backend_id: u32,
    pub generation: u32,
    /// The backend now holding the id, if any.
    pub backend: Option<IpAddr>,
    pub service: Option<String>,
    /// The id changed hands or was freed since: the next packet re-picks.
    pub stale: bool,
}

/// Errors of the control socket, server or client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {0}: another voxlb daemon is already listening there")]
    InUse(PathBuf),
    /// The daemon could not be reached (not running, no permission).
    #[error("cannot reach the voxlb daemon at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered something that is not a response.
    #[error("bad response from the daemon: {0}")]
    Protocol(String),
}

/// One request as the daemon loop receives it.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Bind the control socket: parent directory created 0700 if missing, a
/// stale socket file (nobody listening) replaced, a live one refused, the new
/// socket chmod 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    // Narrow the umask for the bind so the socket is never briefly open to
    // others before the chmod.
    // SAFETY: umask(2) has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serve the control socket until `shutdown` turns true: each request is
/// handed to the daemon loop through `calls`.
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, calls).await {
                tracing::debug!("control connection: {e}");
            }
            drop(permit);
        });
    }
}

fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(c) => c.uid() == 0 || c.uid() == me,
        Err(_) => false,
    }
}

async fn serve_one(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let response = if !peer_allowed(wr.as_ref()) {
        Response::error("permission denied")
    } else {
        let mut line = Vec::new();
        let mut limited = tokio::io::BufReader::new(rd).take(MAX_REQUEST as u64 + 1);
        match tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
            Err(_) => Response::error(format!("request not received within {READ_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                Response::error(format!("request larger than {MAX_REQUEST} bytes"))
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::error(format!("malformed request: {e}")),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    let call = Call { request, reply: tx };
                    if calls.send(call).await.is_err() {
                        Response::error("daemon is shutting down")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Response::error("daemon dropped the request"))
                    }
                }
            },
        }
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    tokio::time::timeout(READ_TIMEOUT, wr.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    wr.shutdown().await
}

/// Resolves once `rx` holds `true` (never, if the sender is gone first).
/// Unlike `wait_for`, the future holds no lock guard, so it is `Send`.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Send one request and wait for the response (blocking; the CLI needs no
/// runtime). `timeout` bounds each read and write.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let unreachable = |source| ControlError::Unreachable {
        path: path.to_owned(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let mut out = serde_json::to_vec(req).expect("requests serialize");
    out.push(b'\n');
    s.write_all(&out).map_err(unreachable)?;
    let mut line = Vec::new();
    BufReader::new(s.take(MAX_RESPONSE))
        .read_until(b'\n', &mut line)
        .map_err(unreachable)?;
    if line.is_empty() {
        return Err(ControlError::Protocol(
            "connection closed without a reply".into(),
        ));
    }
    serde_json::from_slice(&line).map_err(|e| ControlError::Protocol(e.to_string()))
}

#[cfg(test)]
mod named_tests {
    use super::*;

    /// The wire format is the plain word, and every name round-trips.
    #[test]
    fn named_enums_are_their_words_on_the_wire() {
        for s in BackendState::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<BackendState>(&json).unwrap(), *s);
            assert_eq!(s.as_str().parse::<BackendState>().unwrap(), *s);
            assert!(*s == s.as_str());
        }
        for k in ServiceKind::ALL {
            assert_eq!(serde_json::to_string(k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(ServiceKind::Ca.code(), lb_common::KIND_CA);
        assert_eq!(ServiceKind::Compiler.code(), lb_common::KIND_COMPILER);
        assert!("retired".parse::<BackendState>().is_err());
        assert_eq!(
            serde_json::to_string(&crate::forwarding::Mode::Gue).unwrap(),
            "\"gue\""
        );
    }
}
