//! What the data plane should hold, and how to get it there with the fewest
//! writes.
//!
//! [`plan`] is pure policy: from the config, the persisted [`State`] (CLI
//! overlay and ids), the health of each backend and the MACs resolved so far,
//! it computes the [`Desired`] map contents plus a readable view of every
//! service. [`apply`] then writes only what differs from what the data plane
//! holds: an unchanged backend slot is not rewritten, an unchanged Maglev
//! table is not reinstalled. Nothing here knows about the kernel, so all of
//! it is tested against [`crate::dataplane::FakeDataPlane`].
//!
//! The state of a backend, as the data plane sees it:
//!
//! | situation                               | state      | in the table |
//! |-----------------------------------------|------------|--------------|
//! | MAC unknown (not resolved yet)          | `DOWN`     | no           |
//! | health check failing                    | `DOWN`     | no           |
//! | drained by the operator                 | `DRAINING` | no           |
//! | removed, flows still finishing          | `RETIRING` | no           |
//! | otherwise                               | `ACTIVE`   | yes (weight) |
//!
//! A retiring backend (see [`crate::retire`]) keeps its id and generation
//! until its last flow has ended or its grace has passed; then it leaves
//! the overlay and its slot is freed like any removed backend's. A retiring
//! backend that fails its health check is `DOWN` like any other: its flows
//! are re-picked, since it cannot answer them.
//!
//! A backend whose health is not known yet (just added, or the daemon just
//! started) counts as up: a restarted daemon must not take healthy backends
//! out of service while its checkers warm up, and a failing one is taken out
//! after `fall` probes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_EMPTY, BACKEND_RETIRING, BackendInfo,
    KIND_CA, KIND_COMPILER, NO_BACKEND, TunnelInfo, VipInfo, VipKey, addr_bytes, addr_from_bytes,
    maglev, maps::MAX_BACKENDS,
};

use crate::{
    config::{Backend, CompilerService, Config, format_mac},
    control::{BackendState, BackendView, ServiceKind, ServiceView, show_weight},
    dataplane::{DataPlane, DataPlaneError},
    forwarding::Forwarding,
    state::{BackendSlot, ServiceOverlay, State, StateError},
};

/// Health of every backend that has been checked: (service, address) -> up.
pub type HealthMap = HashMap<(String, IpAddr), bool>;
/// MACs resolved from the neighbour table.
pub type MacMap = HashMap<IpAddr, [u8; 6]>;
pub use crate::forwarding::RouteMap;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    State(#[from] StateError),
    /// The table cannot be built (e.g. too many backends for its size).
    #[error("service {service}: {problem}")]
    Maglev {
        service: String,
        problem: maglev::MaglevError,
    },
}

/// The complete intended contents of the data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub vips: BTreeMap<VipKey, VipInfo>,
    /// Every backend id in use (ids not here should be `EMPTY`).
    pub backends: BTreeMap<u32, BackendInfo>,
    /// Compiler service id -> Maglev table.
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// CA service id -> steered backend id.
    pub ca_targets: BTreeMap<u32, u32>,
    /// Routed backend id -> its tunnel entry.
    pub tunnels: BTreeMap<u32, TunnelInfo>,
}

/// A plan: the desired data plane and the view of it the CLI shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub desired: Desired,
    pub services: Vec<ServiceView>,
}

/// A hash of a Maglev table by backend *address* (slot by slot), not by
/// backend id: ids are local to a host, addresses are what two hosts must
/// agree on. FNV-1a 64 over the flow hash's version
/// ([`lb_common::hash::FLOW_HASH_VERSION`]: hosts whose data planes hash
/// flows differently send them to different compilers from the same
/// table), the table size and, per slot, the 17-byte identity of its
/// backend (`0xff`s for an empty slot); 16 hex digits.
pub fn table_fingerprint(table: &[u32], identity: &HashMap<u32, [u8; 17]>) -> String {
    fingerprint_of(Some(lb_common::hash::FLOW_HASH_VERSION), table, identity)
}

