//! The real `voxlb` daemon in a [`Topology`]'s LB namespace, and its CLI.
//!
//! The daemon is started with `nsenter --net=...` (network namespace only),
//! so its bpffs pins are the host's and a restarted daemon finds them. Its
//! config, control socket, state and log live in the topology's work dir.

use std::{
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use voxlb::control::Response;

use crate::{
    netns,
    topology::{self, Node, SERVICE_NAME, Topology},
};

/// Service names in the generated config.
pub const COMPILERS: &str = "compilers";
pub const COMPILERS_V6: &str = "compilers-v6";
pub const CA: &str = "ca";
pub const CA_V6: &str = "ca-v6";

/// Upper bound of a CLI call or a daemon start; never reached when things
/// work.
const PATIENCE: Duration = Duration::from_secs(30);

/// Health-check timing of the generated config.
#[derive(Clone, Copy, Debug)]
pub struct HealthTiming {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthTiming {
    fn default() -> Self {
        HealthTiming {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
            rise: 2,
            fall: 2,
        }
    }
}

/// What the generated config holds.
#[derive(Clone, Debug)]
pub struct Options {
    /// The first this-many compilers of the topology are in the config (the
    /// others exist and can be added with the CLI).
    pub compilers_in_config: usize,
    pub health: HealthTiming,
}

/// The `voxlb` binary: `$VOXLB_BIN`, else `target/debug/voxlb` next to the
/// running executable's directory, built (once per process) with cargo when
/// `$VOXLB_BIN` is not set, so that it is never stale.
pub fn voxlb_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_or_build() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOXLB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace dir")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("voxlb");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    // Cargo passes its test-time variables (CARGO_PKG_*, CARGO_MANIFEST_DIR,
    // ...) to the test; handed on, they change build-script fingerprints and
    // make this build and the next `cargo test` rebuild each other's deps.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
            || ["OUT_DIR", "RUSTC", "RUSTDOC", "TARGET", "HOST", "PROFILE"].contains(&k.as_ref())
        {
            build.env_remove(&key);
        }
    }
    let status = build
        .args(["build", "-p", "lb-userspace", "--bin", "voxlb"])
        .current_dir(&workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(bin),
        _ if bin.exists() => {
            eprintln!(
                "warning: building voxlb failed; using {} as it is",
                bin.display()
            );
            Ok(bin)
        }
        other => bail!(
            "no voxlb binary at {} and `cargo build -p lb-userspace --bin voxlb` failed ({other:?}); set VOXLB_BIN",
            bin.display()
        ),
    }
}

/// The result of one CLI call.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// A `voxlb run` process in the LB namespace. Dropping it kills it (the
/// data plane stays attached until the topology goes).
pub struct Daemon {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    ns: String,
    child: Option<Child>,
}

/// The generated config for `topo`.
pub fn config_text(topo: &Topology, opts: &Options) -> String {
    let work = &topo.work_dir;
    let h = opts.health;
    let health = format!(
        "type = \"https\"\nca_file = \"{}\"\nhost = \"{SERVICE_NAME}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\n",
        work.join("pki/ca.pem").display(),
        h.interval.as_millis(),
        h.timeout.as_millis(),
        h.rise,
        h.fall
    );
    let mut s = String::new();
    let _ = write!(
        s,
        "# Generated by voxlb-tests for topology {prefix}.\n\
         interfaces = [\"{iface}\"]\n\
         xdp_mode = \"native\"\n\
         pin_dir = \"{pins}\"\n\
         control_socket = \"{sock}\"\n\
         state_dir = \"{state}\"\n\
         flow_capacity = 65536\n",
        prefix = topo.prefix,
        iface = topology::IFACE,
        pins = topo.lb_pin_dir().display(),
        sock = socket_path(topo).display(),
        state = work.join("state").display(),
    );
    let compilers = &topo.compilers[..opts.compilers_in_config.min(topo.compilers.len())];
    for (name, vip, v6) in [
        (COMPILERS, topo.compiler_vip(false), false),
        (COMPILERS_V6, topo.compiler_vip(true), true),
    ] {
        let _ = write!(
            s,
            "\n[[compiler_services]]\nname = \"{name}\"\nvip = \"{vip}\"\n\n[compiler_services.health_check]\n{health}"
        );
        for c in compilers {
            let _ = write!(
                s,
                "\n[[compiler_services.backends]]\naddress = \"{}\"\nname = \"{}\"\n",
                addr(c, v6),
                c.name
            );
        }
    }
    for (name, vip, v6) in [
        (CA, topo.ca_vip(false), false),
        (CA_V6, topo.ca_vip(true), true),
    ] {
        let _ = write!(
            s,
            "\n[[ca_services]]\nname = \"{name}\"\nvip = \"{vip}\"\n\n\
             [ca_services.primary]\naddress = \"{}\"\nname = \"{}\"\n\n\
             [ca_services.standby]\naddress = \"{}\"\nname = \"{}\"\n\n\
             [ca_services.health_check]\n{health}",
            addr(&topo.ca, v6),
            topo.ca.name,
            addr(&topo.ca_standby, v6),
            topo.ca_standby.name,
        );
    }
    s
}

