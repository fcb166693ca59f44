//! The control socket's commands: backend add/remove/drain/weight, host
//! drain, reload, and the connection count of one backend. Each change goes
//! through [`Daemon::change`] (all or nothing, see the module above).

use super::*;

impl Daemon {
    /// `voxlb host drain` / `undrain`: persisted first, then announced.
    pub(super) fn set_host_drain(&mut self, drain: bool) -> Response {
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

    pub(super) fn handle_inner(&mut self, req: Request) -> Response {
        match req {
            Request::BackendAdd {
                service,
                address,
                weight,
                name,
                mac,
                tier,
            } => match NewBackend::parse(&address, weight, name, mac.as_deref(), tier) {
                Ok(new) => self.add_backend(service, new),
                Err(e) => Response::error(e),
            },
            Request::BackendRemove {
                service,
                address,
                now,
            } => self.remove_backend(&service, &address, now),
            Request::BackendDrain { service, address } => self.drain_backend(&service, &address),
            Request::BackendUndrain { service, address } => {
                self.undrain_backend(&service, &address)
            }
            Request::BackendWeight {
                service,
                address,
                weight,
            } => self.set_weight(&service, &address, weight),
            Request::BackendList { service } => self.list_backends(service.as_deref()),
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

    /// `voxlb backend add`.
    fn add_backend(&mut self, service: String, new: NewBackend) -> Response {
        let cfg = self.config.clone();
        self.change(None, |st| add_to_overlay(st, &cfg, &service, new))
    }

    /// `voxlb backend drain`.
    fn drain_backend(&mut self, service: &str, address: &str) -> Response {
        self.edit_backend(service, address, |o, addr, _| {
            Ok(if o.drained.insert(addr) {
                format!("backend {addr} of {service} draining: no new flows, established ones stay")
            } else {
                format!("backend {addr} of {service} was already draining")
            })
        })
    }

    /// `voxlb backend undrain`.
    fn undrain_backend(&mut self, service: &str, address: &str) -> Response {
        self.edit_backend(service, address, |o, addr, _| {
            Ok(if o.drained.remove(&addr) {
                format!("backend {addr} of {service} takes new flows again")
            } else {
                format!("backend {addr} of {service} was not draining")
            })
        })
    }

    /// `voxlb backend weight`: a config backend's weight goes into the
    /// overlay only where it differs from the config's.
    fn set_weight(&mut self, service: &str, address: &str, weight: i64) -> Response {
        let weight = match config::check_weight(weight) {
            Ok(w) => w,
            Err(e) => return Response::error(e),
        };
        let cfg = self.config.clone();
        self.edit_backend(service, address, |o, addr, in_config| {
            if in_config {
                let base = cfg
                    .compiler(service)
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

    /// `voxlb backend list [SERVICE]`.
    fn list_backends(&self, service: Option<&str>) -> Response {
        let services: Vec<ServiceView> = match service {
            None => self.views.clone(),
            Some(n) => match self.views.iter().find(|s| s.name == n) {
                Some(s) => vec![s.clone()],
                None => return Response::error(format!("unknown service {n:?}")),
            },
        };
        Response::Backends { services }
    }

    /// Edit the overlay of a backend that must be present in a compiler
    /// service. `f` gets the overlay, the address and whether the backend
    /// comes from the config.
    pub(super) fn edit_backend(
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
            Err(e) => return self.reload_failed(e),
        };
        if let Err(e) = validate_checks(&new) {
            return self.reload_failed(e);
        }
        warn_restart_only_changes(&self.config, &new);
        let bgp_changed = new.bgp != self.config.bgp;
        self.apply_live_settings(&new);
        let mut dropped = Vec::new();
        let mut retired = Vec::new();
        let old = self.config.clone();
        let resp = self.change(Some(new.clone()), |st| {
            (dropped, retired) = retire_what_the_config_drops(&old, &new, st);
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
                    self.reconfigure_announcer(new.bgp.clone());
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

    /// A reload that did not get as far as a change: logged, kept for
    /// `voxlb status`, answered.
    fn reload_failed(&mut self, e: impl std::fmt::Display) -> Response {
        let msg = format!("reload failed, old config kept: {e}");
        error!("{msg}");
        self.last_reload_error = Some(msg.clone());
        Response::error(msg)
    }

    /// Settings that are one map word each: they change at once.
    fn apply_live_settings(&mut self, new: &Config) {
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
    }

    /// A changed `[bgp]`: the announcer is reconfigured, started or
    /// stopped, and announces again.
    fn reconfigure_announcer(&mut self, bgp: Option<crate::announce::BgpConfig>) {
        match (self.announcer.as_mut(), bgp) {
            (Some(a), Some(b)) => a.reconfigure(b),
            (Some(_), None) => self.stop_announcing(),
            (None, Some(b)) => self.announcer = Some(Announcer::new(b)),
            (None, None) => {}
        }
        self.announce();
    }

    /// `voxlb backend remove`: retire the backend (or, `now`, remove it at
    /// once), saying how many open connections that affects.
    pub(super) fn remove_backend(&mut self, service: &str, address: &str, now: bool) -> Response {
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
                    tier: a.tier,
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
                        tier: b.tier,
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
    pub(super) fn connections(&self, service: &str, address: &str) -> Response {
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
                state: b.state,
                open: c.open,
                closing: c.closing,
            }),
            Err(e) => Response::error(format!("reading the flow table: {e}")),
        }
    }
}

/// The arguments of `voxlb backend add`, checked.
struct NewBackend {
    addr: IpAddr,
    weight: Option<u32>,
    name: Option<String>,
    mac: Option<[u8; 6]>,
    tier: Option<u32>,
}

impl NewBackend {
    fn parse(
        address: &str,
        weight: Option<i64>,
        name: Option<String>,
        mac: Option<&str>,
        tier: Option<i64>,
    ) -> Result<NewBackend, String> {
        let addr = parse_addr(address)?;
        let weight = weight.map(config::check_weight).transpose()?;
        if let Some(n) = &name {
            config::check_name(n)?;
        }
        let mac = mac.map(config::parse_mac).transpose()?;
        let tier = tier.map(config::check_tier).transpose()?;
        Ok(NewBackend {
            addr,
            weight,
            name,
            mac,
            tier,
        })
    }
}

/// Adds `new` to compiler service `service` in the overlay of `st`: a
/// backend the config does not have, or a config one that was removed, or
/// a retiring one (revived: same id and generation, flows untouched).
fn add_to_overlay(
    st: &mut State,
    cfg: &Config,
    service: &str,
    new: NewBackend,
) -> Result<String, String> {
    let NewBackend {
        addr,
        weight,
        name,
        mac,
        tier,
    } = new;
    let svc = compiler(cfg, service)?;
    if mac.is_some() && svc.forwarding.routed() {
        return Err(format!(
            "--mac: service {service} forwards by {}: its compilers are reached through their route's next hop, whose MAC voxlb resolves; omit --mac",
            svc.forwarding.mode.as_str()
        ));
    }
    let o = st.overlays.entry(service.to_owned()).or_default();
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
        Some(r) => (name.or(r.name.clone()), mac.or(r.mac)),
        None => (name, mac),
    };
    let weight = weight.or(revived.as_ref().map(|r| r.weight));
    let tier = tier.or(revived.as_ref().map(|r| r.tier));
    let done = if revived.is_some() {
        format!(
            "backend {addr} back in {service} (it was retiring: same id, its connections never moved)"
        )
    } else {
        format!("backend {addr} added to {service}")
    };
    if let Some(b) = in_config {
        // Re-adding a removed config backend: config settings,
        // with the weight given now, if any. Its tier is the
        // config's: the CLI has no overlay for it.
        if let Some(t) = tier.filter(|t| *t != b.tier) {
            return Err(format!(
                "tier {t}: backend {addr} is in the config with tier {}; change it there and reload",
                b.tier
            ));
        }
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
                tier: tier.unwrap_or(0),
            },
        );
    }
    Ok(done)
}

/// Settings a reload cannot change: each one that changed is logged.
fn warn_restart_only_changes(old: &Config, new: &Config) {
    let fixed = [
        ("interfaces", new.interfaces != old.interfaces),
        ("xdp_mode", new.xdp_mode != old.xdp_mode),
        ("pin_dir", new.pin_dir != old.pin_dir),
        ("control_socket", new.control_socket != old.control_socket),
        ("state_dir", new.state_dir != old.state_dir),
        ("metrics_listen", new.metrics_listen != old.metrics_listen),
        ("flow_capacity", new.flow_capacity != old.flow_capacity),
    ];
    for (k, changed) in fixed {
        if changed {
            warn!("reload: {k} changed; it takes effect at the next restart");
        }
    }
}

/// The overlay of `st` brought in line with the `new` config: entries it
/// no longer applies to are dropped, and a backend the new config drops
/// retires like a CLI removal (a service dropped entirely takes its VIP
/// with it). Returns what was dropped and what retires, as log lines.
fn retire_what_the_config_drops(
    old: &Config,
    new: &Config,
    st: &mut State,
) -> (Vec<String>, Vec<String>) {
    let before: Vec<(String, config::Backend)> = old
        .compiler_services
        .iter()
        .flat_map(|s| {
            reconcile::effective_backends(s, st.overlays.get(&s.name))
                .into_iter()
                .map(|e| (s.name.clone(), e.backend))
        })
        .collect();
    let dropped = reconcile::prune_overlay(new, st);
    let mut retired = Vec::new();
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
        st.overlays
            .entry(name.clone())
            .or_default()
            .retiring
            .insert(
                b.address,
                Retiring {
                    name: b.name.clone(),
                    weight: b.weight,
                    mac: b.mac,
                    tier: b.tier,
                    deadline_unix_ms: now_ms + svc.retire_grace.as_millis() as u64,
                },
            );
        retired.push(format!(
            "service {name}: {} is gone from the config; retiring (its established connections finish on it, at most {})",
            b.address,
            fmt_duration(svc.retire_grace)
        ));
    }
    (dropped, retired)
}
