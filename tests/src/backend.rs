//! The test backend: a small HTTP/1.1 server over TLS (or plain) that stands
//! in for an OpenVox compiler in end-to-end tests, the demo and benchmarks.
//!
//! Routes (every response carries `X-Backend: NAME` and a Content-Length):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /status/v1/simple` | `200 running`, or `503 error` while failing |
//! | `GET /whoami` | `200`, body = NAME |
//! | `GET /peer` | `200`, body = the client address as this server sees it |
//! | `GET /large?bytes=N&delay_ms=D&chunk=C` | N pattern bytes in chunks of C, D ms × the slow factor apart (a long-lived transfer) |
//! | `GET /catalog?bytes=N&compile_ms=C` | N pattern bytes at once (catalog-sized, for benchmarks), after holding a simulated JRuby instance for C ms (default: the `compile_ms` load setting) × the slow factor |
//! | `GET /status/v1/services?level=debug` | the OpenVox/Puppet Server status document with the simulated JRuby pool (see [`crate::jruby`]); without `level=debug`, the info level (no metrics) |
//! | `POST /control/load?jrubies=N&busy=B&waiting=W&slow_factor_pct=F&compile_ms=C&status_delay_ms=D` | changes the given load settings; answers them as JSON (`GET` answers them unchanged) |
//! | `POST /control/fail` | the health route answers 503 from now on |
//! | `POST /control/recover` | ... and 200 again |
//! | `POST /control/stop` | answers, then closes listeners and connections |
//! | `GET /control/stats` | JSON counters (see [`Stats`]) |
//!
//! The pattern is [`crate::pattern`]. The control routes are answered on
//! every listener; the optional control listener serves the same routes in
//! plain HTTP, so scripts can drive a TLS backend with `curl` and reach it
//! without going through the load balancer.
//!
//! Keep-alive is the default for HTTP/1.1 (`Connection: close` honoured),
//! pipelined requests are answered in order, and HTTP/1.0 closes unless it
//! asks for keep-alive.

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, BufReader as StdBufReader},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    jruby::{JrubyPool, LoadSettings},
    pattern,
};

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body accepted (and discarded).
const MAX_REQUEST_BODY: u64 = 1024 * 1024;
/// How long a connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LARGE_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_CHUNK: u64 = 64 * 1024;
const DEFAULT_CATALOG_BYTES: u64 = 256 * 1024;

/// How to run a backend.
#[derive(Clone, Debug)]
pub struct Config {
    /// Answered by `/whoami` and in `X-Backend`.
    pub name: String,
    /// Main listeners (port 0 picks a free port; see [`Backend::addrs`]).
    pub listen: Vec<SocketAddr>,
    /// TLS for the main listeners; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// A plain-HTTP listener for the control routes (all routes, in fact).
    pub control: Option<SocketAddr>,
}

/// Server TLS configuration from PEM files (certificate chain, private key).
pub fn tls_config_from_files(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let read = |path: &Path| -> anyhow::Result<Vec<u8>> {
        let mut data = Vec::new();
        io::Read::read_to_end(
            &mut StdBufReader::new(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ),
            &mut data,
        )
        .with_context(|| format!("reading {}", path.display()))?;
        Ok(data)
    };
    tls_config_from_pem(&read(cert)?, &read(key)?)
        .with_context(|| format!("TLS setup from {} and {}", cert.display(), key.display()))
}

/// Server TLS configuration from PEM text. ALPN offers `http/1.1`.
pub fn tls_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .context("parsing certificate PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the certificate PEM");
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("parsing key PEM")?
        .context("no private key in the key PEM")?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Counters of a backend, as `GET /control/stats` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start (all listeners).
    pub connections: u64,
    /// Connections open now.
    pub active_connections: u64,
    /// Requests answered since start.
    pub requests: u64,
    /// Whether the health route answers 503.
    pub failing: bool,
}

