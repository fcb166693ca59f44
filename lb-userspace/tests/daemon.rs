//! The daemon end to end on the in-memory data plane: control protocol over a
//! real Unix socket, persistence across restarts, all-or-nothing changes,
//! health events, reload, and the `voxlb` binary's output and exit codes.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use voxlb::{
    control::{BackendState, ServiceKind},
    forwarding::Mode,
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BackendInfo, BackendStats, Counter, FlowKey,
    FlowValue, Reason, ServiceStats, VipInfo, VipKey,
};
use lb_testkit::daemon_fixture;
use tokio::sync::{mpsc, watch};
use voxlb::{
    config::Config,
    control::{self, Request, Response},
    daemon::{self, CheckerSpawner, DaemonError, HealthUpdate, RunOptions},
    dataplane::{self, DataPlane, FakeDataPlane},
    neigh::StaticResolver,
    state::StateStore,
};

/// A fake data plane that outlives a daemon, like pinned maps do.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<FakeDataPlane>>);

impl Shared {
    fn get(&self) -> FakeDataPlane {
        self.0.lock().unwrap().clone()
    }
    fn set_fail(&self, f: Option<&str>) {
        self.0.lock().unwrap().fail_writes = f.map(str::to_owned);
    }
}

impl DataPlane for Shared {
    fn upsert_vip(&mut self, key: VipKey, info: VipInfo) -> dataplane::Result<()> {
        self.0.lock().unwrap().upsert_vip(key, info)
    }
    fn remove_vip(&mut self, key: &VipKey) -> dataplane::Result<()> {
        self.0.lock().unwrap().remove_vip(key)
    }
    fn vips(&self) -> dataplane::Result<Vec<(VipKey, VipInfo)>> {
        self.0.lock().unwrap().vips()
    }
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> dataplane::Result<()> {
        self.0.lock().unwrap().set_backend(id, info)
    }
    fn backend(&self, id: u32) -> dataplane::Result<BackendInfo> {
        self.0.lock().unwrap().backend(id)
    }
    fn set_tunnel(&mut self, id: u32, info: lb_common::TunnelInfo) -> dataplane::Result<()> {
        self.0.lock().unwrap().set_tunnel(id, info)
    }
    fn tunnel(&self, id: u32) -> dataplane::Result<lb_common::TunnelInfo> {
        self.0.lock().unwrap().tunnel(id)
    }
    fn install_table(&mut self, service_id: u32, table: &[u32]) -> dataplane::Result<()> {
        self.0.lock().unwrap().install_table(service_id, table)
    }
    fn active_table(&self, service_id: u32) -> dataplane::Result<Option<Vec<u32>>> {
        self.0.lock().unwrap().active_table(service_id)
    }
    fn set_ca_target(&mut self, service_id: u32, backend_id: u32) -> dataplane::Result<()> {
        self.0.lock().unwrap().set_ca_target(service_id, backend_id)
    }
    fn ca_target(&self, service_id: u32) -> dataplane::Result<u32> {
        self.0.lock().unwrap().ca_target(service_id)
    }
    fn reason_stats(&self) -> dataplane::Result<Vec<(Reason, Counter)>> {
        self.0.lock().unwrap().reason_stats()
    }
    fn service_stats(&self, service_id: u32) -> dataplane::Result<ServiceStats> {
        self.0.lock().unwrap().service_stats(service_id)
    }
    fn backend_stats(&self, backend_id: u32) -> dataplane::Result<BackendStats> {
        self.0.lock().unwrap().backend_stats(backend_id)
    }
    fn flows(&self, limit: usize) -> dataplane::Result<Vec<(FlowKey, FlowValue)>> {
        self.0.lock().unwrap().flows(limit)
    }
}

fn config_text(dir: &Path) -> String {
    daemon_fixture::config_text(
        dir,
        r#"
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
name = "compiler-2"

[[ca_services]]
name = "ca"
vip = "192.0.2.11:8140"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1", mac = "02:00:00:00:01:01" }
standby = { address = "10.0.1.2", mac = "02:00:00:00:01:02" }
"#,
    )
}

struct Harness {
    dir: PathBuf,
    socket: PathBuf,
    dp: Shared,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    health: Arc<Mutex<Option<mpsc::Sender<HealthUpdate>>>>,
}

fn temp_dir(name: &str) -> PathBuf {
    daemon_fixture::temp_dir("voxlb", name)
}

