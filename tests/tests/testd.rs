//! The test backend, in-process and as the `voxlb-testd` binary, on loopback
//! with ephemeral ports, talked to over real TLS.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use voxlb_tests::{
    backend::{self, Backend, Config},
    client::{self, TlsClient},
    pattern,
    pki::{HostSpec, Pki},
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second loopback address, standing in for a VIP (all of 127/8 is local).
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Upper bound of any wait; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

fn pki() -> Pki {
    Pki::generate(
        "testd CA",
        &[HostSpec::new("backend1", &[LOCALHOST])],
        &[VIP.to_string()],
    )
    .unwrap()
}

async fn start(pki: &Pki, listen: &[IpAddr]) -> Backend {
    let host = pki.host("backend1").unwrap();
    backend::spawn(Config {
        name: "backend1".into(),
        listen: listen.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
        tls: Some(
            backend::tls_config_from_pem(host.cert_pem.as_bytes(), host.key_pem.as_bytes())
                .unwrap(),
        ),
        control: Some(SocketAddr::new(LOCALHOST, 0)),
    })
    .await
    .unwrap()
}

async fn connect(pki: &Pki, addr: SocketAddr) -> TlsClient {
    let config = client::tls_config(pki.ca_pem.as_bytes()).unwrap();
    let name = addr.ip().to_string();
    within(client::connect_tls(addr, &name, config))
        .await
        .unwrap()
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("no answer in time")
}

#[tokio::test]
async fn routes_over_one_keep_alive_tls_connection() {
    let pki = pki();
    let backend = start(&pki, &[LOCALHOST]).await;
    let mut c = connect(&pki, backend.addr()).await;

    let r = within(c.get("/status/v1/simple")).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "running"));
    assert_eq!(r.header("X-Backend"), Some("backend1"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));

    let r = within(c.get("/whoami")).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "backend1"));

    let r = within(c.get("/peer")).await.unwrap();
    let peer: SocketAddr = r.text().parse().unwrap();
    assert_eq!(peer.ip(), LOCALHOST);

    let r = within(c.get("/catalog?bytes=300000")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Length"), Some("300000"));
    assert_eq!(r.body.len(), 300_000);
    assert_eq!(pattern::first_mismatch(0, &r.body), None);

    let r = within(c.get("/nowhere")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.header("X-Backend"), Some("backend1"));
    let r = within(c.request("POST", "/whoami")).await.unwrap();
    assert_eq!(r.status(), 405);
    let r = within(c.get("/large?bytes=lots")).await.unwrap();
    assert_eq!(r.status(), 400);

    let r = within(c.get("/control/stats")).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(stats["name"], "backend1");
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["active_connections"], 1);
    // The stats request itself is counted once it is answered.
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["failing"], false);
    assert_eq!(backend.stats().requests, 8);
}

