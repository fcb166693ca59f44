//! Health probes and the checker task against real servers on 127.0.0.1.
//!
//! Every server here is a task of the test, on an ephemeral port; every wait is
//! bounded by a generous tokio timeout so a bug fails a test instead of hanging
//! it.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use voxlb::health::{
    CheckKind, HealthCheck, HealthEvent, HttpCheck, MAX_BODY, ProbeError, Prober, Target, TlsCheck,
    spawn_checker,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound of any wait in these tests; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a test server does with each connection.
#[derive(Clone)]
enum Behavior {
    /// Read the request, write these bytes, close.
    Respond(Vec<u8>),
    /// `200 running` while the flag is set, `503 error` otherwise.
    Switch(Arc<AtomicBool>),
    /// Read the request, then say nothing (until the client leaves).
    Hang,
    /// Read the request, then reset the connection.
    Reset,
    /// `200` and 10 MiB of body without Content-Length, then close.
    Huge,
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Starts a server on 127.0.0.1; returns its port. It serves until the test
/// (its runtime) ends.
async fn serve(behavior: Behavior, tls: Option<TlsAcceptor>) -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let behavior = behavior.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Behavior::Reset = behavior {
                    read_request(&mut stream).await;
                    stream.set_zero_linger().unwrap();
                    drop(stream);
                    return;
                }
                match tls {
                    None => handle(stream, behavior).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            handle(stream, behavior).await;
                        }
                    }
                }
            });
        }
    });
    port
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, behavior: Behavior) {
    read_request(&mut stream).await;
    let reply = match behavior {
        Behavior::Respond(bytes) => bytes,
        Behavior::Switch(healthy) => {
            if healthy.load(Ordering::SeqCst) {
                response("200 OK", "running")
            } else {
                response("503 Service Unavailable", "error")
            }
        }
        Behavior::Hang => {
            // Wait for the client to give up (read returns 0 or fails), at
            // most PATIENCE.
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await;
            return;
        }
        Behavior::Huge => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            let block = vec![b'x'; 64 * 1024];
            // 160 x 64 KiB = 10 MiB; stops early once the client hangs up.
            for _ in 0..160 {
                if stream.write_all(&block).await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
            return;
        }
        Behavior::Reset => unreachable!("handled before TLS"),
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the end of the request head (bounded).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

fn http_check(port: u16, expect_body: Option<&str>) -> HealthCheck {
    HealthCheck {
        kind: CheckKind::Http(HttpCheck {
            path: "/status/v1/simple".into(),
            expect_status: 200,
            expect_body: expect_body.map(Into::into),
            host: None,
        }),
        port,
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        rise: 2,
        fall: 3,
    }
}

async fn probe(check: HealthCheck) -> Result<(), ProbeError> {
    let prober = Prober::new(check).unwrap();
    tokio::time::timeout(PATIENCE, prober.probe(LOCALHOST))
        .await
        .expect("probe outlived its own timeout")
}

/// A port nothing listens on: bound, then closed.
async fn closed_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- TCP

#[tokio::test]
async fn tcp_open_port_is_healthy() {
    let port = serve(Behavior::Respond(Vec::new()), None).await;
    let mut check = http_check(port, None);
    check.kind = CheckKind::Tcp;
    probe(check).await.unwrap();
}

#[tokio::test]
async fn tcp_closed_port_is_refused() {
    let mut check = http_check(closed_port().await, None);
    check.kind = CheckKind::Tcp;
    let err = probe(check).await.unwrap_err();
    assert!(matches!(err, ProbeError::ConnectRefused(_)), "{err}");
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn http_200_running_is_healthy() {
    let port = serve(Behavior::Respond(response("200 OK", "running")), None).await;
    probe(http_check(port, Some("running"))).await.unwrap();
}

#[tokio::test]
async fn http_503_is_unhealthy() {
    let port = serve(
        Behavior::Respond(response("503 Service Unavailable", "error")),
        None,
    )
    .await;
    let err = probe(http_check(port, Some("running"))).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProbeError::UnexpectedStatus {
                got: 503,
                expected: 200
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn http_200_with_wrong_body_is_unhealthy() {
    let port = serve(Behavior::Respond(response("200 OK", "starting")), None).await;
    let err = probe(http_check(port, Some("running"))).await.unwrap_err();
    assert!(matches!(err, ProbeError::BodyMismatch { .. }), "{err}");
    // Without an expected body, the status alone decides.
    probe(http_check(port, None)).await.unwrap();
}

#[tokio::test]
async fn http_over_ipv6_loopback() {
    // Some sandboxes have no ::1; the probe code is the same either way.
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        lb_testkit::skip::skip(module_path!(), "no IPv6 loopback here", false);
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await.unwrap() {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        stream
            .write_all(&response("200 OK", "running"))
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    let prober = Prober::new(http_check(port, Some("running"))).unwrap();
    let ipv6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    tokio::time::timeout(PATIENCE, prober.probe(ipv6))
        .await
        .unwrap()
        .unwrap();
    let head = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.contains(&format!("\r\nHost: [::1]:{port}\r\n")),
        "{head}"
    );
}

#[tokio::test]
async fn http_chunked_response_is_read() {
    let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nrunn\r\n3\r\ning\r\n0\r\n\r\n"
        .to_vec();
    let port = serve(Behavior::Respond(reply), None).await;
    probe(http_check(port, Some("running"))).await.unwrap();
}

#[tokio::test]
async fn hanging_server_times_out() {
    let port = serve(Behavior::Hang, None).await;
    let mut check = http_check(port, Some("running"));
    check.timeout = Duration::from_millis(300);
    let err = probe(check).await.unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn reset_connection_fails() {
    let port = serve(Behavior::Reset, None).await;
    let err = probe(http_check(port, Some("running"))).await.unwrap_err();
    // The reset arrives while reading the response (or, depending on timing,
    // as an early end of stream); either way it is not a timeout.
    assert!(
        matches!(err, ProbeError::Io(_) | ProbeError::BadHttp(_)),
        "{err}"
    );
}

#[tokio::test]
async fn huge_body_is_bounded() {
    let port = serve(Behavior::Huge, None).await;
    // The expected text is not in the first 64 KiB of x's: a bounded failure.
    let err = probe(http_check(port, Some("running"))).await.unwrap_err();
    assert!(
        matches!(err, ProbeError::BodyTooLarge { limit, .. } if limit == MAX_BODY),
        "{err}"
    );
    // A text found early passes without reading the rest.
    probe(http_check(port, Some("xxxx"))).await.unwrap();
}

#[tokio::test]
async fn plain_http_to_a_tls_server_fails() {
    let pki = Pki::new("plain-to-tls");
    let port = https_server(&pki).await;
    let mut check = http_check(port, Some("running"));
    check.timeout = Duration::from_millis(1000);
    // The server expects a ClientHello and gets "GET ..."; it drops the
    // connection, or (at worst) the probe times out. Never healthy.
    assert!(probe(check).await.is_err());
}

// ---------------------------------------------------------------- HTTPS

/// A CA, another CA, a server certificate for 127.0.0.1 and "backend1" and a
/// client certificate, in a directory of their own.
struct Pki {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Pki {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxlb-health-{}-{test}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();

        let (ca, ca_key) = make_ca("voxlb test CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let (other_ca, _) = make_ca("some other CA");
        std::fs::write(dir.join("other-ca.pem"), other_ca.pem()).unwrap();

        // CertificateParams::new makes "127.0.0.1" an IP SAN, "backend1" a DNS SAN.
        let mut params =
            CertificateParams::new(vec!["backend1".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "backend1");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["voxlb".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();

        Pki {
            dir,
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], self.private_key())
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// An acceptor that demands a client certificate from `ca.pem`.
    fn acceptor_with_client_auth(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.path("ca.pem")).unwrap();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.private_key())
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    fn check(&self, port: u16, tls: TlsCheck) -> HealthCheck {
        let mut check = HealthCheck::openvox_default(tls);
        check.port = port;
        check.timeout = Duration::from_secs(2);
        check
    }

    fn verified(&self) -> TlsCheck {
        TlsCheck {
            ca_file: Some(self.path("ca.pem")),
            insecure: false,
            client_cert: None,
            client_key: None,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

async fn https_server(pki: &Pki) -> u16 {
    serve(
        Behavior::Respond(response("200 OK", "running")),
        Some(pki.acceptor()),
    )
    .await
}

fn set_host(check: &mut HealthCheck, host: &str) {
    let CheckKind::Https(http, _) = &mut check.kind else {
        panic!("not an HTTPS check")
    };
    http.host = Some(host.into());
}

#[tokio::test]
async fn https_verified_against_the_ca_by_ip() {
    let pki = Pki::new("verified-ip");
    let port = https_server(&pki).await;
    probe(pki.check(port, pki.verified())).await.unwrap();
}

#[tokio::test]
async fn https_verified_against_the_ca_by_host_name() {
    let pki = Pki::new("verified-host");
    let port = https_server(&pki).await;
    let mut check = pki.check(port, pki.verified());
    set_host(&mut check, "backend1");
    probe(check.clone()).await.unwrap();

    // A name the certificate does not carry fails verification.
    set_host(&mut check, "backend2");
    let err = probe(check).await.unwrap_err();
    assert!(matches!(err, ProbeError::Tls(_)), "{err}");
}

#[tokio::test]
async fn https_with_the_wrong_ca_fails() {
    let pki = Pki::new("wrong-ca");
    let port = https_server(&pki).await;
    let mut tls = pki.verified();
    tls.ca_file = Some(pki.path("other-ca.pem"));
    let err = probe(pki.check(port, tls)).await.unwrap_err();
    assert!(matches!(err, ProbeError::Tls(_)), "{err}");
}

#[tokio::test]
async fn https_insecure_accepts_any_certificate() {
    let pki = Pki::new("insecure");
    let port = https_server(&pki).await;
    let tls = TlsCheck {
        ca_file: None,
        insecure: true,
        client_cert: None,
        client_key: None,
    };
    let mut check = pki.check(port, tls);
    set_host(&mut check, "not-in-the-cert.example");
    probe(check).await.unwrap();
}

#[tokio::test]
async fn https_with_a_client_certificate() {
    let pki = Pki::new("client-cert");
    let port = serve(
        Behavior::Respond(response("200 OK", "running")),
        Some(pki.acceptor_with_client_auth()),
    )
    .await;

    let mut tls = pki.verified();
    tls.client_cert = Some(pki.path("client.pem"));
    tls.client_key = Some(pki.path("client.key"));
    probe(pki.check(port, tls)).await.unwrap();

    // Without one, the server refuses. TLS 1.3 reports that after the
    // client's Finished, so it may surface on the first read.
    let err = probe(pki.check(port, pki.verified())).await.unwrap_err();
    assert!(
        matches!(err, ProbeError::Tls(_) | ProbeError::Io(_)),
        "{err}"
    );
}

#[tokio::test]
async fn https_setup_errors_name_the_problem() {
    let pki = Pki::new("setup");
    let mut tls = pki.verified();
    tls.ca_file = Some(pki.path("missing.pem"));
    let err = Prober::new(pki.check(1, tls)).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let mut tls = pki.verified();
    tls.client_cert = Some(pki.path("client.pem"));
    let err = Prober::new(pki.check(1, tls)).unwrap_err();
    assert!(err.to_string().contains("client_key"), "{err}");

    // A key file given as CA: no certificate in it.
    let mut tls = pki.verified();
    tls.ca_file = Some(pki.path("client.key"));
    let err = Prober::new(pki.check(1, tls)).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

#[tokio::test]
async fn https_hanging_handshake_times_out() {
    // A plain server that never answers the ClientHello.
    let port = serve(Behavior::Hang, None).await;
    let pki = Pki::new("hang-tls");
    let mut check = pki.check(port, pki.verified());
    check.timeout = Duration::from_millis(300);
    let err = probe(check).await.unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err}");
}

// ---------------------------------------------------------------- checker

fn target() -> Target {
    Target {
        service: "openvox".into(),
        addr: LOCALHOST,
    }
}

async fn next_event(rx: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("no health event in time")
        .expect("checker ended")
}

#[tokio::test]
async fn checker_reports_down_after_fall_and_up_after_rise() {
    let healthy = Arc::new(AtomicBool::new(true));
    let port = serve(Behavior::Switch(healthy.clone()), None).await;
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = spawn_checker(target(), http_check(port, Some("running")), tx, stop_rx);

    // The first probe is always reported.
    let first = next_event(&mut rx).await;
    assert_eq!(first.service, "openvox");
    assert_eq!(first.addr, LOCALHOST);
    assert!(first.up, "{first:?}");

    // Failing: the next event is the Down transition, after `fall` probes.
    healthy.store(false, Ordering::SeqCst);
    let down = next_event(&mut rx).await;
    assert!(!down.up, "{down:?}");
    assert!(down.detail.contains("503"), "{down:?}");

    // Recovering: the next event is Up (nothing in between).
    healthy.store(true, Ordering::SeqCst);
    let up = next_event(&mut rx).await;
    assert!(up.up, "{up:?}");
    assert_eq!(up.detail, "ok");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("checker did not stop")
        .unwrap();
}

/// A backend is reported up after a failed first probe (only `fall`
/// failures take it down); the first probe that passes is then reported too,
/// though the state does not change: announcing a VIP over BGP waits for it.
#[tokio::test]
async fn checker_reports_the_first_passing_probe_after_a_failed_first_one() {
    let healthy = Arc::new(AtomicBool::new(false));
    let port = serve(Behavior::Switch(healthy.clone()), None).await;
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut check = http_check(port, Some("running"));
    check.fall = 100;
    let task = spawn_checker(target(), check, tx, stop_rx);

    let first = next_event(&mut rx).await;
    assert!(first.up, "{first:?}");
    assert!(first.detail.contains("503"), "{first:?}");
    healthy.store(true, Ordering::SeqCst);
    let passed = next_event(&mut rx).await;
    assert!(passed.up, "{passed:?}");
    assert_eq!(passed.detail, "ok");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("checker did not stop")
        .unwrap();
}

#[tokio::test]
async fn checker_of_a_dead_backend_goes_down_and_stops_when_the_sender_goes() {
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = spawn_checker(target(), http_check(closed_port().await, None), tx, stop_rx);

    // Backends start up: the first failed probe is reported, state still up.
    let first = next_event(&mut rx).await;
    assert!(first.up, "{first:?}");
    assert!(first.detail.contains("refused"), "{first:?}");
    let down = next_event(&mut rx).await;
    assert!(!down.up, "{down:?}");

    drop(stop_tx);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("checker did not stop")
        .unwrap();
}

#[tokio::test]
async fn checker_with_a_broken_check_reports_it_once() {
    let (tx, mut rx) = mpsc::channel(16);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let tls = TlsCheck {
        ca_file: Some(Path::new("/nonexistent/ca.pem").to_owned()),
        insecure: false,
        client_cert: None,
        client_key: None,
    };
    let task = spawn_checker(target(), HealthCheck::openvox_default(tls), tx, stop_rx);
    let event = next_event(&mut rx).await;
    assert!(!event.up);
    assert!(event.detail.contains("/nonexistent/ca.pem"), "{event:?}");
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(rx.recv().await.is_none());
}