/// [`table_fingerprint`] under a flow-hash version; `None` is the form of
/// the builds before the version was fed in (flow hash version 1).
fn fingerprint_of(version: Option<u8>, table: &[u32], identity: &HashMap<u32, [u8; 17]>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    if let Some(v) = version {
        eat(&[v]);
    }
    eat(&(table.len() as u64).to_le_bytes());
    let none = [0xffu8; 17];
    for v in table {
        eat(identity.get(v).unwrap_or(&none));
    }
    format!("{h:016x}")
}

/// The weight controller's answer per (service, compiler): what the planner
/// uses for the Maglev table of new flows. A compiler missing from it gets
/// its configured weight.
pub type WeightMap = HashMap<(String, IpAddr), crate::load::EffectiveWeight>;

/// A backend of a compiler service after the CLI overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveBackend {
    pub backend: Backend,
    pub drained: bool,
    pub from_config: bool,
}

/// The backends of a compiler service: config minus removed, plus added,
/// with overlay weights and drain flags.
pub fn effective_backends(
    svc: &CompilerService,
    overlay: Option<&ServiceOverlay>,
) -> Vec<EffectiveBackend> {
    let empty = ServiceOverlay::default();
    let o = overlay.unwrap_or(&empty);
    let mut out: Vec<EffectiveBackend> = svc
        .backends
        .iter()
        .filter(|b| !o.removed.contains(&b.address))
        .map(|b| {
            let mut backend = b.clone();
            if let Some(w) = o.weights.get(&b.address) {
                backend.weight = *w;
            }
            EffectiveBackend {
                drained: o.drained.contains(&b.address),
                backend,
                from_config: true,
            }
        })
        .collect();
    for (addr, a) in &o.added {
        if svc.backends.iter().any(|b| b.address == *addr) {
            // The config took it over since; the config wins.
            continue;
        }
        out.push(EffectiveBackend {
            backend: Backend {
                address: *addr,
                name: a.name.clone(),
                weight: o.weights.get(addr).copied().unwrap_or(a.weight),
                mac: a.mac,
                tier: a.tier,
            },
            drained: o.drained.contains(addr),
            from_config: false,
        });
    }
    out
}

/// Drop overlay entries that no longer mean anything against the config
/// (services gone, removals of backends the config no longer lists, ...).
/// Returns a line per dropped entry, for the log.
pub fn prune_overlay(config: &Config, state: &mut State) -> Vec<String> {
    let mut dropped = Vec::new();
    state.overlays.retain(|name, o| {
        let Some(svc) = config.compiler(name) else {
            if !o.is_empty() {
                dropped.push(format!(
                    "service {name}: gone from the config, CLI changes dropped"
                ));
            }
            return false;
        };
        let in_config = |a: &IpAddr| svc.backends.iter().any(|b| b.address == *a);
        o.removed.retain(|a| {
            let keep = in_config(a);
            if !keep {
                dropped.push(format!(
                    "service {name}: {a} is no longer in the config (removal dropped)"
                ));
            }
            keep
        });
        o.added.retain(|a, _| {
            let keep = !in_config(a);
            if !keep {
                dropped.push(format!(
                    "service {name}: {a} is now in the config (run-time add dropped)"
                ));
            }
            keep
        });
        let present =
            |a: &IpAddr| (in_config(a) && !o.removed.contains(a)) || o.added.contains_key(a);
        let present_set: BTreeSet<IpAddr> = o
            .drained
            .iter()
            .chain(o.weights.keys())
            .filter(|a| present(a))
            .copied()
            .collect();
        o.drained.retain(|a| present_set.contains(a));
        o.weights.retain(|a, _| present_set.contains(a));
        // A retiring backend that is a member again (back in the config)
        // is simply serving again: same id, same generation.
        o.retiring.retain(|a, _| {
            let keep = !present(a);
            if !keep {
                dropped.push(format!(
                    "service {name}: {a} is in the config again (retirement ended, flows kept)"
                ));
            }
            keep
        });
        !o.is_empty()
    });
    dropped
}

