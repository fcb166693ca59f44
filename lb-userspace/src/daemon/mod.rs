//! The daemon: one task owns the data plane and the state, and applies every
//! change; health checkers, the control socket, the neighbour poller and
//! signals only send it messages.
//!
//! # Changes are all-or-nothing
//!
//! A change (CLI command, reload, health or MAC event) is made in this order:
//! 1. compute the new state (overlay and ids) and the plan from it; a plan
//!    that cannot be made (unknown backend, table too small, ...) is refused
//!    with nothing touched;
//! 2. **persist** the new state (atomic write). If that fails, the change is
//!    refused with the maps untouched;
//! 3. **apply** the plan to the maps, writing only differences. If a map
//!    write fails, the previous state is written back and the previous plan
//!    re-applied (comparing against the maps themselves), and the change is
//!    refused.
//!
//! So when the CLI reports success, the change is both in the maps and on
//! disk; a restarted daemon neither loses nor repeats it.
//!
//! # Rooms
//! - this file: the daemon's state ([`Daemon`]), its start, and how a
//!   change is planned, persisted and applied ([`Daemon::change`]);
//! - [`commands`]: the control socket's commands (backend add, remove,
//!   drain, weight; host drain; reload);
//! - [`views`]: status, stats, flows, telemetry and open connections;
//! - [`upkeep`]: what runs on events and timers (health and load reports,
//!   the weight controller, neighbours and routes, retirement, BGP);
//! - [`run`]: the loop that owns the daemon and feeds it those events.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{BACKEND_EMPTY, PROTO_UDP, addr_from_bytes, reason::Verdict};
use tokio::{
    net::UnixListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    announce::{self, bird::Announcer},
    config::{self, Config, ConfigError},
    control::ServiceView,
    control::{
        self, BackendStat, Call, FlowView, ReasonStat, Request, Response, ServiceStat, StatsView,
        StatusView,
    },
    dataplane::{DataPlane, DataPlaneError},
    health::HealthCheck,
    load::{self, Balance, Controller, LoadInput, LoadPoller},
    neigh::MacResolver,
    reconcile::{self, Desired, HealthMap, MacMap, PlanError, WeightMap},
    retire::{self, FlowCount},
    state::{AddedBackend, Retiring, State, StateError, StateStore, unix_ms_now},
};

mod commands;
mod run;
mod upkeep;
mod views;

pub use run::run;
use upkeep::step_weights;

/// How often unresolved MACs are looked up (and solicited) again.
pub const NEIGH_RETRY: Duration = Duration::from_secs(5);
/// How often resolved (not configured) MACs are checked for changes.
pub const NEIGH_REFRESH: Duration = Duration::from_secs(60);
/// How often the bpffs pins are checked (and put back if deleted); every
/// control request checks them too.
pub const PIN_CHECK: Duration = Duration::from_secs(5);
/// How often, while a backend is retiring, the flow table is scanned for
/// its open connections (and the backend freed when none is left).
pub const RETIRE_TICK: Duration = Duration::from_secs(1);
/// How often, while nothing is retiring, the flow table is scanned for the
/// open connections of every backend (`status`, `backend list`, metrics).
/// One batched walk of the whole table per period, on the daemon's timer,
/// never per control request: a million-entry table costs a fraction of a
/// second of one core, so not every second.
pub const OPEN_FLOWS_REFRESH: Duration = Duration::from_secs(2);
/// How often the weight controllers step (slow-start ramps, load samples
/// that came in). The Maglev table is rebuilt only when a weight changed,
/// and the controller's hysteresis and rewrite limit decide when that is.
pub const WEIGHTS_TICK: Duration = Duration::from_secs(1);

/// A load reading of one compiler of a `balance = "load"` service.
#[derive(Clone, Debug)]
pub struct LoadUpdate {
    pub service: String,
    pub addr: IpAddr,
    pub input: LoadInput,
}

/// How often BIRD is supervised and its sessions read.
pub const ANNOUNCE_TICK: Duration = Duration::from_secs(1);
/// File in `state_dir` whose presence means `voxlb host drain` is in
/// effect; it survives restarts, so a host under maintenance stays
/// withdrawn until `voxlb host undrain`.
pub const HOST_DRAIN_FILE: &str = "host-drained";

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// A health verdict about one backend of one service (the checkers send
/// one after their first probe, then one per transition).
pub type HealthUpdate = crate::health::HealthEvent;

