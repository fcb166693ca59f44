//! What runs on events and timers: health and load reports, the weight
//! controller, neighbour and route resolution, retirement, BGP announcing,
//! the checkers and pollers, and the pin check.

use super::*;

impl Daemon {
    /// Whether the program is attached on every interface: the interface
    /// exists and its link pin is in place (the daemon holds the link open
    /// and puts a deleted pin back).
    pub fn attached(&self) -> bool {
        crate::fitness::program_attached(&self.config.pin_dir, &self.config.interfaces)
    }

    /// Decide what to announce and hand it to BIRD (no-op without `[bgp]`).
    pub(super) fn announce(&mut self) {
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
        let w = self.next_weights(None, None);
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
                        crate::control::show_weight(b, w);
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
    pub(super) fn sync_pollers(&mut self) {
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

    /// Resolve the routed compilers' next hops again: `true` if any
    /// resolution changed (the caller replans).
    pub(super) fn resolve_routes(&mut self) -> bool {
        let targets = crate::forwarding::routed_targets(&self.config, &self.state);
        if targets.is_empty() && self.routes.is_empty() {
            return false;
        }
        let Some(new) =
            crate::forwarding::resolve(&mut self.hops, targets, &self.config.interfaces)
        else {
            return false;
        };
        if new == self.routes {
            return false;
        }
        for (a, r) in &new {
            if self.routes.get(a) != Some(r) {
                match r {
                    Ok(e) => info!(
                        "routed backend {a}: next hop {} on {}",
                        config::format_mac(&e.mac),
                        e.ifname
                    ),
                    Err(why) => warn!("routed backend {a}: unresolved: {why}"),
                }
            }
        }
        self.routes = new;
        true
    }

    /// Route or neighbour change (or the periodic backstop): re-resolve
    /// the routed compilers and replan if anything moved.
    pub fn route_tick(&mut self) {
        if self.resolve_routes() {
            self.refresh();
        }
    }

    /// Addresses of L2 backends whose MAC is needed but unknown (routed
    /// ones are resolved by [`Self::route_tick`]).
    pub(super) fn unresolved(&self) -> Vec<IpAddr> {
        self.without_mac(false)
    }

    /// Every backend kept out for want of a MAC or a route (status).
    pub(super) fn unresolved_all(&self) -> Vec<IpAddr> {
        self.without_mac(true)
    }

    fn without_mac(&self, routed_too: bool) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .views
            .iter()
            .filter(|s| routed_too || !s.forwarding.routed())
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.mac.is_none())
            .map(|b| b.address)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Addresses whose MAC comes from the neighbour table.
    pub(super) fn resolved_dynamically(&self) -> Vec<IpAddr> {
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
            .filter(|s| !s.forwarding.routed())
            .flat_map(|s| s.backends.iter())
            .map(|b| b.address)
            .filter(|a| !configured(a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub(super) fn solicit_unresolved(&mut self) {
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
    pub(super) fn sync_checkers(&mut self) {
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

    pub(super) fn stop_checkers(&mut self) {
        for c in self.checkers.values() {
            let _ = c.stop.send(true);
        }
        self.checkers.clear();
        for p in self.pollers.values() {
            let _ = p.stop.send(true);
        }
        self.pollers.clear();
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
}

/// Read one compiler's load every `interval` (a read takes at most that
/// long) until `stop`.
pub(super) fn spawn_poller(
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

/// Step every compiler service's weight controller with the backends of
/// `state` (after the CLI overlay), health, MACs and the load readings
/// since the last step (consumed).
#[allow(clippy::too_many_arguments)]
pub(super) fn step_weights(
    controllers: &mut HashMap<String, Controller>,
    loads: &mut HashMap<(String, IpAddr), LoadInput>,
    health: &HealthMap,
    macs: &MacMap,
    routes: &crate::forwarding::RouteMap,
    started: Instant,
    cfg: &Config,
    state: &State,
) -> WeightMap {
    // A routed compiler is reachable through its resolved next hop.
    let next_hops: MacMap = routes
        .iter()
        .filter_map(|(a, r)| r.as_ref().ok().map(|e| (*a, e.mac)))
        .collect();
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
        let reach = if svc.forwarding.routed() {
            &next_hops
        } else {
            macs
        };
        let inputs = load::compiler_inputs(&svc.name, &eff, health, reach, &mine);
        for w in ctl.step(now_ms, &inputs).weights {
            out.insert((svc.name.clone(), w.address), w);
        }
    }
    loads.clear();
    out
}

/// The Maglev-relevant part of two weight maps differs.
pub(super) fn weights_differ(a: &WeightMap, b: &WeightMap) -> bool {
    a.len() != b.len()
        || a.iter().any(|(k, w)| {
            b.get(k)
                .is_none_or(|o| o.maglev_weight != w.maglev_weight || o.role != w.role)
        })
}