fn backend_info(
    addr: IpAddr,
    mac: Option<[u8; 6]>,
    forwarding: u8,
    state: u32,
    generation: u32,
    service_id: u32,
) -> BackendInfo {
    let (a, family) = addr_bytes(addr);
    BackendInfo {
        mac: mac.unwrap_or_default(),
        forwarding,
        state,
        generation,
        service_id,
        addr: a,
        family,
        ..BackendInfo::default()
    }
}

fn state_name(state: u32, mac: Option<[u8; 6]>) -> BackendState {
    match (state, mac) {
        (BACKEND_ACTIVE, _) => BackendState::Active,
        (BACKEND_DRAINING, _) => BackendState::Draining,
        (BACKEND_RETIRING, _) => BackendState::Retiring,
        (_, None) => BackendState::Unresolved,
        _ => BackendState::Down,
    }
}

/// What planning decided for one backend slot: written to the data plane
/// and shown to the CLI.
struct Slot {
    id: u32,
    generation: u32,
    state: u32,
    mac: Option<[u8; 6]>,
    healthy: Option<bool>,
    /// How the backend is reached: `FORWARD_*`, its tunnel entry (routed)
    /// and what to show of its route.
    reach: Reach,
}

/// How one backend is reached (see [`reach`]).
#[derive(Clone, Default)]
struct Reach {
    mac: Option<[u8; 6]>,
    forwarding: u8,
    tunnel: Option<TunnelInfo>,
    route: Option<String>,
}

/// The MAC, forwarding and tunnel of backend `b` of a service forwarding by
/// `f`: L2 backends by their configured or neighbour MAC; routed ones by
/// their resolved route (unresolved, with the reason, otherwise).
fn reach(f: &Forwarding, b: &Backend, macs: &MacMap, routes: &RouteMap) -> Reach {
    if !f.routed() {
        return Reach {
            mac: b.mac.or_else(|| macs.get(&b.address).copied()),
            ..Reach::default()
        };
    }
    let forwarding = f.mode.code();
    let resolved = match routes.get(&b.address) {
        None => Err("route not resolved yet".to_owned()),
        Some(Err(why)) => Err(why.clone()),
        Some(Ok(e)) => crate::forwarding::tunnel(f, b.address, e).map(|t| (e, t)),
    };
    match resolved {
        Ok((e, t)) => Reach {
            mac: Some(e.mac),
            forwarding,
            tunnel: Some(t),
            route: Some(match e.gateway {
                Some(g) => format!("{} via {g} dev {}", f.mode.as_str(), e.ifname),
                None => format!("{} dev {}", f.mode.as_str(), e.ifname),
            }),
        },
        Err(why) => Reach {
            mac: None,
            forwarding,
            tunnel: None,
            route: Some(why),
        },
    }
}

impl Slot {
    /// A backend without a MAC, or failing its health check, is down;
    /// otherwise in `usable` (`ACTIVE`, `DRAINING` or `RETIRING`).
    fn new((id, generation): (u32, u32), reach: Reach, healthy: Option<bool>, usable: u32) -> Slot {
        let mac = reach.mac;
        let state = if mac.is_none() || healthy == Some(false) {
            BACKEND_DOWN
        } else {
            usable
        };
        Slot {
            id,
            generation,
            state,
            mac,
            healthy,
            reach,
        }
    }

    /// The backend-map entry of this slot; its tunnel entry goes to
    /// `desired` too.
    fn info(&self, addr: IpAddr, service_id: u32, desired: &mut Desired) -> BackendInfo {
        if let Some(t) = self.reach.tunnel {
            desired.tunnels.insert(self.id, t);
        }
        backend_info(
            addr,
            self.mac,
            self.reach.forwarding,
            self.state,
            self.generation,
            service_id,
        )
    }

