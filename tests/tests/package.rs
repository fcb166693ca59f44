//! The Debian package, for real: install the .deb that `cargo xtask deb`
//! built (`$VOXLB_DEB`) with dpkg on this machine, check its files and
//! modes, `voxlb check-config`, `systemd-analyze verify` of the unit, run the
//! unit's ExecStart line with exactly the unit's capabilities against a
//! namespace topology (with a NOTIFY_SOCKET: ready means serving) and pass
//! traffic through it, then purge and check that nothing is left.
//!
//! `cargo xtask test` sets `$VOXLB_DEB`; without it (or without root, or
//! when voxlb is already installed here, which this test must not touch)
//! the test says why and returns. The purge runs even when a check fails.

use std::{
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use voxlb_tests::{
    daemon::{self, HealthTiming, Options},
    netns,
    topology::{Spec, Topology},
};

const BIN: &str = "/usr/sbin/voxlb";
const UNIT: &str = "/lib/systemd/system/voxlb.service";
const CONF: &str = "/etc/voxlb/voxlb.toml";

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn installed() -> bool {
    let o = sh("dpkg-query", &["-W", "-f=${Status}", "voxlb"]);
    String::from_utf8_lossy(&o.stdout).contains("installed")
}

/// Purges the package on drop, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let o = sh("dpkg", &["--purge", "voxlb"]);
        if !o.status.success() {
            eprintln!(
                "dpkg --purge voxlb failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn mode(p: &str) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// `Key=value` lines of a unit section (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_owned()
}

/// `CAP_BPF CAP_NET_ADMIN` -> `+bpf,+net_admin` (setpriv's syntax).
fn setpriv_caps(list: &str) -> String {
    list.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_debian_package_installs_runs_and_purges() {
    lb_testkit::require_root!("dpkg, capabilities and network namespaces");
    let deb = std::env::var_os("VOXLB_DEB").map(PathBuf::from);
    lb_testkit::skip_unless!(
        deb.is_some(),
        "set VOXLB_DEB (cargo xtask test builds the package and sets it)",
        root: true
    );
    let deb = deb.unwrap();
    lb_testkit::skip_unless!(
        !(installed() || Path::new("/sys/fs/bpf/voxlb").exists()),
        "voxlb is installed or running on this machine; not touching it",
        root: false
    );
    assert!(deb.exists(), "{}", deb.display());

    let purge = Purge;
    let o = sh("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(installed());

    // Files and modes.
    for (path, want) in [
        (BIN, 0o755),
        (UNIT, 0o644),
        (CONF, 0o640),
        ("/var/lib/voxlb", 0o700),
        ("/usr/share/man/man8/voxlb.8.gz", 0o644),
        ("/usr/share/man/man8/voxlb-run.8.gz", 0o644),
        ("/usr/share/man/man8/voxlb-top.8.gz", 0o644),
        ("/usr/share/man/man8/voxlb-backend-add.8.gz", 0o644),
        ("/usr/share/bash-completion/completions/voxlb", 0o644),
        ("/usr/share/zsh/vendor-completions/_voxlb", 0o644),
        ("/usr/share/fish/vendor_completions.d/voxlb.fish", 0o644),
        ("/usr/share/doc/voxlb/grafana-dashboard.json", 0o644),
    ] {
        assert_eq!(mode(path), want, "mode of {path}");
        let m = std::fs::metadata(path).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&m),
            0,
            "{path} not owned by root"
        );
    }
    let o = sh("dpkg-query", &["-W", "-f=${Conffiles}", "voxlb"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(CONF),
        "{CONF} is not a conffile"
    );
    // A man page for every subcommand the installed binary has.
    let help = String::from_utf8(sh(BIN, &["--help"]).stdout).unwrap();
    for sub in [
        "run",
        "detach",
        "check-config",
        "reload",
        "backend",
        "status",
        "stats",
        "flows",
        "top",
    ] {
        assert!(help.contains(sub), "{help}");
        let page = format!("/usr/share/man/man8/voxlb-{sub}.8.gz");
        assert!(Path::new(&page).exists(), "no {page}");
    }

    // check-config on the shipped example: it names puppet's CA file, which
    // this machine lacks; the error must say which file and which service.
    let o = sh(BIN, &["check-config", "--config", CONF]);
    let err = String::from_utf8_lossy(&o.stderr);
    if Path::new("/etc/puppetlabs/puppet/ssl/certs/ca.pem").exists() {
        assert!(o.status.success(), "{err}");
    } else {
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("health_check") && err.contains("/etc/puppetlabs/puppet/ssl/certs/ca.pem"),
            "{err}"
        );
    }

    // The unit, as systemd would read it.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    if sh("sh", &["-c", "command -v systemd-analyze"])
        .status
        .success()
    {
        let o = sh("systemd-analyze", &["verify", UNIT]);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // Documentation=man:... is checked with man(1), when installed.
        let real: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("Command 'man ") || Path::new("/usr/bin/man").exists())
            .collect();
        assert!(real.is_empty(), "systemd-analyze verify {UNIT}:\n{out}");
    } else {
        eprintln!("note: systemd-analyze not available; unit not verified");
    }
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    let exec_start = unit_value(&unit, "ExecStart");
    let bounding = unit_value(&unit, "CapabilityBoundingSet");
    let ambient = unit_value(&unit, "AmbientCapabilities");
    assert_eq!(bounding, "CAP_BPF CAP_NET_ADMIN CAP_PERFMON");
    let argv: Vec<String> = exec_start.split_whitespace().map(str::to_owned).collect();
    assert_eq!(argv[..2], [BIN.to_owned(), "run".to_owned()]);

    // Run that line, with the unit's capabilities, against a topology.
    run_exec_start_against_a_topology(&argv, &bounding, &ambient);

    // Purge: nothing left.
    drop(purge);
    assert!(!installed(), "still installed after purge");
    for p in [
        BIN,
        UNIT,
        CONF,
        "/etc/voxlb",
        "/var/lib/voxlb",
        "/run/voxlb",
        "/usr/share/man/man8/voxlb.8.gz",
        "/usr/share/bash-completion/completions/voxlb",
        "/usr/share/doc/voxlb",
        "/sys/fs/bpf/voxlb",
    ] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
}

fn recv(s: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn run_exec_start_against_a_topology(argv: &[String], bounding: &str, ambient: &str) {
    let topo = Topology::build(&Spec {
        kind: "vxe",
        compilers: 2,
        client_addrs: 4,
        testd: env!("CARGO_BIN_EXE_voxlb-testd").into(),
    })
    .expect("build the topology");
    let opts = Options {
        compilers_in_config: 2,
        health: HealthTiming::default(),
    };
    let config = topo.work_dir.join("voxlb.toml");
    std::fs::write(&config, daemon::config_text(&topo, &opts)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();

    let notify_path = topo.work_dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = topo.work_dir.join("voxlb-packaged.log");
    let logf = std::fs::File::create(&log).unwrap();
    // As under systemd: JOURNAL_STREAM names the stream stderr is (here a
    // file standing in for the journal socket), so voxlb logs the journald
    // way: priority prefix, no timestamp of its own.
    let journal_stream = {
        use std::os::unix::fs::MetadataExt;
        let m = logf.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    // ExecStart with the test's config in place of /etc/voxlb/voxlb.toml;
    // setpriv applies the unit's bounding and ambient sets (and inheritable,
    // which ambient capabilities need), so the process holds those three.
    let mut args: Vec<String> = argv.to_vec();
    let i = args.iter().position(|a| a == "--config").unwrap();
    args[i + 1] = config.display().to_string();
    let caps = setpriv_caps(bounding);
    assert_eq!(caps, setpriv_caps(ambient));
    let mut child = netns::command_in(&topo.lb.ns, "setpriv")
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg("--no-new-privs")
        .args(&args)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("JOURNAL_STREAM", &journal_stream)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("start ExecStart under setpriv");
    let pid = child.id();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let ready = recv(&notify);
    let ready_msg = ready.clone().unwrap_or_default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            ready_msg.starts_with("READY=1\n"),
            "no READY=1 from the packaged daemon ({ready:?}); log:\n{}",
            log_text()
        );
        // The capabilities it runs with: exactly the unit's.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
        let want: u64 = (1 << 12) | (1 << 38) | (1 << 39);
        assert_eq!(u64::from_str_radix(eff, 16).unwrap(), want, "CapEff {eff}");
        // Ready means serving: the CLI answers at once, backends resolved
        // or resolving; wait (bounded) until every backend has its MAC, then
        // pass real TLS traffic through the VIP.
        let socket = daemon::socket_path(&topo);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = sh(
                BIN,
                &["--socket", socket.to_str().unwrap(), "--json", "status"],
            );
            assert!(o.status.success(), "status right after READY=1 failed");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["unresolved"].as_array().is_some_and(|a| a.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "backends unresolved: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let spread = topo
            .whoami_spread(topo.compiler_vip(false), 40, 8)
            .expect("traffic through the packaged voxlb");
        assert_eq!(spread.values().sum::<usize>(), 40, "{spread:?}");
        assert_eq!(spread.len(), 2, "both compilers answer: {spread:?}");
        // Journald-style lines: `<6>target: message`, no timestamp.
        let text = log_text();
        assert!(
            text.lines()
                .any(|l| l.starts_with("<6>voxlb::daemon::run: voxlb daemon ready")),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l.starts_with('<')),
            "a line without a priority prefix: {text}"
        );
        assert!(!text.contains("\x1b["), "colour codes for journald: {text}");

        // ExecReload: SIGHUP -> RELOADING=1, READY=1.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        let m = recv(&notify).unwrap_or_default();
        assert!(m.starts_with("RELOADING=1\n"), "{m}");
        let m = recv(&notify).unwrap_or_default();
        assert!(m.starts_with("READY=1\n"), "{m}");
    }));
    // Stop as systemd does (SIGTERM): STOPPING=1, and the program stays.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopping = recv(&notify);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(
        stopping
            .as_deref()
            .unwrap_or("")
            .starts_with("STOPPING=1\n"),
        "{stopping:?}"
    );
    let _ = std::fs::remove_file(&notify_path);
    drop(topo);
}