#[tokio::test]
async fn fail_and_recover_through_the_control_listener() {
    let pki = pki();
    let backend = start(&pki, &[LOCALHOST]).await;
    let mut control = within(client::connect_plain(backend.control_addr().unwrap()))
        .await
        .unwrap();
    let mut c = connect(&pki, backend.addr()).await;

    let r = within(control.request("POST", "/control/fail"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = within(c.get("/status/v1/simple")).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (503, "error"));
    // Only the health answer fails; the backend still serves.
    let r = within(c.get("/whoami")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(backend.stats().failing);

    let r = within(control.request("POST", "/control/recover"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = within(c.get("/status/v1/simple")).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "running"));

    // The in-process switch does the same.
    backend.set_failing(true);
    let r = within(c.get("/status/v1/simple")).await.unwrap();
    assert_eq!(r.status(), 503);

    // Control routes need POST.
    let r = within(control.get("/control/fail")).await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn large_body_streams_in_chunks_with_integrity() {
    let pki = pki();
    let backend = start(&pki, &[LOCALHOST]).await;
    let mut c = connect(&pki, backend.addr()).await;

    let len = 3_000_000u64;
    let head = within(c.send("GET", "/large?bytes=3000000&chunk=100000&delay_ms=2", &[]))
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length, len);
    let mut body = c.body(&head);
    let mut at = 0u64;
    let mut buf = vec![0u8; 32 * 1024];
    // Bounded: each read brings at least one byte, or ends the loop.
    while at < len {
        let n = within(body.read(&mut buf)).await.unwrap();
        assert!(n > 0, "body ended at {at} of {len}");
        assert_eq!(pattern::first_mismatch(at, &buf[..n]), None, "at {at}");
        at += n as u64;
    }
    assert_eq!(at, len);

    // The connection is still good for the next request.
    let r = within(c.get("/whoami")).await.unwrap();
    assert_eq!(r.text(), "backend1");
}

#[tokio::test]
async fn connection_close_and_pipelining_in_plain_mode() {
    let backend = backend::spawn(Config {
        name: "plain1".into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: None,
        control: None,
    })
    .await
    .unwrap();

    // Two pipelined requests, the second asking to close: two answers, in
    // order, then end of stream.
    let mut s = within(tokio::net::TcpStream::connect(backend.addr()))
        .await
        .unwrap();
    s.write_all(
        b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /status/v1/simple HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    within(s.read_to_end(&mut all)).await.unwrap();
    let all = String::from_utf8(all).unwrap();
    let first = all.find("plain1").expect(&all);
    let second = all.find("running").expect(&all);
    assert!(first < second, "{all}");
    assert!(all.contains("Connection: close\r\n"), "{all}");

    // HTTP/1.0 without keep-alive closes too.
    let mut s = within(tokio::net::TcpStream::connect(backend.addr()))
        .await
        .unwrap();
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    within(s.read_to_end(&mut all)).await.unwrap();
    assert!(String::from_utf8(all).unwrap().ends_with("plain1"));

    // Garbage gets a 400 and a close.
    let mut s = within(tokio::net::TcpStream::connect(backend.addr()))
        .await
        .unwrap();
    s.write_all(b"HELLO\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    within(s.read_to_end(&mut all)).await.unwrap();
    assert!(String::from_utf8(all).unwrap().starts_with("HTTP/1.1 400 "));
}

#[tokio::test]
async fn listens_on_several_addresses_with_the_vip_in_the_certificate() {
    let pki = pki();
    let backend = start(&pki, &[LOCALHOST, VIP]).await;
    assert_eq!(backend.addrs().len(), 2);
    for addr in backend.addrs() {
        // Verifies the certificate for the address dialled: 127.0.0.1 is
        // the host's own SAN, 127.0.0.2 the extra (VIP) SAN.
        let mut c = connect(&pki, *addr).await;
        let r = within(c.get("/whoami")).await.unwrap();
        assert_eq!(r.text(), "backend1");
    }
}

#[tokio::test]
async fn stop_closes_listeners_and_connections() {
    let pki = pki();
    let backend = start(&pki, &[LOCALHOST]).await;
    let addr = backend.addr();
    let mut idle = connect(&pki, addr).await;
    let mut c = connect(&pki, addr).await;
    let r = within(c.request("POST", "/control/stop")).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "stopping"));
    within(backend.wait()).await;

    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
    // The idle keep-alive connection was dropped as well.
    assert!(within(idle.get("/whoami")).await.is_err());
}

// ---------------------------------------------------------------- binary

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxlb-testd-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn binary_pki_serve_and_stop() {
    let bin = env!("CARGO_BIN_EXE_voxlb-testd");
    let dir = TempDir::new("bin");

    let out = within(
        tokio::process::Command::new(bin)
            .args(["pki", "--dir"])
            .arg(&dir.0)
            .args([
                "--host",
                "compiler1=127.0.0.1",
                "--host",
                "compiler2=127.0.0.3",
            ])
            .args(["--san", "127.0.0.2"])
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    for file in ["ca.pem", "compiler1.pem", "compiler1.key", "compiler2.pem"] {
        assert!(dir.0.join(file).exists(), "{file} missing");
    }

    let mut child = tokio::process::Command::new(bin)
        .args(["--name", "compiler1", "--listen", "127.0.0.1:0"])
        .args(["--listen", "127.0.0.2:0", "--control", "127.0.0.1:0"])
        .arg("--cert")
        .arg(dir.0.join("compiler1.pem"))
        .arg("--key")
        .arg(dir.0.join("compiler1.key"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within(stdout.read_line(&mut line)).await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(ready["ready"], true);
    let vip_addr: SocketAddr = ready["listen"][1].as_str().unwrap().parse().unwrap();
    let control: SocketAddr = ready["control"].as_str().unwrap().parse().unwrap();

    let ca = std::fs::read(dir.0.join("ca.pem")).unwrap();
    let config = client::tls_config(&ca).unwrap();
    let mut c = within(client::connect_tls(vip_addr, "127.0.0.2", config.clone()))
        .await
        .unwrap();
    let r = within(c.get("/whoami")).await.unwrap();
    assert_eq!(r.text(), "compiler1");

    let mut ctl = within(client::connect_plain(control)).await.unwrap();
    let r = within(ctl.request("POST", "/control/stop")).await.unwrap();
    assert_eq!(r.status(), 200);
    let status = within(child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn binary_refuses_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_voxlb-testd");
    for args in [
        &["--listen", "127.0.0.1:0", "--plain"][..],
        &["--name", "x", "--listen", "127.0.0.1:0"],
        &["--name", "x", "--listen", "nonsense", "--plain"],
    ] {
        let out = within(tokio::process::Command::new(bin).args(args).output())
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
    }
}
