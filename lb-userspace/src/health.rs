//! Health checks of backends: TCP connect, HTTP and HTTPS `GET`.
//!
//! (Types first; the probes and the rise/fall state machine build on them.)

use std::{path::PathBuf, time::Duration};

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
