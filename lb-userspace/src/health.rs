//! Health checks of backends: TCP connect, HTTP and HTTPS `GET`.
//!
//! - [`HealthCheck`] says what to probe and how often; [`Prober`] is a check
//!   made ready to run (its TLS client configuration built once).
//! - [`probe`] / [`Prober::probe`] run one probe, bounded by the check's
//!   timeout from connect to the last byte read.
//! - [`HealthState`] turns probe results into up/down transitions with
//!   rise/fall hysteresis; pure, no I/O.
//! - [`spawn_checker`] runs one backend's probes on a fixed interval and sends
//!   a [`HealthEvent`] on each transition to the task that owns the maps.

mod http;
mod tls;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};

pub use http::{MAX_BODY, MAX_HEAD, Response as HttpResponse};
pub use tls::{NoVerification, client_config};

/// How to probe one backend, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Port to probe (the backend's service port, 8140 for OpenVox).
    pub port: u16,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take, connect + TLS + response included.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` over plain HTTP/1.1 answers `expect_status` (and contains
    /// `expect_body`, if set).
    Http(HttpCheck),
    /// The same over TLS.
    Https(HttpCheck, TlsCheck),
}

/// The HTTP part of an HTTP(S) check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    /// `Host` header (and TLS server name); the backend address if unset.
    pub host: Option<String>,
}

/// How an HTTPS check verifies the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCheck {
    /// PEM file of the CA that signed the backends' certificates
    /// (OpenVox: the puppet CA, `ca_crt.pem`).
    pub ca_file: Option<PathBuf>,
    /// Skip verification. Must be said explicitly in the config.
    pub insecure: bool,
    /// Client certificate and key (PEM), for servers that require one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A rule an HTTPS check's TLS settings break: the one definition, used
/// by config validation (which names the key) and by the checker (which
/// refuses to start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsRule {
    #[error(
        "an https check needs the CA file that signed the backends' certificates (or, explicitly, insecure = true)"
    )]
    NoCaFile,
    #[error("insecure = true and ca_file contradict each other")]
    InsecureWithCaFile,
    #[error("client_cert and client_key go together")]
    ClientCertWithoutKey,
    #[error("client_cert and client_key go together")]
    ClientKeyWithoutCert,
}

impl TlsRule {
    /// The config key the rule is about.
    pub fn key(self) -> &'static str {
        match self {
            TlsRule::NoCaFile => "ca_file",
            TlsRule::InsecureWithCaFile => "insecure",
            TlsRule::ClientCertWithoutKey => "client_key",
            TlsRule::ClientKeyWithoutCert => "client_cert",
        }
    }
}

impl TlsCheck {
    /// Check the settings against the rules of an HTTPS check.
    pub fn check(&self) -> Result<(), TlsRule> {
        if self.ca_file.is_none() && !self.insecure {
            return Err(TlsRule::NoCaFile);
        }
        if self.ca_file.is_some() && self.insecure {
            return Err(TlsRule::InsecureWithCaFile);
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(TlsRule::ClientCertWithoutKey),
            (None, Some(_)) => Err(TlsRule::ClientKeyWithoutCert),
            _ => Ok(()),
        }
    }
}

impl HealthCheck {
    /// The OpenVox Server default: HTTPS `GET /status/v1/simple` on 8140,
    /// expecting 200 and `running`.
    pub fn openvox_default(tls: TlsCheck) -> Self {
        HealthCheck {
            kind: CheckKind::Https(
                HttpCheck {
                    path: "/status/v1/simple".into(),
                    expect_status: 200,
                    expect_body: Some("running".into()),
                    host: None,
                },
                tls,
            ),
            port: 8140,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Why a check cannot be run at all (a configuration problem, found before
/// the first probe).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read PEM file {path}: {source}")]
    ReadPem { path: PathBuf, source: io::Error },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no private key in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("bad CA certificate in {path}: {source}")]
    BadCaCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0}")]
    Tls(#[from] TlsRule),
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("HTTP path {0:?} must start with '/' and contain no spaces or control characters")]
    InvalidPath(String),
    #[error("host {0:?} is not a valid host name or IP address")]
    InvalidHost(String),
    #[error("interval and timeout must be longer than zero")]
    ZeroDuration,
}

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused by {0}")]
    ConnectRefused(SocketAddr),
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// Reading or writing after the connection was up (a reset, say).
    #[error("connection error: {0}")]
    Io(io::Error),
    #[error("bad HTTP response: {0}")]
    BadHttp(String),
    #[error("HTTP status {got}, expected {expected}")]
    UnexpectedStatus { got: u16, expected: u16 },
    #[error("response body does not contain {expected:?}")]
    BodyMismatch { expected: String },
    #[error("response body does not contain {expected:?} in its first {limit} bytes")]
    BodyTooLarge { expected: String, limit: usize },
    #[error("an HTTPS check needs a TLS client configuration")]
    NoTlsConfig,
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// A check ready to run: validated, its TLS client configuration built once.
#[derive(Clone, Debug)]
pub struct Prober {
    check: HealthCheck,
    tls: Option<Arc<ClientConfig>>,
}

impl Prober {
    /// Validates `check` and, for HTTPS, reads its PEM files.
    pub fn new(check: HealthCheck) -> Result<Self, SetupError> {
        if check.interval.is_zero() || check.timeout.is_zero() {
            return Err(SetupError::ZeroDuration);
        }
        let tls = match &check.kind {
            CheckKind::Tcp => None,
            CheckKind::Http(http) => {
                validate_http(http)?;
                None
            }
            CheckKind::Https(http, tls) => {
                validate_http(http)?;
                Some(client_config(tls)?)
            }
        };
        Ok(Prober { check, tls })
    }

    pub fn check(&self) -> &HealthCheck {
        &self.check
    }

    /// One probe of `addr` on the check's port.
    pub async fn probe(&self, addr: IpAddr) -> Result<(), ProbeError> {
        probe(addr, &self.check, self.tls.as_ref()).await
    }
}

fn validate_http(http: &HttpCheck) -> Result<(), SetupError> {
    let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c == ' ' || c.is_control());
    if !http.path.starts_with('/') || !clean(&http.path) {
        return Err(SetupError::InvalidPath(http.path.clone()));
    }
    if let Some(host) = &http.host
        && (!clean(host) || ServerName::try_from(host.as_str()).is_err())
    {
        return Err(SetupError::InvalidHost(host.clone()));
    }
    Ok(())
}

/// Probes `addr` once as `check` says. `tls` is the client configuration of
/// an HTTPS check (see [`client_config`]; [`Prober`] keeps one); it is
/// ignored by the other kinds.
///
/// Connect, TLS handshake, request and response together take at most
/// `check.timeout`; at most [`MAX_HEAD`] + [`MAX_BODY`] bytes are read.
pub async fn probe(
    addr: IpAddr,
    check: &HealthCheck,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<(), ProbeError> {
    let run = probe_inner(SocketAddr::new(addr, check.port), check, tls);
    tokio::time::timeout(check.timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(check.timeout)))
}

async fn probe_inner(
    addr: SocketAddr,
    check: &HealthCheck,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<(), ProbeError> {
    let (http, tls) = match &check.kind {
        CheckKind::Tcp => {
            connect(addr).await?;
            return Ok(());
        }
        CheckKind::Http(http) => (http, None),
        CheckKind::Https(http, _) => (http, Some(tls.ok_or(ProbeError::NoTlsConfig)?)),
    };
    validate_http(http)?;
    let want_body = http.expect_body.is_some();
    let response = get(
        addr,
        http.host.as_deref(),
        tls,
        &http.path,
        want_body,
        MAX_BODY,
    )
    .await?;
    if response.status != http.expect_status {
        return Err(ProbeError::UnexpectedStatus {
            got: response.status,
            expected: http.expect_status,
        });
    }
    if let Some(expected) = &http.expect_body
        && !http::contains(&response.body, expected.as_bytes())
    {
        return Err(if response.truncated {
            ProbeError::BodyTooLarge {
                expected: expected.clone(),
                limit: MAX_BODY,
            }
        } else {
            ProbeError::BodyMismatch {
                expected: expected.clone(),
            }
        });
    }
    Ok(())
}

/// One `GET path` from `addr` over plain HTTP (`tls` = `None`) or HTTPS,
/// with `host` as Host header and TLS server name (the address if `None`),
/// keeping at most `max_body` bytes of the body. Unbounded in time: the
/// caller wraps it in its timeout. Shared by the probes and the load poller
/// ([`crate::load::fetch`]), so there is one HTTP client.
pub(crate) async fn get(
    addr: SocketAddr,
    host: Option<&str>,
    tls: Option<&Arc<ClientConfig>>,
    path: &str,
    want_body: bool,
    max_body: usize,
) -> Result<http::Response, ProbeError> {
    let host_header = match host {
        Some(host) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("[{host}]:{}", addr.port())
        }
        Some(host) => format!("{host}:{}", addr.port()),
        None => addr.to_string(), // "[::1]:8140" for IPv6, as Host wants
    };
    let stream = connect(addr).await?;
    match tls {
        None => http::exchange_capped(stream, &host_header, path, want_body, max_body).await,
        Some(config) => {
            let name = match host {
                Some(host) => ServerName::try_from(host.to_owned())
                    .map_err(|_| SetupError::InvalidHost(host.to_owned()))?,
                None => ServerName::IpAddress(addr.ip().into()),
            };
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(ProbeError::Tls)?;
            http::exchange_capped(stream, &host_header, path, want_body, max_body).await
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(|source| {
        if source.kind() == io::ErrorKind::ConnectionRefused {
            ProbeError::ConnectRefused(addr)
        } else {
            ProbeError::Connect { addr, source }
        }
    })?;
    // Requests are one small write; don't let Nagle hold it back.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A change of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Rise/fall hysteresis over probe results: an up backend goes down after
/// `fall` consecutive failures, a down one comes up after `rise` consecutive
/// successes. A result that agrees with the current state resets the streak
/// of the other kind.
///
/// The daemon starts every backend **up** ([`HealthState::new`] with
/// `up = true`): after a daemon restart the data plane is still forwarding
/// established flows to those backends, and pulling them all out of the ring
/// until `rise` probes have passed would reset connections for nothing. A
/// backend that is really dead goes down after `fall` probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl HealthState {
    /// `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        HealthState {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one probe result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

/// One backend of one service, as the checker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: String,
    pub addr: IpAddr,
}

