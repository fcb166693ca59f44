//! Faults in voxlb's own parts (issue 7): the daemon killed in the middle of
//! backend changes, a change persisted but never applied, bpffs pins deleted
//! under a running data plane, the control socket held open and flooded,
//! hostile CLI input, unsafe permissions, and the capabilities voxlb needs.
//!
//! Already covered elsewhere, not repeated here: garbage and oversized
//! control requests and a failed state write or map write
//! (`tests/daemon.rs`); health targets that hang, reset or send a huge body
//! (`tests/health.rs`); a world-writable config file (`tests/config.rs`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::{
    BackendInfo, BackendStats, Counter, FlowKey, FlowValue, KIND_COMPILER, PROTO_TCP, Reason,
    ServiceStats, VipInfo, VipKey, addr_bytes,
};
use lb_testkit::daemon_fixture;
use tokio::sync::mpsc;
use voxlb::{
    config::Config,
    control::{self, Request, Response},
    daemon::{self, Daemon},
    dataplane::{self, DataPlane, FakeDataPlane},
    neigh::StaticResolver,
    state::{AddedBackend, StateStore},
    xdp::{self, LoadOptions, XdpDataPlane, XdpMode},
};

/// A fake data plane that outlives a daemon, like pinned maps do, and
/// counts the daemon's pin checks.
#[derive(Clone, Default)]
struct Shared {
    maps: Arc<Mutex<FakeDataPlane>>,
    pin_checks: Arc<AtomicU32>,
}

impl Shared {
    fn get(&self) -> FakeDataPlane {
        self.maps.lock().unwrap().clone()
    }
}

