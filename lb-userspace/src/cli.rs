//! The `voxlb` command line: the daemon (`run`, `detach`) and the client
//! commands that talk to it over the control socket.
//!
//! Exit codes (scripts can rely on them):
//!
//! | code | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | success                                                        |
//! | 1    | the daemon refused the request (unknown service, backend not present, ...) or the daemon failed |
//! | 2    | usage: bad arguments, rejected before anything is sent         |
//! | 3    | the daemon could not be reached (not running, no permission); `backend drain --wait`: connections still open at the timeout |

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    config::{self, DEFAULT_CONTROL_SOCKET},
    control::ServiceView,
    control::{self, ControlError, FlowView, Request, Response, StatsView, StatusView},
};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: refused by the daemon, or a daemon failure.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: daemon unreachable.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Time the CLI waits for the daemon.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// XDP load balancer for OpenVox Server.
#[derive(Debug, Parser)]
#[command(name = "voxlb", version, about)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach (or reuse) the XDP program and serve.
    Run {
        /// Config file (TOML; see the README's configuration reference).
        #[arg(long)]
        config: PathBuf,
        /// Replace an attached program by the one in this binary.
        #[arg(long)]
        replace: bool,
    },
    /// Detach the XDP program and remove the pinned maps (stops forwarding).
    Detach {
        /// Config file of the daemon to detach (interfaces, pin_dir).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        /// Config file to validate.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make the daemon re-read its config file.
    Reload,
    /// Change or list the backends of a compiler service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Services, backends and their states.
    Status,
    /// Packet counters.
    Stats,
    /// Entries of the flow table.
    Flows {
        /// Show at most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Live full-screen view of services, compilers, rates and health events.
    ///
    /// Keys: s / S cycle the sort column / reverse it, f cycles the service
    /// filter, p or space pauses, q or Esc quits. With --once (or when stdout
    /// is not a terminal) it prints one frame as plain text and exits.
    Top {
        /// Print one frame as plain text and exit (for scripts).
        #[arg(long)]
        once: bool,
        /// Time between refreshes (and the rate window of --once), e.g.
        /// "1s", "500ms".
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Show only this service.
        #[arg(long)]
        service: Option<String>,
        /// Initial sort column.
        #[arg(long, value_enum, default_value_t = crate::top::SortKey::Name)]
        sort: crate::top::SortKey,
    },
    /// Write man pages and shell completions under DIR (packaging).
    #[command(hide = true)]
    GenDocs {
        #[arg(long)]
        out: PathBuf,
    },
    /// Check this host (for keepalived's track_script and monitoring).
    Check {
        /// Exit code by fitness: 0 fit, 3 daemon unreachable, 4 program
        /// not attached, 5 host drained, 6 a service below --min-healthy.
        #[arg(long, required = true)]
        fit: bool,
        /// Usable backends every compiler service needs.
        #[arg(long, default_value_t = 1)]
        min_healthy: u32,
        /// Print nothing (keepalived logs only the exit code).
        #[arg(long)]
        quiet: bool,
    },
    /// Withdraw (drain) or announce again (undrain) this host's VIPs.
    #[command(subcommand)]
    Host(HostCmd),
    /// On a compiler: unwrap IPIP/GUE traffic to the VIPs (routed forwarding).
    Decap(crate::decap::DecapArgs),
}

/// `voxlb host ...`
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Withdraw every VIP of this host; flows that still arrive are
    /// forwarded. Persists across restarts until `undrain`.
    Drain {
        /// Then wait until no packet has been forwarded for --quiet-secs.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 5)]
        quiet_secs: u64,
        /// Give up waiting (exit 1) after this long.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Announce the VIPs again.
    Undrain,
}

/// `--interval`: a duration (humantime), 100 ms to 1 h.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = config::parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range 100ms..=1h"));
    }
    Ok(d)
}