    fn view(&self, b: &crate::config::Backend, source: &str, role: Option<&str>) -> BackendView {
        BackendView {
            address: b.address,
            name: b.name.clone(),
            id: self.id,
            generation: self.generation,
            weight: b.weight,
            state: state_name(self.state, self.mac),
            healthy: self.healthy,
            mac: self.mac.as_ref().map(format_mac),
            route: self.reach.route.clone(),
            source: source.into(),
            role: role.map(Into::into),
            slots: 0,
            retire_deadline_unix_ms: None,
            open_flows: None,
            tier: b.tier,
            effective_weight_milli: None,
            load_pressure_permille: None,
            load_borrow_ms: None,
            load_slowness_permille: None,
            load_permille: None,
            ramp_permille: None,
            weight_role: None,
        }
    }
}

/// Compute the desired data plane. Allocates ids for new services and
/// backends in `state` and releases those of vanished ones: persist `state`
/// before applying the plan.
pub fn plan(
    config: &Config,
    state: &mut State,
    health: &HealthMap,
    macs: &MacMap,
) -> Result<Plan, PlanError> {
    plan_weighted(
        config,
        state,
        health,
        macs,
        &RouteMap::new(),
        &WeightMap::new(),
    )
}

/// [`plan`] with the weight controller's effective weights: an active
/// compiler in `weights` enters the Maglev table with its effective weight
/// (in thousandths), or not at all at weight 0 (its tier is not the active
/// one): established flows stay in the flow table either way.
pub fn plan_weighted(
    config: &Config,
    state: &mut State,
    health: &HealthMap,
    macs: &MacMap,
    routes: &RouteMap,
    weights: &WeightMap,
) -> Result<Plan, PlanError> {
    let names: BTreeSet<&str> = config
        .compiler_services
        .iter()
        .map(|s| s.name.as_str())
        .chain(config.ca_services.iter().map(|s| s.name.as_str()))
        .collect();
    state.retain_services(&names);
    let mut planner = Planner {
        state,
        health,
        macs,
        routes,
        weights,
        desired: Desired::default(),
        keep: BTreeSet::new(),
    };
    let mut services = Vec::new();
    for svc in &config.compiler_services {
        services.push(planner.compiler_service(svc)?);
    }
    for svc in &config.ca_services {
        services.push(planner.ca_service(svc)?);
    }
    planner.state.release_others(&planner.keep);
    Ok(Plan {
        desired: planner.desired,
        services,
    })
}

/// A plan being made: what it reads, the ids it allocates in `state`, and
/// what it has decided so far.
struct Planner<'a> {
    state: &'a mut State,
    health: &'a HealthMap,
    macs: &'a MacMap,
    routes: &'a RouteMap,
    weights: &'a WeightMap,
    desired: Desired,
    /// (service, address) of every backend that keeps its id.
    keep: BTreeSet<(String, IpAddr)>,
}

