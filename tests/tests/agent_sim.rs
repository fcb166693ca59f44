//! The agent simulator against test backends on loopback (no load balancer):
//! it times whole runs, sees a slow compiler as slow, names the backend of
//! each run and counts failures.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, BufReader};
use voxlb_tests::{
    agent::{AgentConfig, run_agents},
    backend::{self, Backend, Config},
    jruby::LoadSettings,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PATIENCE: Duration = Duration::from_secs(60);

async fn plain_backend(name: &str, slow_factor_pct: u64) -> Backend {
    let b = backend::spawn(Config {
        name: name.into(),
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls: None,
        control: None,
    })
    .await
    .unwrap();
    b.set_load(LoadSettings {
        jrubies: 2,
        slow_factor_pct,
        ..LoadSettings::default()
    });
    b
}

fn agents(target: SocketAddr) -> AgentConfig {
    AgentConfig {
        target,
        agents: 4,
        runs_per_agent: 3,
        compile_ms: 50,
        catalog_bytes: 10_000,
        files: 1,
        file_bytes: 10_000,
        run_timeout: Duration::from_secs(20),
        ..AgentConfig::default()
    }
}

#[tokio::test]
async fn a_slow_compiler_makes_slow_runs() {
    let fast = plain_backend("fast", 100).await;
    let slow = plain_backend("slow", 400).await;
    let f = tokio::time::timeout(PATIENCE, run_agents(&agents(fast.addr())))
        .await
        .unwrap();
    let s = tokio::time::timeout(PATIENCE, run_agents(&agents(slow.addr())))
        .await
        .unwrap();
    assert_eq!((f.runs.len(), f.errors), (12, 0), "{:?}", f.first_error);
    assert_eq!((s.runs.len(), s.errors), (12, 0), "{:?}", s.first_error);
    assert_eq!(f.per_backend.get("fast"), Some(&12));
    assert_eq!(s.per_backend.get("slow"), Some(&12));
    // Simulated compile times are lower bounds of the run times: 50 ms, and
    // 4 × 50 ms on the slow one (bounds of the simulation, not performance
    // figures).
    assert!(f.runs[0] >= Duration::from_millis(50));
    assert!(s.runs[0] >= Duration::from_millis(200));
    let json = s.to_json();
    assert_eq!(json["runs"], 12);
    assert!(json["p99_ms"].as_f64().unwrap() >= 200.0);
}

#[tokio::test]
async fn duration_bounds_the_runs_and_warmup_runs_are_left_out() {
    let b = plain_backend("c1", 100).await;
    let config = AgentConfig {
        agents: 2,
        runs_per_agent: 100_000,
        compile_ms: 20,
        splay: Duration::from_millis(100),
        duration: Some(Duration::from_millis(1500)),
        warmup: Duration::from_millis(300),
        ..agents(b.addr())
    };
    let r = tokio::time::timeout(PATIENCE, run_agents(&config))
        .await
        .unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    // Each agent's first run starts within the warm-up: left out, counted.
    assert!(r.warmup_runs >= 2, "{r:?}");
    assert!(!r.runs.is_empty(), "runs after the warm-up are timed");
    assert_eq!(
        r.per_backend.values().sum::<u64>(),
        r.runs.len() as u64,
        "per_backend counts the timed runs only"
    );
    // 20 ms compiles for 1.5 s cannot make 200 000 runs: time bounded it.
    assert!(r.runs.len() as u64 + r.warmup_runs < 2 * 100_000);
    assert_eq!(r.to_json()["warmup_runs"], r.warmup_runs);
}

#[tokio::test]
async fn failed_runs_are_counted_not_timed() {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let r = tokio::time::timeout(PATIENCE, run_agents(&agents(addr)))
        .await
        .unwrap();
    assert_eq!((r.runs.len(), r.errors), (0, 12));
    assert!(r.first_error.is_some());
    assert_eq!(r.percentile(99.0), None);
}

#[tokio::test]
async fn binary_prints_a_json_report() {
    let b = plain_backend("c1", 100).await;
    let bin = env!("CARGO_BIN_EXE_voxlb-agent-sim");
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(bin)
            .args(["--target", &b.addr().to_string(), "--plain"])
            .args(["--agents", "2", "--runs", "2", "--compile-ms", "10"])
            .args(["--catalog-bytes", "1000", "--file-bytes", "1000"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut line = String::new();
    BufReader::new(&out.stdout[..])
        .read_line(&mut line)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(
        (v["runs"].as_u64(), v["errors"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(v["per_backend"]["c1"], 4);
    assert!(v["p99_ms"].as_f64().unwrap() >= 10.0);

    // Refused arguments.
    for args in [
        &["--plain"][..],
        &["--target", "127.0.0.1:1"],
        &["--target", "x", "--plain"],
    ] {
        let out = tokio::process::Command::new(bin)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
    }
}
