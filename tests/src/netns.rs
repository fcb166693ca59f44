//! Network-namespace plumbing for the end-to-end fixture: commands inside a
//! namespace, threads and tokio runtimes whose sockets live in one, bpffs,
//! and the sweep of what a crashed run left behind.
//!
//! Two ways into a namespace, on purpose:
//! - processes go through `nsenter --net=/run/netns/NAME`, which switches the
//!   network namespace only. `ip netns exec` also makes a new mount namespace
//!   with a fresh `/sys`, so bpffs pins made there would not be seen by a
//!   restarted daemon. `ip netns exec` is used only for one-shot `sysctl` and
//!   `ethtool` calls, where that does not matter;
//! - in-process work runs on a thread that called `setns(CLONE_NEWNET)`.
//!   `setns` changes only the calling thread, and threads it spawns inherit
//!   its namespace; a socket stays in the namespace it was created in, so it
//!   can be used from anywhere afterwards.

use std::{
    fs::File,
    future::Future,
    net::IpAddr,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

/// Where `ip netns add` mounts the namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether we run as root (everything here needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The path of a named namespace.
pub fn ns_path(ns: &str) -> String {
    format!("{NETNS_DIR}/{ns}")
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS PROGRAM ARGS...`, for one-shot `sysctl`/`ethtool` calls.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A [`Command`] that runs `program` in namespace `ns` (network namespace
/// only, see the module docs).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns_path(ns)))
        .arg("--")
        .arg(program);
    c
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let f = File::open(ns_path(ns)).with_context(|| format!("opening {}", ns_path(ns)))?;
    // SAFETY: a valid namespace fd; setns affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The inode of namespace `ns` (identifies it; see [`current_ns_inode`]).
pub fn ns_inode(ns: &str) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(ns_path(ns))
        .with_context(|| format!("stat {}", ns_path(ns)))?
        .ino())
}

/// The inode of the calling thread's network namespace.
pub fn current_ns_inode() -> anyhow::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

/// A tokio runtime whose worker threads live in one namespace: every socket
/// a task of [`NsRuntime::run`] creates is in that namespace.
pub struct NsRuntime {
    rt: Option<tokio::runtime::Runtime>,
    ns: String,
    inode: u64,
}

impl NsRuntime {
    /// Builds the runtime on a thread inside `ns`: tokio spawns its workers
    /// from the building thread, so they inherit the namespace.
    pub fn new(ns: &str, workers: usize) -> anyhow::Result<Self> {
        let inode = ns_inode(ns)?;
        let rt = run_in(ns, || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .enable_all()
                .build()
        })??;
        Ok(NsRuntime {
            rt: Some(rt),
            ns: ns.to_owned(),
            inode,
        })
    }

    /// The namespace the runtime lives in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs `fut` as a task on the runtime's workers (never on the calling
    /// thread, which may be in another namespace) and waits for it.
    pub fn run<F>(&self, fut: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.rt.as_ref().context("runtime shut down")?;
        let expected = self.inode;
        let task = rt.spawn(async move {
            // A task in the wrong namespace would test the host: refuse.
            let here = current_ns_inode()?;
            ensure!(here == expected, "task runs outside its namespace");
            Ok(fut.await)
        });
        rt.block_on(task).context("task panicked")?
    }

    /// Spawns `fut` on the runtime without waiting (see [`NsRuntime::run`]).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("runtime present").spawn(fut)
    }

    /// Waits for a spawned task.
    pub fn wait<T>(&self, task: tokio::task::JoinHandle<T>) -> anyhow::Result<T> {
        let rt = self.rt.as_ref().context("runtime shut down")?;
        rt.block_on(task).context("task panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        // Threads in a namespace keep it alive; don't linger.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Mounts bpffs at [`BPFFS`] unless it is mounted already.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let c = std::ffi::CString::new(BPFFS)?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    if ok && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS)?;
    run("mount", &["-t", "bpf", "bpf", BPFFS]).map(|_| ())
}

/// Every named namespace whose name starts with `prefix`.
pub fn list_ns(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// Pids of the processes (any thread) in network namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    let Ok(inode) = ns_inode(ns) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
        })
        .collect()
}

/// Kills (SIGKILL) every process in `ns` (processes a fixture started
/// there) and waits, bounded, for them to go.
pub fn kill_all_in(ns: &str) {
    let pids = pids_in(ns);
    for &pid in &pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes a namespace (no error if it is gone).
pub fn delete_ns(ns: &str) {
    let _ = run("ip", &["netns", "del", ns]);
}

/// Removes a directory tree on bpffs (pins) or anywhere; no error if gone.
pub fn remove_tree(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The pid a fixture name `KIND-PID-...` was made by, if it has that form.
fn owner_pid(name: &str, kind: &str) -> Option<i32> {
    name.strip_prefix(kind)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Best-effort removal of namespaces, pin dirs and work dirs named
/// `KIND-PID-...` whose PID is no longer running (a run that crashed or was
/// killed before its guard could clean up). Processes still inside those
/// namespaces are ours and are killed first.
pub fn sweep_stale(kind: &str) {
    let dead = |name: &str| {
        owner_pid(name, kind).is_some_and(|pid| pid as u32 != std::process::id() && !alive(pid))
    };
    for ns in list_ns(&format!("{kind}-")) {
        if dead(&ns) {
            kill_all_in(&ns);
            delete_ns(&ns);
        }
    }
    for base in [Path::new(BPFFS).to_path_buf(), std::env::temp_dir()] {
        let Ok(dir) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in dir.filter_map(|e| e.ok()) {
            if let Some(name) = e.file_name().to_str()
                && name.starts_with(&format!("{kind}-"))
                && dead(name)
            {
                remove_tree(&e.path());
            }
        }
    }
}

/// Removes every namespace, pin dir and work dir named `KIND-...`, whoever
/// made it, killing the processes inside those namespaces first (the demo's
/// `--cleanup`). Returns the namespaces removed.
pub fn remove_all(kind: &str) -> Vec<String> {
    let prefix = format!("{kind}-");
    let namespaces = list_ns(&prefix);
    for ns in &namespaces {
        kill_all_in(ns);
        delete_ns(ns);
    }
    for base in [Path::new(BPFFS).to_path_buf(), std::env::temp_dir()] {
        let Ok(dir) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in dir.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                remove_tree(&e.path());
            }
        }
    }
    namespaces
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `f` every `step` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// Sends `count` ICMP echo requests to `dst` from namespace `ns` (raw
/// socket; no `ping` binary needed) and returns how many were answered.
/// Each request waits up to 2 s for its reply.
pub fn ping(ns: &str, dst: IpAddr, count: u16) -> anyhow::Result<u16> {
    run_in(ns, || ping_here(dst, count))?
}

fn ping_here(dst: IpAddr, count: u16) -> anyhow::Result<u16> {
    let (domain, proto, echo_request, echo_reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    ensure!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let (addr, addr_len) = sockaddr(dst);
    let ident = (std::process::id() & 0xffff) as u16;
    let mut answered = 0;
    for seq in 0..count {
        let mut msg = [0u8; 16];
        msg[0] = echo_request;
        msg[4..6].copy_from_slice(&ident.to_be_bytes());
        msg[6..8].copy_from_slice(&seq.to_be_bytes());
        msg[8..16].copy_from_slice(b"voxlbe2e");
        if dst.is_ipv4() {
            // ICMPv6 checksums are filled in by the kernel; ICMPv4 ones not.
            let sum = internet_checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        // SAFETY: msg and addr are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_storage).cast(),
                addr_len,
            )
        };
        ensure!(
            sent >= 0,
            "sendto {dst}: {}",
            std::io::Error::last_os_error()
        );
        // Skip what is not our reply (other ICMP, ND), boundedly.
        for _ in 0..64 {
            let mut buf = [0u8; 2048];
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break; // timeout: this one is lost
            }
            let n = n as usize;
            // Raw IPv4 sockets hand over the IP header too.
            let off = if dst.is_ipv4() {
                usize::from(buf[0] & 0x0f) * 4
            } else {
                0
            };
            if n >= off + 8
                && buf[off] == echo_reply
                && buf[off + 4..off + 6] == ident.to_be_bytes()
                && buf[off + 6..off + 8] == seq.to_be_bytes()
            {
                answered += 1;
                break;
            }
        }
    }
    Ok(answered)
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_fixture_names() {
        assert_eq!(owner_pid("vxe-123-4-lb", "vxe"), Some(123));
        assert_eq!(owner_pid("vxe-123", "vxe"), Some(123));
        assert_eq!(owner_pid("vxd-123-lb", "vxe"), None);
        assert_eq!(owner_pid("vxe-x-lb", "vxe"), None);
    }
}