impl Planner<'_> {
    fn up(&self, svc: &str, addr: IpAddr) -> Option<bool> {
        self.health.get(&(svc.to_owned(), addr)).copied()
    }

    /// A backend's slot: its id (allocated if new, kept either way), how it
    /// is reached, its health and `state`.
    fn slot(
        &mut self,
        svc: &str,
        forwarding: &Forwarding,
        b: &Backend,
        state: u32,
    ) -> Result<Slot, PlanError> {
        self.keep.insert((svc.to_owned(), b.address));
        Ok(Slot::new(
            self.state.backend_id(svc, b.address)?,
            reach(forwarding, b, self.macs, self.routes),
            self.up(svc, b.address),
            state,
        ))
    }

    /// Write a slot's backend record into the plan.
    fn record(&mut self, slot: &Slot, addr: IpAddr, sid: u32) {
        let info = slot.info(addr, sid, &mut self.desired);
        self.desired.backends.insert(slot.id, info);
    }

    fn compiler_service(&mut self, svc: &CompilerService) -> Result<ServiceView, PlanError> {
        let sid = self.state.service_id(&svc.name)?;
        self.desired.vips.insert(
            svc.vip.key(),
            VipInfo {
                service_id: sid,
                kind: KIND_COMPILER,
            },
        );
        let eff = effective_backends(svc, self.state.overlays.get(&svc.name));
        maglev::validate_size(svc.table_size, eff.len()).map_err(|problem| PlanError::Maglev {
            service: svc.name.clone(),
            problem,
        })?;
        let mut entries = Vec::new();
        let mut views = Vec::new();
        let weighted = self.weights.keys().any(|(n, _)| *n == svc.name);
        for e in &eff {
            let (entry, view) = self.compiler_member(svc, sid, e, weighted)?;
            entries.extend(entry);
            views.push(view);
        }
        let overlay = self
            .state
            .overlays
            .get(&svc.name)
            .cloned()
            .unwrap_or_default();
        for (addr, r) in &overlay.retiring {
            if eff.iter().any(|e| e.backend.address == *addr) {
                continue; // present again: `prune_overlay` drops the entry
            }
            views.push(self.retiring_member(svc, sid, *addr, r)?);
        }
        // Rebuilt only when this service's backend set changed.
        let table =
            crate::tables::build(&svc.name, &entries, svc.table_size).map_err(|problem| {
                PlanError::Maglev {
                    service: svc.name.clone(),
                    problem,
                }
            })?;
        count_slots(&table, &mut views);
        let ids: HashMap<u32, [u8; 17]> = entries.iter().map(|e| (e.value, e.identity)).collect();
        let fingerprint = table_fingerprint(&table, &ids);
        self.desired.tables.insert(sid, table);
        Ok(ServiceView {
            name: svc.name.clone(),
            kind: ServiceKind::Compiler,
            forwarding: svc.forwarding.mode,
            vip: svc.vip.to_string(),
            service_id: sid,
            table_size: Some(svc.table_size),
            active: entries.len(),
            ca_target: None,
            backends: views,
            fingerprint: Some(fingerprint),
        })
    }

    /// A compiler of the config or added by the CLI: its Maglev entry if it
    /// takes new flows, and its view.
    fn compiler_member(
        &mut self,
        svc: &CompilerService,
        sid: u32,
        e: &EffectiveBackend,
        weighted: bool,
    ) -> Result<(Option<maglev::Entry>, BackendView), PlanError> {
        let b = &e.backend;
        let state = if e.drained {
            BACKEND_DRAINING
        } else {
            BACKEND_ACTIVE
        };
        let slot = self.slot(&svc.name, &svc.forwarding, b, state)?;
        let eff_w = self.weights.get(&(svc.name.clone(), b.address));
        let entry = if slot.state == BACKEND_ACTIVE {
            table_entry(b, slot.id, eff_w, weighted)
        } else {
            None
        };
        self.record(&slot, b.address, sid);
        let mut view = slot.view(b, if e.from_config { "config" } else { "cli" }, None);
        if let Some(w) = eff_w {
            show_weight(&mut view, w);
        }
        Ok((entry, view))
    }

    /// A removed compiler still retiring: out of the table, its flows kept.
    fn retiring_member(
        &mut self,
        svc: &CompilerService,
        sid: u32,
        addr: IpAddr,
        r: &crate::state::Retiring,
    ) -> Result<BackendView, PlanError> {
        let b = Backend {
            address: addr,
            name: r.name.clone(),
            weight: r.weight,
            mac: r.mac,
            // Out of every table while retiring: its tier plays no
            // part, but is shown (and given back if it is added again).
            tier: r.tier,
        };
        let slot = self.slot(&svc.name, &svc.forwarding, &b, BACKEND_RETIRING)?;
        self.record(&slot, addr, sid);
        let mut view = slot.view(&b, "removed", None);
        view.retire_deadline_unix_ms = Some(r.deadline_unix_ms);
        Ok(view)
    }

    fn ca_service(&mut self, svc: &crate::config::CaService) -> Result<ServiceView, PlanError> {
        let sid = self.state.service_id(&svc.name)?;
        self.desired.vips.insert(
            svc.vip.key(),
            VipInfo {
                service_id: sid,
                kind: KIND_CA,
            },
        );
        let mut target = None;
        let mut views = Vec::new();
        let members = std::iter::once((&svc.primary, "primary"))
            .chain(svc.standby.as_ref().map(|b| (b, "standby")));
        for (b, role) in members {
            let slot = self.slot(&svc.name, &svc.forwarding, b, BACKEND_ACTIVE)?;
            if slot.state == BACKEND_ACTIVE && target.is_none() {
                target = Some((slot.id, b.address));
            }
            self.record(&slot, b.address, sid);
            views.push(slot.view(b, "config", Some(role)));
        }
        self.desired
            .ca_targets
            .insert(sid, target.map(|t| t.0).unwrap_or(NO_BACKEND));
        Ok(ServiceView {
            name: svc.name.clone(),
            kind: ServiceKind::Ca,
            forwarding: svc.forwarding.mode,
            vip: svc.vip.to_string(),
            service_id: sid,
            table_size: None,
            active: target.is_some() as usize,
            ca_target: target.map(|t| t.1),
            backends: views,
            fingerprint: None,
        })
    }
}

