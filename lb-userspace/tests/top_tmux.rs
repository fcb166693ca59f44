//! `voxlb top` for real: the binary in a tmux pane against a running daemon
//! (in-memory data plane, real control socket), read with capture-pane,
//! driven with send-keys. Skipped (saying so) without tmux.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lb_testkit::daemon_fixture;
use voxlb::{
    control::{self, Request},
    dataplane::FakeDataPlane,
};

fn temp_dir(name: &str) -> PathBuf {
    daemon_fixture::temp_dir("voxlb-toptmux", name)
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
name = "alpha"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
name = "beta"
mac = "02:00:00:00:00:02"

[[ca_services]]
name = "ca"
vip = "192.0.2.11:8140"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1", mac = "02:00:00:00:01:01" }
"#,
    )
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().expect("tmux")
}

/// Capture the pane until `pred` holds (bounded), returning the last text.
fn wait_pane(session: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = tmux(&["capture-pane", "-p", "-t", session]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "pane never showed {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}

#[test]
fn top_runs_in_a_terminal_and_obeys_its_keys() {
    lb_testkit::skip_unless!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "no tmux (cargo xtask setup installs it)",
        root: false
    );
    let dir = temp_dir("keys");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon_fixture::QuietDaemon { socket, stop, run } = {
        let _in_rt = rt.enter();
        daemon_fixture::quiet_daemon(
            write_config(&dir),
            Box::new(FakeDataPlane::default()),
            false,
        )
    };
    let task = rt.spawn(run);
    let deadline = Instant::now() + Duration::from_secs(10);
    while control::request(&socket, &Request::Status {}, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }

    let session = Session(format!("voxlb-top-{}", std::process::id()));
    let cmd = format!(
        "{} --socket {} top --interval 300ms",
        env!("CARGO_BIN_EXE_voxlb"),
        socket.display()
    );
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "150",
        "-y",
        "40",
        &cmd,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let text = wait_pane(&session.0, "the full frame", |t| {
        t.contains("backends") && t.contains("alpha") && t.contains("health events")
    });
    assert!(text.contains("compilers"), "{text}");
    assert!(text.contains("10.0.1.1"), "{text}");
    assert!(text.contains("sort: name"), "{text}");

    tmux(&["send-keys", "-t", &session.0, "p"]);
    wait_pane(&session.0, "PAUSED", |t| t.contains("PAUSED"));
    tmux(&["send-keys", "-t", &session.0, "p"]);
    wait_pane(&session.0, "unpaused", |t| !t.contains("PAUSED"));

    // Filter: the first service only (compilers): the CA row goes.
    tmux(&["send-keys", "-t", &session.0, "f"]);
    let t = wait_pane(&session.0, "the compilers filter", |t| {
        t.contains("filter: compilers")
    });
    assert!(!t.contains("10.0.1.1"), "{t}");
    tmux(&["send-keys", "-t", &session.0, "s"]);
    wait_pane(&session.0, "sort by packets", |t| {
        t.contains("sort: packets/s")
    });

    // q quits and restores the terminal: the pane's command ends.
    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux(&["has-session", "-t", &session.0]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }

    stop.send(true).unwrap();
    rt.block_on(task).unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