/// What a checker tells the owner of the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: String,
    pub addr: IpAddr,
    /// The backend's state after this event.
    pub up: bool,
    /// The result of the probe that caused the event ("ok" or the error).
    pub detail: String,
}

/// Spawns the checker of one backend: [`Prober::new`], then
/// [`spawn_prober`]. If the check cannot be set up (unreadable CA file...),
/// the task sends one event with `up = false` naming the problem and ends;
/// validate checks with [`Prober::new`] when loading the configuration to
/// catch that earlier.
pub fn spawn_checker(
    target: Target,
    check: HealthCheck,
    tx: mpsc::Sender<HealthEvent>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match Prober::new(check) {
        Ok(prober) => spawn_prober(target, Arc::new(prober), tx, shutdown),
        Err(e) => tokio::spawn(async move {
            let event = HealthEvent {
                service: target.service,
                addr: target.addr,
                up: false,
                detail: format!("health check setup failed: {e}"),
            };
            let _ = tx.send(event).await;
        }),
    }
}

/// Spawns the checker of one backend with a prepared [`Prober`] (share one
/// among the backends of a service).
///
/// Probes run every `interval` (the first one at once; a slow probe delays
/// the next tick rather than bunching them). Events: one after the first
/// probe, with the state it leaves (up, unless `fall` is 1), then one per
/// transition, plus one (up, "ok") at the first passing probe if the first
/// probe failed: a backend reported up only because `fall` failures have not
/// happened yet is not *known* to be up, and announcing a VIP over BGP waits
/// for that knowledge (see `crate::announce`). The task ends when `shutdown` turns true or its sender is
/// dropped, or when `tx` is closed.
pub fn spawn_prober(
    target: Target,
    prober: Arc<Prober>,
    tx: mpsc::Sender<HealthEvent>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run_checker(target, prober, tx, shutdown))
}