/// An active compiler's Maglev entry: its configured weight, or the weight
/// controller's effective one (none at 0: its tier is not the active one).
fn table_entry(
    b: &Backend,
    id: u32,
    eff_w: Option<&crate::load::EffectiveWeight>,
    weighted: bool,
) -> Option<maglev::Entry> {
    match eff_w {
        // Thousandths, so all weights share one unit.
        None if weighted => Some(maglev::Entry::from_addr(
            b.address,
            b.weight.saturating_mul(1000),
            id,
        )),
        None => Some(maglev::Entry::from_addr(b.address, b.weight, id)),
        Some(w) if w.maglev_weight > 0 => {
            Some(maglev::Entry::from_addr(b.address, w.maglev_weight, id))
        }
        Some(_) => None,
    }
}

/// Each view's share of the table's slots.
fn count_slots(table: &[u32], views: &mut [BackendView]) {
    let mut slots: HashMap<u32, u32> = HashMap::new();
    for v in table {
        *slots.entry(*v).or_default() += 1;
    }
    for v in views {
        v.slots = slots.get(&v.id).copied().unwrap_or(0);
    }
}

/// Counts of the writes [`apply`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub backends: usize,
    pub tables: usize,
    pub ca_targets: usize,
    pub vips_upserted: usize,
    pub vips_removed: usize,
    pub tunnels: usize,
}

impl Applied {
    /// Whether nothing was written.
    pub fn is_noop(&self) -> bool {
        *self == Applied::default()
    }
}

/// Bring the data plane to `desired`, writing only differences.
///
/// `previous` is what the last successful `apply` wrote; with it, tables and
/// backend slots are compared in memory instead of being read back (a table
/// is 65537 map lookups). Pass `None` after a failure or at startup: then
/// the data plane itself is read.
///
/// Write order keeps packets safe mid-way: backends that become `ACTIVE`
/// first (so the new tables only point at usable slots), then tables and CA
/// targets, then other backend changes (draining/down: out of the tables by
/// then), then VIPs, and freeing unused backend ids last.
pub fn apply(
    desired: &Desired,
    previous: Option<&Desired>,
    dp: &mut dyn DataPlane,
) -> Result<Applied, DataPlaneError> {
    // Current backend slots for every id that matters.
    let ids: BTreeSet<u32> = match previous {
        Some(p) => p
            .backends
            .keys()
            .chain(desired.backends.keys())
            .copied()
            .collect(),
        None => (0..MAX_BACKENDS).collect(),
    };
    let mut current: BTreeMap<u32, BackendInfo> = BTreeMap::new();
    for id in &ids {
        let cur = match previous.and_then(|p| p.backends.get(id)) {
            Some(b) => *b,
            None => dp.backend(*id)?,
        };
        current.insert(*id, cur);
    }
    let mut a = Applier {
        desired,
        previous,
        dp,
        current,
        done: Applied::default(),
    };
    // A tunnel entry is in place before its backend entry says "routed".
    a.tunnels()?;
    a.backends(|info| info.state == BACKEND_ACTIVE)?;
    a.tables()?;
    a.ca_targets()?;
    a.backends(|info| info.state != BACKEND_ACTIVE)?;
    a.vips()?;
    a.free_unused(&ids)?;
    Ok(a.done)
}

