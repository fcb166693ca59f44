//! The systemd notify handshake of a running daemon, on the in-memory data
//! plane: READY=1 only once the first reconcile is applied and the control
//! socket serves, RELOADING=1/READY=1 around a reload (SIGHUP and `voxlb
//! reload`), STOPPING=1 on exit.
//!
//! One test in this binary: it sets `NOTIFY_SOCKET` and sends itself SIGHUP,
//! which must not race other tests.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_testkit::daemon_fixture;
use voxlb::{
    control::{self, Request, Response},
    dataplane::FakeDataPlane,
};

fn temp_dir(name: &str) -> PathBuf {
    daemon_fixture::temp_dir("voxlb-notify", name)
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
"#,
    )
}

fn recv(s: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("a notify message within 10 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn ready_reloading_stopping() {
    let dir = temp_dir("handshake");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // SAFETY: the only test of this binary; set before any thread reads it.
    unsafe { std::env::set_var("NOTIFY_SOCKET", &notify_path) };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon_fixture::QuietDaemon { socket, stop, run } = {
        let _in_rt = rt.enter();
        daemon_fixture::quiet_daemon(write_config(&dir), Box::new(FakeDataPlane::default()), true)
    };
    let task = rt.spawn(run);

    let ready = recv(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("1/1 backend(s) usable"), "{ready}");
    // Ready means serving, with the reconciled services: no retry needed.
    match control::request(&socket, &Request::Status {}, Duration::from_secs(5)).unwrap() {
        Response::Status(s) => {
            assert_eq!(s.services.len(), 1);
            assert_eq!(s.services[0].active, 1);
        }
        other => panic!("{other:?}"),
    }

    // ExecReload: SIGHUP.
    // SAFETY: kill(2) on our own pid with a signal the daemon handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let m = recv(&notify);
    assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
    let m = recv(&notify);
    assert!(m.starts_with("READY=1\n"), "{m}");

    // `voxlb reload` over the socket, with a broken config: refused, and
    // still READY afterwards (the old config serves), saying so.
    std::fs::write(dir.join("voxlb.toml"), "interfaces = 7\n").unwrap();
    let r = control::request(&socket, &Request::Reload {}, Duration::from_secs(5)).unwrap();
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    assert!(recv(&notify).starts_with("RELOADING=1\n"));
    let m = recv(&notify);
    assert!(
        m.starts_with("READY=1\n") && m.contains("LAST RELOAD FAILED"),
        "{m}"
    );

    stop.send(true).unwrap();
    rt.block_on(task).unwrap().unwrap();
    let m = recv(&notify);
    assert!(m.starts_with("STOPPING=1\n"), "{m}");
    std::fs::remove_dir_all(&dir).unwrap();
}