/// Starts the checker of one backend: `(service, address, check, events,
/// shutdown)`. The real one is [`health_checkers`]; tests pass one that
/// starts nothing and send [`HealthUpdate`]s themselves.
pub type CheckerSpawner = Arc<
    dyn Fn(
            String,
            IpAddr,
            HealthCheck,
            mpsc::Sender<HealthUpdate>,
            watch::Receiver<bool>,
        ) -> JoinHandle<()>
        + Send
        + Sync,
>;

/// The real checkers ([`crate::health::spawn_checker`]).
pub fn health_checkers() -> CheckerSpawner {
    Arc::new(|service, addr, check, tx, shutdown| {
        crate::health::spawn_checker(crate::health::Target { service, addr }, check, tx, shutdown)
    })
}

/// Check that every service's health check can be set up (CA and client
/// certificate files readable and valid), naming the service if not.
pub fn validate_checks(config: &Config) -> Result<(), String> {
    let checks = config
        .compiler_services
        .iter()
        .map(|s| (&s.name, &s.health))
        .chain(config.ca_services.iter().map(|s| (&s.name, &s.health)));
    for (name, check) in checks {
        crate::health::Prober::new(check.clone())
            .map_err(|e| format!("service {name}: health_check: {e}"))?;
    }
    Ok(())
}

/// A spawner that starts no checker (every backend stays "up").
pub fn no_checks() -> CheckerSpawner {
    Arc::new(|_, _, _, _, _| tokio::spawn(async {}))
}

struct Checker {
    check: HealthCheck,
    stop: watch::Sender<bool>,
    _task: JoinHandle<()>,
    /// A probe has passed since it started. Only then does its backend
    /// count for *announcing* a VIP: a checker reports "up" after a failed
    /// first probe (only `fall` failures take a backend down), and a host
    /// that just started must not attract traffic on that.
    passed: bool,
}

impl Checker {
    fn settled(&self) -> bool {
        self.passed
    }
}

/// Everything the daemon loop owns.
pub struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    store: StateStore,
    state: State,
    dp: Box<dyn DataPlane>,
    health: HealthMap,
    macs: MacMap,
    resolver: Box<dyn MacResolver>,
    /// Routed compilers' resolution (next hop, egress), and the resolver.
    routes: crate::forwarding::RouteMap,
    hops: crate::route::NextHops,
    /// What the last successful apply wrote; `None` after a failure.
    last: Option<Desired>,
    views: Vec<ServiceView>,
    started: Instant,
    last_reload_error: Option<String>,
    spawner: CheckerSpawner,
    health_tx: mpsc::Sender<HealthUpdate>,
    checkers: HashMap<(String, IpAddr), Checker>,
    /// Open and closing connections of every backend at the last scan.
    open_counts: HashMap<(String, IpAddr), FlowCount>,
    /// When the flow table was last scanned for [`Self::open_counts`].
    last_scan: Option<Instant>,
    /// The weight controller of each compiler service.
    controllers: HashMap<String, Controller>,
    /// Load readings since the controllers' last step.
    loads: HashMap<(String, IpAddr), LoadInput>,
    /// The effective weights of the last applied plan.
    weights: WeightMap,
    /// Weights a tick computed, for the replan it triggers.
    pending_weights: Option<WeightMap>,
    /// Where load pollers report; `None` = no polling (tests of the loop).
    load_tx: Option<mpsc::Sender<LoadUpdate>>,
    pollers: HashMap<(String, IpAddr), Poller>,
    telemetry: crate::telemetry::Telemetry,
    /// BIRD, with `[bgp]`.
    announcer: Option<Announcer>,
    /// `voxlb host drain` in effect.
    drained: bool,
}

struct Poller {
    /// The check (port, host, TLS) and interval it polls with.
    settings: (HealthCheck, Duration),
    stop: watch::Sender<bool>,
    _task: JoinHandle<()>,
}

/// What [`run`] needs besides the config and the data plane.
pub struct RunOptions {
    pub resolver: Box<dyn MacResolver>,
    pub spawner: CheckerSpawner,
    /// React to SIGHUP (reload) and SIGTERM/SIGINT (exit).
    pub signals: bool,
    /// Exit when this turns true (tests).
    pub stop: Option<watch::Receiver<bool>>,
}

