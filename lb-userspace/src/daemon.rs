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
    control::{
        self, BackendStat, Call, FlowView, ReasonStat, Request, Response, ServiceStat, StatsView,
        StatusView,
    },
    dataplane::{DataPlane, DataPlaneError},
    health::HealthCheck,
    load::{self, Balance, Controller, LoadInput, LoadPoller},
    neigh::MacResolver,
    reconcile::{self, Desired, HealthMap, MacMap, PlanError, ServiceView, WeightMap},
    retire::{self, FlowCount},
    state::{AddedBackend, Retiring, State, StateError, StateStore, unix_ms_now},
};

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

/// Step every compiler service's weight controller with the backends of
/// `state` (after the CLI overlay), health, MACs and the load readings
/// since the last step (consumed).
#[allow(clippy::too_many_arguments)]
fn step_weights(
    controllers: &mut HashMap<String, Controller>,
    loads: &mut HashMap<(String, IpAddr), LoadInput>,
    health: &HealthMap,
    macs: &MacMap,
    started: Instant,
    cfg: &Config,
    state: &State,
) -> WeightMap {
    let now_ms = started.elapsed().as_millis() as u64;
    controllers.retain(|n, c| {
        cfg.compiler(n)
            .is_some_and(|s| &s.balancing.controller == c.config())
    });
    let mut out = WeightMap::new();
    for svc in &cfg.compiler_services {
        let ctl = controllers
            .entry(svc.name.clone())
            .or_insert_with(|| Controller::new(svc.balancing.controller.clone()));
        let eff = reconcile::effective_backends(svc, state.overlays.get(&svc.name));
        let mine: HashMap<IpAddr, LoadInput> = loads
            .iter()
            .filter(|((n, _), _)| *n == svc.name)
            .map(|((_, a), l)| (*a, *l))
            .collect();
        let inputs = load::compiler_inputs(&svc.name, &eff, health, macs, &mine);
        for w in ctl.step(now_ms, &inputs).weights {
            out.insert((svc.name.clone(), w.address), w);
        }
    }
    loads.clear();
    out
}