struct Shared {
    name: String,
    failing: AtomicBool,
    connections: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    stop: watch::Sender<bool>,
    /// Notified when the last open connection ends.
    idle: Notify,
    /// The simulated JRuby pool and load settings.
    jruby: JrubyPool,
}

impl Shared {
    fn stats(&self) -> Stats {
        Stats {
            connections: self.connections.load(Ordering::Relaxed),
            active_connections: self.active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
        }
    }

    fn stats_json(&self) -> String {
        let s = self.stats();
        serde_json::json!({
            "name": self.name,
            "connections": s.connections,
            "active_connections": s.active_connections,
            "requests": s.requests,
            "failing": s.failing,
            "jrubies_borrowed": self.jruby.in_use().0,
            "jrubies_waiting": self.jruby.in_use().1,
        })
        .to_string()
    }
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    control: Option<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// Binds every listener (so a bad address fails here, not later), then
/// serves on the current tokio runtime.
pub async fn spawn(config: Config) -> anyhow::Result<Backend> {
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        name: config.name,
        failing: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        active: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        stop,
        idle: Notify::new(),
        jruby: JrubyPool::default(),
    });
    anyhow::ensure!(!config.listen.is_empty(), "no listen address");

    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push((bind(*addr)?, config.tls.clone().map(TlsAcceptor::from)));
    }
    let control = match config.control {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };

    let addrs = listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    let control_addr = control.as_ref().map(TcpListener::local_addr).transpose()?;
    let mut accept_tasks = Vec::new();
    for (listener, tls) in listeners {
        accept_tasks.push(tokio::spawn(accept_loop(listener, tls, shared.clone())));
    }
    if let Some(listener) = control {
        accept_tasks.push(tokio::spawn(accept_loop(listener, None, shared.clone())));
    }
    Ok(Backend {
        shared,
        addrs,
        control: control_addr,
        accept_tasks,
    })
}

impl Backend {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The main listeners' addresses, in the order of [`Config::listen`].
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first main listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// Makes the health route answer 503 (`true`) or 200 (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The simulated load (see [`crate::jruby`]).
    pub fn load(&self) -> LoadSettings {
        self.shared.jruby.settings()
    }

    /// Changes the simulated load.
    pub fn set_load(&self, settings: LoadSettings) {
        self.shared.jruby.set(settings);
    }