/// The saved state, less the overlay entries `config` no longer applies
/// to, and its ids brought in line with what `dp` already holds.
fn load_state(config: &Config, dp: &dyn DataPlane) -> Result<(StateStore, State), DaemonError> {
    let store = StateStore::open(&config.state_dir)?;
    let mut state = store.load()?;
    for line in reconcile::prune_overlay(config, &mut state) {
        warn!("{line}");
    }
    reconcile::recover_from_dataplane(&mut state, config, dp)?;
    Ok((store, state))
}

impl Daemon {
    /// Load the state, reconcile the data plane to config + state, start the
    /// health checkers. `health_tx` is where checkers report.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        dp: Box<dyn DataPlane>,
        mut resolver: Box<dyn MacResolver>,
        spawner: CheckerSpawner,
        health_tx: mpsc::Sender<HealthUpdate>,
    ) -> Result<Daemon, DaemonError> {
        let (store, state) = load_state(&config, dp.as_ref())?;
        let mut dp = dp;
        if let Err(e) = dp.set_flood_threshold(config.flood_threshold) {
            warn!("setting the flood threshold: {e}");
        }
        if let Err(e) = dp.set_icmp_steering(config.icmp_steering) {
            warn!("setting icmp_steering: {e}");
        }
        let macs = match resolver.table() {
            Ok(t) => t,
            Err(e) => {
                warn!("neighbour table: {e}; backends without a configured mac wait");
                MacMap::new()
            }
        };
        let mut d = Daemon {
            config,
            config_path,
            store,
            state,
            dp,
            health: HealthMap::new(),
            macs,
            resolver,
            routes: Default::default(),
            hops: Default::default(),
            last: None,
            views: Vec::new(),
            started: Instant::now(),
            last_reload_error: None,
            spawner,
            health_tx,
            checkers: HashMap::new(),
            telemetry: Default::default(),
            announcer: None,
            drained: false,
            open_counts: HashMap::new(),
            last_scan: None,
            controllers: HashMap::new(),
            loads: HashMap::new(),
            weights: WeightMap::new(),
            pending_weights: None,
            load_tx: None,
            pollers: HashMap::new(),
        };
        d.drained = d.config.state_dir.join(HOST_DRAIN_FILE).exists();
        if d.drained {
            warn!("host drained (voxlb host drain): no VIP is announced until voxlb host undrain");
        }
        d.announcer = d.config.bgp.clone().map(Announcer::new);
        // Routed compilers are resolved before the first plan: one planned
        // unresolved would be written down, and its flows re-picked.
        d.resolve_routes();
        d.first_reconcile()?;
        d.solicit_unresolved();
        d.sync_checkers();
        Ok(d)
    }

    /// The first plan, saved and applied in full (nothing is taken as
    /// already written).
    fn first_reconcile(&mut self) -> Result<(), DaemonError> {
        let mut state = self.state.clone();
        let t0 = Instant::now();
        let weights = self.next_weights(None, Some(&state));
        let plan = reconcile::plan_weighted(
            &self.config,
            &mut state,
            &self.health,
            &self.macs,
            &self.routes,
            &weights,
        )?;
        self.weights = weights;
        self.store.save(&state)?;
        self.state = state;
        let applied = reconcile::apply(&plan.desired, None, self.dp.as_mut())?;
        self.telemetry.rebuilt(applied.tables, t0.elapsed());
        info!(
            "data plane reconciled: {} backend, {} table, {} CA, {}+{}- VIP writes",
            applied.backends,
            applied.tables,
            applied.ca_targets,
            applied.vips_upserted,
            applied.vips_removed
        );
        self.last = Some(plan.desired);
        self.report_views(plan.services);
        Ok(())
    }

    /// Log what changed for the operator: all-down services loudly.
    fn report_views(&mut self, mut new: Vec<ServiceView>) {
        self.patch_open_flows(&mut new);
        for s in &new {
            let before = self.views.iter().find(|o| o.name == s.name);
            let was = before.map(|b| b.active);
            if s.active == 0 && was != Some(0) {
                if s.kind == crate::control::ServiceKind::Ca {
                    error!(
                        "service {}: NO certificate authority is usable; every connection to {} is dropped (counted as drop_no_ca)",
                        s.name, s.vip
                    );
                } else {
                    error!(
                        "service {}: EVERY backend is down or unresolved; new connections to {} are dropped (counted as drop_no_backend)",
                        s.name, s.vip
                    );
                }
            } else if s.active > 0 && was == Some(0) {
                info!("service {}: {} backend(s) usable again", s.name, s.active);
            }
            if s.kind == crate::control::ServiceKind::Ca
                && let Some(b) = before
                && b.ca_target != s.ca_target
                && let Some(t) = s.ca_target
            {
                let role = s
                    .backends
                    .iter()
                    .find(|x| x.address == t)
                    .and_then(|x| x.role.clone())
                    .unwrap_or_default();
                warn!("service {}: CA traffic now goes to the {role} {t}", s.name);
            }
        }
        self.views = new;
        self.announce();
    }

    /// Make a change all-or-nothing (see the module docs). `change` edits a
    /// copy of the state and says what it did, or refuses.
    fn change(
        &mut self,
        config: Option<Config>,
        change: impl FnOnce(&mut State) -> Result<String, String>,
    ) -> Response {
        let mut state = self.state.clone();
        let message = match change(&mut state) {
            Ok(m) => m,
            Err(e) => return Response::error(e),
        };
        let t0 = Instant::now();
        // Health, drain and membership changes reach the controller at once.
        let weights = match self.pending_weights.take() {
            Some(w) => w,
            None => self.next_weights(config.as_ref(), Some(&state)),
        };
        let cfg = config.as_ref().unwrap_or(&self.config);
        let plan = match reconcile::plan_weighted(
            cfg,
            &mut state,
            &self.health,
            &self.macs,
            &self.routes,
            &weights,
        ) {
            Ok(p) => p,
            Err(e) => return Response::error(e.to_string()),
        };
        if state != self.state
            && let Err(e) = self.store.save(&state)
        {
            return Response::error(format!("not changed: cannot persist the state: {e}"));
        }
        let applied = reconcile::apply(&plan.desired, self.last.as_ref(), self.dp.as_mut());
        if let Ok(a) = &applied {
            self.telemetry.rebuilt(a.tables, t0.elapsed());
        }
        if let Err(e) = applied {
            error!("data plane write failed: {e}; rolling back");
            self.roll_back();
            return Response::error(format!("not changed: data plane write failed: {e}"));
        }
        self.state = state;
        if let Some(c) = config {
            self.config = c;
        }
        self.weights = weights;
        self.last = Some(plan.desired);
        self.report_views(plan.services);
        Response::Ok { message }
    }

    /// After a failed data plane write: the saved state and the data plane
    /// back to the state before the change, rewritten in full.
    fn roll_back(&mut self) {
        self.last = None;
        let rollback = self
            .store
            .save(&self.state)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                let mut old = self.state.clone();
                let p = reconcile::plan_weighted(
                    &self.config,
                    &mut old,
                    &self.health,
                    &self.macs,
                    &self.routes,
                    &self.weights,
                )
                .map_err(|e| e.to_string())?;
                reconcile::apply(&p.desired, None, self.dp.as_mut()).map_err(|e| e.to_string())?;
                self.last = Some(p.desired);
                Ok(())
            });
        if let Err(r) = rollback {
            error!("rollback failed too: {r}; will retry on the next change");
        }
    }

    /// The weight controllers' step for `state` under `config` (the running
    /// config and state when `None`).
    fn next_weights(&mut self, config: Option<&Config>, state: Option<&State>) -> WeightMap {
        step_weights(
            &mut self.controllers,
            &mut self.loads,
            &self.health,
            &self.macs,
            &self.routes,
            self.started,
            config.unwrap_or(&self.config),
            state.unwrap_or(&self.state),
        )
    }

    /// Recompute after a health or MAC change (no state edit).
    fn refresh(&mut self) {
        if let Response::Error { message } = self.change(None, |_| Ok(String::new())) {
            error!("cannot apply health/neighbour change: {message}");
        }
    }
}

/// `10m`, `90s`, `1m30s`.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    config::parse_backend_addr("address", s).map_err(|e| e.to_string())
}

fn compiler<'a>(cfg: &'a Config, name: &str) -> Result<&'a config::CompilerService, String> {
    match cfg.compiler(name) {
        Some(s) => Ok(s),
        None if cfg.ca(name).is_some() => Err(format!(
            "service {name:?} is a CA service: its primary and standby are set in the config file"
        )),
        None => Err(format!("unknown service {name:?}")),
    }
}