/// A node's address of a family, as text.
pub fn addr(node: &Node, v6: bool) -> String {
    if v6 {
        node.ip6.to_string()
    } else {
        node.ip4.to_string()
    }
}

/// The control socket of the topology's daemon.
pub fn socket_path(topo: &Topology) -> PathBuf {
    topo.work_dir.join("run").join("voxlb.sock")
}

impl Daemon {
    /// Writes the config and starts the daemon; returns once every backend
    /// of the config is resolved and the CLI answers.
    pub fn start(topo: &Topology, opts: &Options) -> anyhow::Result<Daemon> {
        let config = topo.work_dir.join("voxlb.toml");
        std::fs::write(&config, config_text(topo, opts))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut d = Daemon {
            bin: voxlb_bin()?,
            config,
            socket: socket_path(topo),
            log: topo.work_dir.join("voxlb.log"),
            ns: topo.lb.ns.clone(),
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    /// A daemon in namespace `ns` with a config of its own (several LB
    /// hosts in one topology: `crate::multi`); started like [`Self::start`].
    pub fn start_in(
        ns: &str,
        config: PathBuf,
        text: &str,
        socket: PathBuf,
        log: PathBuf,
    ) -> anyhow::Result<Daemon> {
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut d = Daemon {
            bin: voxlb_bin()?,
            config,
            socket,
            log,
            ns: ns.to_owned(),
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Starts `voxlb run` (again) and waits until it is ready.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_args(&[])
    }

    /// [`Self::spawn`] with extra `voxlb run` arguments (e.g. `--replace`).
    pub fn spawn_args(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = netns::command_in(&self.ns, &self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the CLI answers `status` with no unresolved backend.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("voxlb run exited ({status}); log:\n{}", tail(&self.log, 40));
            }
            match self.json(&["status"]) {
                // Routed backends are resolved (or not, with the reason)
                // before the first plan: nothing to wait for.
                Ok(Response::Status(s))
                    if s.unresolved.iter().all(|a| {
                        s.services
                            .iter()
                            .filter(|v| v.backends.iter().any(|b| b.address == *a))
                            .all(|v| v.forwarding.routed())
                    }) =>
                {
                    return Ok(());
                }
                Ok(r) => last = format!("{r:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "voxlb did not get ready: {last}; log:\n{}",
            tail(&self.log, 40)
        )
    }

    /// SIGTERM (an orderly stop, which leaves the data plane forwarding),
    /// then wait for the exit, bounded; the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("daemon not running")?;
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("voxlb run ignored SIGTERM; log:\n{}", tail(&self.log, 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves the daemon running when this handle goes (the demo's
    /// `--keep`).
    pub fn leave_running(mut self) {
        if let Some(c) = self.child.take() {
            std::mem::forget(c);
        }
    }

    /// Whether the daemon process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `voxlb --socket SOCK ARGS...` in the LB namespace, bounded in
    /// time.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        self.cli_with_socket(&self.socket, args)
    }

    /// [`Daemon::cli`] with another `--socket`.
    pub fn cli_with_socket(&self, socket: &Path, args: &[&str]) -> anyhow::Result<CliOutput> {
        run_bounded(
            netns::command_in(&self.ns, &self.bin)
                .arg("--socket")
                .arg(socket)
                .args(args),
            PATIENCE,
        )
    }

    /// `voxlb --json ARGS...`, parsed. An error response is returned as
    /// `Ok(Response::Error)`; a CLI that printed no JSON is an `Err`.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Response> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all)?;
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "voxlb {}: exit {}, stdout {:?}, stderr {:?}",
                all.join(" "),
                out.code(),
                out.stdout,
                out.stderr
            )
        })
    }

    /// Adds `keys` (TOML lines, e.g. `balance = "load"`) to compiler
    /// service `service` of the config file and runs `voxlb reload`.
    pub fn reload_with_service_keys(&self, service: &str, keys: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let name = format!("name = \"{service}\"\n");
        anyhow::ensure!(text.contains(&name), "no service {service} in the config");
        std::fs::write(
            &self.config,
            text.replacen(&name, &format!("{name}{keys}\n"), 1),
        )?;
        let out = self.cli(&["reload"])?;
        anyhow::ensure!(
            out.code() == 0,
            "voxlb reload: {}{}",
            out.stdout,
            out.stderr
        );
        Ok(())
    }

    /// Rewrite the daemon's config with `icmp_steering = on` and reload.
    pub fn set_icmp_steering(&self, on: bool) {
        let text = std::fs::read_to_string(&self.config).expect("read the config");
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("icmp_steering"))
            .map(|l| {
                if l.starts_with("flow_capacity") {
                    format!("{l}\nicmp_steering = {on}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&self.config, text).expect("write the config");
        let out = self.cli(&["reload"]).expect("voxlb reload");
        assert_eq!(out.code(), 0, "reload: {} {}", out.stdout, out.stderr);
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command with its output captured, killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<CliOutput> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CliOutput {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