/// `voxlb backend ...`
#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a compiler service.
    Add {
        service: String,
        address: String,
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<i64>,
        #[arg(long)]
        name: Option<String>,
        /// MAC of the backend (default: from the neighbour table).
        #[arg(long)]
        mac: Option<String>,
        /// Priority tier, 0 (preferred, the default) to 15: new flows go to
        /// the lowest tier with `min_healthy` usable compilers.
        #[arg(long, allow_negative_numbers = true)]
        tier: Option<i64>,
    },
    /// Remove a backend: it retires (no new flows; its established ones
    /// finish on it, up to the service's retire_grace), then is freed.
    Remove {
        service: String,
        address: String,
        /// Remove at once (dead or misbehaving compiler): its connections
        /// are re-picked to other compilers, which reset them.
        #[arg(long)]
        now: bool,
    },
    /// Stop new flows to a backend; established ones stay. With `--wait`,
    /// return once none of its connections is open (exit 0), or at the
    /// timeout (exit 3), printing the count as it falls.
    Drain {
        service: String,
        address: String,
        /// Wait until no connection to the backend is open.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (`90s`, `10m`).
        #[arg(long, default_value = "10m", value_parser = parse_timeout, requires = "wait")]
        timeout: Duration,
    },
    /// Let a drained backend take new flows again.
    Undrain { service: String, address: String },
    /// Set a backend's weight.
    Weight {
        service: String,
        address: String,
        #[arg(allow_negative_numbers = true)]
        weight: i64,
    },
    /// List backends (of one service, or all).
    List { service: Option<String> },
}