impl DataPlane for Shared {
    fn upsert_vip(&mut self, key: VipKey, info: VipInfo) -> dataplane::Result<()> {
        self.maps.lock().unwrap().upsert_vip(key, info)
    }
    fn remove_vip(&mut self, key: &VipKey) -> dataplane::Result<()> {
        self.maps.lock().unwrap().remove_vip(key)
    }
    fn vips(&self) -> dataplane::Result<Vec<(VipKey, VipInfo)>> {
        self.maps.lock().unwrap().vips()
    }
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> dataplane::Result<()> {
        self.maps.lock().unwrap().set_backend(id, info)
    }
    fn backend(&self, id: u32) -> dataplane::Result<BackendInfo> {
        self.maps.lock().unwrap().backend(id)
    }
    fn set_tunnel(&mut self, id: u32, info: lb_common::TunnelInfo) -> dataplane::Result<()> {
        self.maps.lock().unwrap().set_tunnel(id, info)
    }
    fn tunnel(&self, id: u32) -> dataplane::Result<lb_common::TunnelInfo> {
        self.maps.lock().unwrap().tunnel(id)
    }
    fn install_table(&mut self, service_id: u32, table: &[u32]) -> dataplane::Result<()> {
        self.maps.lock().unwrap().install_table(service_id, table)
    }
    fn active_table(&self, service_id: u32) -> dataplane::Result<Option<Vec<u32>>> {
        self.maps.lock().unwrap().active_table(service_id)
    }
    fn set_ca_target(&mut self, service_id: u32, backend_id: u32) -> dataplane::Result<()> {
        self.maps
            .lock()
            .unwrap()
            .set_ca_target(service_id, backend_id)
    }
    fn ca_target(&self, service_id: u32) -> dataplane::Result<u32> {
        self.maps.lock().unwrap().ca_target(service_id)
    }
    fn reason_stats(&self) -> dataplane::Result<Vec<(Reason, Counter)>> {
        self.maps.lock().unwrap().reason_stats()
    }
    fn service_stats(&self, service_id: u32) -> dataplane::Result<ServiceStats> {
        self.maps.lock().unwrap().service_stats(service_id)
    }
    fn backend_stats(&self, backend_id: u32) -> dataplane::Result<BackendStats> {
        self.maps.lock().unwrap().backend_stats(backend_id)
    }
    fn flows(&self, limit: usize) -> dataplane::Result<Vec<(FlowKey, FlowValue)>> {
        self.maps.lock().unwrap().flows(limit)
    }
    fn ensure_pinned(&mut self) -> dataplane::Result<bool> {
        self.pin_checks.fetch_add(1, Ordering::SeqCst);
        Ok(false)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    daemon_fixture::temp_dir("voxlb-faults", name)
}

fn write_config(dir: &Path) -> PathBuf {
    daemon_fixture::write_config(
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
mac = "02:00:00:00:00:02"
"#,
    )
}

/// A daemon on `dp`, without the control socket (requests go to `handle`).
/// Needs a tokio runtime context (health checkers are tasks).
fn start(dir: &Path, dp: Box<dyn DataPlane>) -> Result<Daemon, daemon::DaemonError> {
    let path = write_config(dir);
    let config = Config::load(&path).unwrap();
    let (tx, _rx) = mpsc::channel(16);
    Daemon::start(
        config,
        Some(path),
        dp,
        Box::new(StaticResolver::default()),
        daemon::no_checks(),
        tx,
    )
}

fn add(address: &str) -> Request {
    Request::BackendAdd {
        service: "compilers".into(),
        address: address.into(),
        weight: None,
        name: None,
        mac: Some("02:00:00:00:00:09".into()),
        tier: None,
    }
}

fn remove(address: &str) -> Request {
    Request::BackendRemove {
        service: "compilers".into(),
        address: address.into(),
        now: false,
    }
}

fn is_ok(r: &Response) -> bool {
    matches!(r, Response::Ok { .. })
}

fn has_backend(maps: &FakeDataPlane, ip: &str) -> bool {
    let (a, _) = addr_bytes(ip.parse::<IpAddr>().unwrap());
    let Some((id, _)) = maps
        .backends
        .iter()
        .find(|(_, b)| b.addr == a && b.state != lb_common::BACKEND_EMPTY)
    else {
        return false;
    };
    maps.tables.values().any(|t| t.contains(id))
}

const CRASH_DIR: &str = "VOXLB_FAULTS_CRASH_DIR";

/// The victim of [`killed_mid_change_leaves_the_old_or_the_new_state`]: the
/// same test binary, re-run with [`CRASH_DIR`] set, becomes a daemon adding
/// and removing a backend as fast as it can, until killed.
fn crash_victim_changes_backends_forever(dir: std::ffi::OsString) -> ! {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let mut d = start(Path::new(&dir), Box::new(FakeDataPlane::default())).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    loop {
        // Whichever change is due from the state on disk.
        if !is_ok(&d.handle(add("10.0.0.9"))) {
            assert!(is_ok(&d.handle(remove("10.0.0.9"))));
        }
    }
}

#[test]
fn killed_mid_change_leaves_the_old_or_the_new_state() {
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        crash_victim_changes_backends_forever(dir);
    }
    let dir = temp_dir("crash");
    write_config(&dir);
    let exe = std::env::current_exe().unwrap();
    let (mut with, mut without) = (0, 0);
    for round in 0..30u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "killed_mid_change_leaves_the_old_or_the_new_state",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert_ne!(out.read_line(&mut line).unwrap(), 0, "victim died early");
        }
        std::thread::sleep(Duration::from_millis(1 + (round * 7919) % 40));
        child.kill().unwrap(); // SIGKILL: no cleanup of any kind
        child.wait().unwrap();

        // The state file is whole: it parses, at the current version.
        let store = StateStore::open(&dir.join("state")).unwrap();
        let state = store
            .load()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let added = state
            .overlays
            .get("compilers")
            .is_some_and(|o| o.added.contains_key(&"10.0.0.9".parse().unwrap()));
        if added {
            with += 1;
        } else {
            without += 1;
        }
        // A restarted daemon takes it as it is (the maps are rebuilt from it).
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let dp = Shared::default();
        start(&dir, Box::new(dp.clone())).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(has_backend(&dp.get(), "10.0.0.9"), added, "round {round}");
    }
    // The kills landed in the middle of the change loop, on both sides.
    assert!(with > 0 && without > 0, "with {with}, without {without}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_persisted_but_not_applied_is_applied_at_restart() {
    // The daemon persists a change, then writes the maps. Killed between the
    // two, the pinned maps hold the old set and the state file the new one:
    // the next start must apply it, all of it.
    let dir = temp_dir("persisted");
    let dp = Shared::default();
    let d = start(&dir, Box::new(dp.clone())).unwrap();
    let before = dp.get();
    assert!(!has_backend(&before, "10.0.0.9"));
    let store = StateStore::open(&dir.join("state")).unwrap();
    let mut state = store.load().unwrap();
    state
        .overlays
        .entry("compilers".into())
        .or_default()
        .added
        .insert(
            "10.0.0.9".parse().unwrap(),
            AddedBackend {
                name: None,
                weight: 100,
                mac: Some([2, 0, 0, 0, 0, 9]),
                tier: 0,
            },
        );
    store.save(&state).unwrap();
    drop(d); // killed before apply: the maps never saw the change
    assert_eq!(dp.get().backends, before.backends);

    let _d = start(&dir, Box::new(dp.clone())).unwrap();
    assert!(has_backend(&dp.get(), "10.0.0.9"), "restart applied it");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cli_input_is_refused_before_any_map_write() {
    let dir = temp_dir("input");
    let dp = Shared::default();
    let mut d = start(&dir, Box::new(dp.clone())).unwrap();
    let before = dp.get();
    let backend = |address: &str, weight: Option<i64>, name: Option<&str>, mac: Option<&str>| {
        Request::BackendAdd {
            service: "compilers".into(),
            address: address.into(),
            weight,
            name: name.map(Into::into),
            mac: mac.map(Into::into),
            tier: None,
        }
    };
    let long = "n".repeat(10_000);
    let bad = [
        backend("10.0.0.300", None, None, None),
        backend("", None, None, None),
        backend("0.0.0.0", None, None, None),
        backend("255.255.255.255", None, None, None),
        backend("224.0.0.1", None, None, None),
        backend("ff02::1", None, None, None),
        backend("127.0.0.1", None, None, None),
        backend("10.0.0.9/24", None, None, None),
        backend("10.0.0.9", Some(0), None, None),
        backend("10.0.0.9", Some(-1), None, None),
        backend("10.0.0.9", Some(1001), None, None),
        backend("10.0.0.9", Some(i64::MAX), None, None),
        backend("10.0.0.9", None, Some("a b;rm -rf /"), None),
        backend("10.0.0.9", None, Some(&long), None),
        backend("10.0.0.9", None, None, Some("ff:ff:ff:ff:ff:ff")),
        backend("10.0.0.9", None, None, Some("01:00:5e:00:00:01")),
        backend("10.0.0.9", None, None, Some("00:00:00:00:00:00")),
        backend("10.0.0.9", None, None, Some("02:00:00:00:00:0g")),
        Request::BackendAdd {
            service: "../../etc/passwd".into(),
            address: "10.0.0.9".into(),
            weight: None,
            name: None,
            mac: None,
            tier: None,
        },
        Request::BackendAdd {
            service: "compilers".into(),
            address: "10.0.0.9".into(),
            weight: None,
            name: None,
            mac: None,
            tier: Some(16),
        },
        Request::BackendAdd {
            service: "compilers".into(),
            address: "10.0.0.9".into(),
            weight: None,
            name: None,
            mac: None,
            tier: Some(-1),
        },
        Request::BackendWeight {
            service: "compilers".into(),
            address: "10.0.0.1".into(),
            weight: -5,
        },
        Request::BackendDrain {
            service: "compilers\0".into(),
            address: "10.0.0.1".into(),
        },
        Request::BackendRemove {
            service: "compilers".into(),
            address: "10.0.0.1%eth0".into(),
            now: false,
        },
    ];
    for req in bad {
        let desc = format!("{req:?}");
        let r = d.handle(req);
        assert!(matches!(r, Response::Error { .. }), "{desc}: {r:?}");
    }
    let after = dp.get();
    assert_eq!(after.backends, before.backends);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.table_installs, before.table_installs);
    assert_eq!(after.vips, before.vips);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_checked_on_every_request_and_periodically() {
    let dir = temp_dir("pincheck");
    let dp = Shared::default();
    let daemon_fixture::QuietDaemon { socket, stop, run } =
        daemon_fixture::quiet_daemon(write_config(&dir), Box::new(dp.clone()), false);
    let task = tokio::spawn(run);
    // The periodic check's first tick is immediate.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dp.pin_checks.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no periodic pin check");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = socket.clone();
    let before = dp.pin_checks.load(Ordering::SeqCst);
    tokio::task::spawn_blocking(move || {
        control::request(&s, &Request::Status {}, Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap();
    assert!(dp.pin_checks.load(Ordering::SeqCst) > before);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_a_garbage_flood_do_not_lock_out_the_cli() {
    let dir = temp_dir("slowloris");
    let dp = Shared::default();
    let daemon_fixture::QuietDaemon { socket, stop, run } =
        daemon_fixture::quiet_daemon(write_config(&dir), Box::new(dp.clone()), false);
    let task = tokio::spawn(run);
    let s = socket.clone();
    let took = tokio::task::spawn_blocking(move || {
        // Wait until it serves.
        let deadline = Instant::now() + Duration::from_secs(10);
        while control::request(&s, &Request::Status {}, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        // As many connections as the daemon serves at once, each sending
        // half a request and stalling: the CLI waits for them to time out
        // (each further MAX_CONNECTIONS stalled would add READ_TIMEOUT).
        let idle: Vec<UnixStream> = (0..control::MAX_CONNECTIONS)
            .map(|_| {
                let mut c = UnixStream::connect(&s).unwrap();
                c.write_all(b"{\"cmd\":").unwrap();
                c
            })
            .collect();
        let started = Instant::now();
        let r = control::request(&s, &Request::Status {}, Duration::from_secs(30)).unwrap();
        assert!(matches!(r, Response::Status(_)));
        let took = started.elapsed();
        // The stalled ones were cut off (an error reply or a close).
        for mut c in idle {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = String::new();
            let _ = c.read_to_string(&mut buf);
            assert!(buf.is_empty() || buf.contains("error"), "{buf}");
        }
        // A burst of garbage, each on its own connection.
        for i in 0..500 {
            let mut c = UnixStream::connect(&s).unwrap();
            let junk: Vec<u8> = (0..(i % 97) + 1).map(|j| (i * 31 + j * 7) as u8).collect();
            let _ = c.write_all(&junk);
            let _ = c.write_all(b"\n");
            let mut buf = String::new();
            let _ = c.read_to_string(&mut buf);
            assert!(
                !buf.contains("\"result\":\"ok\""),
                "garbage {i} accepted: {buf}"
            );
        }
        let r = control::request(&s, &Request::Status {}, Duration::from_secs(5)).unwrap();
        assert!(matches!(r, Response::Status(_)));
        took
    })
    .await
    .unwrap();
    assert!(
        took < control::READ_TIMEOUT + Duration::from_secs(3),
        "a request waited {took:?} behind stalled connections"
    );
    assert_eq!(dp.get().table_installs.values().sum::<u32>(), 1);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_refuses_a_world_writable_state_dir_before_touching_anything() {
    let dir = temp_dir("ww-state");
    let config = write_config(&dir);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_voxlb"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("world-writable"), "{err}");
    assert!(!dir.join("pins").exists(), "the data plane was touched");
    assert!(!dir.join("run").exists(), "the control socket was made");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A one-service config for `voxlb run` on `iface` in a test namespace,
/// written as `dir/IFACE.toml`, pinning under `pins`.
fn write_attach_config(dir: &Path, pins: &Path, iface: &str, mode: &str) -> PathBuf {
    let config = dir.join(format!("{iface}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
interfaces = ["{iface}"]
xdp_mode = "{mode}"
state_dir = "{dir}/state"
control_socket = "{dir}/run/control.sock"
pin_dir = "{pins}"
flow_capacity = 1024

[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = {{ type = "tcp", interval = "1m" }}
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
"#,
            dir = dir.display(),
            pins = pins.display()
        ),
    )
    .unwrap();
    config
}

/// Names of the capabilities `voxlb` needs to run (docs/hostile.md).
const NEEDED: &str = "+bpf,+net_admin,+perfmon";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

#[test]
fn the_daemon_runs_with_cap_bpf_net_admin_and_perfmon_only() {
    lb_testkit::require_root!("capabilities, namespaces and BPF");
    lb_testkit::skip_unless!(
        ["setpriv", "nsenter", "ip"].iter().all(|c| have(c)),
        "needs setpriv, nsenter and ip",
        root: true
    );
    lb_testkit::skip_unless!(Path::new("/sys/fs/bpf").exists(), "needs bpffs", root: true);
    let id = std::process::id();
    let ns = format!("vxh-{id}");
    let dir = temp_dir("caps");
    let pins = PathBuf::from(format!("/sys/fs/bpf/vxh-caps-{id}"));
    let config = write_attach_config(&dir, &pins, "vxh0", "generic");
    assert!(sh(&format!("ip netns add {ns} && ip -n {ns} link add vxh0 type veth peer name vxh1 && ip -n {ns} link set vxh0 up && ip -n {ns} link set vxh1 up")).status.success());
    let run = |caps: &str| {
        // nsenter, not `ip netns exec`: that one remounts /sys, hiding bpffs.
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["setpriv", "--inh-caps=-all"])
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(env!("CARGO_BIN_EXE_voxlb"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let cleanup = || {
        let _ = sh(&format!("ip netns del {ns}"));
        let _ = std::fs::remove_dir_all(&pins);
        let _ = std::fs::remove_dir_all(&dir);
    };
    // Without CAP_PERFMON the verifier refuses the program: variable-offset
    // packet pointer arithmetic (IHL, IPv6 extension headers) falls under
    // its Spectre v1 sanitation, which packet pointers do not support.
    let mut weak = run("+bpf,+net_admin");
    let status = weak.wait().unwrap();
    let mut err = String::new();
    weak.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let refused = !status.success() && err.contains("pointer");
    let _ = std::fs::remove_dir_all(&pins);

    let mut daemon = run(NEEDED);
    let socket = dir.join("run/control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Response::Status(s)) =
            control::request(&socket, &Request::Status {}, Duration::from_secs(2))
        {
            break Some(s);
        }
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let exit = daemon.wait().unwrap();
    let mut err2 = String::new();
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err2)
        .unwrap();
    let attached = pins.join("link_vxh0").exists();
    cleanup();
    assert!(
        refused,
        "expected a verifier refusal without CAP_PERFMON: {status:?} {err}"
    );
    let s = status.unwrap_or_else(|| panic!("daemon did not serve with {NEEDED}: {err2}"));
    assert_eq!(s.services.len(), 1);
    assert!(exit.success(), "{err2}");
    assert!(attached, "the program was not attached");
}

#[test]
fn deleted_pins_are_put_back_by_the_running_data_plane() {
    lb_testkit::require_root!("pinning BPF objects");
    lb_testkit::skip_unless!(Path::new("/sys/fs/bpf").exists(), "needs bpffs", root: true);
    // In a network namespace of its own (this thread only), on its loopback.
    std::thread::spawn(|| {
        let opts = own_netns_loopback("pins");
        let mut dp = XdpDataPlane::load(&opts).expect("load and attach");
        let vip = VipKey::new("192.0.2.10".parse().unwrap(), 8140, PROTO_TCP);
        dp.upsert_vip(
            vip,
            VipInfo {
                service_id: 0,
                kind: KIND_COMPILER,
            },
        )
        .unwrap();
        assert!(!dp.ensure_pinned().unwrap(), "nothing missing yet");
        let pins: Vec<PathBuf> = lb_common::maps::ALL
            .iter()
            .map(|n| opts.pin_dir.join(n))
            .chain([xdp::link_pin(&opts.pin_dir, "lo")])
            .collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Some pins deleted, then the whole directory.
            for round in 0..2 {
                if round == 0 {
                    for p in pins.iter().step_by(2) {
                        std::fs::remove_file(p).unwrap();
                    }
                } else {
                    std::fs::remove_dir_all(&opts.pin_dir).unwrap();
                }
                assert!(dp.ensure_pinned().unwrap(), "round {round}: re-pinned");
                for p in &pins {
                    assert!(p.exists(), "round {round}: {} missing", p.display());
                }
                // They pin the very maps and link in use: a second process
                // reusing the pins sees the VIP written above.
                let again = XdpDataPlane::load(&opts).expect("reuse the pins");
                assert_eq!(again.vips().unwrap().len(), 1);
                assert_eq!(again.vips().unwrap()[0].0, vip);
            }
        }));
        drop(dp);
        xdp::detach(&opts).unwrap();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .unwrap();
}

/// An upgrade from a build without some maps (the fragment table, the
/// direct VIP array, the VIP address bitmap and the clock line came after
/// the other v2 maps): the pins and link of the older deployment are
/// reused (the VIP written before is still there), the missing maps are
/// created, pinned and filled (a direct entry for the VIP, a clock line),
/// and this build's program is swapped into the link.
#[test]
fn a_map_missing_from_older_pins_is_added_and_the_rest_reused() {
    lb_testkit::require_root!("pinning BPF objects");
    lb_testkit::skip_unless!(Path::new("/sys/fs/bpf").exists(), "needs bpffs", root: true);
    std::thread::spawn(|| {
        let opts = own_netns_loopback("newmap");
        let result = std::panic::catch_unwind(|| {
            let vip = VipKey::new("192.0.2.10".parse().unwrap(), 8140, PROTO_TCP);
            {
                let mut old = XdpDataPlane::load(&opts).expect("load and attach");
                old.upsert_vip(
                    vip,
                    VipInfo {
                        service_id: 0,
                        kind: KIND_COMPILER,
                    },
                )
                .unwrap();
            }
            use lb_common::maps::{CLOCK, FRAGS, VIP_ADDR_BITS, VIP_DIRECT};
            let added = [FRAGS, VIP_DIRECT, VIP_ADDR_BITS, CLOCK].map(|m| opts.pin_dir.join(m));
            for pin in &added {
                std::fs::remove_file(pin).unwrap();
            }
            let mut new = XdpDataPlane::load(&opts).expect("load over the older pins");
            for pin in &added {
                assert!(pin.exists(), "{} is pinned", pin.display());
            }
            assert_ne!(new.clock().unwrap().ns_per_jiffy, 0, "a clock line");
            let info = VipInfo {
                service_id: 0,
                kind: KIND_COMPILER,
            };
            assert_eq!(new.vips().unwrap(), vec![(vip, info)]);
            assert_eq!(
                new.direct_vip("192.0.2.10".parse().unwrap(), 8140, PROTO_TCP),
                Some(info),
                "the direct entry is rebuilt from the VIP map"
            );
            assert!(xdp::link_pin(&opts.pin_dir, "lo").exists());
            assert!(new.fragments().unwrap().is_empty());
            // The address bitmap, the program's first question to a packet,
            // holds the VIP's address: a SYN to it reaches the service
            // (which has no backend here), not the host's stack.
            let syn = lb_testkit::packet::Frame::tcp(
                "192.0.2.77".parse().unwrap(),
                40000,
                "192.0.2.10".parse().unwrap(),
                8140,
                lb_testkit::packet::flags::SYN,
            )
            .build();
            let before = reason_count(&new, Reason::DropNoBackend);
            let verdict = new.attached_verdict(&syn).unwrap();
            assert_eq!(verdict, Some(1), "XDP_DROP");
            assert_eq!(reason_count(&new, Reason::DropNoBackend), before + 1);
        });
        xdp::detach(&opts).unwrap();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .unwrap();
}

fn reason_count(dp: &XdpDataPlane, reason: Reason) -> u64 {
    dp.reason_stats()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, c)| c.packets)
}

/// A `voxlb run` that cannot attach leaves no half-made data plane: an
/// unknown interface is refused before anything is created, and a failed
/// attach removes the pins that attempt created.
#[test]
fn a_failed_start_leaves_no_pins_behind() {
    lb_testkit::require_root!("pinning BPF objects");
    lb_testkit::skip_unless!(Path::new("/sys/fs/bpf").exists(), "needs bpffs", root: true);
    let id = std::process::id();
    let ns = format!("vxh-fail-{id}");
    let dir = temp_dir("failstart");
    let pins = PathBuf::from(format!("/sys/fs/bpf/vxh-fail-{id}"));
    assert!(
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"))
            .status
            .success()
    );
    let run = |config: &Path| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(env!("CARGO_BIN_EXE_voxlb"))
            .args(["run", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    // No such interface: refused by name, nothing created.
    let unknown = run(&write_attach_config(&dir, &pins, "vxh-nosuch0", "auto"));
    // `lo` has no native XDP: the attach fails after the maps were made.
    let native = run(&write_attach_config(&dir, &pins, "lo", "native"));
    let left = pins.exists();
    let _ = sh(&format!("ip netns del {ns}"));
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        err.contains("interfaces[0]") && err.contains("vxh-nosuch0"),
        "{err}"
    );
    assert!(!native.status.success(), "native XDP on lo must fail");
    assert!(!left, "a failed start left pins in {}", pins.display());
}

/// Upgrade from map layout v1 (issue 18 changed `FlowValue`): a data plane
/// that finds v1 pins converts the v1 flow table's entries into the v2 one,
/// carries the other maps over as they are (renamed pins: same maps), and
/// leaves no v1 pin behind. Also checks the batched flow-table walk against
/// what was written.
#[test]
fn v1_pins_are_migrated_to_v2_with_their_flows() {
    use aya::maps::{HashMap as BpfHash, MapData};
    use lb_common::{FlowValueV1, maps as names};
    lb_testkit::require_root!("pinning BPF objects");
    lb_testkit::skip_unless!(Path::new("/sys/fs/bpf").exists(), "needs bpffs", root: true);
    std::thread::spawn(|| {
        let opts = own_netns_loopback("v1");
        std::fs::create_dir_all(&opts.pin_dir).unwrap();
        let key = |p: u16| FlowKey {
            src: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: p.to_be(),
            dport_be: 8140u16.to_be(),
            proto: PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let key6 = |p: u16| FlowKey {
            src: "2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            dst: "2001:db8::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            sport_be: p.to_be(),
            dport_be: 8140u16.to_be(),
            proto: PROTO_TCP,
            family: lb_common::FAMILY_V6,
            _pad: [0; 2],
        };
        let v1 = |p: u16| FlowValueV1 {
            backend_id: u32::from(p % 3),
            generation: 7,
            created_ns: 1000 + u64::from(p),
        };
        let vip = VipKey::new("192.0.2.10".parse().unwrap(), 8140, PROTO_TCP);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A v1 deployment, by hand: its flow table (16-byte values) and
            // its VIP map, pinned under the v1 names.
            let mut flows: BpfHash<MapData, FlowKey, FlowValueV1> =
                BpfHash::create(1024, 0).unwrap();
            for p in 40000..40300u16 {
                flows.insert(key(p), v1(p), 0).unwrap();
            }
            // IPv6 flows share the v1 table; v2 keeps them in their own.
            // (On backend 3, which the flow counts below do not ask about.)
            let v6 = FlowValueV1 {
                backend_id: 3,
                generation: 7,
                created_ns: 5,
            };
            for p in 41000..41050u16 {
                flows.insert(key6(p), v6, 0).unwrap();
            }
            flows.pin(opts.pin_dir.join(names::V1_FLOWS)).unwrap();
            // A v1 counter pin (its layout changed): dropped by the upgrade.
            let reasons: BpfHash<MapData, u32, u64> = BpfHash::create(4, 0).unwrap();
            reasons.pin(opts.pin_dir.join("vx_reasons_v1")).unwrap();
            let mut vips: BpfHash<MapData, VipKey, VipInfo> =
                BpfHash::create(names::MAX_VIPS, 0).unwrap();
            let info = VipInfo {
                service_id: 3,
                kind: KIND_COMPILER,
            };
            vips.insert(vip, info, 0).unwrap();
            vips.pin(opts.pin_dir.join("vx_vips_v1")).unwrap();

            let dp = XdpDataPlane::load(&opts).expect("load over v1 pins");
            for p in 40000..40300u16 {
                let v = dp.flow(&key(p)).unwrap_or_else(|| panic!("flow {p} lost"));
                assert_eq!(
                    (v.backend_id, v.generation, v.created_ns, v.closed_ns),
                    (u32::from(p % 3), 7, 1000 + u64::from(p), 0),
                    "flow {p}"
                );
                assert!(v.last_seen_ns > 0);
            }
            for p in 41000..41050u16 {
                let v = dp
                    .flow(&key6(p))
                    .unwrap_or_else(|| panic!("v6 flow {p} lost"));
                assert_eq!((v.backend_id, v.created_ns), (3, 5));
            }
            assert_eq!(
                dp.flow_counts().unwrap(),
                (300, 50),
                "each family in its own table"
            );
            assert_eq!(
                dp.vips().unwrap(),
                vec![(vip, info)],
                "VIP map carried over"
            );
            // The pre-filter (new in v2) was built from the carried-over VIPs.
            let slot = dp.filter_slot("192.0.2.10".parse().unwrap(), 8140);
            assert_eq!((slot.compiler, slot.ca), (1, 0));
            for n in names::V1_ALL {
                assert!(!opts.pin_dir.join(n).exists(), "v1 pin {n} left");
            }
            for n in names::ALL {
                assert!(opts.pin_dir.join(n).exists(), "v2 pin {n} missing");
            }
            // The batched walk sees every entry exactly once.
            let mut seen = std::collections::BTreeMap::new();
            dp.scan_flows(&mut |k, v| {
                *seen.entry(u16::from_be(k.sport_be)).or_insert(0) += 1;
                assert_eq!(v.generation, 7);
            })
            .unwrap();
            assert_eq!(seen.len(), 350);
            assert!(seen.values().all(|n| *n == 1));
            let counts = voxlb::retire::count_flows(
                &dp,
                &[(0u32, 7u32), (1, 7), (2, 8)].into_iter().collect(),
                voxlb::retire::monotonic_ns(),
            )
            .unwrap();
            assert_eq!(counts[&0].open, 100);
            assert_eq!(counts[&1].open, 100);
            assert_eq!(counts[&2].open, 0, "another generation is not its flow");
            drop(dp);
            // A second start is an ordinary reuse of the v2 pins.
            let again = XdpDataPlane::load(&opts).expect("reuse the v2 pins");
            assert!(again.flow(&key(40000)).is_some());
        }));
        let _ = xdp::detach(&opts);
        let _ = std::fs::remove_dir_all(&opts.pin_dir);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .unwrap();
}

/// Moves this thread into a network namespace of its own and returns load
/// options for its loopback, with an empty pin directory
/// `/sys/fs/bpf/vxh-NAME-PID`.
fn own_netns_loopback(name: &str) -> LoadOptions {
    // SAFETY: unshare has no memory preconditions; it moves this thread only.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
    let opts = LoadOptions {
        interfaces: vec!["lo".into()],
        mode: XdpMode::Generic,
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/vxh-{name}-{}", std::process::id())),
        flow_capacity: 1024,
        replace: false,
    };
    let _ = std::fs::remove_dir_all(&opts.pin_dir);
    opts
}
