//! A small HTTP/1.1 client for tests: keep-alive requests over plain TCP or
//! TLS, whole or streamed bodies. It reads Content-Length bodies only (all
//! that the test backend sends).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail, ensure};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Take},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Client TLS configuration trusting the CA(s) in `ca_pem`.
pub fn tls_config(ca_pem: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.context("parsing CA PEM")?)?;
    }
    ensure!(!roots.is_empty(), "no certificate in the CA PEM");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/1.1 connection.
pub struct Client<S> {
    io: BufReader<S>,
}

pub type PlainClient = Client<TcpStream>;
pub type TlsClient = Client<TlsStream<TcpStream>>;

pub async fn connect_plain(addr: SocketAddr) -> anyhow::Result<PlainClient> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(Client {
        io: BufReader::new(stream),
    })
}

/// Connects to `addr` and verifies that the server is `server_name` (a DNS
/// name or an IP address in its certificate).
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsClient> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("server name {server_name:?}"))?;
    let stream = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {addr} as {server_name}"))?;
    Ok(Client {
        io: BufReader::new(stream),
    })
}

/// Status and headers of a response.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_length: u64,
}

impl ResponseHead {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Response {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// `GET path`, whole body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path).await
    }

    /// `method path` on this connection (kept alive), whole body.
    pub async fn request(&mut self, method: &str, path: &str) -> anyhow::Result<Response> {
        let head = self.send(method, path, &[]).await?;
        let mut body = Vec::new();
        self.body(&head).read_to_end(&mut body).await?;
        ensure!(
            body.len() as u64 == head.content_length,
            "body ended after {} of {} bytes",
            body.len(),
            head.content_length
        );
        Ok(Response { head, body })
    }

    /// Sends a request (with `extra_headers`, e.g. `("Connection", "close")`)
    /// and reads the response head; read the body with [`Client::body`].
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> anyhow::Result<ResponseHead> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: backend\r\n");
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            request.push_str("Content-Length: 0\r\n");
        }
        request.push_str("\r\n");
        self.io.write_all(request.as_bytes()).await?;
        self.io.flush().await?;
        self.read_head().await
    }

    /// The body of the response whose head is `head`, as a reader.
    pub fn body(&mut self, head: &ResponseHead) -> Take<&mut BufReader<S>> {
        (&mut self.io).take(head.content_length)
    }

    async fn read_head(&mut self) -> anyhow::Result<ResponseHead> {
        let mut line = String::new();
        let mut lines = Vec::new();
        // 100 lines of 8 KiB at most: enough for any test server.
        for _ in 0..100 {
            line.clear();
            let n = (&mut self.io)
                .take(8192)
                .read_line(&mut line)
                .await
                .context("reading response head")?;
            ensure!(n > 0, "connection closed before a complete response head");
            let text = line.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                return parse_head(&lines);
            }
            lines.push(text.to_owned());
        }
        bail!("response head too long")
    }
}

fn parse_head(lines: &[String]) -> anyhow::Result<ResponseHead> {
    let status_line = lines.first().context("empty response head")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut head = ResponseHead {
        status,
        headers,
        content_length: 0,
    };
    head.content_length = head
        .header("content-length")
        .context("response without Content-Length")?
        .parse()
        .context("bad Content-Length")?;
    Ok(head)
}
