//! The test backend's simulated compiler load (issue 16): it serves the
//! status API in the real OpenVox/Puppet Server format, voxlb's own parser
//! and poller read it (over real TLS), and the slowness it is told to
//! simulate really applies to its answers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufReadExt, BufReader};
use voxlb::{
    health::{CheckKind, HealthCheck, HttpCheck, TlsCheck},
    load::{LoadPoller, status},
};
use voxlb_tests::{
    backend::{self, Backend, Config},
    client,
    jruby::LoadSettings,
    pki::{HostSpec, Pki},
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("no answer in time")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxlb-testd-load-{}-{tag}-{}",
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

/// A TLS backend on 127.0.0.1 and a poller that verifies it with the CA.
async fn tls_backend(dir: &TempDir) -> (Backend, LoadPoller) {
    let pki = Pki::generate("testd CA", &[HostSpec::new("backend1", &[LOCALHOST])], &[]).unwrap();
    let host = pki.host("backend1").unwrap();
    let backend = backend::spawn(Config {
        name: "backend1".into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: Some(
            backend::tls_config_from_pem(host.cert_pem.as_bytes(), host.key_pem.as_bytes())
                .unwrap(),
        ),
        control: None,
    })
    .await
    .unwrap();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut check = HealthCheck::openvox_default(TlsCheck {
        ca_file: Some(ca),
        insecure: false,
        client_cert: None,
        client_key: None,
    });
    check.port = backend.addr().port();
    let poller = LoadPoller::new(&check, Duration::from_secs(5)).unwrap();
    (backend, poller)
}

fn plain_poller(port: u16) -> LoadPoller {
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
    LoadPoller::new(&check, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn voxlb_reads_the_simulated_load_over_tls() {
    let dir = TempDir::new("tls");
    let (backend, poller) = tls_backend(&dir).await;
    let idle = within(poller.fetch(LOCALHOST)).await.unwrap();
    assert_eq!((idle.size, idle.free, idle.waiting), (4, 4, Some(0)));
    assert_eq!(idle.state.as_deref(), Some("running"));

    backend.set_load(LoadSettings {
        jrubies: 8,
        busy: 6,
        waiting: 3,
        ..LoadSettings::default()
    });
    let busy = within(poller.fetch(LOCALHOST)).await.unwrap();
    assert_eq!((busy.size, busy.free), (8, 2));
    assert_eq!((busy.borrowed, busy.waiting), (Some(6), Some(3)));
    let s = busy.signal();
    assert_eq!((s.occupancy_permille, s.queue_permille), (750, 375));
}

#[tokio::test]
async fn the_document_has_the_real_shape() {
    let dir = TempDir::new("shape");
    let (backend, _) = tls_backend(&dir).await;
    let ca = std::fs::read(dir.0.join("ca.pem")).unwrap();
    let mut c = within(client::connect_tls(
        backend.addr(),
        "127.0.0.1",
        client::tls_config(&ca).unwrap(),
    ))
    .await
    .unwrap();
    let r = within(c.get("/status/v1/services?level=debug"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    let ours: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    // Every key path of the real answer's JRuby metrics is there, with a
    // value of the same JSON type.
    let real: serde_json::Value = serde_json::from_slice(include_bytes!(
        "../../lb-userspace/tests/fixtures/puppetserver-7.9.5/status-v1-services-debug-idle.json"
    ))
    .unwrap();
    let path = ["jruby-metrics", "status", "experimental", "metrics"];
    let (mut a, mut b) = (&real, &ours);
    for k in path {
        a = &a[k];
        b = &b[k];
    }
    for (key, value) in a.as_object().unwrap() {
        let kind = |v: &serde_json::Value| std::mem::discriminant(v);
        let got = &b[key];
        let same = kind(value) == kind(got) || (value.is_number() && got.is_number());
        assert!(same, "{key}: real {value}, ours {got}");
    }
    for service in real.as_object().unwrap().keys() {
        assert!(ours.get(service).is_some(), "service {service} missing");
    }
    assert!(status::parse(&r.body).is_ok());

    // Without level=debug: the info level, which has no load data.
    let r = within(c.get("/status/v1/services")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(status::parse(&r.body).is_err());
    // The simple route is unchanged.
    let r = within(c.get("/status/v1/simple")).await.unwrap();
    assert_eq!(r.text(), "running");
}

#[tokio::test]
async fn catalogs_hold_jrubies_and_queue_when_the_pool_is_full() {
    let backend = backend::spawn(Config {
        name: "b".into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: None,
        control: None,
    })
    .await
    .unwrap();
    backend.set_load(LoadSettings {
        jrubies: 1,
        compile_ms: 1500,
        ..LoadSettings::default()
    });
    let addr = backend.addr();
    // Two catalog compiles at once on a pool of one: one compiles, one waits.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(async move {
            let mut c = client::connect_plain(addr).await.unwrap();
            let r = c.get("/catalog?bytes=1000").await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.body.len(), 1000);
        }));
    }
    let poller = plain_poller(addr.port());
    let deadline = Instant::now() + PATIENCE;
    let seen = loop {
        let m = within(poller.fetch(LOCALHOST)).await.unwrap();
        if m.waiting == Some(1) || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (seen.free, seen.borrowed, seen.waiting),
        (0, Some(1), Some(1))
    );
    assert_eq!(seen.signal().pressure_permille(), 2000);
    for t in tasks {
        within(t).await.unwrap();
    }
    let after = within(poller.fetch(LOCALHOST)).await.unwrap();
    assert_eq!((after.free, after.waiting), (1, Some(0)));
    assert_eq!(after.borrow_count, Some(2));
    // The second one waited for the first one's compile.
    assert!(after.average_wait_ms.unwrap() >= 500.0, "{after:?}");
}

#[tokio::test]
async fn the_slow_factor_really_slows_answers() {
    let backend = backend::spawn(Config {
        name: "b".into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: None,
        control: None,
    })
    .await
    .unwrap();
    let addr = backend.addr();
    let timed = |path: &'static str| async move {
        let mut c = within(client::connect_plain(addr)).await.unwrap();
        let start = Instant::now();
        let r = within(c.get(path)).await.unwrap();
        assert_eq!(r.status(), 200);
        start.elapsed()
    };
    // These are lower bounds of simulated delays, not performance figures.
    assert!(timed("/catalog?bytes=100&compile_ms=100").await >= Duration::from_millis(100));
    backend.set_load(LoadSettings {
        slow_factor_pct: 400,
        status_delay_ms: 300,
        ..LoadSettings::default()
    });
    assert!(timed("/catalog?bytes=100&compile_ms=100").await >= Duration::from_millis(400));
    // A download paced 3 × 50 ms apart, ×4.
    assert!(timed("/large?bytes=400&chunk=100&delay_ms=50").await >= Duration::from_millis(600));
    assert!(timed("/status/v1/services?level=debug").await >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_control_route_sets_and_refuses() {
    let backend = backend::spawn(Config {
        name: "b".into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: None,
        control: Some(SocketAddr::new(LOCALHOST, 0)),
    })
    .await
    .unwrap();
    let mut ctl = within(client::connect_plain(backend.control_addr().unwrap()))
        .await
        .unwrap();
    let r = within(ctl.request("POST", "/control/load?jrubies=3&busy=2&slow_factor_pct=400"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["jrubies"].as_u64(), v["busy"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(backend.load().slow_factor_pct, 400);
    for bad in ["jrubies=0", "busy=x", "speed=2"] {
        let r = within(ctl.request("POST", &format!("/control/load?{bad}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(backend.load().jrubies, 3);
    let r = within(ctl.get("/control/load")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["slow_factor_pct"], 400);
}

#[tokio::test]
async fn binary_flags_set_the_load() {
    let bin = env!("CARGO_BIN_EXE_voxlb-testd");
    let mut child = tokio::process::Command::new(bin)
        .args(["--name", "slow", "--listen", "127.0.0.1:0", "--plain"])
        .args(["--jrubies", "2", "--busy-jrubies", "2", "--waiting", "1"])
        .args(["--slow-factor", "4", "--compile-ms", "25"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within(stdout.read_line(&mut line)).await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect(&line);
    let addr: SocketAddr = ready["listen"][0].as_str().unwrap().parse().unwrap();
    let m = within(plain_poller(addr.port()).fetch(LOCALHOST))
        .await
        .unwrap();
    assert_eq!((m.size, m.free, m.waiting), (2, 0, Some(1)));
    let mut c = within(client::connect_plain(addr)).await.unwrap();
    let r = within(c.get("/control/load")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["slow_factor_pct"].as_u64(), v["compile_ms"].as_u64()),
        (Some(400), Some(25))
    );
    let r = within(c.request("POST", "/control/stop")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(within(child.wait()).await.unwrap().success());

    for args in [
        &["--jrubies", "0"][..],
        &["--slow-factor", "fast"],
        &["--slow-factor", "0"],
    ] {
        let out = within(
            tokio::process::Command::new(bin)
                .args(["--name", "x", "--listen", "127.0.0.1:0", "--plain"])
                .args(args)
                .output(),
        )
        .await
        .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
    }
}