/// The Maglev-relevant part of two weight maps differs.
fn weights_differ(a: &WeightMap, b: &WeightMap) -> bool {
    a.len() != b.len()
        || a.iter().any(|(k, w)| {
            b.get(k)
                .is_none_or(|o| o.maglev_weight != w.maglev_weight || o.role != w.role)
        })
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
        let store = StateStore::open(&config.state_dir)?;
        let mut state = store.load()?;
        for line in reconcile::prune_overlay(&config, &mut state) {
            warn!("{line}");
        }
        reconcile::recover_from_dataplane(&mut state, &config, dp.as_ref())?;
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
        let mut state = d.state.clone();
        let t0 = Instant::now();
        let weights = step_weights(
            &mut d.controllers,
            &mut d.loads,
            &d.health,
            &d.macs,
            d.started,
            &d.config,
            &state,
        );
        let plan = reconcile::plan_weighted(&d.config, &mut state, &d.health, &d.macs, &weights)?;
        d.weights = weights;
        d.store.save(&state)?;
        d.state = state;
        let applied = reconcile::apply(&plan.desired, None, d.dp.as_mut())?;
        d.telemetry.rebuilt(applied.tables, t0.elapsed());
        info!(
            "data plane reconciled: {} backend, {} table, {} CA, {}+{}- VIP writes",
            applied.backends,
            applied.tables,
            applied.ca_targets,
            applied.vips_upserted,
            applied.vips_removed
        );
        d.last = Some(plan.desired);
        d.report_views(plan.services);
        d.solicit_unresolved();
        d.sync_checkers();
        Ok(d)
    }

    /// The current view of every service.
    pub fn services(&self) -> &[ServiceView] {
        &self.views
    }

    /// Log what changed for the operator: all-down services loudly.
    fn report_views(&mut self, mut new: Vec<ServiceView>) {
        self.patch_open_flows(&mut new);
        for s in &new {
            let before = self.views.iter().find(|o| o.name == s.name);
            let was = before.map(|b| b.active);
            if s.active == 0 && was != Some(0) {
                if s.kind == "ca" {
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
            if s.kind == "ca"
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

    /// Whether the program is attached on every interface: the interface
    /// exists and its link pin is in place (the daemon holds the link open
    /// and puts a deleted pin back).
    pub fn attached(&self) -> bool {
        crate::fitness::program_attached(&self.config.pin_dir, &self.config.interfaces)
    }

    /// Decide what to announce and hand it to BIRD (no-op without `[bgp]`).
    fn announce(&mut self) {
        let host = announce::HostState {
            attached: self.attached(),
            drained: self.drained,
        };
        if self.announcer.is_none() {
            return;
        }
        // Backends whose health is not settled count as unknown here.
        let mut views = self.views.clone();
        for s in &mut views {
            for b in &mut s.backends {
                let settled = self
                    .checkers
                    .get(&(s.name.clone(), b.address))
                    .is_some_and(Checker::settled);
                if !settled {
                    b.healthy = None;
                }
            }
        }
        if let Some(a) = self.announcer.as_mut() {
            let decision = announce::decide(a.config(), &views, host);
            a.set(decision, host.drained);
        }
    }

    /// Supervise BIRD, re-decide (attachment may change), read sessions.
    pub fn announce_tick(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        self.announce();
        if let Some(a) = self.announcer.as_mut() {
            a.tick();
        }
    }

    /// The daemon stops: withdraw (see [`Announcer::stop`]).
    pub fn stop_announcing(&mut self) {
        if let Some(mut a) = self.announcer.take() {
            a.stop();
        }
    }

    /// `voxlb host drain` / `undrain`: persisted first, then announced.
    fn set_host_drain(&mut self, drain: bool) -> Response {
        let marker = self.config.state_dir.join(HOST_DRAIN_FILE);
        let r = if drain {
            std::fs::write(&marker, b"drained by voxlb host drain\n")
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        if let Err(e) = r {
            return Response::error(format!(
                "not changed: cannot persist the drain in {}: {e}",
                marker.display()
            ));
        }
        let was = self.drained;
        self.drained = drain;
        self.announce();
        let what = match (drain, was) {
            (true, true) => "host was already drained",
            (true, false) => {
                "host drained: every VIP withdrawn; flows that still arrive are forwarded"
            }
            (false, false) => "host was not drained",
            (false, true) => "host undrained: VIPs announced again where services are fit",
        };
        Response::Ok {
            message: what.into(),
        }
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
        let cfg = config.as_ref().unwrap_or(&self.config);
        let t0 = Instant::now();
        // Health, drain and membership changes reach the controller at once.
        let weights = match self.pending_weights.take() {
            Some(w) => w,
            None => step_weights(
                &mut self.controllers,
                &mut self.loads,
                &self.health,
                &self.macs,
                self.started,
                cfg,
                &state,
            ),
        };
        let plan =
            match reconcile::plan_weighted(cfg, &mut state, &self.health, &self.macs, &weights) {
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
                        &self.weights,
                    )
                    .map_err(|e| e.to_string())?;
                    reconcile::apply(&p.desired, None, self.dp.as_mut())
                        .map_err(|e| e.to_string())?;
                    self.last = Some(p.desired);
                    Ok(())
                });
            if let Err(r) = rollback {
                error!("rollback failed too: {r}; will retry on the next change");
            }
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

    /// Recompute after a health or MAC change (no state edit).
    fn refresh(&mut self) {
        if let Response::Error { message } = self.change(None, |_| Ok(String::new())) {
            error!("cannot apply health/neighbour change: {message}");
        }
    }

    /// Put back deleted bpffs pins (see [`DataPlane::ensure_pinned`]).
    pub fn check_pins(&mut self) {
        match self.dp.ensure_pinned() {
            Ok(true) => warn!("bpffs pins had been deleted; put back from the daemon's handles"),
            Ok(false) => {}
            Err(e) => error!(
                "cannot put the deleted bpffs pins back: {e}; a restarted daemon would start with empty maps"
            ),
        }
    }

    /// Handle one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        self.check_pins();
        let membership = matches!(
            req,
            Request::BackendAdd { .. } | Request::BackendRemove { .. }
        );
        let resp = self.handle_inner(req);
        if membership && matches!(resp, Response::Ok { .. }) {
            // Start the checker of an added backend, stop a removed one's.
            self.sync_checkers();
        }
        resp
    }

    fn handle_inner(&mut self, req: Request) -> Response {
        match req {
            Request::BackendAdd {
                service,
                address,
                weight,
                name,
                mac,
            } => {
                let (addr, weight, mac) = match (|| {
                    let addr = parse_addr(&address)?;
                    let weight = weight.map(config::check_weight).transpose()?;
                    if let Some(n) = &name {
                        config::check_name(n)?;
                    }
                    let mac = mac.as_deref().map(config::parse_mac).transpose()?;
                    Ok::<_, String>((addr, weight, mac))
                })() {
                    Ok(v) => v,
                    Err(e) => return Response::error(e),
                };
                let cfg = self.config.clone();
                self.change(None, |st| {
                    let svc = compiler(&cfg, &service)?;
                    let o = st.overlays.entry(service.clone()).or_default();
                    let in_config = svc.backends.iter().find(|b| b.address == addr);
                    let present = match in_config {
                        Some(_) => !o.removed.contains(&addr),
                        None => o.added.contains_key(&addr),
                    };
                    if present {
                        return Err(format!("backend {addr} is already in service {service}"));
                    }
                    // Re-adding a retiring backend revives it: it never left
                    // its slot, so same id and generation, flows untouched.
                    let revived = o.retiring.remove(&addr);
                    let (name, mac) = match &revived {
                        Some(r) => (name.clone().or(r.name.clone()), mac.or(r.mac)),
                        None => (name.clone(), mac),
                    };
                    let weight = weight.or(revived.as_ref().map(|r| r.weight));
                    let done = if revived.is_some() {
                        format!(
                            "backend {addr} back in {service} (it was retiring: same id, its connections never moved)"
                        )
                    } else {
                        format!("backend {addr} added to {service}")
                    };
                    if let Some(b) = in_config {
                        // Re-adding a removed config backend: config settings,
                        // with the weight given now, if any.
                        o.removed.remove(&addr);
                        if let Some(w) = weight.filter(|w| *w != b.weight) {
                            o.weights.insert(addr, w);
                        }
                    } else {
                        o.added.insert(
                            addr,
                            AddedBackend {
                                name,
                                weight: weight.unwrap_or(config::DEFAULT_WEIGHT),
                                mac,
                            },
                        );
                    }
                    Ok(done)
                })
            }
            Request::BackendRemove {
                service,
                address,
                now,
            } => self.remove_backend(&service, &address, now),
            Request::BackendDrain { service, address } => {
                self.edit_backend(&service, &address, |o, addr, _| {
                    Ok(if o.drained.insert(addr) {
                        format!("backend {addr} of {service} draining: no new flows, established ones stay")
                    } else {
                        format!("backend {addr} of {service} was already draining")
                    })
                })
            }
            Request::BackendUndrain { service, address } => {
                self.edit_backend(&service, &address, |o, addr, _| {
                    Ok(if o.drained.remove(&addr) {
                        format!("backend {addr} of {service} takes new flows again")
                    } else {
                        format!("backend {addr} of {service} was not draining")
                    })
                })
            }
            Request::BackendWeight {
                service,
                address,
                weight,
            } => {
                let weight = match config::check_weight(weight) {
                    Ok(w) => w,
                    Err(e) => return Response::error(e),
                };
                let cfg = self.config.clone();
                self.edit_backend(&service, &address, |o, addr, in_config| {
                    if in_config {
                        let base = cfg
                            .compiler(&service)
                            .and_then(|s| s.backends.iter().find(|b| b.address == addr))
                            .map(|b| b.weight);
                        if base == Some(weight) {
                            o.weights.remove(&addr);
                        } else {
                            o.weights.insert(addr, weight);
                        }
                    } else if let Some(a) = o.added.get_mut(&addr) {
                        a.weight = weight;
                    }
                    Ok(format!("backend {addr} of {service}: weight {weight}"))
                })
            }
            Request::BackendList { service } => {
                let services: Vec<ServiceView> = match &service {
                    None => self.views.clone(),
                    Some(n) => match self.views.iter().find(|s| &s.name == n) {
                        Some(s) => vec![s.clone()],
                        None => return Response::error(format!("unknown service {n:?}")),
                    },
                };
                Response::Backends { services }
            }
            Request::BackendConnections { service, address } => {
                self.connections(&service, &address)
            }
            Request::Status {} => Response::Status(self.status()),
            Request::Stats {} => match self.stats() {
                Ok(s) => Response::Stats(s),
                Err(e) => Response::error(format!("reading counters: {e}")),
            },
            Request::Flows { limit } => match self.flows(limit.min(1_000_000)) {
                Ok(flows) => Response::Flows { flows },
                Err(e) => Response::error(format!("reading the flow table: {e}")),
            },
            Request::Reload {} => self.reload(),
            Request::Telemetry {} => Response::Telemetry(self.telemetry()),
            Request::HostDrain {} => self.set_host_drain(true),
            Request::HostUndrain {} => self.set_host_drain(false),
        }
    }

    /// Edit the overlay of a backend that must be present in a compiler
    /// service. `f` gets the overlay, the address and whether the backend
    /// comes from the config.
    fn edit_backend(
        &mut self,
        service: &str,
        address: &str,
        f: impl FnOnce(&mut crate::state::ServiceOverlay, IpAddr, bool) -> Result<String, String>,
    ) -> Response {
        let addr = match parse_addr(address) {
            Ok(a) => a,
            Err(e) => return Response::error(e),
        };
        let cfg = self.config.clone();
        self.change(None, |st| {
            let svc = compiler(&cfg, service)?;
            let o = st.overlays.entry(service.to_owned()).or_default();
            let in_config = svc.backends.iter().any(|b| b.address == addr);
            let present = if in_config {
                !o.removed.contains(&addr)
            } else {
                o.added.contains_key(&addr)
            };
            if !present {
                if o.retiring.contains_key(&addr) {
                    return Err(format!(
                        "backend {addr} of {service} is retiring (removed); `voxlb backend add` brings it back"
                    ));
                }
                return Err(format!("backend {addr} is not in service {service}"));
            }
            let msg = f(o, addr, in_config)?;
            if o.is_empty() {
                st.overlays.remove(service);
            }
            Ok(msg)
        })
    }

    /// Re-read the config file and apply the difference. On any error the
    /// old config stays in force.
    pub fn reload(&mut self) -> Response {
        let Some(path) = self.config_path.clone() else {
            return Response::error("no config file to reload (daemon started without one)");
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("reload failed, old config kept: {e}");
                error!("{msg}");
                self.last_reload_error = Some(msg.clone());
                return Response::error(msg);
            }
        };
        if let Err(e) = validate_checks(&new) {
            let msg = format!("reload failed, old config kept: {e}");
            error!("{msg}");
            self.last_reload_error = Some(msg.clone());
            return Response::error(msg);
        }
        let fixed = [
            ("interfaces", new.interfaces != self.config.interfaces),
            ("xdp_mode", new.xdp_mode != self.config.xdp_mode),
            ("pin_dir", new.pin_dir != self.config.pin_dir),
            (
                "control_socket",
                new.control_socket != self.config.control_socket,
            ),
            ("state_dir", new.state_dir != self.config.state_dir),
            (
                "metrics_listen",
                new.metrics_listen != self.config.metrics_listen,
            ),
            (
                "flow_capacity",
                new.flow_capacity != self.config.flow_capacity,
            ),
        ];
        for (k, changed) in fixed {
            if changed {
                warn!("reload: {k} changed; it takes effect at the next restart");
            }
        }
        let bgp_changed = new.bgp != self.config.bgp;
        // The flood threshold is one map word: it changes at once.
        if new.flood_threshold != self.config.flood_threshold
            && let Err(e) = self.dp.set_flood_threshold(new.flood_threshold)
        {
            warn!("reload: setting the flood threshold: {e}");
        }
        if new.icmp_steering != self.config.icmp_steering
            && let Err(e) = self.dp.set_icmp_steering(new.icmp_steering)
        {
            warn!("reload: setting icmp_steering: {e}");
        }
        let mut dropped = Vec::new();
        let mut retired = Vec::new();
        let old = self.config.clone();
        let resp = self.change(Some(new.clone()), |st| {
            let before: Vec<(String, config::Backend)> = old
                .compiler_services
                .iter()
                .flat_map(|s| {
                    reconcile::effective_backends(s, st.overlays.get(&s.name))
                        .into_iter()
                        .map(|e| (s.name.clone(), e.backend))
                })
                .collect();
            dropped = reconcile::prune_overlay(&new, st);
            // A backend the new config drops retires like a CLI removal; a
            // service dropped entirely takes its VIP with it.
            let now_ms = unix_ms_now();
            for (name, b) in before {
                let Some(svc) = new.compiler(&name) else {
                    continue;
                };
                let o = st.overlays.get(&name);
                let still = reconcile::effective_backends(svc, o)
                    .iter()
                    .any(|e| e.backend.address == b.address);
                if still {
                    continue;
                }
                st.overlays.entry(name.clone()).or_default().retiring.insert(
                    b.address,
                    Retiring {
                        name: b.name.clone(),
                        weight: b.weight,
                        mac: b.mac,
                        deadline_unix_ms: now_ms + svc.retire_grace.as_millis() as u64,
                    },
                );
                retired.push(format!(
                    "service {name}: {} is gone from the config; retiring (its established connections finish on it, at most {})",
                    b.address,
                    fmt_duration(svc.retire_grace)
                ));
            }
            Ok(if retired.is_empty() {
                "config reloaded".into()
            } else {
                format!("config reloaded; {} backend(s) retiring", retired.len())
            })
        });
        match &resp {
            Response::Ok { .. } => {
                for line in dropped {
                    warn!("{line}");
                }
                for line in retired {
                    info!("{line}");
                }
                self.last_reload_error = None;
                info!("config reloaded from {}", path.display());
                if bgp_changed {
                    match (self.announcer.as_mut(), new.bgp.clone()) {
                        (Some(a), Some(b)) => a.reconfigure(b),
                        (Some(_), None) => self.stop_announcing(),
                        (None, Some(b)) => self.announcer = Some(Announcer::new(b)),
                        (None, None) => {}
                    }
                    self.announce();
                }
                self.solicit_unresolved();
                self.sync_checkers();
            }
            Response::Error { message } => {
                error!("reload failed, old config kept: {message}");
                self.last_reload_error = Some(message.clone());
            }
            _ => {}
        }
        resp
    }

    /// A checker's verdict.
    pub fn on_health(&mut self, ev: HealthUpdate) {
        let key = (ev.service.clone(), ev.addr);
        let Some(checker) = self.checkers.get_mut(&key) else {
            return; // a late event from a stopped checker
        };
        if ev.up && ev.detail == "ok" && !checker.passed {
            checker.passed = true;
            self.announce();
        }
        if self.health.get(&key) == Some(&ev.up) {
            return;
        }
        if ev.up {
            info!(
                "service {}: backend {} is up ({})",
                ev.service, ev.addr, ev.detail
            );
        } else {
            warn!(
                "service {}: backend {} is DOWN ({})",
                ev.service, ev.addr, ev.detail
            );
        }
        // A first "up" only confirms the assumed state: not an event.
        let first_up = ev.up && !self.health.contains_key(&key);
        self.health.insert(key, ev.up);
        if !first_up {
            self.telemetry
                .health_event(&ev.service, ev.addr, ev.up, &ev.detail);
        }
        self.refresh();
    }

    /// A load poller's reading: kept for the controllers' next step.
    pub fn on_load(&mut self, ev: LoadUpdate) {
        let key = (ev.service, ev.addr);
        if self.pollers.contains_key(&key) {
            self.loads.insert(key, ev.input);
        }
    }

    /// Step the weight controllers (load readings, slow-start ramps); replan
    /// only if a Maglev weight or a tier role changed.
    pub fn weights_tick(&mut self) {
        let w = step_weights(
            &mut self.controllers,
            &mut self.loads,
            &self.health,
            &self.macs,
            self.started,
            &self.config,
            &self.state,
        );
        if weights_differ(&w, &self.weights) {
            self.pending_weights = Some(w);
            self.refresh();
            self.pending_weights = None;
        } else {
            // Same table; show the new signal.
            self.weights = w;
            let mut views = std::mem::take(&mut self.views);
            for s in &mut views {
                for b in &mut s.backends {
                    if let Some(w) = self.weights.get(&(s.name.clone(), b.address)) {
                        reconcile::show_weight(b, w);
                    }
                }
            }
            self.views = views;
        }
    }

    /// Start polling the load of `balance = "load"` compilers, reporting to
    /// `tx`.
    pub fn enable_load_polling(&mut self, tx: mpsc::Sender<LoadUpdate>) {
        self.load_tx = Some(tx);
        self.sync_pollers();
    }

    /// One poller per compiler of each `balance = "load"` service.
    fn sync_pollers(&mut self) {
        let Some(tx) = self.load_tx.clone() else {
            return;
        };
        let mut want: HashMap<(String, IpAddr), &config::CompilerService> = HashMap::new();
        for s in &self.config.compiler_services {
            if s.balancing.controller.balance != Balance::Load {
                continue;
            }
            for e in reconcile::effective_backends(s, self.state.overlays.get(&s.name)) {
                want.insert((s.name.clone(), e.backend.address), s);
            }
        }
        // A changed check or interval (reload) restarts the poller.
        self.pollers.retain(|k, p| {
            let keep = want
                .get(k)
                .is_some_and(|s| p.settings == (s.health.clone(), s.balancing.load_interval));
            if !keep {
                let _ = p.stop.send(true);
            }
            keep
        });
        for (k, svc) in want {
            if self.pollers.contains_key(&k) {
                continue;
            }
            let interval = svc.balancing.load_interval;
            let poller = match LoadPoller::new(&svc.health, interval) {
                Ok(p) => p,
                Err(e) => {
                    warn!(
                        "service {}: cannot poll load: {e}; static weights",
                        svc.name
                    );
                    continue;
                }
            };
            let (stop, stop_rx) = watch::channel(false);
            let task = spawn_poller(k.0.clone(), k.1, poller, interval, tx.clone(), stop_rx);
            self.pollers.insert(
                k,
                Poller {
                    settings: (svc.health.clone(), interval),
                    stop,
                    _task: task,
                },
            );
        }
    }

    /// Addresses of backends whose MAC is needed but unknown.
    fn unresolved(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .views
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.mac.is_none())
            .map(|b| b.address)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Addresses whose MAC comes from the neighbour table.
    fn resolved_dynamically(&self) -> Vec<IpAddr> {
        let configured = |a: &IpAddr| {
            self.config
                .compiler_services
                .iter()
                .flat_map(|s| s.backends.iter())
                .chain(
                    self.config
                        .ca_services
                        .iter()
                        .flat_map(|s| std::iter::once(&s.primary).chain(s.standby.as_ref())),
                )
                .any(|b| b.address == *a && b.mac.is_some())
        };
        let mut v: Vec<IpAddr> = self
            .views
            .iter()
            .flat_map(|s| s.backends.iter())
            .map(|b| b.address)
            .filter(|a| !configured(a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn solicit_unresolved(&mut self) {
        for a in self.unresolved() {
            warn!("backend {a}: MAC unknown; kept out of the tables until it resolves");
            self.resolver.solicit(a);
        }
    }

    /// Look the neighbour table up again: `all` also re-checks resolved MACs.
    pub fn neigh_tick(&mut self, all: bool) {
        let wanted = if all {
            self.resolved_dynamically()
        } else {
            self.unresolved()
        };
        if wanted.is_empty() {
            return;
        }
        let table = match self.resolver.table() {
            Ok(t) => t,
            Err(e) => {
                warn!("neighbour table: {e}");
                return;
            }
        };
        let mut changed = false;
        for a in wanted {
            match table.get(&a) {
                Some(mac) if self.macs.get(&a) != Some(mac) => {
                    info!("backend {a}: MAC {}", config::format_mac(mac));
                    self.macs.insert(a, *mac);
                    changed = true;
                }
                Some(_) => {}
                // A vanished entry keeps the last MAC: the neighbour entry
                // may just have been garbage-collected.
                None if !self.macs.contains_key(&a) => self.resolver.solicit(a),
                None => {}
            }
        }
        if changed {
            self.refresh();
        }
    }

    /// Start checkers for new backends, stop those of gone ones, restart
    /// those whose check changed.
    fn sync_checkers(&mut self) {
        let mut want: HashMap<(String, IpAddr), HealthCheck> = HashMap::new();
        for s in &self.config.compiler_services {
            let o = self.state.overlays.get(&s.name);
            for e in reconcile::effective_backends(s, o) {
                want.insert((s.name.clone(), e.backend.address), s.health.clone());
            }
            // A retiring backend is still checked: if it dies, its flows
            // are re-picked like any down backend's.
            for a in o.iter().flat_map(|o| o.retiring.keys()) {
                want.insert((s.name.clone(), *a), s.health.clone());
            }
        }
        for s in &self.config.ca_services {
            for b in std::iter::once(&s.primary).chain(s.standby.as_ref()) {
                want.insert((s.name.clone(), b.address), s.health.clone());
            }
        }
        self.checkers.retain(|k, c| {
            let keep = want.get(k) == Some(&c.check);
            if !keep {
                let _ = c.stop.send(true);
            }
            keep
        });
        let mut forget = Vec::new();
        for k in self.health.keys() {
            if !self.checkers.contains_key(k) {
                forget.push(k.clone());
            }
        }
        for (k, check) in want {
            if self.checkers.contains_key(&k) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let task = (self.spawner)(
                k.0.clone(),
                k.1,
                check.clone(),
                self.health_tx.clone(),
                stop_rx,
            );
            self.checkers.insert(
                k,
                Checker {
                    check,
                    stop,
                    _task: task,
                    passed: false,
                },
            );
        }
        self.sync_pollers();
        // A restarted checker starts from "unknown" (counted as up).
        let mut any = false;
        for k in forget {
            any |= self.health.remove(&k) == Some(false);
        }
        if any {
            self.refresh();
        }
    }

    fn stop_checkers(&mut self) {
        for c in self.checkers.values() {
            let _ = c.stop.send(true);
        }
        self.checkers.clear();
        for p in self.pollers.values() {
            let _ = p.stop.send(true);
        }
        self.pollers.clear();
    }

    /// Fill in the open connections of every backend from the last scan
    /// (`None` until the first scan, or for a backend added since).
    fn patch_open_flows(&self, views: &mut [ServiceView]) {
        for s in views {
            for b in &mut s.backends {
                b.open_flows = self
                    .open_counts
                    .get(&(s.name.clone(), b.address))
                    .map(|c| c.open);
            }
        }
    }

    /// `voxlb backend remove`: retire the backend (or, `now`, remove it at
    /// once), saying how many open connections that affects.
    fn remove_backend(&mut self, service: &str, address: &str, now: bool) -> Response {
        let addr = match parse_addr(address) {
            Ok(a) => a,
            Err(e) => return Response::error(e),
        };
        let svc = match compiler(&self.config, service) {
            Ok(s) => s.clone(),
            Err(e) => return Response::error(e),
        };
        let retiring = self
            .state
            .overlays
            .get(service)
            .and_then(|o| o.retiring.get(&addr))
            .cloned();
        let open = match self.count_open(service, addr) {
            Ok(c) => c.open,
            Err(e) => return Response::error(format!("reading the flow table: {e}")),
        };
        if let Some(r) = retiring {
            if !now {
                let left = r.deadline_unix_ms.saturating_sub(unix_ms_now()) / 1000;
                return Response::error(format!(
                    "backend {addr} of {service} is already retiring: {open} open connection(s), {}m{:02}s left; `--now` removes it at once",
                    left / 60,
                    left % 60
                ));
            }
            return self.change(None, |st| {
                if let Some(o) = st.overlays.get_mut(service) {
                    o.retiring.remove(&addr);
                    if o.is_empty() {
                        st.overlays.remove(service);
                    }
                }
                Ok(format!(
                    "backend {addr} removed from {service} at once: {open} open connection(s) cut (re-picked to other compilers)"
                ))
            });
        }
        let grace = svc.retire_grace;
        self.edit_backend(service, address, |o, addr, in_config| {
            let current = if in_config {
                svc.backends.iter().find(|b| b.address == addr).map(|b| {
                    let mut b = b.clone();
                    if let Some(w) = o.weights.get(&addr) {
                        b.weight = *w;
                    }
                    b
                })
            } else {
                o.added.get(&addr).map(|a| config::Backend {
                    address: addr,
                    name: a.name.clone(),
                    weight: a.weight,
                    mac: a.mac,
                    tier: 0,
                })
            };
            if in_config {
                o.removed.insert(addr);
            } else {
                o.added.remove(&addr);
            }
            o.drained.remove(&addr);
            o.weights.remove(&addr);
            if now {
                return Ok(format!(
                    "backend {addr} removed from {service} at once: {open} open connection(s) cut (re-picked to other compilers)"
                ));
            }
            if let Some(b) = current {
                o.retiring.insert(
                    addr,
                    Retiring {
                        name: b.name,
                        weight: b.weight,
                        mac: b.mac,
                        deadline_unix_ms: unix_ms_now() + grace.as_millis() as u64,
                    },
                );
            }
            Ok(format!(
                "backend {addr} of {service} retiring: no new connections; its {open} open connection(s) finish on it, at most {} (then re-picked); it is freed when the last one ends. `voxlb backend remove --now` cuts them",
                fmt_duration(grace)
            ))
        })
    }

    /// `BackendConnections`: count one backend's connections now (the
    /// periodic scan may be up to [`OPEN_FLOWS_REFRESH`] old, and a drain
    /// must not be declared done on a count taken before its last flow).
    fn connections(&self, service: &str, address: &str) -> Response {
        let addr = match parse_addr(address) {
            Ok(a) => a,
            Err(e) => return Response::error(e),
        };
        let Some(view) = self.views.iter().find(|s| s.name == service) else {
            return Response::error(format!("unknown service {service:?}"));
        };
        let Some(b) = view.backends.iter().find(|b| b.address == addr) else {
            return Response::error(format!("backend {addr} is not in service {service}"));
        };
        match self.count_open(service, addr) {
            Ok(c) => Response::Connections(control::ConnectionsView {
                service: service.to_owned(),
                address: addr,
                state: b.state.clone(),
                open: c.open,
                closing: c.closing,
            }),
            Err(e) => Response::error(format!("reading the flow table: {e}")),
        }
    }

    /// The open and closing connections of one backend of a service (zero
    /// if it holds no id).
    fn count_open(&self, service: &str, addr: IpAddr) -> Result<FlowCount, DataPlaneError> {
        let Some((id, slot)) = self
            .state
            .backend_slots
            .iter()
            .find(|(_, s)| s.service == service && s.address == addr && s.in_use)
        else {
            return Ok(FlowCount::default());
        };
        let ids = BTreeMap::from([(*id, slot.generation)]);
        let counts = retire::count_flows(self.dp.as_ref(), &ids, retire::monotonic_ns())?;
        Ok(counts.get(id).copied().unwrap_or_default())
    }

    /// Scan the flow table (one batched walk) for the open connections of
    /// every backend; free retiring backends with none left (nor closing),
    /// and those whose grace has passed. Called every [`RETIRE_TICK`]; scans
    /// then while something is retiring, else every [`OPEN_FLOWS_REFRESH`].
    pub fn retire_tick(&mut self) {
        let mut retiring: Vec<(String, IpAddr, u64)> = Vec::new();
        for (name, o) in &self.state.overlays {
            for (a, r) in &o.retiring {
                retiring.push((name.clone(), *a, r.deadline_unix_ms));
            }
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() + RETIRE_TICK / 2 >= OPEN_FLOWS_REFRESH);
        if retiring.is_empty() && !due {
            return;
        }
        let counts = match self.scan_open() {
            Ok(()) => &self.open_counts,
            Err(e) => {
                warn!("cannot scan the flow table for open connections: {e}; retrying");
                return;
            }
        };
        let now_ms = unix_ms_now();
        let mut finished: Vec<(String, IpAddr, String)> = Vec::new();
        for (name, a, deadline) in retiring {
            let c = counts.get(&(name.clone(), a)).copied().unwrap_or_default();
            if c.done() {
                finished.push((name, a, "its last connection ended".into()));
            } else if now_ms >= deadline {
                finished.push((
                    name,
                    a,
                    format!(
                        "its grace passed with {} connection(s) still open (re-picked to other compilers)",
                        c.open
                    ),
                ));
            }
        }
        if finished.is_empty() {
            // Show the new counts without replanning.
            let mut views = std::mem::take(&mut self.views);
            self.patch_open_flows(&mut views);
            self.views = views;
            return;
        }
        let resp = self.change(None, |st| {
            for (name, a, _) in &finished {
                if let Some(o) = st.overlays.get_mut(name) {
                    o.retiring.remove(a);
                    if o.is_empty() {
                        st.overlays.remove(name);
                    }
                }
            }
            Ok(String::new())
        });
        match resp {
            Response::Error { message } => {
                error!("retiring backends: cannot free them: {message}; retrying")
            }
            _ => {
                for (name, a, why) in finished {
                    info!("service {name}: backend {a} retired and freed: {why}");
                }
                self.sync_checkers();
            }
        }
    }

    /// Count the open connections of every backend holding an id, in one
    /// walk of the flow table, into [`Self::open_counts`].
    fn scan_open(&mut self) -> Result<(), DataPlaneError> {
        let ids: BTreeMap<u32, u32> = self
            .state
            .backend_slots
            .iter()
            .filter(|(_, s)| s.in_use)
            .map(|(id, s)| (*id, s.generation))
            .collect();
        let counts = retire::count_flows(self.dp.as_ref(), &ids, retire::monotonic_ns())?;
        self.last_scan = Some(Instant::now());
        self.open_counts = self
            .state
            .backend_slots
            .iter()
            .filter(|(_, s)| s.in_use)
            .map(|(id, s)| {
                (
                    (s.service.clone(), s.address),
                    counts.get(id).copied().unwrap_or_default(),
                )
            })
            .collect();
        Ok(())
    }

    /// The status view.
    pub fn status(&self) -> StatusView {
        StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            interfaces: self.config.interfaces.clone(),
            services: self.views.clone(),
            unresolved: self.unresolved(),
            last_reload_error: self.last_reload_error.clone(),
            attached: self.attached(),
            drained: self.drained,
            announce: self.announcer.as_ref().map(|a| Box::new(a.view())),
        }
    }

    /// Count the flow table (on a timer: see [`crate::telemetry`]).
    pub fn census(&mut self) {
        match self.dp.flow_census() {
            Ok(c) => self.telemetry.set_census(c),
            Err(e) => warn!("flow-table census: {e}"),
        }
    }

    /// Census, rebuilds, health events and latency.
    pub fn telemetry(&self) -> crate::telemetry::TelemetryView {
        let live: Vec<(String, IpAddr)> = self.checkers.keys().cloned().collect();
        self.telemetry.view(&live)
    }

    /// Counters from the data plane.
    pub fn stats(&self) -> Result<StatsView, DataPlaneError> {
        let reasons = self
            .dp
            .reason_stats()?
            .into_iter()
            .map(|(r, c)| ReasonStat {
                reason: r.label().into(),
                verdict: match r.verdict() {
                    Verdict::Tx => "tx",
                    Verdict::Pass => "pass",
                    Verdict::Drop => "drop",
                }
                .into(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let mut services = Vec::new();
        for s in &self.views {
            let st = self.dp.service_stats(s.service_id)?;
            let mut backends = Vec::new();
            for b in &s.backends {
                let bs = self.dp.backend_stats(b.id)?;
                backends.push(BackendStat {
                    address: b.address,
                    name: b.name.clone(),
                    id: b.id,
                    state: b.state.clone(),
                    packets: bs.packets,
                    bytes: bs.bytes,
                    new_flows: bs.new_flows,
                });
            }
            services.push(ServiceStat {
                name: s.name.clone(),
                kind: s.kind.clone(),
                packets: st.packets,
                bytes: st.bytes,
                new_flows: st.new_flows,
                no_backend: st.no_backend,
                backends,
            });
        }
        Ok(StatsView {
            reasons,
            services,
            flood: self.dp.flood_status()?,
        })
    }

    /// Up to `limit` flows, with the backend each one maps to now.
    pub fn flows(&self, limit: usize) -> Result<Vec<FlowView>, DataPlaneError> {
        let by_sid: BTreeMap<u32, &str> = self
            .state
            .service_ids
            .iter()
            .map(|(n, id)| (*id, n.as_str()))
            .collect();
        let mut out = Vec::new();
        // One backend read per backend, not per flow.
        let mut backends: BTreeMap<u32, lb_common::BackendInfo> = BTreeMap::new();
        for (k, v) in self.dp.flows(limit)? {
            let info = *backends
                .entry(v.backend_id)
                .or_insert_with(|| self.dp.backend(v.backend_id).unwrap_or_default());
            let stale = info.state == BACKEND_EMPTY || info.generation != v.generation;
            let sock = |a: &[u8; 16], port_be: u16| match addr_from_bytes(a, k.family) {
                Some(ip) => std::net::SocketAddr::new(ip, u16::from_be(port_be)).to_string(),
                None => "?".into(),
            };
            out.push(FlowView {
                client: sock(&k.src, k.sport_be),
                vip: sock(&k.dst, k.dport_be),
                proto: if k.proto == PROTO_UDP { "udp" } else { "tcp" }.into(),
                backend_id: v.backend_id,
                generation: v.generation,
                backend: (!stale)
                    .then(|| addr_from_bytes(&info.addr, info.family))
                    .flatten(),
                service: (!stale)
                    .then(|| by_sid.get(&info.service_id).map(|s| s.to_string()))
                    .flatten(),
                stale,
            });
        }
        Ok(out)
    }
}

/// Read one compiler's load every `interval` (a read takes at most that
/// long) until `stop`.
fn spawn_poller(
    service: String,
    addr: IpAddr,
    poller: LoadPoller,
    interval: Duration,
    tx: mpsc::Sender<LoadUpdate>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = control::stopped(&mut stop) => return,
            }
            let input = tokio::select! {
                i = poller.poll(addr) => i,
                _ = control::stopped(&mut stop) => return,
            };
            let ev = LoadUpdate {
                service: service.clone(),
                addr,
                input,
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    })
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

/// Run the daemon until SIGTERM/SIGINT (or `opts.stop`). `listener` is the
/// bound control socket (bind it before loading the data plane, so that a
/// second daemon fails before touching the maps). On exit the data plane is
/// left as it is: forwarding goes on without the daemon.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    dp: Box<dyn DataPlane>,
    listener: UnixListener,
    opts: RunOptions,
) -> Result<(), DaemonError> {
    let socket_path = config.control_socket.clone();
    let metrics_addr = config.metrics_listen;
    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let mut daemon = Daemon::start(
        config,
        config_path,
        dp,
        opts.resolver,
        opts.spawner,
        health_tx,
    )?;
    let (load_tx, mut load_rx) = mpsc::channel(1024);
    daemon.enable_load_polling(load_tx);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (calls_tx, mut calls_rx) = mpsc::channel::<Call>(64);
    let server = tokio::spawn(control::serve(
        listener,
        calls_tx.clone(),
        shutdown_rx.clone(),
    ));
    let metrics = match metrics_addr {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                info!("metrics at http://{addr}/metrics");
                Some(tokio::spawn(crate::metrics::serve(
                    l,
                    calls_tx.clone(),
                    shutdown_rx.clone(),
                )))
            }
            Err(e) => {
                error!("metrics listener {addr}: {e}; metrics disabled");
                None
            }
        },
        None => None,
    };
    drop(calls_tx);

    let mut hup = None;
    let mut term = None;
    let mut int = None;
    if opts.signals {
        use tokio::signal::unix::{SignalKind, signal};
        hup = Some(signal(SignalKind::hangup()).map_err(DaemonError::Signal)?);
        term = Some(signal(SignalKind::terminate()).map_err(DaemonError::Signal)?);
        int = Some(signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?);
    }
    let mut stop = opts.stop;
    let mut retry = tokio::time::interval(NEIGH_RETRY);
    let mut refresh = tokio::time::interval(NEIGH_REFRESH);
    let mut pins = tokio::time::interval(PIN_CHECK);
    let mut retire_tick = tokio::time::interval(RETIRE_TICK);
    let mut census = tokio::time::interval(crate::telemetry::CENSUS_INTERVAL);
    let mut announce_tick = tokio::time::interval(ANNOUNCE_TICK);
    let mut weights_tick = tokio::time::interval(WEIGHTS_TICK);
    info!(
        "voxlb daemon ready; control socket {}",
        socket_path.display()
    );
    // Attached, first reconcile applied, control socket serving: tell
    // systemd (Type=notify), if it started us.
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready(&ready_status(&daemon));
    loop {
        tokio::select! {
            Some(call) = calls_rx.recv() => {
                let is_change = !matches!(
                    call.request,
                    Request::BackendList { .. }
                        | Request::BackendConnections { .. }
                        | Request::Status {}
                        | Request::Stats {}
                        | Request::Flows { .. }
                        | Request::Telemetry {}
                );
                let desc = format!("{:?}", call.request);
                let reload = matches!(call.request, Request::Reload {});
                if reload {
                    notifier.reloading();
                }
                let resp = daemon.handle(call.request);
                if reload {
                    notifier.ready(&ready_status(&daemon));
                }
                if is_change {
                    match &resp {
                        Response::Ok { message } => info!("control: {message}"),
                        Response::Error { message } => warn!("control: {desc} refused: {message}"),
                        _ => {}
                    }
                }
                let _ = call.reply.send(resp);
            }
            Some(ev) = health_rx.recv() => daemon.on_health(ev),
            _ = retry.tick() => daemon.neigh_tick(false),
            _ = refresh.tick() => daemon.neigh_tick(true),
            _ = pins.tick() => daemon.check_pins(),
            _ = retire_tick.tick() => daemon.retire_tick(),
            _ = census.tick() => daemon.census(),
            _ = announce_tick.tick() => daemon.announce_tick(),
            Some(ev) = load_rx.recv() => daemon.on_load(ev),
            _ = weights_tick.tick() => daemon.weights_tick(),
            _ = recv_signal(&mut hup) => {
                info!("SIGHUP: reloading the config");
                notifier.reloading();
                daemon.reload();
                notifier.ready(&ready_status(&daemon));
            }
            _ = recv_signal(&mut term) => {
                info!("SIGTERM: exiting; the data plane keeps forwarding");
                break;
            }
            _ = recv_signal(&mut int) => {
                info!("SIGINT: exiting; the data plane keeps forwarding");
                break;
            }
            _ = wait_stop(&mut stop) => break,
        }
    }
    notifier.stopping();
    let _ = shutdown_tx.send(true);
    daemon.stop_checkers();
    daemon.stop_announcing();
    let _ = server.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// The `STATUS=` systemd shows next to the unit.
fn ready_status(d: &Daemon) -> String {
    let s = d.status();
    let usable: usize = s.services.iter().map(|v| v.active).sum();
    let all: usize = s.services.iter().map(|v| v.backends.len()).sum();
    match &s.last_reload_error {
        Some(e) => format!("serving; LAST RELOAD FAILED (old config kept): {e}"),
        None => format!(
            "serving {} service(s), {usable}/{all} backend(s) usable",
            s.services.len()
        ),
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn wait_stop(s: &mut Option<watch::Receiver<bool>>) {
    match s {
        Some(s) => control::stopped(s).await,
        None => std::future::pending().await,
    }
}