async fn run_checker(
    target: Target,
    prober: Arc<Prober>,
    tx: mpsc::Sender<HealthEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let check = prober.check();
    let mut state = HealthState::new(check.rise, check.fall, true);
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    let mut passed = false;
    loop {
        let result = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return,
            result = async {
                interval.tick().await;
                let started = std::time::Instant::now();
                let r = prober.probe(target.addr).await;
                crate::telemetry::record_probe(&target.service, target.addr, started);
                r
            } => result,
        };
        let transition = state.observe(result.is_ok());
        let detail = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        match (&result, transition) {
            (_, Some(t)) => tracing::info!(
                service = %target.service, backend = %target.addr, ?t, %detail,
                "backend health changed"
            ),
            (Err(_), None) => tracing::debug!(
                service = %target.service, backend = %target.addr, %detail,
                "health probe failed"
            ),
            (Ok(()), None) => {}
        }
        let first_pass = !passed && result.is_ok() && state.is_up();
        passed |= first_pass;
        if transition.is_none() && !first && !first_pass {
            continue;
        }
        first = false;
        let event = HealthEvent {
            service: target.service.clone(),
            addr: target.addr,
            up: state.is_up(),
            detail,
        };
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return,
            sent = tx.send(event) => if sent.is_err() { return },
        }
    }
}