impl Harness {
    async fn start(dir: &Path, dp: Shared) -> Harness {
        let path = dir.join("voxlb.toml");
        if !path.exists() {
            std::fs::write(&path, config_text(dir)).unwrap();
        }
        let config = Config::load(&path).unwrap();
        let socket = config.control_socket.clone();
        let health = Arc::new(Mutex::new(None));
        let h2 = health.clone();
        let spawner: CheckerSpawner = Arc::new(move |_, _, _, tx, _| {
            *h2.lock().unwrap() = Some(tx);
            tokio::spawn(async {})
        });
        // 10.0.0.2 has no configured MAC: the neighbour table knows it.
        let resolver = StaticResolver {
            macs: [("10.0.0.2".parse().unwrap(), [2, 0, 0, 0, 0, 2])].into(),
            solicited: Vec::new(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let listener = control::bind(&socket).unwrap();
        let opts = RunOptions {
            resolver: Box::new(resolver),
            spawner,
            signals: false,
            stop: Some(stop_rx),
        };
        let task = tokio::spawn(daemon::run(
            config,
            Some(path),
            Box::new(dp.clone()),
            listener,
            opts,
        ));
        let h = Harness {
            dir: dir.to_owned(),
            socket,
            dp,
            stop,
            task,
            health,
        };
        // Ready once it answers.
        for _ in 0..100 {
            if let Ok(Response::Status(_)) = h.try_req(Request::Status {}).await {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("daemon did not come up");
    }

    async fn try_req(&self, r: Request) -> Result<Response, control::ControlError> {
        let s = self.socket.clone();
        tokio::task::spawn_blocking(move || control::request(&s, &r, Duration::from_secs(10)))
            .await
            .unwrap()
    }

    async fn req(&self, r: Request) -> Response {
        self.try_req(r).await.unwrap()
    }

    async fn stop(self) -> (PathBuf, Shared) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        (self.dir, self.dp)
    }

    async fn health(&self, service: &str, addr: &str, up: bool) {
        let tx = self.health.lock().unwrap().clone().unwrap();
        tx.send(HealthUpdate {
            service: service.into(),
            addr: addr.parse().unwrap(),
            up,
            detail: "test".into(),
        })
        .await
        .unwrap();
        // Let the loop take it.
        let _ = self.req(Request::Status {}).await;
    }

    fn backend(&self, svc: &str, addr: &str) -> BackendInfo {
        let store = StateStore::open(&self.dir.join("state")).unwrap();
        let st = store.load().unwrap();
        let ip: IpAddr = addr.parse().unwrap();
        let id = st
            .backend_slots
            .iter()
            .find(|(_, s)| s.service == svc && s.address == ip)
            .map(|(id, _)| *id)
            .expect("backend has an id");
        self.dp.get().backends[&id]
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli(&self.socket, args)
    }
}

fn run_cli(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxlb"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn add(service: &str, address: &str) -> Request {
    Request::BackendAdd {
        service: service.into(),
        address: address.into(),
        weight: None,
        name: None,
        mac: Some("02:00:00:00:00:09".into()),
        tier: None,
    }
}

fn msg(r: &Response) -> String {
    match r {
        Response::Ok { message } | Response::Error { message } => message.clone(),
        other => panic!("not a message: {other:?}"),
    }
}

fn is_err(r: &Response) -> bool {
    matches!(r, Response::Error { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_protocol_changes_and_errors() {
    let dir = temp_dir("proto");
    let h = Harness::start(&dir, Shared::default()).await;
    // The MAC of 10.0.0.2 came from the (fake) neighbour table.
    assert_eq!(h.backend("compilers", "10.0.0.2").mac, [2, 0, 0, 0, 0, 2]);
    assert_eq!(h.backend("compilers", "10.0.0.2").state, BACKEND_ACTIVE);

    let r = h.req(add("compilers", "10.0.0.9")).await;
    assert!(!is_err(&r), "{r:?}");
    assert_eq!(h.backend("compilers", "10.0.0.9").state, BACKEND_ACTIVE);
    // Its checker was started: its verdicts count.
    h.health("compilers", "10.0.0.9", false).await;
    assert_eq!(h.backend("compilers", "10.0.0.9").state, BACKEND_DOWN);
    h.health("compilers", "10.0.0.9", true).await;
    assert_eq!(h.backend("compilers", "10.0.0.9").state, BACKEND_ACTIVE);
    let r = h.req(add("compilers", "10.0.0.9")).await;
    assert!(msg(&r).contains("already in service compilers"), "{r:?}");
    let r = h.req(add("nosuch", "10.0.0.9")).await;
    assert!(msg(&r).contains("unknown service \"nosuch\""), "{r:?}");
    let r = h.req(add("ca", "10.0.0.9")).await;
    assert!(msg(&r).contains("CA service"), "{r:?}");
    let r = h
        .req(Request::BackendRemove {
            service: "compilers".into(),
            address: "10.0.0.77".into(),
            now: false,
        })
        .await;
    assert!(msg(&r).contains("not in service compilers"), "{r:?}");
    let r = h
        .req(Request::BackendWeight {
            service: "compilers".into(),
            address: "10.0.0.1".into(),
            weight: 0,
        })
        .await;
    assert!(msg(&r).contains("out of range"), "{r:?}");
    let r = h
        .req(Request::BackendDrain {
            service: "compilers".into(),
            address: "not-an-ip".into(),
        })
        .await;
    assert!(msg(&r).contains("not an IP address"), "{r:?}");

    let r = h
        .req(Request::BackendDrain {
            service: "compilers".into(),
            address: "10.0.0.1".into(),
        })
        .await;
    assert!(!is_err(&r));
    assert_eq!(h.backend("compilers", "10.0.0.1").state, BACKEND_DRAINING);

    let Response::Backends { services } = h
        .req(Request::BackendList {
            service: Some("compilers".into()),
        })
        .await
    else {
        panic!()
    };
    let states: Vec<(String, String)> = services[0]
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.state.to_string()))
        .collect();
    assert_eq!(
        states,
        [
            ("10.0.0.1".to_string(), "draining".to_string()),
            ("10.0.0.2".into(), "active".into()),
            ("10.0.0.9".into(), "active".into())
        ]
    );
    let r = h
        .req(Request::BackendRemove {
            service: "compilers".into(),
            address: "10.0.0.9".into(),
            now: false,
        })
        .await;
    assert!(!is_err(&r));
    let Response::Flows { flows } = h.req(Request::Flows { limit: 10 }).await else {
        panic!()
    };
    assert!(flows.is_empty());
    let Response::Stats(stats) = h.req(Request::Stats {}).await else {
        panic!()
    };
    assert_eq!(stats.reasons.len(), Reason::ALL.len());
    assert_eq!(stats.services.len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_an_error_and_the_daemon_carries_on() {
    use std::io::{Read, Write};
    let dir = temp_dir("hostile");
    let h = Harness::start(&dir, Shared::default()).await;
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let sock = h.socket.clone();
    let replies = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let big = vec![b'x'; control::MAX_REQUEST + 100];
        for payload in [
            b"hello\n".to_vec(),
            b"{\"cmd\":\"status\",\"extra\":1}\n".to_vec(),
            b"{\"cmd\":\"flows\",\"limit\":-1}\n".to_vec(),
            b"\xff\xfe\n".to_vec(),
            big,
        ] {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let _ = s.write_all(&payload);
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            out.push(reply);
        }
        out
    })
    .await
    .unwrap();
    for r in &replies {
        let resp: Response = serde_json::from_str(r.trim()).unwrap();
        assert!(is_err(&resp), "{r}");
    }
    assert!(replies[4].contains("larger than"), "{}", replies[4]);
    // Still serving.
    assert!(matches!(
        h.req(Request::Status {}).await,
        Response::Status(_)
    ));
    // A second daemon on the same socket is refused before touching anything.
    assert!(matches!(
        control::bind(&h.socket),
        Err(control::ControlError::InUse(_))
    ));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_changes_ids_and_tables() {
    let dir = temp_dir("restart");
    let h = Harness::start(&dir, Shared::default()).await;
    assert!(!is_err(&h.req(add("compilers", "10.0.0.9")).await));
    let r = h
        .req(Request::BackendWeight {
            service: "compilers".into(),
            address: "10.0.0.2".into(),
            weight: 250,
        })
        .await;
    assert!(!is_err(&r));
    let r = h
        .req(Request::BackendDrain {
            service: "compilers".into(),
            address: "10.0.0.1".into(),
        })
        .await;
    assert!(!is_err(&r));
    let Response::Backends { services: before } =
        h.req(Request::BackendList { service: None }).await
    else {
        panic!()
    };
    let (dir, dp) = h.stop().await;
    let maps_before = dp.get();
    let state_file = dir.join("state/state.json");
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let h = Harness::start(&dir, dp).await;
    let Response::Backends { services: after } =
        h.req(Request::BackendList { service: None }).await
    else {
        panic!()
    };
    // Open-connection counts come from a periodic scan: compare the rest.
    let no_counts = |mut v: Vec<voxlb::control::ServiceView>| {
        for s in &mut v {
            for b in &mut s.backends {
                b.open_flows = None;
            }
        }
        v
    };
    assert_eq!(no_counts(before), no_counts(after));
    let maps_after = h.dp.get();
    assert_eq!(maps_before.backends, maps_after.backends);
    assert_eq!(maps_before.tables, maps_after.tables);
    assert_eq!(
        maps_before.table_installs, maps_after.table_installs,
        "a restart must not reinstall unchanged tables"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_persist_or_map_write_changes_nothing() {
    let dir = temp_dir("atomic");
    let h = Harness::start(&dir, Shared::default()).await;
    let maps = h.dp.get();
    let state = std::fs::read(dir.join("state/state.json")).unwrap();

    // The state file cannot be written: refused, maps untouched.
    let blocker = dir.join("state/state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let r = h.req(add("compilers", "10.0.0.9")).await;
    assert!(msg(&r).contains("cannot persist"), "{r:?}");
    assert_eq!(h.dp.get().backends, maps.backends);
    assert_eq!(h.dp.get().tables, maps.tables);
    std::fs::remove_dir(&blocker).unwrap();

    // A map write fails: refused, state file as before.
    h.dp.set_fail(Some("injected map failure"));
    let r = h.req(add("compilers", "10.0.0.9")).await;
    assert!(msg(&r).contains("injected map failure"), "{r:?}");
    h.dp.set_fail(None);
    assert_eq!(std::fs::read(dir.join("state/state.json")).unwrap(), state);
    let Response::Backends { services } = h
        .req(Request::BackendList {
            service: Some("compilers".into()),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(services[0].backends.len(), 2);
    // And the next change works.
    assert!(!is_err(&h.req(add("compilers", "10.0.0.9")).await));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_events_take_backends_out_and_fail_over_the_ca() {
    let dir = temp_dir("health");
    let h = Harness::start(&dir, Shared::default()).await;
    h.health("compilers", "10.0.0.1", false).await;
    assert_eq!(h.backend("compilers", "10.0.0.1").state, BACKEND_DOWN);
    h.health("compilers", "10.0.0.2", false).await;
    let Response::Status(s) = h.req(Request::Status {}).await else {
        panic!()
    };
    assert_eq!(s.services[0].active, 0);
    let (code, out, _) = tokio::task::block_in_place(|| h.cli(&["status"]));
    assert_eq!(code, 0);
    assert!(out.contains("ALL DOWN"), "{out}");
    h.health("compilers", "10.0.0.1", true).await;
    assert_eq!(h.backend("compilers", "10.0.0.1").state, BACKEND_ACTIVE);

    h.health("ca", "10.0.1.1", false).await;
    let Response::Status(s) = h.req(Request::Status {}).await else {
        panic!()
    };
    assert_eq!(s.services[1].ca_target, Some("10.0.1.2".parse().unwrap()));
    h.health("ca", "10.0.1.1", true).await;
    let Response::Status(s) = h.req(Request::Status {}).await else {
        panic!()
    };
    assert_eq!(s.services[1].ca_target, Some("10.0.1.1".parse().unwrap()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_difference_and_keeps_a_bad_config_out() {
    let dir = temp_dir("reload");
    let h = Harness::start(&dir, Shared::default()).await;
    let b1 = h.backend("compilers", "10.0.0.1");
    let path = dir.join("voxlb.toml");
    let text = config_text(&dir).replace(
        "name = \"compiler-2\"\n",
        "name = \"compiler-2\"\n[[compiler_services.backends]]\naddress = \"10.0.0.3\"\nmac = \"02:00:00:00:00:03\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    let r = h.req(Request::Reload {}).await;
    assert!(!is_err(&r), "{r:?}");
    assert_eq!(h.backend("compilers", "10.0.0.3").state, BACKEND_ACTIVE);
    assert_eq!(h.backend("compilers", "10.0.0.1"), b1);

    std::fs::write(&path, text.replace("10.0.0.3\"", "10.0.0.x\"")).unwrap();
    let (code, _, err) = tokio::task::block_in_place(|| h.cli(&["reload"]));
    assert_eq!(code, 1);
    assert!(err.contains("is not an IP address"), "{err}");
    let Response::Status(s) = h.req(Request::Status {}).await else {
        panic!()
    };
    assert!(s.last_reload_error.is_some());
    assert_eq!(s.services[0].backends.len(), 3, "old config kept");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_and_exit_codes() {
    let dir = temp_dir("cli");
    let h = Harness::start(&dir, Shared::default()).await;
    tokio::task::block_in_place(|| {
        let (code, out, _) = h.cli(&["backend", "list"]);
        assert_eq!(code, 0);
        assert!(out.starts_with("SERVICE"), "{out}");
        assert!(out.contains("compiler-2"), "{out}");
        assert!(out.contains("primary"), "{out}");

        let (code, out, _) = h.cli(&["--json", "status"]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"], "status");
        assert_eq!(v["services"][0]["name"], "compilers");

        let (code, out, _) = h.cli(&[
            "backend",
            "add",
            "compilers",
            "10.0.0.5",
            "--weight",
            "20",
            "--name",
            "c5",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("added"), "{out}");
        let (code, _, err) = h.cli(&["backend", "add", "compilers", "10.0.0.5"]);
        assert_eq!(code, 1);
        assert!(err.contains("already in service"), "{err}");
        let (code, _, err) = h.cli(&["backend", "drain", "nosuch", "10.0.0.5"]);
        assert_eq!(code, 1);
        assert!(err.contains("unknown service"), "{err}");
        let (code, out, _) = h.cli(&["--json", "backend", "remove", "compilers", "10.0.0.77"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"], "error");
        assert!(v["message"].as_str().unwrap().contains("not in service"));

        // Usage errors: rejected before anything is sent.
        let (code, _, err) = h.cli(&["backend", "add", "compilers", "10.0.0.x"]);
        assert_eq!(code, 2);
        assert!(err.contains("not an IP address"), "{err}");
        let (code, _, err) = h.cli(&["backend", "weight", "compilers", "10.0.0.5", "0"]);
        assert_eq!(code, 2);
        assert!(err.contains("out of range"), "{err}");
        let (code, _, _) = h.cli(&["backend", "weight", "compilers", "10.0.0.5", "-3"]);
        assert_eq!(code, 2);
        let (code, _, _) = h.cli(&["backend", "frobnicate"]);
        assert_eq!(code, 2);

        let (code, out, _) = h.cli(&["stats"]);
        assert_eq!(code, 0);
        assert!(out.contains("drop_no_backend"), "{out}");
        let (code, out, _) = h.cli(&["flows", "--limit", "5"]);
        assert_eq!(code, 0);
        assert!(out.contains("0 flow(s)"), "{out}");
    });
    let dir2 = h.dir.clone();
    h.stop().await;
    let (code, _, err) = run_cli(&dir2.join("run/control.sock"), &["status"]);
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn metrics_render_every_family() {
    use voxlb::{
        control::{BackendStat, ReasonStat, ServiceStat, StatsView, StatusView},
        control::{BackendView, ServiceView},
    };
    let stats = StatsView {
        reasons: vec![ReasonStat {
            reason: "drop_no_backend".into(),
            verdict: "drop".into(),
            packets: 3,
            bytes: 180,
        }],
        services: vec![ServiceStat {
            name: "compilers".into(),
            kind: ServiceKind::Compiler,
            packets: 10,
            bytes: 1000,
            new_flows: 2,
            no_backend: 3,
            backends: vec![BackendStat {
                address: "10.0.0.1".parse().unwrap(),
                name: Some("c1".into()),
                id: 0,
                state: BackendState::Active,
                packets: 10,
                bytes: 1000,
                new_flows: 2,
            }],
        }],
        flood: voxlb::dataplane::FloodStatus {
            threshold: 20000,
            cpus_in_flood: 1,
            flood_syns: 77,
            flood_windows: 2,
        },
    };
    let backend = |address: &str, state: &str, healthy: Option<bool>| BackendView {
        address: address.parse().unwrap(),
        name: None,
        id: 0,
        generation: 1,
        weight: 100,
        state: state.parse().unwrap(),
        healthy,
        mac: None,
        route: None,
        source: "config".into(),
        role: None,
        slots: 0,
        retire_deadline_unix_ms: None,
        open_flows: None,
        tier: 0,
        effective_weight_milli: None,
        load_pressure_permille: None,
        load_borrow_ms: None,
        load_slowness_permille: None,
        load_permille: None,
        ramp_permille: None,
        weight_role: None,
    };
    let service = |name: &str, kind: &str, active, backends| ServiceView {
        name: name.into(),
        kind: kind.parse().unwrap(),
        forwarding: Mode::L2,
        vip: "192.0.2.10:8140".into(),
        service_id: 0,
        table_size: None,
        active,
        ca_target: None,
        backends,
        fingerprint: None,
    };
    let status = StatusView {
        version: "0".into(),
        pid: 1,
        uptime_secs: 0,
        config: None,
        interfaces: vec![],
        services: vec![
            service(
                "compilers",
                "compiler",
                1,
                vec![
                    backend("10.0.0.1", "active", None),
                    backend("10.0.0.2", "down", Some(false)),
                ],
            ),
            service(
                "ca \"eu\"",
                "ca",
                1,
                vec![backend("10.0.0.9", "active", Some(true))],
            ),
        ],
        unresolved: vec![],
        last_reload_error: None,
        attached: true,
        drained: false,
        announce: None,
    };
    let text = voxlb::metrics::render(&stats, &status);
    // The gauges come from the status view: one line per service and
    // backend, with the state that explains a 0, and label values escaped.
    for want in [
        "voxlb_service_usable_backends{service=\"compilers\",kind=\"compiler\"} 1",
        "voxlb_service_usable_backends{service=\"ca \\\"eu\\\"\",kind=\"ca\"} 1",
        "voxlb_backend_up{service=\"compilers\",backend=\"10.0.0.1\",state=\"active\"} 1",
        "voxlb_backend_up{service=\"compilers\",backend=\"10.0.0.2\",state=\"down\"} 0",
        "voxlb_backend_healthy{service=\"compilers\",backend=\"10.0.0.1\"} 1",
        "voxlb_backend_healthy{service=\"compilers\",backend=\"10.0.0.2\"} 0",
        "voxlb_backend_healthy{service=\"ca \\\"eu\\\"\",backend=\"10.0.0.9\"} 1",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("voxlb_backend_up{"))
            .count(),
        3
    );
    assert!(
        text.contains("voxlb_reason_packets_total{reason=\"drop_no_backend\",verdict=\"drop\"} 3")
    );
    assert!(text.contains(
        "voxlb_service_no_backend_drops_total{service=\"compilers\",kind=\"compiler\"} 3"
    ));
    assert!(text.contains(
        "voxlb_backend_new_flows_total{service=\"compilers\",backend=\"10.0.0.1\",name=\"c1\"} 2"
    ));
    for line in [
        "voxlb_flood_threshold 20000",
        "voxlb_flood_cpus 1",
        "voxlb_flood_syns_total 77",
        "voxlb_flood_windows_total 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
    // Every sample line belongs to the family declared last before it.
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_owned();
        } else if !line.starts_with('#') {
            assert!(line.starts_with(&family), "{line} outside {family}");
        }
    }
}

/// One HTTP request to the metrics endpoint, the whole response back.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text() {
    let dir = temp_dir("metrics");
    // A free loopback port for the endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config_text(&dir).replacen(
        "\ninterfaces",
        &format!("\nmetrics_listen = \"127.0.0.1:{port}\"\ninterfaces"),
        1,
    );
    std::fs::write(dir.join("voxlb.toml"), text).unwrap();
    let h = Harness::start(&dir, Shared::default()).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut page = String::new();
    for _ in 0..50 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            drop(s);
            page = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Content-Type: text/plain; version=0.0.4"));
    for family in [
        "voxlb_reason_packets_total",
        "voxlb_service_packets_total",
        "voxlb_backend_up",
        "voxlb_service_usable_backends",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family}")),
            "{family} missing"
        );
    }
    assert!(page.contains("service=\"compilers\""), "{page}");
    assert!(page.contains("backend=\"10.0.0.2\""), "{page}");
    let other = http(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    h.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Retiring (issue 18): `remove` keeps established connections on the
// backend until they end or its grace passes.

fn remove_req(addr: &str, now: bool) -> Request {
    Request::BackendRemove {
        service: "compilers".into(),
        address: addr.into(),
        now,
    }
}

/// Record `n` flows on the backend `addr` holds now, open or closed `closed_ago`.
fn put_flows(h: &Harness, addr: &str, first_port: u16, n: u16, closed_ago: Option<Duration>) {
    let b = h.backend("compilers", addr);
    let id = {
        let st = StateStore::open(&h.dir.join("state"))
            .unwrap()
            .load()
            .unwrap();
        let ip: IpAddr = addr.parse().unwrap();
        *st.backend_slots
            .iter()
            .find(|(_, s)| s.service == "compilers" && s.address == ip)
            .unwrap()
            .0
    };
    let now = voxlb::retire::monotonic_ns();
    let mut dp = h.dp.0.lock().unwrap();
    for p in first_port..first_port + n {
        let key = FlowKey {
            src: [192, 0, 2, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: p.to_be(),
            dport_be: 8140u16.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let value = FlowValue {
            backend_id: id,
            generation: b.generation,
            created_ns: now,
            closed_ns: closed_ago.map(|d| now - d.as_nanos() as u64).unwrap_or(0),
            last_seen_ns: now,
        };
        dp.flows.retain(|(k, _)| *k != key);
        dp.flows.push((key, value));
    }
}

/// Close every recorded flow, long enough ago that none is still closing.
fn close_all_flows(h: &Harness) {
    let long_ago = voxlb::retire::monotonic_ns() - 60_000_000_000;
    for (_, v) in &mut h.dp.0.lock().unwrap().flows {
        v.closed_ns = long_ago;
    }
}

async fn view(h: &Harness, addr: &str) -> Option<voxlb::control::BackendView> {
    let Response::Backends { services } = h
        .req(Request::BackendList {
            service: Some("compilers".into()),
        })
        .await
    else {
        panic!()
    };
    services[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == addr)
        .cloned()
}

/// Wait (bounded) until `f` holds; the daemon's retire tick runs every second.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_retires_until_the_last_connection_ends_then_frees_the_slot() {
    let dir = temp_dir("retire");
    let h = Harness::start(&dir, Shared::default()).await;
    let before = h.backend("compilers", "10.0.0.1");
    put_flows(&h, "10.0.0.1", 40000, 3, None);
    put_flows(&h, "10.0.0.1", 41000, 2, Some(Duration::from_secs(60)));
    let r = h.req(remove_req("10.0.0.1", false)).await;
    assert!(!is_err(&r), "{r:?}");
    assert!(msg(&r).contains("retiring"), "{r:?}");
    assert!(msg(&r).contains("3 open connection(s)"), "{r:?}");
    assert!(msg(&r).contains("10m"), "{r:?}");
    // Out of the table, its slot and generation kept, state RETIRING.
    let b = h.backend("compilers", "10.0.0.1");
    assert_eq!(b.state, lb_common::BACKEND_RETIRING);
    assert_eq!(b.generation, before.generation);
    let table = h.dp.get().tables[&0].clone();
    let id = table
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(id.len(), 1, "only 10.0.0.2 left in the table");
    eventually("open flows counted", || async {
        view(&h, "10.0.0.1").await.and_then(|v| v.open_flows) == Some(3)
    })
    .await;
    let v = view(&h, "10.0.0.1").await.unwrap();
    assert_eq!(v.state, "retiring");
    let left = v.retire_deadline_unix_ms.unwrap() - voxlb::state::unix_ms_now();
    assert!((595_000..=600_000).contains(&left), "{left} ms left");
    let (code, out, _) = tokio::task::block_in_place(|| h.cli(&["backend", "list"]));
    assert_eq!(code, 0);
    // The count is known at once (the periodic scan saw the flows before
    // the remove); the grace reads 10m00s or 9m5Xs depending on timing.
    let grace_shown = |s: &str, prefix: &str| {
        s.contains(&format!("{prefix}retiring (3 open, 9m5"))
            || s.contains(&format!("{prefix}retiring (3 open, 10m00s"))
    };
    assert!(grace_shown(&out, ""), "{out}");
    let (_, status, _) = tokio::task::block_in_place(|| h.cli(&["status"]));
    assert!(grace_shown(&status, "compilers 10.0.0.1: "), "{status}");
    let (Response::Stats(stats), Response::Status(st)) = (
        h.req(Request::Stats {}).await,
        h.req(Request::Status {}).await,
    ) else {
        panic!()
    };
    let metrics = voxlb::metrics::render(&stats, &st);
    assert!(
        metrics.contains(
            "voxlb_backend_retiring_open_flows{service=\"compilers\",backend=\"10.0.0.1\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "voxlb_backend_retiring_seconds_left{service=\"compilers\",backend=\"10.0.0.1\"} 59"
        ),
        "{metrics}"
    );
    // The operator cannot drain or re-remove it; `add` is the way back.
    let r = h.req(remove_req("10.0.0.1", false)).await;
    assert!(msg(&r).contains("already retiring: 3 open"), "{r:?}");
    let r = h
        .req(Request::BackendDrain {
            service: "compilers".into(),
            address: "10.0.0.1".into(),
        })
        .await;
    assert!(msg(&r).contains("is retiring"), "{r:?}");
    // Still there a few ticks later: its connections are open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.backend("compilers", "10.0.0.1").state,
        lb_common::BACKEND_RETIRING
    );
    // The agents close: the slot is freed (EMPTY, generation kept) and the
    // backend is gone from the lists.
    close_all_flows(&h);
    eventually("slot freed", || async {
        view(&h, "10.0.0.1").await.is_none()
    })
    .await;
    let freed = h.dp.get().backends[&0];
    assert_eq!(freed.state, lb_common::BACKEND_EMPTY);
    assert_eq!(freed.generation, before.generation);
    let st = StateStore::open(&dir.join("state"))
        .unwrap()
        .load()
        .unwrap();
    assert!(st.overlays.values().all(|o| o.retiring.is_empty()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_now_cuts_at_once_and_says_how_many() {
    let dir = temp_dir("retire-now");
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.2", 40000, 4, None);
    let (code, out, _) = tokio::task::block_in_place(|| {
        h.cli(&["backend", "remove", "compilers", "10.0.0.2", "--now"])
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("at once: 4 open connection(s) cut"), "{out}");
    assert!(view(&h, "10.0.0.2").await.is_none());
    assert!(
        h.dp.get()
            .backends
            .values()
            .all(|b| b.addr[..4] != [10, 0, 0, 2] || b.state == lb_common::BACKEND_EMPTY)
    );
    // `--now` also ends a retirement early.
    put_flows(&h, "10.0.0.1", 42000, 2, None);
    assert!(!is_err(&h.req(remove_req("10.0.0.1", false)).await));
    let r = h.req(remove_req("10.0.0.1", true)).await;
    assert!(msg(&r).contains("2 open connection(s) cut"), "{r:?}");
    assert!(view(&h, "10.0.0.1").await.is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_retiring_backend_back_revives_it_with_the_same_id() {
    let dir = temp_dir("retire-revive");
    let h = Harness::start(&dir, Shared::default()).await;
    let before = h.backend("compilers", "10.0.0.2");
    put_flows(&h, "10.0.0.2", 40000, 1, None);
    assert!(!is_err(&h.req(remove_req("10.0.0.2", false)).await));
    let r = h
        .req(Request::BackendAdd {
            service: "compilers".into(),
            address: "10.0.0.2".into(),
            weight: None,
            name: None,
            mac: None,
            tier: None,
        })
        .await;
    assert!(msg(&r).contains("it was retiring"), "{r:?}");
    let after = h.backend("compilers", "10.0.0.2");
    assert_eq!(after, before, "same slot, generation and state");
    let v = view(&h, "10.0.0.2").await.unwrap();
    assert_eq!((v.state.as_str(), v.source.as_str()), ("active", "config"));
    assert_eq!(v.name.as_deref(), Some("compiler-2"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_survives_a_restart_with_its_deadline() {
    let dir = temp_dir("retire-restart");
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.1", 40000, 2, None);
    assert!(!is_err(&h.req(remove_req("10.0.0.1", false)).await));
    let deadline = view(&h, "10.0.0.1").await.unwrap().retire_deadline_unix_ms;
    let gen_before = h.backend("compilers", "10.0.0.1").generation;
    let (dir, dp) = h.stop().await;
    let h = Harness::start(&dir, dp).await;
    let v = view(&h, "10.0.0.1").await.expect("still retiring");
    assert_eq!(v.state, "retiring");
    assert_eq!(v.retire_deadline_unix_ms, deadline, "no new grace");
    let b = h.backend("compilers", "10.0.0.1");
    assert_eq!(
        (b.state, b.generation),
        (lb_common::BACKEND_RETIRING, gen_before)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_ends_a_retirement_with_connections_still_open() {
    let dir = temp_dir("retire-grace");
    std::fs::write(
        dir.join("voxlb.toml"),
        config_text(&dir).replace(
            "table_size = 1009\n",
            "table_size = 1009\nretire_grace = \"2s\"\n",
        ),
    )
    .unwrap();
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.1", 40000, 2, None);
    let r = h.req(remove_req("10.0.0.1", false)).await;
    assert!(msg(&r).contains("at most 2s"), "{r:?}");
    assert!(view(&h, "10.0.0.1").await.is_some());
    eventually("freed after the grace", || async {
        view(&h, "10.0.0.1").await.is_none()
    })
    .await;
    assert_eq!(h.dp.get().backends[&0].state, lb_common::BACKEND_EMPTY);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dropped_from_the_config_retires_and_returns_on_reload() {
    let dir = temp_dir("retire-reload");
    let h = Harness::start(&dir, Shared::default()).await;
    let before = h.backend("compilers", "10.0.0.1");
    put_flows(&h, "10.0.0.1", 40000, 1, None);
    let path = dir.join("voxlb.toml");
    let full = config_text(&dir);
    let without = full.replace(
        "[[compiler_services.backends]]\naddress = \"10.0.0.1\"\nmac = \"02:00:00:00:00:01\"\n",
        "",
    );
    assert_ne!(full, without);
    std::fs::write(&path, &without).unwrap();
    let r = h.req(Request::Reload {}).await;
    assert!(msg(&r).contains("1 backend(s) retiring"), "{r:?}");
    let b = h.backend("compilers", "10.0.0.1");
    assert_eq!(
        (b.state, b.generation),
        (lb_common::BACKEND_RETIRING, before.generation)
    );
    // Health-down while retiring: its flows are re-picked like any down
    // backend's.
    h.health("compilers", "10.0.0.1", false).await;
    assert_eq!(h.backend("compilers", "10.0.0.1").state, BACKEND_DOWN);
    h.health("compilers", "10.0.0.1", true).await;
    assert_eq!(
        h.backend("compilers", "10.0.0.1").state,
        lb_common::BACKEND_RETIRING
    );
    // Back in the config: serving again, same id and generation.
    std::fs::write(&path, &full).unwrap();
    assert!(!is_err(&h.req(Request::Reload {}).await));
    assert_eq!(h.backend("compilers", "10.0.0.1"), before);
    assert_eq!(view(&h, "10.0.0.1").await.unwrap().state, "active");
    h.stop().await;
}

// ---------------------------------------------------------------------------
// Open connections per backend and `drain --wait` (issue 16).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_of_every_backend_show_in_list_status_and_metrics() {
    let dir = temp_dir("open-flows");
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.1", 40000, 3, None);
    // Closed flows and flows closed seconds ago are not open.
    put_flows(&h, "10.0.0.1", 41000, 2, Some(Duration::from_secs(60)));
    put_flows(&h, "10.0.0.1", 42000, 1, Some(Duration::from_secs(1)));
    put_flows(&h, "10.0.0.2", 43000, 1, None);
    // Counted by the periodic scan, not per request: wait for a scan that
    // came after every flow above (one may run between two `put_flows`).
    eventually("open flows counted", || async {
        view(&h, "10.0.0.1").await.and_then(|v| v.open_flows) == Some(3)
            && view(&h, "10.0.0.2").await.and_then(|v| v.open_flows) == Some(1)
    })
    .await;
    let (code, out, _) = tokio::task::block_in_place(|| h.cli(&["backend", "list"]));
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.contains("10.0.0.1")).unwrap();
    let header = out.lines().next().unwrap();
    let col = header.find("OPEN").expect("an OPEN column");
    assert_eq!(line[col..].split_whitespace().next(), Some("3"), "{out}");
    let (_, status, _) = tokio::task::block_in_place(|| h.cli(&["status"]));
    let line = status.lines().find(|l| l.starts_with("compilers")).unwrap();
    let col = status
        .lines()
        .find(|l| l.starts_with("SERVICE"))
        .unwrap()
        .find("OPEN")
        .unwrap();
    assert_eq!(line[col..].split_whitespace().next(), Some("4"), "{status}");
    let (Response::Stats(stats), Response::Status(st)) = (
        h.req(Request::Stats {}).await,
        h.req(Request::Status {}).await,
    ) else {
        panic!()
    };
    let metrics = voxlb::metrics::render(&stats, &st);
    for want in [
        "voxlb_backend_open_flows{service=\"compilers\",backend=\"10.0.0.1\"} 3",
        "voxlb_backend_open_flows{service=\"compilers\",backend=\"10.0.0.2\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    // The agents close: the count falls at the next scan.
    close_all_flows(&h);
    eventually("open flows fall to 0", || async {
        view(&h, "10.0.0.1").await.and_then(|v| v.open_flows) == Some(0)
    })
    .await;
    h.stop().await;
}

/// Close the flow of `port` (the agent's FIN), long enough ago that it is
/// not closing either.
fn close_flow(h: &Harness, port: u16) {
    let long_ago = voxlb::retire::monotonic_ns() - 60_000_000_000;
    for (k, v) in &mut h.dp.0.lock().unwrap().flows {
        if u16::from_be(k.sport_be) == port {
            v.closed_ns = long_ago;
        }
    }
}

fn spawn_cli(socket: &Path, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_voxlb"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait (bounded) for a child to exit; its code, stdout and stderr.
async fn finish(mut child: std::process::Child, within: Duration) -> (i32, String, String) {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the CLI did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_returns_only_after_the_last_connection_closes() {
    let dir = temp_dir("drain-wait");
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.1", 40000, 2, None);
    // Another backend's connections do not hold the drain.
    put_flows(&h, "10.0.0.2", 45000, 3, None);
    let child = spawn_cli(
        &h.socket,
        &[
            "--json",
            "backend",
            "drain",
            "compilers",
            "10.0.0.1",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    let mut child = child;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(child.try_wait().unwrap().is_none(), "returned with 2 open");
    assert_eq!(
        h.backend("compilers", "10.0.0.1").state,
        BACKEND_DRAINING,
        "drained at once"
    );
    close_flow(&h, 40000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(child.try_wait().unwrap().is_none(), "returned with 1 open");
    close_flow(&h, 40001);
    let (code, out, err) = finish(child, Duration::from_secs(10)).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(lines[0]["result"], "ok", "{out}");
    let counts: Vec<u64> = lines[1..]
        .iter()
        .map(|l| l["open"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [2, 1, 0], "the count as it falls: {out}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["timed_out"], false);
    assert_eq!(last["state"], "draining");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_times_out_with_exit_3_and_refuses_bad_calls() {
    let dir = temp_dir("drain-timeout");
    let h = Harness::start(&dir, Shared::default()).await;
    put_flows(&h, "10.0.0.1", 40000, 2, None);
    let child = spawn_cli(
        &h.socket,
        &[
            "backend",
            "drain",
            "compilers",
            "10.0.0.1",
            "--wait",
            "--timeout",
            "2s",
        ],
    );
    let (code, out, err) = finish(child, Duration::from_secs(15)).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("2 open connection(s)"), "{out}");
    assert!(err.contains("2 connection(s) still open after 2."), "{err}");
    // Nothing open: returns at once, also for an already drained backend.
    let child = spawn_cli(
        &h.socket,
        &["backend", "drain", "compilers", "10.0.0.2", "--wait"],
    );
    let (code, out, err) = finish(child, Duration::from_secs(10)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("drained, no open connection"), "{out}");
    // A backend that is not there: refused (1), no waiting.
    let child = spawn_cli(
        &h.socket,
        &["backend", "drain", "compilers", "10.9.9.9", "--wait"],
    );
    let (code, _, err) = finish(child, Duration::from_secs(10)).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in service compilers"), "{err}");
    // --timeout without --wait, or a bad duration: usage (2).
    for args in [
        &[
            "backend",
            "drain",
            "compilers",
            "10.0.0.2",
            "--timeout",
            "5s",
        ][..],
        &[
            "backend",
            "drain",
            "compilers",
            "10.0.0.2",
            "--wait",
            "--timeout",
            "soon",
        ],
    ] {
        let (code, _, err) = tokio::task::block_in_place(|| h.cli(args));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    h.stop().await;
}

/// The Maglev table of service `compilers` and the ids in it.
async fn compilers_table(h: &Harness) -> std::collections::BTreeSet<u32> {
    let Response::Backends { services } = h
        .req(Request::BackendList {
            service: Some("compilers".into()),
        })
        .await
    else {
        panic!()
    };
    let sid = services[0].service_id;
    h.dp.get().tables[&sid].iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_added_backend_keeps_its_tier_through_a_restart() {
    let dir = temp_dir("tier");
    let h = Harness::start(&dir, Shared::default()).await;
    fn add(h: &Harness, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["backend", "add", "compilers", "10.0.0.9"];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| h.cli(&args))
    }
    // Bad values: usage errors naming the flag, nothing sent.
    for (extra, flag) in [
        (&["--tier", "16"][..], "--tier"),
        (&["--tier", "-1"], "--tier"),
        (&["--tier", "one"], "--tier"),
        (&["--weight", "0"], "--weight"),
        (&["--weight", "1001"], "--weight"),
    ] {
        let (code, _, err) = add(&h, extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    assert!(view(&h, "10.0.0.9").await.is_none(), "nothing was added");
    // A config backend's tier is the config's.
    let r = h
        .req(Request::BackendRemove {
            service: "compilers".into(),
            address: "10.0.0.2".into(),
            now: true,
        })
        .await;
    assert!(!is_err(&r), "{r:?}");
    let (code, _, err) = tokio::task::block_in_place(|| {
        h.cli(&["backend", "add", "compilers", "10.0.0.2", "--tier", "3"])
    });
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tier 3") && err.contains("config"), "{err}");
    let (code, out, err) =
        tokio::task::block_in_place(|| h.cli(&["backend", "add", "compilers", "10.0.0.2"]));
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = add(
        &h,
        &[
            "--tier",
            "1",
            "--weight",
            "300",
            "--mac",
            "02:00:00:00:00:09",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let c9 = view(&h, "10.0.0.9").await.unwrap();
    assert_eq!(c9.tier, 1);
    assert_eq!(c9.weight, 300);
    assert_eq!(c9.source, "cli");
    // Tier 0 (10.0.0.1, 10.0.0.2) is healthy: c9 stands by, out of the
    // table of new flows (and still ACTIVE in the backend map).
    assert_eq!(c9.weight_role.as_deref(), Some("standby"), "{c9:?}");
    assert_eq!(c9.slots, 0);
    assert!(!compilers_table(&h).await.contains(&c9.id));
    assert_eq!(h.backend("compilers", "10.0.0.9").state, BACKEND_ACTIVE);
    let (code, out, _) = tokio::task::block_in_place(|| h.cli(&["backend", "list", "compilers"]));
    assert_eq!(code, 0);
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("10.0.0.9"))
        .unwrap()
        .split_whitespace()
        .collect();
    let head: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    let col = |name: &str| row[head.iter().position(|h| *h == name).unwrap()];
    assert_eq!((col("TIER"), col("EFFECTIVE")), ("1", "standby"), "{out}");

    // The tier is live: tier 0 down, c9 takes every new flow; back up,
    // c9 stands by again.
    h.health("compilers", "10.0.0.1", false).await;
    h.health("compilers", "10.0.0.2", false).await;
    assert_eq!(compilers_table(&h).await, [c9.id].into());
    h.health("compilers", "10.0.0.1", true).await;
    h.health("compilers", "10.0.0.2", true).await;
    assert!(!compilers_table(&h).await.contains(&c9.id));

    // A restart keeps it in tier 1, from the state file.
    let (dir, dp) = h.stop().await;
    let state = std::fs::read_to_string(dir.join("state/state.json")).unwrap();
    assert!(state.contains("\"tier\": 1"), "{state}");
    let h = Harness::start(&dir, dp).await;
    let after = view(&h, "10.0.0.9").await.unwrap();
    assert_eq!((after.tier, after.weight, after.id), (1, 300, c9.id));
    assert_eq!(after.weight_role.as_deref(), Some("standby"));
    assert!(!compilers_table(&h).await.contains(&c9.id));

    // Removed, it retires with its tier (an open connection keeps it
    // retiring), and an add without --tier brings it back in tier 1.
    put_flows(&h, "10.0.0.9", 40000, 1, None);
    let r = h.req(remove_req("10.0.0.9", false)).await;
    assert!(!is_err(&r), "{r:?}");
    let retiring = view(&h, "10.0.0.9").await.unwrap();
    assert_eq!((retiring.tier, retiring.state.as_str()), (1, "retiring"));
    let (code, out, err) = add(&h, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let back = view(&h, "10.0.0.9").await.unwrap();
    assert_eq!((back.tier, back.source.as_str()), (1, "cli"));
    h.stop().await;
}