/// Check the arguments of a client command and turn it into a request.
/// Errors are usage errors (exit 2): nothing was sent.
pub fn to_request(cmd: &Command) -> Result<Request, String> {
    let addr = |a: &str| {
        config::parse_backend_addr("address", a)
            .map(|_| a.to_owned())
            .map_err(|e| e.to_string())
    };
    let svc = |s: &str| {
        config::check_name(s)
            .map(|_| s.to_owned())
            .map_err(|e| format!("service: {e}"))
    };
    Ok(match cmd {
        Command::Reload => Request::Reload {},
        Command::Status => Request::Status {},
        Command::Stats => Request::Stats {},
        Command::Flows { limit } => Request::Flows { limit: *limit },
        Command::Host(HostCmd::Drain { .. }) => Request::HostDrain {},
        Command::Host(HostCmd::Undrain) => Request::HostUndrain {},
        Command::Backend(b) => match b {
            BackendCmd::Add {
                service,
                address,
                weight,
                name,
                mac,
                tier,
            } => {
                if let Some(w) = weight {
                    config::check_weight(*w).map_err(|e| format!("--weight: {e}"))?;
                }
                if let Some(t) = tier {
                    config::check_tier(*t).map_err(|e| format!("--tier: {e}"))?;
                }
                if let Some(n) = name {
                    config::check_name(n).map_err(|e| format!("--name: {e}"))?;
                }
                if let Some(m) = mac {
                    config::parse_mac(m).map_err(|e| format!("--mac: {e}"))?;
                }
                Request::BackendAdd {
                    service: svc(service)?,
                    address: addr(address)?,
                    weight: *weight,
                    name: name.clone(),
                    mac: mac.clone(),
                    tier: *tier,
                }
            }
            BackendCmd::Remove {
                service,
                address,
                now,
            } => Request::BackendRemove {
                service: svc(service)?,
                address: addr(address)?,
                now: *now,
            },
            BackendCmd::Drain {
                service, address, ..
            } => Request::BackendDrain {
                service: svc(service)?,
                address: addr(address)?,
            },
            BackendCmd::Undrain { service, address } => Request::BackendUndrain {
                service: svc(service)?,
                address: addr(address)?,
            },
            BackendCmd::Weight {
                service,
                address,
                weight,
            } => {
                config::check_weight(*weight)?;
                Request::BackendWeight {
                    service: svc(service)?,
                    address: addr(address)?,
                    weight: *weight,
                }
            }
            BackendCmd::List { service } => Request::BackendList {
                service: service.as_deref().map(svc).transpose()?,
            },
        },
        Command::Run { .. }
        | Command::Detach { .. }
        | Command::CheckConfig { .. }
        | Command::Top { .. }
        | Command::GenDocs { .. }
        | Command::Check { .. }
        | Command::Decap(_) => {
            return Err("not a client command".into());
        }
    })
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// How often `drain --wait` asks the daemon for the count.
pub const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Run a client command: send, print, and give the exit code.
pub fn client(cli: &Cli) -> ExitCode {
    let req = match to_request(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("voxlb: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = send_and_print(cli, &req);
    if code != EXIT_OK {
        return ExitCode::from(code);
    }
    if let Command::Backend(BackendCmd::Drain {
        service,
        address,
        wait: true,
        timeout,
    }) = &cli.command
    {
        return ExitCode::from(drain_wait(cli, service, address, *timeout));
    }
    ExitCode::from(code)
}

/// `drain --wait`: poll the backend's open connections until none is left
/// (0) or `timeout` passes (3). Prints a line each time the count changes
/// (with `--json`, one JSON object per line).
fn drain_wait(cli: &Cli, service: &str, address: &str, timeout: Duration) -> u8 {
    let start = std::time::Instant::now();
    let req = Request::BackendConnections {
        service: service.to_owned(),
        address: address.to_owned(),
    };
    let mut last: Option<u64> = None;
    loop {
        let c = match control::request(&cli.socket, &req, CLIENT_TIMEOUT) {
            Ok(Response::Connections(c)) => c,
            Ok(other) => {
                let (out, _) = render(&other, cli.json);
                eprint!("{out}");
                return EXIT_ERROR;
            }
            Err(e @ ControlError::Unreachable { .. }) => {
                eprintln!("voxlb: {e}");
                return EXIT_UNREACHABLE;
            }
            Err(e) => {
                eprintln!("voxlb: {e}");
                return EXIT_ERROR;
            }
        };
        let elapsed = start.elapsed();
        let done = c.open == 0;
        let timed_out = !done && elapsed >= timeout;
        if last != Some(c.open) || done || timed_out {
            if cli.json {
                let line = serde_json::json!({
                    "service": c.service,
                    "address": c.address,
                    "state": c.state,
                    "open": c.open,
                    "closing": c.closing,
                    "elapsed_ms": elapsed.as_millis() as u64,
                    "done": done,
                    "timed_out": timed_out,
                });
                println!("{line}");
            } else if done {
                println!(
                    "backend {} of {}: drained, no open connection ({:.1}s)",
                    c.address,
                    c.service,
                    elapsed.as_secs_f64()
                );
            } else if timed_out {
                eprintln!(
                    "voxlb: backend {} of {}: {} connection(s) still open after {:.1}s; timed out",
                    c.address,
                    c.service,
                    c.open,
                    elapsed.as_secs_f64()
                );
            } else {
                println!(
                    "backend {} of {}: {} open connection(s) ({:.1}s)",
                    c.address,
                    c.service,
                    c.open,
                    elapsed.as_secs_f64()
                );
            }
            // A deploy hook's log should show progress as it happens.
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            last = Some(c.open);
        }
        if done {
            return EXIT_OK;
        }
        if timed_out {
            return EXIT_DRAIN_TIMEOUT;
        }
        std::thread::sleep(DRAIN_POLL.min(timeout.saturating_sub(elapsed)));
    }
}

/// Exit code of `backend drain --wait` at its timeout (the 3, the
/// same as "unreachable": either way a deploy hook must not go on).
pub const EXIT_DRAIN_TIMEOUT: u8 = 3;

/// Send one request and print its response; the exit code.
fn send_and_print(cli: &Cli, req: &Request) -> u8 {
    match control::request(&cli.socket, req, CLIENT_TIMEOUT) {
        Err(e @ ControlError::Unreachable { .. }) => {
            eprintln!("voxlb: {e}");
            EXIT_UNREACHABLE
        }
        Err(e) => {
            eprintln!("voxlb: {e}");
            EXIT_ERROR
        }
        Ok(resp) => {
            let (mut out, code) = render(&resp, cli.json);
            if cli.json && code == EXIT_OK && is_drain_wait(&cli.command) {
                // One JSON object per line from here on.
                out = serde_json::to_string(&resp).expect("responses serialize") + "\n";
            }
            // JSON always goes to stdout, for scripts; readable errors to stderr.
            if code == EXIT_OK || cli.json {
                print!("{out}");
            } else {
                eprint!("{out}");
            }
            code
        }
    }
}

fn is_drain_wait(c: &Command) -> bool {
    matches!(c, Command::Backend(BackendCmd::Drain { wait: true, .. }))
}

/// What to print for a response, and the exit code.
pub fn render(resp: &Response, json: bool) -> (String, u8) {
    let code = match resp {
        Response::Error { .. } => EXIT_ERROR,
        _ => EXIT_OK,
    };
    if json {
        let mut s = serde_json::to_string_pretty(resp).expect("responses serialize");
        s.push('\n');
        return (s, code);
    }
    let text = match resp {
        Response::Ok { message } => format!("{message}\n"),
        Response::Error { message } => format!("voxlb: {message}\n"),
        Response::Backends { services } => render_backends(services),
        Response::Status(s) => render_status(s),
        Response::Stats(s) => render_stats(s),
        Response::Flows { flows } => render_flows(flows),
        Response::Telemetry(t) => {
            let mut s = serde_json::to_string_pretty(t).expect("telemetry serializes");
            s.push('\n');
            s
        }
        Response::Connections(c) => format!(
            "backend {} of {} ({}): {} open connection(s), {} closing\n",
            c.address, c.service, c.state, c.open, c.closing
        ),
    };
    (text, code)
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let l: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn dash(o: Option<String>) -> String {
    o.unwrap_or_else(|| "-".into())
}

/// A backend's state; a retiring one also shows its open connections and
/// the time left of its grace: `retiring (3 open, 9m12s left)`.
pub fn state_cell(b: &crate::control::BackendView) -> String {
    let Some(deadline) = b.retire_deadline_unix_ms else {
        return b.state.to_string();
    };
    let left_s = deadline
        .saturating_sub(crate::state::unix_ms_now())
        .div_ceil(1000);
    let open = match b.open_flows {
        Some(n) => n.to_string(),
        None => "?".into(),
    };
    format!(
        "{} ({open} open, {}m{:02}s left)",
        b.state,
        left_s / 60,
        left_s % 60
    )
}

/// The weight new flows follow: `75`, `37.5`, `standby` (its tier is not
/// the active one), `0` (unusable), `-` (not a compiler).
pub fn effective_cell(b: &crate::control::BackendView) -> String {
    match (b.effective_weight_milli, b.weight_role.as_deref()) {
        (_, Some("standby")) => "standby".into(),
        (Some(m), _) => {
            let s = format!("{}.{:03}", m / 1000, m % 1000);
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
        (None, _) => "-".into(),
    }
}

/// The load signals behind the effective weight: JRuby pressure, and the
/// compile time relative to the serving compilers' when there is one
/// (`80% 4.0x`).
fn load_cell(b: &crate::control::BackendView) -> String {
    match (b.load_pressure_permille, b.load_slowness_permille) {
        (Some(p), Some(s)) => format!("{}% {}.{}x", (p + 5) / 10, s / 1000, s % 1000 / 100),
        (Some(p), None) => format!("{}%", (p + 5) / 10),
        (None, _) => "-".into(),
    }
}

fn render_backends(services: &[ServiceView]) -> String {
    let mut rows = Vec::new();
    for s in services {
        for b in &s.backends {
            rows.push(vec![
                s.name.clone(),
                b.address.to_string(),
                dash(b.name.clone()),
                b.id.to_string(),
                state_cell(b),
                match b.healthy {
                    Some(true) => "up".into(),
                    Some(false) => "down".into(),
                    None => "unchecked".into(),
                },
                match &b.role {
                    Some(r) => r.clone(),
                    None => b.weight.to_string(),
                },
                effective_cell(b),
                if s.kind == crate::control::ServiceKind::Compiler {
                    b.tier.to_string()
                } else {
                    "-".into()
                },
                load_cell(b),
                if s.kind == crate::control::ServiceKind::Compiler {
                    b.slots.to_string()
                } else if s.ca_target == Some(b.address) {
                    "serving".into()
                } else {
                    "-".into()
                },
                dash(b.open_flows.map(|n| n.to_string())),
                dash(b.mac.clone()),
                b.source.clone(),
                dash(b.route.clone()),
            ]);
        }
    }
    table(
        &[
            "SERVICE",
            "ADDRESS",
            "NAME",
            "ID",
            "STATE",
            "HEALTH",
            "WEIGHT",
            "EFFECTIVE",
            "TIER",
            "LOAD",
            "SLOTS",
            "OPEN",
            "MAC",
            "SOURCE",
            "ROUTE",
        ],
        &rows,
    )
}

fn render_status(s: &StatusView) -> String {
    let mut out = status_header(s);
    out.push('\n');
    out.push_str(&services_table(s));
    for v in &s.services {
        for b in v
            .backends
            .iter()
            .filter(|b| b.retire_deadline_unix_ms.is_some())
        {
            let _ = writeln!(
                out,
                "{} {}: {} (removed; connections finishing)",
                v.name,
                b.address,
                state_cell(b)
            );
        }
    }
    if let Some(a) = &s.announce {
        out.push('\n');
        out.push_str(&announce_section(a));
    }
    out
}

/// The daemon, its config, what is wrong with it, and the program's and
/// host's state.
fn status_header(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "voxlb {} (pid {}), up {}s, interfaces {}",
        s.version,
        s.pid,
        s.uptime_secs,
        s.interfaces.join(",")
    );
    if let Some(c) = &s.config {
        let _ = writeln!(out, "config {}", c.display());
    }
    if let Some(e) = &s.last_reload_error {
        let _ = writeln!(out, "LAST RELOAD FAILED: {e}");
    }
    if !s.unresolved.is_empty() {
        let list: Vec<String> = s.unresolved.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "unresolved (out of the tables): {}", list.join(", "));
        // Routed backends say why (no route, no neighbour, wrong egress).
        for b in s.services.iter().flat_map(|v| v.backends.iter()) {
            if b.mac.is_none()
                && let Some(why) = &b.route
            {
                let _ = writeln!(out, "  {}: {why}", b.address);
            }
        }
    }
    let _ = writeln!(
        out,
        "program {}, host {}",
        if s.attached {
            "attached"
        } else {
            "NOT ATTACHED"
        },
        if s.drained { "DRAINED" } else { "in service" }
    );
    out
}

/// One row a service: usable backends, open flows, table fingerprint.
fn services_table(s: &StatusView) -> String {
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|v| {
            let note = if v.active == 0 {
                "ALL DOWN: dropping".to_string()
            } else if v.kind == crate::control::ServiceKind::Ca {
                format!("-> {}", dash(v.ca_target.map(|a| a.to_string())))
            } else {
                String::new()
            };
            let open: Option<u64> = v.backends.iter().map(|b| b.open_flows).sum();
            vec![
                v.name.clone(),
                v.kind.to_string(),
                v.vip.clone(),
                format!("{}/{}", v.active, v.backends.len()),
                dash(open.map(|n| n.to_string())),
                dash(v.fingerprint.clone()),
                note,
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "KIND",
            "VIP",
            "USABLE",
            "OPEN",
            "FINGERPRINT",
            "",
        ],
        &rows,
    )
}

/// The BGP announcements: each VIP's and each session's state.
fn announce_section(a: &crate::announce::AnnounceView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "bgp ({}):", a.mode);
    if let Some(e) = &a.bird_error {
        let _ = writeln!(out, "BIRD ERROR: {e}");
    }
    let rows: Vec<Vec<String>> = a
        .vips
        .iter()
        .map(|v| {
            vec![
                v.address.to_string(),
                if v.announced {
                    "announced"
                } else {
                    "withdrawn"
                }
                .into(),
                v.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["VIP", "ANNOUNCEMENT", "WHY"], &rows));
    let rows: Vec<Vec<String>> = a
        .sessions
        .iter()
        .map(|x| {
            vec![
                x.name.clone(),
                x.neighbor.to_string(),
                x.state.clone(),
                x.info.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["SESSION", "NEIGHBOR", "STATE", "INFO"], &rows));
    out
}

fn render_stats(s: &StatsView) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = s
        .reasons
        .iter()
        .map(|r| {
            vec![
                r.reason.clone(),
                r.verdict.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["REASON", "VERDICT", "PACKETS", "BYTES"], &rows));
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.packets.to_string(),
                v.bytes.to_string(),
                v.new_flows.to_string(),
                v.no_backend.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SERVICE",
            "PACKETS",
            "BYTES",
            "NEW_FLOWS",
            "NO_BACKEND_DROPS",
        ],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .flat_map(|v| {
            v.backends.iter().map(|b| {
                vec![
                    v.name.clone(),
                    b.address.to_string(),
                    b.state.to_string(),
                    b.packets.to_string(),
                    b.bytes.to_string(),
                    b.new_flows.to_string(),
                ]
            })
        })
        .collect();
    out.push_str(&table(
        &[
            "SERVICE",
            "BACKEND",
            "STATE",
            "PACKETS",
            "BYTES",
            "NEW_FLOWS",
        ],
        &rows,
    ));
    let f = &s.flood;
    let threshold = match f.threshold {
        0 => "off".to_string(),
        t => format!("{t} new flows/s per CPU"),
    };
    out.push_str(&format!(
        "\nflood mode: threshold {threshold}; {} CPU(s) in flood mode now; {} SYNs forwarded without a flow entry ({} flood windows)\n",
        f.cpus_in_flood, f.flood_syns, f.flood_windows
    ));
    out
}

fn render_flows(flows: &[FlowView]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                f.client.clone(),
                f.vip.clone(),
                f.proto.clone(),
                dash(f.service.clone()),
                match f.backend {
                    Some(b) => b.to_string(),
                    None => format!("(id {}, stale)", f.backend_id),
                },
            ]
        })
        .collect();
    let mut out = table(&["CLIENT", "VIP", "PROTO", "SERVICE", "BACKEND"], &rows);
    let _ = writeln!(out, "{} flow(s) shown", flows.len());
    out
}