    /// Asks the backend to stop: listeners close, open connections are
    /// dropped. [`Backend::wait`] returns once the listeners are closed.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Whether a stop was asked (by [`Backend::stop`] or `POST /control/stop`).
    pub fn is_stopping(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Resolves once a stop is asked (by [`Backend::stop`] or
    /// `POST /control/stop`).
    pub async fn stopping(&self) {
        stopped(self.shared.stop.subscribe()).await;
    }

    /// Waits until the backend is stopped (by [`Backend::stop`] or
    /// `POST /control/stop`): its listeners closed and its connections
    /// dropped.
    pub async fn wait(mut self) {
        for task in std::mem::take(&mut self.accept_tasks) {
            let _ = task.await;
        }
        // Every connection task ends at its next poll once stopped.
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.active.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Restarting a backend must not wait for TIME_WAIT of the last run.
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(1024)?)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let stop = shared.stop.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped(stop.clone()) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // EMFILE and friends: back off briefly instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        // Counted here, not in the task, so that `Backend::wait` cannot miss
        // a connection whose task has not run yet.
        shared.active.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // Biased: once stopped, not one more request is answered.
            tokio::select! {
                biased;
                _ = stopped(stop) => {}
                _ = connection(stream, peer, tls, &shared) => {}
            }
            if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.idle.notify_waiters();
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Shared,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let _ = serve(stream, peer, shared).await;
        }
        Some(acceptor) => {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = serve(stream, peer, shared).await;
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    content_length: u64,
}

enum HeadError {
    /// The peer closed between requests: the normal end of a connection.
    Closed,
    Bad(&'static str),
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
    }
}

async fn serve<S: AsyncRead + AsyncWrite>(
    io: S,
    peer: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    let (rd, mut wr) = tokio::io::split(io);
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    // Each iteration answers one request the client sent; the client ending
    // the connection, an idle timeout or a close ends it.
    loop {
        let head = match tokio::time::timeout(IDLE_TIMEOUT, read_head(&mut rd)).await {
            Err(_) | Ok(Err(HeadError::Closed)) => return Ok(()),
            Ok(Err(HeadError::Io(e))) => return Err(e),
            Ok(Err(HeadError::Bad(why))) => {
                let response = Response::text(400, why).closing();
                return write_response(&mut wr, shared, response, false).await;
            }
            Ok(Ok(head)) => head,
        };
        if head.content_length > MAX_REQUEST_BODY {
            let response = Response::text(413, "request body too large").closing();
            return write_response(&mut wr, shared, response, false).await;
        }
        // Bodies (of control POSTs, say) are read and ignored.
        let mut body = (&mut rd).take(head.content_length);
        let discarded = tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        if discarded < head.content_length {
            return Ok(());
        }

        let mut response = route(&head, peer, shared);
        if !head.keep_alive {
            response = response.closing();
        }
        let close = response.close;
        let stop_after = response.stop_after;
        write_response(&mut wr, shared, response, true).await?;
        if stop_after {
            shared.stop.send_replace(true);
        }
        if close {
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> Result<Request, HeadError> {
    let mut line = Vec::new();
    let mut used = 0usize;
    // Request line; empty lines before it are allowed (RFC 9112 2.2).
    let request_line = loop {
        line.clear();
        let n = read_line(rd, &mut line, MAX_HEAD - used).await?;
        if n == 0 {
            return Err(if used == 0 {
                HeadError::Closed
            } else {
                HeadError::Bad("connection closed in the request head")
            });
        }
        used += n;
        let text = trim_eol(&line);
        if !text.is_empty() {
            break String::from_utf8_lossy(text).into_owned();
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Bad("bad request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HeadError::Bad("unsupported HTTP version")),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        keep_alive: http11,
        content_length: 0,
    };

    loop {
        line.clear();
        let n = read_line(rd, &mut line, MAX_HEAD - used).await?;
        if n == 0 {
            return Err(HeadError::Bad("connection closed in the request head"));
        }
        used += n;
        let text = trim_eol(&line);
        if text.is_empty() {
            return Ok(request);
        }
        let text = std::str::from_utf8(text).map_err(|_| HeadError::Bad("header not UTF-8"))?;
        let Some((name, value)) = text.split_once(':') else {
            return Err(HeadError::Bad("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            request.content_length = value
                .parse()
                .map_err(|_| HeadError::Bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::Bad("chunked request bodies are not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    request.keep_alive = true;
                }
            }
        }
    }
}

/// Reads one line (up to and including `\n`), at most `limit` bytes.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    rd: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, HeadError> {
    let n = (&mut *rd)
        .take(limit as u64)
        .read_until(b'\n', line)
        .await?;
    if n > 0 && !line.ends_with(b"\n") {
        return Err(HeadError::Bad(if n >= limit {
            "request head too long"
        } else {
            "connection closed in the request head"
        }));
    }
    Ok(n)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What to send back.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Body,
    close: bool,
    /// Stop the backend once this response is sent.
    stop_after: bool,
    /// Wait this long before answering (a slow status answer).
    delay: Duration,
}

enum Body {
    Bytes(Vec<u8>),
    /// `len` pattern bytes, written `chunk` at a time, `delay` apart.
    Pattern {
        len: u64,
        chunk: u64,
        delay: Duration,
    },
    /// A catalog: `len` pattern bytes after holding a JRuby instance for
    /// `compile`.
    Compiled {
        len: u64,
        compile: Duration,
        uri: String,
    },
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain",
            body: Body::Bytes(body.into().into_bytes()),
            close: false,
            stop_after: false,
            delay: Duration::ZERO,
        }
    }

    fn json(status: u16, body: &serde_json::Value) -> Self {
        let mut r = Response::text(status, body.to_string());
        r.content_type = "application/json;charset=utf-8";
        r
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::Pattern { len, .. } | Body::Compiled { len, .. } => *len,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn route(req: &Request, peer: SocketAddr, shared: &Shared) -> Response {
    let method = req.method.as_str();
    let expect = |m: &str, response: Response| {
        if method == m {
            response
        } else {
            Response::text(405, format!("use {m}"))
        }
    };
    match req.path.as_str() {
        "/status/v1/simple" => expect("GET", {
            if shared.failing.load(Ordering::Relaxed) {
                Response::text(503, "error")
            } else {
                Response::text(200, "running")
            }
        }),
        "/whoami" => expect("GET", Response::text(200, shared.name.clone())),
        "/peer" => expect("GET", Response::text(200, peer.to_string())),
        "/large" => expect("GET", {
            match query_u64s(&req.query, &["bytes", "delay_ms", "chunk"]) {
                Ok([bytes, delay_ms, chunk]) => pattern_response(
                    bytes.unwrap_or(DEFAULT_LARGE_BYTES),
                    chunk.filter(|&c| c > 0).unwrap_or(DEFAULT_CHUNK),
                    shared
                        .jruby
                        .settings()
                        .slowed(Duration::from_millis(delay_ms.unwrap_or(0))),
                ),
                Err(e) => Response::text(400, e),
            }
        }),
        "/catalog" => expect("GET", {
            match query_u64s(&req.query, &["bytes", "compile_ms"]) {
                Ok([bytes, compile_ms]) => {
                    let load = shared.jruby.settings();
                    let compile = Duration::from_millis(compile_ms.unwrap_or(load.compile_ms));
                    Response {
                        status: 200,
                        content_type: "application/octet-stream",
                        body: Body::Compiled {
                            len: bytes.unwrap_or(DEFAULT_CATALOG_BYTES),
                            compile: load.slowed(compile),
                            uri: format!("{}?{}", req.path, req.query),
                        },
                        close: false,
                        stop_after: false,
                        delay: Duration::ZERO,
                    }
                }
                Err(e) => Response::text(400, e),
            }
        }),
        "/status/v1/services" => expect("GET", {
            let debug = req.query.split('&').any(|p| p == "level=debug");
            let mut r = Response::json(200, &shared.jruby.service_status(debug));
            r.delay = Duration::from_millis(shared.jruby.settings().status_delay_ms);
            r
        }),
        "/control/load" => {
            let mut load = shared.jruby.settings();
            match method {
                "GET" => {}
                "POST" => {
                    if let Err(e) = load.apply_query(&req.query) {
                        return Response::text(400, e);
                    }
                    shared.jruby.set(load);
                }
                _ => return Response::text(405, "use GET or POST"),
            }
            Response::json(
                200,
                &serde_json::json!({
                    "jrubies": load.jrubies,
                    "busy": load.busy,
                    "waiting": load.waiting,
                    "slow_factor_pct": load.slow_factor_pct,
                    "compile_ms": load.compile_ms,
                    "status_delay_ms": load.status_delay_ms,
                }),
            )
        }
        "/control/fail" => expect("POST", {
            shared.failing.store(true, Ordering::Relaxed);
            Response::text(200, "failing")
        }),
        "/control/recover" => expect("POST", {
            shared.failing.store(false, Ordering::Relaxed);
            Response::text(200, "recovered")
        }),
        "/control/stop" => expect("POST", {
            let mut r = Response::text(200, "stopping").closing();
            r.stop_after = true;
            r
        }),
        "/control/stats" => expect("GET", {
            let mut r = Response::text(200, shared.stats_json());
            r.content_type = "application/json";
            r
        }),
        _ => Response::text(404, "not found"),
    }
}

fn pattern_response(len: u64, chunk: u64, delay: Duration) -> Response {
    Response {
        status: 200,
        content_type: "application/octet-stream",
        body: Body::Pattern { len, chunk, delay },
        close: false,
        stop_after: false,
        delay: Duration::ZERO,
    }
}

/// The values of `names` in a query string (`None` when absent).
fn query_u64s<const N: usize>(query: &str, names: &[&str; N]) -> Result<[Option<u64>; N], String> {
    let mut values = [None; N];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(i) = names.iter().position(|n| *n == key) {
            values[i] = Some(
                value
                    .parse()
                    .map_err(|_| format!("{key}={value:?} is not a number"))?,
            );
        }
    }
    Ok(values)
}

async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    shared: &Shared,
    response: Response,
    counted: bool,
) -> io::Result<()> {
    if counted {
        shared.requests.fetch_add(1, Ordering::Relaxed);
    }
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    let mut response = response;
    if let Body::Compiled { len, compile, uri } = response.body {
        // The instance is held for the compile and returned before the
        // catalog is sent, as a compiler does.
        let borrowed = shared.jruby.borrow(&uri).await;
        tokio::time::sleep(compile).await;
        drop(borrowed);
        response.body = Body::Pattern {
            len,
            chunk: u64::MAX,
            delay: Duration::ZERO,
        };
    }
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Backend: {}\r\nConnection: {}\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.len(),
        shared.name,
        if response.close {
            "close"
        } else {
            "keep-alive"
        },
    );
    match response.body {
        Body::Bytes(body) => {
            // One write for head and small bodies: one segment per answer.
            let mut all = head.into_bytes();
            all.extend_from_slice(&body);
            wr.write_all(&all).await?;
        }
        Body::Compiled { .. } => unreachable!("compiled above"),
        Body::Pattern { len, chunk, delay } => {
            wr.write_all(head.as_bytes()).await?;
            let mut sent = 0u64;
            while sent < len {
                let chunk_end = sent.saturating_add(chunk).min(len);
                while sent < chunk_end {
                    let n = (chunk_end - sent).min(pattern::BLOCK as u64) as usize;
                    wr.write_all(pattern::slice(sent, n)).await?;
                    sent += n as u64;
                }
                if !delay.is_zero() && sent < len {
                    wr.flush().await?;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        let [a, b, c] =
            query_u64s("bytes=10&chunk=3&x=y", &["bytes", "delay_ms", "chunk"]).unwrap();
        assert_eq!((a, b, c), (Some(10), None, Some(3)));
        assert!(query_u64s("bytes=ten", &["bytes"]).is_err());
        assert_eq!(query_u64s("", &["bytes"]).unwrap(), [None]);
    }

    async fn head_of(text: &str) -> Result<Request, HeadError> {
        let mut rd = BufReader::new(text.as_bytes());
        read_head(&mut rd).await
    }

    #[tokio::test]
    async fn request_heads() {
        let r = head_of("GET /large?bytes=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_str()),
            ("GET", "/large", "bytes=5")
        );
        assert!(r.keep_alive);
        let r = head_of("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()
            .unwrap();
        assert!(!r.keep_alive);
        let r = head_of("GET / HTTP/1.0\r\n\r\n").await.ok().unwrap();
        assert!(!r.keep_alive);
        let r = head_of("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .await
            .ok()
            .unwrap();
        assert!(r.keep_alive);
        let r = head_of("\r\nPOST /control/fail HTTP/1.1\nContent-Length: 3\n\nabc")
            .await
            .ok()
            .unwrap();
        assert_eq!(r.content_length, 3);
        assert!(matches!(head_of("").await, Err(HeadError::Closed)));
        for bad in [
            "GET /\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "GET / HTTP/1.1\r\nnocolon\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert!(
                matches!(head_of(bad).await, Err(HeadError::Bad(_))),
                "{bad:?}"
            );
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head_of(&long).await, Err(HeadError::Bad(_))));
    }
}
