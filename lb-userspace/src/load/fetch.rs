//! Reads `GET /status/v1/services?level=debug` from a compiler, with the
//! same HTTP(S) client, TLS settings, port and Host name as its health check
//! (OpenVox Server's stock `auth.conf` serves this endpoint without a client
//! certificate; one configured for the health check is presented too).
//!
//! Every fetch is bounded: [`LoadPoller::timeout`] from connect to the last
//! byte, and at most [`MAX_STATUS_BODY`] bytes of body. A body over the cap
//! is an error, not a truncated parse.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use rustls::ClientConfig;

use super::{
    status::{self, JrubyMetrics, STATUS_PATH, StatusError},
    weights::LoadInput,
};
use crate::health::{CheckKind, HealthCheck, ProbeError, SetupError, client_config, get};

/// Largest status answer read. A debug answer is about 10 KiB for a small
/// pool; each borrowed or waiting request adds a few hundred bytes, so 1 MiB
/// is thousands of queued requests.
pub const MAX_STATUS_BODY: usize = 1024 * 1024;

/// Why a fetch gave no load data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] ProbeError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0} from the status endpoint")]
    Status(u16),
    #[error("status answer longer than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Parse(#[from] StatusError),
}

/// Reads compilers' load, made ready from a compiler service's health check.
#[derive(Clone, Debug)]
pub struct LoadPoller {
    port: u16,
    host: Option<String>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    max_body: usize,
}

/// Why a poller cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PollerSetupError {
    #[error("load polling needs an http or https health check (it uses its TLS settings)")]
    NotHttp,
    #[error("timeout must be longer than zero")]
    ZeroTimeout,
    #[error(transparent)]
    Tls(#[from] SetupError),
}

impl LoadPoller {
    /// A poller using `check`'s port, Host name and TLS settings.
    pub fn new(check: &HealthCheck, timeout: Duration) -> Result<Self, PollerSetupError> {
        if timeout.is_zero() {
            return Err(PollerSetupError::ZeroTimeout);
        }
        let (http, tls) = match &check.kind {
            CheckKind::Tcp => return Err(PollerSetupError::NotHttp),
            CheckKind::Http(http) => (http, None),
            CheckKind::Https(http, tls) => (http, Some(client_config(tls)?)),
        };
        Ok(LoadPoller {
            port: check.port,
            host: http.host.clone(),
            tls,
            timeout,
            max_body: MAX_STATUS_BODY,
        })
    }

    /// The same with another body cap (tests).
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fetches and parses the status of the compiler at `addr`.
    pub async fn fetch(&self, addr: IpAddr) -> Result<JrubyMetrics, FetchError> {
        let addr = SocketAddr::new(addr, self.port);
        let run = get(
            addr,
            self.host.as_deref(),
            self.tls.as_ref(),
            STATUS_PATH,
            true,
            self.max_body,
        );
        let response = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        if response.status != 200 {
            return Err(FetchError::Status(response.status));
        }
        if response.truncated {
            return Err(FetchError::TooLarge(self.max_body));
        }
        Ok(status::parse(&response.body)?)
    }

    /// [`LoadPoller::fetch`] as the controller's input: any failure is "no
    /// load data".
    pub async fn poll(&self, addr: IpAddr) -> LoadInput {
        match self.fetch(addr).await {
            Ok(m) => LoadInput::Sample(m.signal()),
            Err(e) => {
                tracing::debug!(%addr, "no load data: {e}");
                LoadInput::NoData
            }
        }
    }
}