/// Resolves once shutdown is asked for, or can no longer be (sender gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_goes_down_after_fall_failures() {
        let mut s = HealthState::new(2, 3, true);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert!(s.is_up());
        assert_eq!(s.observe(false), Some(Transition::Down));
        assert!(!s.is_up());
        // Staying down reports nothing more.
        assert_eq!(s.observe(false), None);
    }

    #[test]
    fn down_comes_up_after_rise_successes() {
        let mut s = HealthState::new(2, 3, false);
        assert_eq!(s.observe(true), None);
        assert!(!s.is_up());
        assert_eq!(s.observe(true), Some(Transition::Up));
        assert!(s.is_up());
        assert_eq!(s.observe(true), None);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut s = HealthState::new(2, 3, true);
        for _ in 0..10 {
            assert_eq!(s.observe(false), None);
            assert_eq!(s.observe(false), None);
            assert_eq!(s.observe(true), None);
        }
        assert!(s.is_up());
    }

    #[test]
    fn a_failure_resets_the_success_streak() {
        let mut s = HealthState::new(3, 1, false);
        for _ in 0..10 {
            assert_eq!(s.observe(true), None);
            assert_eq!(s.observe(true), None);
            assert_eq!(s.observe(false), None);
        }
        assert!(!s.is_up());
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(Transition::Up));
    }

    #[test]
    fn streak_restarts_after_a_transition() {
        let mut s = HealthState::new(2, 2, true);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(Transition::Down));
        // The failures that took it down do not count towards rising.
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(Transition::Up));
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(Transition::Down));
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once_and_zero_counts_as_one() {
        for n in [0, 1] {
            let mut s = HealthState::new(n, n, true);
            assert_eq!(s.observe(true), None);
            assert_eq!(s.observe(false), Some(Transition::Down));
            assert_eq!(s.observe(false), None);
            assert_eq!(s.observe(true), Some(Transition::Up));
        }
    }

    #[test]
    fn setup_rejects_bad_checks() {
        let http = |path: &str, host: Option<&str>| HttpCheck {
            path: path.into(),
            expect_status: 200,
            expect_body: None,
            host: host.map(Into::into),
        };
        let mut check = HealthCheck::openvox_default(TlsCheck {
            ca_file: None,
            insecure: false,
            client_cert: None,
            client_key: None,
        });
        assert!(matches!(
            Prober::new(check.clone()),
            Err(SetupError::Tls(TlsRule::NoCaFile))
        ));
        // Every TLS rule, checked where the checker is made (the config names
        // the key of the same rule: tests/config.rs).
        let mut tls = TlsCheck {
            ca_file: Some("/ca.pem".into()),
            insecure: true,
            client_cert: None,
            client_key: None,
        };
        assert_eq!(tls.check(), Err(TlsRule::InsecureWithCaFile));
        tls.insecure = false;
        tls.client_cert = Some("/c.pem".into());
        assert_eq!(tls.check(), Err(TlsRule::ClientCertWithoutKey));
        tls.client_cert = None;
        tls.client_key = Some("/k.pem".into());
        assert_eq!(tls.check(), Err(TlsRule::ClientKeyWithoutCert));
        tls.client_cert = Some("/c.pem".into());
        assert_eq!(tls.check(), Ok(()));
        check.kind = CheckKind::Http(http("status", None));
        assert!(matches!(
            Prober::new(check.clone()),
            Err(SetupError::InvalidPath(_))
        ));
        check.kind = CheckKind::Http(http("/a b", None));
        assert!(matches!(
            Prober::new(check.clone()),
            Err(SetupError::InvalidPath(_))
        ));
        check.kind = CheckKind::Http(http("/", Some("bad\r\nX-Evil: 1")));
        assert!(matches!(
            Prober::new(check.clone()),
            Err(SetupError::InvalidHost(_))
        ));
        check.kind = CheckKind::Http(http("/", Some("puppet.example.com")));
        assert!(Prober::new(check.clone()).is_ok());
        check.interval = Duration::ZERO;
        assert!(matches!(Prober::new(check), Err(SetupError::ZeroDuration)));
    }
}
