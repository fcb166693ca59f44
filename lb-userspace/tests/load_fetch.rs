//! The load poller against real HTTP servers on 127.0.0.1: the real answer
//! of a compiler parses, and every kind of bad or slow answer is "no load
//! data", bounded in time and memory. (HTTPS against `voxlb-testd` is in
//! `tests/tests/testd.rs`.)

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use voxlb::{
    health::{CheckKind, HealthCheck, HttpCheck},
    load::{FetchError, LoadInput, LoadPoller, LoadSignal, fetch::MAX_STATUS_BODY},
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BUSY: &[u8] =
    include_bytes!("fixtures/puppetserver-7.9.5/status-v1-services-debug-busy.json");
const INFO: &[u8] = include_bytes!("fixtures/puppetserver-7.9.5/status-v1-services-info.json");

/// A server answering every connection with `reply` after `delay`; the
/// request lines it saw come out of the channel.
async fn serve(reply: Vec<u8>, delay: Duration) -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got);
                let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(&reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, rx)
}

fn chunked(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json;charset=utf-8\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    // Chunks of 1000 bytes, as a Jetty server would split a long document.
    for part in body.chunks(1000) {
        out.extend(format!("{:x}\r\n", part.len()).into_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn poller(port: u16, timeout: Duration) -> LoadPoller {
    let check = HealthCheck {
        kind: CheckKind::Http(HttpCheck {
            path: "/status/v1/simple".into(),
            expect_status: 200,
            expect_body: Some("running".into()),
            host: None,
        }),
        port,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    LoadPoller::new(&check, timeout).unwrap()
}

#[tokio::test]
async fn reads_a_real_answer_with_the_debug_path() {
    let (port, mut requests) = serve(chunked("200 OK", BUSY), Duration::ZERO).await;
    let p = poller(port, Duration::from_secs(5));
    let m = p.fetch(LOCALHOST).await.unwrap();
    assert_eq!((m.size, m.free, m.borrowed), (1, 0, Some(1)));
    assert_eq!(
        requests.recv().await.unwrap(),
        "GET /status/v1/services?level=debug HTTP/1.1"
    );
    assert_eq!(
        p.poll(LOCALHOST).await,
        LoadInput::Sample(LoadSignal {
            occupancy_permille: 1000,
            queue_permille: 0,
            borrow_ms: None,
        })
    );
}

#[tokio::test]
async fn bad_answers_are_no_load_data() {
    let html =
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 22\r\n\r\n<html>bad gateway</html>".to_vec();
    type Case = (Vec<u8>, fn(&FetchError) -> bool);
    let cases: Vec<Case> = vec![
        (chunked("200 OK", INFO), |e| {
            matches!(e, FetchError::Parse(_))
        }),
        (chunked("200 OK", b"<html>oops</html>"), |e| {
            matches!(e, FetchError::Parse(_))
        }),
        (chunked("200 OK", &BUSY[..BUSY.len() / 2]), |e| {
            matches!(e, FetchError::Parse(_))
        }),
        (chunked("404 Not Found", b"not found"), |e| {
            matches!(e, FetchError::Status(404))
        }),
        (html, |e| matches!(e, FetchError::Status(502))),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), |e| {
            matches!(e, FetchError::Http(_))
        }),
    ];
    for (reply, is_expected) in cases {
        let (port, _) = serve(reply.clone(), Duration::ZERO).await;
        let p = poller(port, Duration::from_secs(5));
        let e = p.fetch(LOCALHOST).await.unwrap_err();
        assert!(
            is_expected(&e),
            "{e} for {:?}",
            String::from_utf8_lossy(&reply[..40.min(reply.len())])
        );
        assert_eq!(p.poll(LOCALHOST).await, LoadInput::NoData);
    }
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let (port, _) = serve(chunked("200 OK", BUSY), Duration::from_secs(3)).await;
    let p = poller(port, Duration::from_millis(300));
    let start = std::time::Instant::now();
    let e = p.fetch(LOCALHOST).await.unwrap_err();
    assert!(matches!(e, FetchError::Timeout(_)), "{e}");
    // Bounded by the timeout, not by the server (generous margin for a
    // loaded machine; this is a bound, not a performance figure).
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_body_is_capped() {
    let (port, _) = serve(chunked("200 OK", BUSY), Duration::ZERO).await;
    let p = poller(port, Duration::from_secs(5)).with_max_body(4096);
    let e = p.fetch(LOCALHOST).await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge(4096)), "{e}");
    // The real cap holds a big pool's answer.
    assert!(BUSY.len() * 50 < MAX_STATUS_BODY);
}

#[tokio::test]
async fn a_closed_port_is_no_load_data() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let p = poller(port, Duration::from_secs(5));
    assert!(matches!(
        p.fetch(LOCALHOST).await.unwrap_err(),
        FetchError::Http(_)
    ));
}

#[test]
fn a_tcp_health_check_cannot_poll() {
    let check = HealthCheck {
        kind: CheckKind::Tcp,
        port: 8140,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    assert!(LoadPoller::new(&check, Duration::from_secs(1)).is_err());
}