/// An [`apply`] under way: what it reads, the backend slots as they are
/// now, and the writes so far.
struct Applier<'a> {
    desired: &'a Desired,
    previous: Option<&'a Desired>,
    dp: &'a mut dyn DataPlane,
    current: BTreeMap<u32, BackendInfo>,
    done: Applied,
}

impl Applier<'_> {
    fn write_backend(&mut self, id: u32, info: BackendInfo) -> Result<(), DataPlaneError> {
        if self.current.get(&id) != Some(&info) {
            self.dp.set_backend(id, info)?;
            self.current.insert(id, info);
            self.done.backends += 1;
        }
        Ok(())
    }

    fn tunnels(&mut self) -> Result<(), DataPlaneError> {
        for (id, t) in &self.desired.tunnels {
            let same = match self.previous.and_then(|p| p.tunnels.get(id)) {
                Some(p) => p == t,
                None => self.dp.tunnel(*id)? == *t,
            };
            if !same {
                self.dp.set_tunnel(*id, *t)?;
                self.done.tunnels += 1;
            }
        }
        Ok(())
    }

    /// The desired backends that `which` selects.
    fn backends(&mut self, which: fn(&BackendInfo) -> bool) -> Result<(), DataPlaneError> {
        let desired = self.desired;
        for (id, info) in &desired.backends {
            if which(info) {
                self.write_backend(*id, *info)?;
            }
        }
        Ok(())
    }

    fn tables(&mut self) -> Result<(), DataPlaneError> {
        for (sid, table) in &self.desired.tables {
            let same = match self.previous {
                Some(p) => p.tables.get(sid) == Some(table),
                None => self.dp.active_table(*sid)?.as_ref() == Some(table),
            };
            if !same {
                self.dp.install_table(*sid, table)?;
                self.done.tables += 1;
            }
        }
        Ok(())
    }

    fn ca_targets(&mut self) -> Result<(), DataPlaneError> {
        for (sid, target) in &self.desired.ca_targets {
            if self.dp.ca_target(*sid)? != *target {
                self.dp.set_ca_target(*sid, *target)?;
                self.done.ca_targets += 1;
            }
        }
        Ok(())
    }

    fn vips(&mut self) -> Result<(), DataPlaneError> {
        let vips: BTreeMap<VipKey, VipInfo> = self.dp.vips()?.into_iter().collect();
        for (k, v) in &self.desired.vips {
            if vips.get(k) != Some(v) {
                self.dp.upsert_vip(*k, *v)?;
                self.done.vips_upserted += 1;
            }
        }
        for k in vips.keys() {
            if !self.desired.vips.contains_key(k) {
                self.dp.remove_vip(k)?;
                self.done.vips_removed += 1;
            }
        }
        Ok(())
    }

    /// Every id of `ids` the plan does not use is emptied, keeping its
    /// generation: it is what tells old flows apart.
    fn free_unused(&mut self, ids: &BTreeSet<u32>) -> Result<(), DataPlaneError> {
        for id in ids {
            if self.desired.backends.contains_key(id) {
                continue;
            }
            let cur = self.current[id];
            if cur.state != BACKEND_EMPTY {
                let freed = BackendInfo {
                    state: BACKEND_EMPTY,
                    generation: cur.generation,
                    ..BackendInfo::default()
                };
                self.write_backend(*id, freed)?;
            }
        }
        Ok(())
    }
}

/// Bring the id allocation in line with what a data plane already holds
/// (pinned maps from a previous run), before the first [`plan`].
///
/// Normally the state file and the maps agree and this changes nothing. If
/// the state file was lost or is older than the maps, the maps themselves
/// say which service owns each VIP (matched against the config by VIP) and
/// which backend holds each id, so established flows keep their backend.
/// Whatever cannot be recovered gets a generation past the data plane's, so
/// no recorded flow can match a new holder of its id.
pub fn recover_from_dataplane(
    state: &mut State,
    config: &Config,
    dp: &dyn DataPlane,
) -> Result<(), DataPlaneError> {
    let by_vip: HashMap<VipKey, &str> = config
        .compiler_services
        .iter()
        .map(|s| (s.vip.key(), s.name.as_str()))
        .chain(
            config
                .ca_services
                .iter()
                .map(|s| (s.vip.key(), s.name.as_str())),
        )
        .collect();
    for (key, info) in dp.vips()? {
        let Some(name) = by_vip.get(&key) else {
            continue;
        };
        let taken = state.service_ids.values().any(|id| *id == info.service_id);
        if !state.service_ids.contains_key(*name) && !taken {
            state
                .service_ids
                .insert((*name).to_owned(), info.service_id);
        }
    }
    for id in 0..MAX_BACKENDS {
        let info = dp.backend(id)?;
        if info.generation == 0 && info.state == BACKEND_EMPTY {
            continue;
        }
        let holder = addr_from_bytes(&info.addr, info.family);
        if !state.backend_slots.contains_key(&id)
            && info.state != BACKEND_EMPTY
            && let Some(address) = holder
            && let Some((name, _)) = state
                .service_ids
                .iter()
                .find(|(_, sid)| **sid == info.service_id)
            && !state
                .backend_slots
                .values()
                .any(|s| s.service == *name && s.address == address)
        {
            state.backend_slots.insert(
                id,
                BackendSlot {
                    service: name.clone(),
                    address,
                    generation: info.generation,
                    // `plan` claims it again if the backend is still wanted.
                    in_use: false,
                },
            );
            continue;
        }
        let same = match state.backend_slots.get(&id) {
            Some(slot) => {
                let sid = state.service_ids.get(&slot.service).copied();
                info.state == BACKEND_EMPTY
                    || (sid == Some(info.service_id) && holder == Some(slot.address))
            }
            None => false,
        };
        state.adopt_generation(id, info.generation, same);
    }
    Ok(())
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn the_fingerprint_tells_flow_hash_versions_apart() {
        // The same table on a host of the previous flow hash (which fed no
        // version) and on this one: they would send a new flow to different
        // compilers, so an operator comparing fingerprints must see them
        // differ; on two hosts of this build they are equal.
        let identity: HashMap<u32, [u8; 17]> = (0..3u32)
            .map(|id| {
                let mut a = [0u8; 17];
                a[..4].copy_from_slice(&[10, 0, 1, id as u8 + 1]);
                a[16] = lb_common::FAMILY_V4;
                (id, a)
            })
            .collect();
        let table: Vec<u32> = (0..251u32).map(|s| s % 3).collect();
        let now = table_fingerprint(&table, &identity);
        assert_eq!(now, table_fingerprint(&table, &identity));
        assert_ne!(now, fingerprint_of(None, &table, &identity));
        assert_ne!(now, fingerprint_of(Some(1), &table, &identity));
        assert_eq!(
            now,
            fingerprint_of(Some(lb_common::hash::FLOW_HASH_VERSION), &table, &identity)
        );
    }
}
