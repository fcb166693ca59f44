//! The reconciler against the in-memory data plane: what it writes, and above
//! all what it does not rewrite.

use std::net::IpAddr;

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_EMPTY, KIND_CA, KIND_COMPILER,
    NO_BACKEND,
};
use voxlb::{
    config::Config,
    dataplane::{DataPlane, FakeDataPlane},
    reconcile::{
        Desired, HealthMap, MacMap, Plan, apply, plan, prune_overlay, recover_from_dataplane,
    },
    state::{AddedBackend, State},
};

const CONFIG: &str = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
mac = "02:00:00:00:00:02"
[[compiler_services.backends]]
address = "2001:db8::3"
mac = "02:00:00:00:00:03"

[[ca_services]]
name = "ca"
vip = "[2001:db8::11]:8140"
health_check = { type = "tcp" }
primary = { address = "10.0.1.1", mac = "02:00:00:00:01:01" }
standby = { address = "10.0.1.2", mac = "02:00:00:00:01:02" }
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct World {
    config: Config,
    state: State,
    health: HealthMap,
    macs: MacMap,
    dp: FakeDataPlane,
    last: Option<Desired>,
}

impl World {
    fn new(config: &str) -> World {
        World {
            config: Config::parse(config).unwrap(),
            state: State::new(),
            health: HealthMap::new(),
            macs: MacMap::new(),
            dp: FakeDataPlane::default(),
            last: None,
        }
    }

    fn plan(&mut self) -> Plan {
        plan(&self.config, &mut self.state, &self.health, &self.macs).unwrap()
    }

    /// Plan and apply; returns the plan and the write counts.
    fn sync(&mut self) -> (Plan, voxlb::reconcile::Applied) {
        let p = self.plan();
        let applied = apply(&p.desired, self.last.as_ref(), &mut self.dp).unwrap();
        self.last = Some(p.desired.clone());
        (p, applied)
    }

    fn id(&self, svc: &str, addr: &str) -> u32 {
        *self
            .state
            .backend_slots
            .iter()
            .find(|(_, s)| s.service == svc && s.address == ip(addr))
            .unwrap()
            .0
    }

    fn sid(&self, svc: &str) -> u32 {
        self.state.service_ids[svc]
    }

    fn table(&self, svc: &str) -> Vec<u32> {
        self.dp.tables[&self.sid(svc)].clone()
    }

    fn share(&self, svc: &str, addr: &str) -> usize {
        let id = self.id(svc, addr);
        self.table(svc).iter().filter(|v| **v == id).count()
    }

    fn installs(&self, svc: &str) -> u32 {
        self.dp
            .table_installs
            .get(&self.sid(svc))
            .copied()
            .unwrap_or(0)
    }

    fn overlay(&mut self) -> &mut voxlb::state::ServiceOverlay {
        self.state.overlays.entry("compilers".into()).or_default()
    }
}

#[test]
fn initial_sync_writes_everything_once() {
    let mut w = World::new(CONFIG);
    let (p, a) = w.sync();
    assert_eq!(a.vips_upserted, 2);
    assert_eq!(a.tables, 1);
    assert_eq!(a.ca_targets, 1);
    assert_eq!(a.backends, 5);
    let comp = w.sid("compilers");
    let ca = w.sid("ca");
    assert_ne!(comp, ca);
    let kinds: Vec<u32> = w.dp.vips.values().map(|v| v.kind).collect();
    assert!(kinds.contains(&KIND_COMPILER) && kinds.contains(&KIND_CA));
    // Every slot holds one of the three compilers.
    let ids = [
        w.id("compilers", "10.0.0.1"),
        w.id("compilers", "10.0.0.2"),
        w.id("compilers", "2001:db8::3"),
    ];
    assert!(w.table("compilers").iter().all(|v| ids.contains(v)));
    for b in ids {
        let info = w.dp.backends[&b];
        assert_eq!(info.state, BACKEND_ACTIVE);
        assert_eq!(info.service_id, comp);
        assert_eq!(info.generation, 1);
    }
    assert_eq!(w.dp.ca[&ca], w.id("ca", "10.0.1.1"));
    assert_eq!(p.services[0].active, 3);
    assert_eq!(p.services[1].ca_target, Some(ip("10.0.1.1")));

    // Nothing changed: nothing written.
    let (_, a) = w.sync();
    assert!(a.is_noop(), "{a:?}");
    // Also when comparing against the data plane itself (restart path).
    let p = w.plan();
    let a = apply(&p.desired, None, &mut w.dp).unwrap();
    assert!(a.is_noop(), "{a:?}");
    assert_eq!(w.installs("compilers"), 1);
}

#[test]
fn drain_keeps_the_slot_but_leaves_the_table() {
    let mut w = World::new(CONFIG);
    w.sync();
    let d = w.id("compilers", "10.0.0.2");
    w.overlay().drained.insert(ip("10.0.0.2"));
    let (p, a) = w.sync();
    assert_eq!(a.tables, 1);
    assert_eq!(a.backends, 1, "only the drained backend is rewritten");
    assert_eq!(w.dp.backends[&d].state, BACKEND_DRAINING);
    assert_eq!(w.share("compilers", "10.0.0.2"), 0);
    let view = &p.services[0].backends[1];
    assert_eq!((view.state.as_str(), view.slots), ("draining", 0));
    // Undrain: back in, same generation (its flows were never invalid).
    w.overlay().drained.clear();
    w.sync();
    assert_eq!(w.dp.backends[&d].state, BACKEND_ACTIVE);
    assert_eq!(w.dp.backends[&d].generation, 1);
    assert!(w.share("compilers", "10.0.0.2") > 0);
}

#[test]
fn weights_shape_the_table() {
    let mut w = World::new(CONFIG);
    w.sync();
    let before = w.share("compilers", "10.0.0.1");
    w.overlay().weights.insert(ip("10.0.0.1"), 300);
    let (_, a) = w.sync();
    assert_eq!(a.tables, 1);
    assert_eq!(a.backends, 0, "a weight lives in the table only");
    let after = w.share("compilers", "10.0.0.1");
    // 300 against 100 + 100: three fifths of the slots (about 605).
    assert!(after > before * 3 / 2, "{before} -> {after}");
}

#[test]
fn add_and_remove_allocate_and_free_ids() {
    let mut w = World::new(CONFIG);
    w.sync();
    w.overlay().added.insert(
        ip("10.0.0.9"),
        AddedBackend {
            name: Some("c9".into()),
            weight: 100,
            mac: Some([2, 0, 0, 0, 0, 9]),
            tier: 0,
        },
    );
    let (p, a) = w.sync();
    let id9 = w.id("compilers", "10.0.0.9");
    assert_eq!(a.backends, 1);
    assert_eq!(w.dp.backends[&id9].state, BACKEND_ACTIVE);
    assert!(w.share("compilers", "10.0.0.9") > 0);
    assert_eq!(p.services[0].backends.last().unwrap().source, "cli");

    // Remove a config backend: its slot is freed (EMPTY), generation kept.
    let id1 = w.id("compilers", "10.0.0.1");
    w.overlay().removed.insert(ip("10.0.0.1"));
    w.sync();
    assert_eq!(w.dp.backends[&id1].state, BACKEND_EMPTY);
    assert_eq!(w.dp.backends[&id1].generation, 1);
    assert!(!w.table("compilers").contains(&id1));
    assert!(!w.state.backend_slots[&id1].in_use);

    // Re-adding the same backend gives back the same id and generation.
    w.overlay().removed.clear();
    w.sync();
    assert_eq!(w.id("compilers", "10.0.0.1"), id1);
    assert_eq!(w.dp.backends[&id1].state, BACKEND_ACTIVE);
    assert_eq!(w.dp.backends[&id1].generation, 1);
}

#[test]
fn health_down_and_up() {
    let mut w = World::new(CONFIG);
    w.sync();
    let id = w.id("compilers", "2001:db8::3");
    w.health
        .insert(("compilers".into(), ip("2001:db8::3")), false);
    let (p, _) = w.sync();
    assert_eq!(w.dp.backends[&id].state, BACKEND_DOWN);
    assert!(!w.table("compilers").contains(&id));
    assert_eq!(p.services[0].active, 2);
    assert_eq!(p.services[0].backends[2].healthy, Some(false));
    w.health
        .insert(("compilers".into(), ip("2001:db8::3")), true);
    w.sync();
    assert_eq!(w.dp.backends[&id].state, BACKEND_ACTIVE);
    assert!(w.table("compilers").contains(&id));
}

#[test]
fn all_down_empties_the_table() {
    let mut w = World::new(CONFIG);
    w.sync();
    for a in ["10.0.0.1", "10.0.0.2", "2001:db8::3"] {
        w.health.insert(("compilers".into(), ip(a)), false);
    }
    let (p, _) = w.sync();
    assert_eq!(p.services[0].active, 0);
    assert!(w.table("compilers").iter().all(|v| *v == NO_BACKEND));
}

#[test]
fn maglev_moves_few_flows_when_one_backend_goes() {
    let mut w = World::new(CONFIG);
    w.sync();
    let before = w.table("compilers");
    let gone = w.id("compilers", "10.0.0.2");
    w.health.insert(("compilers".into(), ip("10.0.0.2")), false);
    w.sync();
    let after = w.table("compilers");
    // Slots of the surviving backends mostly stay put.
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    assert!(
        moved < before.len() / 10,
        "{moved} slots of survivors moved"
    );
}

#[test]
fn ca_fails_over_and_back() {
    let mut w = World::new(CONFIG);
    w.sync();
    let ca = w.sid("ca");
    let primary = w.id("ca", "10.0.1.1");
    let standby = w.id("ca", "10.0.1.2");
    w.health.insert(("ca".into(), ip("10.0.1.1")), false);
    let (p, a) = w.sync();
    assert_eq!(w.dp.ca[&ca], standby);
    assert_eq!(a.ca_targets, 1);
    assert_eq!(a.tables, 0, "compiler table untouched by a CA failover");
    assert_eq!(p.services[1].ca_target, Some(ip("10.0.1.2")));
    w.health.insert(("ca".into(), ip("10.0.1.2")), false);
    w.sync();
    assert_eq!(w.dp.ca[&ca], NO_BACKEND);
    w.health.insert(("ca".into(), ip("10.0.1.1")), true);
    w.sync();
    assert_eq!(w.dp.ca[&ca], primary);
}

#[test]
fn unresolved_mac_keeps_a_backend_out_until_resolved() {
    let cfg = CONFIG.replace("mac = \"02:00:00:00:00:02\"\n", "");
    let mut w = World::new(&cfg);
    let (p, _) = w.sync();
    let id = w.id("compilers", "10.0.0.2");
    assert_eq!(w.dp.backends[&id].state, BACKEND_DOWN);
    assert_eq!(p.services[0].backends[1].state, "unresolved");
    assert!(!w.table("compilers").contains(&id));
    w.macs.insert(ip("10.0.0.2"), [2, 0, 0, 0, 0, 0x22]);
    w.sync();
    assert_eq!(w.dp.backends[&id].state, BACKEND_ACTIVE);
    assert_eq!(w.dp.backends[&id].mac, [2, 0, 0, 0, 0, 0x22]);
    assert!(w.table("compilers").contains(&id));
}

#[test]
fn reload_diff_leaves_unchanged_services_alone() {
    let mut w = World::new(CONFIG);
    w.sync();
    let ids_before: Vec<u32> = ["10.0.0.1", "10.0.0.2"]
        .iter()
        .map(|a| w.id("compilers", a))
        .collect();
    // New config: one compiler removed, a service added, the CA untouched.
    let new = CONFIG.replace(
        "[[compiler_services.backends]]\naddress = \"2001:db8::3\"\nmac = \"02:00:00:00:00:03\"\n",
        "",
    ) + r#"
[[compiler_services]]
name = "more"
vip = "192.0.2.20:8140"
table_size = 211
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.2.1"
mac = "02:00:00:00:02:01"
"#;
    w.config = Config::parse(&new).unwrap();
    prune_overlay(&w.config, &mut w.state);
    let (_, a) = w.sync();
    assert_eq!(a.vips_upserted, 1, "only the new VIP");
    assert_eq!(a.ca_targets, 0);
    assert_eq!(a.tables, 2, "the shrunk pool and the new service");
    // The removed backend freed, the new one written, the rest untouched.
    assert_eq!(a.backends, 2);
    let ids_after: Vec<u32> = ["10.0.0.1", "10.0.0.2"]
        .iter()
        .map(|a| w.id("compilers", a))
        .collect();
    assert_eq!(ids_before, ids_after);

    // Drop the new service again: its VIP goes, its backend is freed.
    w.config = Config::parse(CONFIG).unwrap();
    prune_overlay(&w.config, &mut w.state);
    let (_, a) = w.sync();
    assert_eq!(a.vips_removed, 1);
    assert!(!w.state.service_ids.contains_key("more"));
}

#[test]
fn prune_drops_overlay_entries_that_lost_their_meaning() {
    let mut w = World::new(CONFIG);
    w.overlay().removed.insert(ip("10.9.9.9"));
    w.overlay().drained.insert(ip("10.0.0.1"));
    w.overlay().added.insert(
        ip("10.0.0.2"),
        AddedBackend {
            name: None,
            weight: 1,
            mac: None,
            tier: 0,
        },
    );
    w.state
        .overlays
        .entry("gone".into())
        .or_default()
        .drained
        .insert(ip("10.0.0.1"));
    let dropped = prune_overlay(&w.config, &mut w.state);
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    let o = &w.state.overlays["compilers"];
    assert!(o.removed.is_empty() && o.added.is_empty());
    assert!(o.drained.contains(&ip("10.0.0.1")));
}

#[test]
fn restart_from_persisted_state_gives_the_same_ids_and_tables() {
    let mut w = World::new(CONFIG);
    w.overlay().drained.insert(ip("10.0.0.1"));
    w.overlay().added.insert(
        ip("10.0.0.7"),
        AddedBackend {
            name: None,
            weight: 20,
            mac: Some([2, 0, 0, 0, 0, 7]),
            tier: 0,
        },
    );
    let (p1, _) = w.sync();
    let saved = serde_json::to_string(&w.state).unwrap();
    let installs = w.installs("compilers");

    // A new daemon: state read back, the pinned maps as they were.
    let mut state: State = serde_json::from_str(&saved).unwrap();
    recover_from_dataplane(&mut state, &w.config, &w.dp).unwrap();
    let p2 = plan(&w.config, &mut state, &HealthMap::new(), &MacMap::new()).unwrap();
    assert_eq!(p1.desired, p2.desired);
    let a = apply(&p2.desired, None, &mut w.dp).unwrap();
    assert!(a.is_noop(), "restart rewrote {a:?}");
    assert_eq!(w.installs("compilers"), installs);
}

#[test]
fn lost_state_file_is_recovered_from_the_pinned_maps() {
    let mut w = World::new(CONFIG);
    w.overlay().added.insert(
        ip("10.0.0.7"),
        AddedBackend {
            name: None,
            weight: 20,
            mac: Some([2, 0, 0, 0, 0, 7]),
            tier: 0,
        },
    );
    w.sync();
    let old_state = w.state.clone();
    let old1 = w.id("compilers", "10.0.0.1");
    // The state file is lost, and the config no longer lists 10.0.0.1 but a
    // new backend: every kept backend must keep its id, and the new one must
    // not inherit a (id, generation) that recorded flows carry.
    let config = Config::parse(&CONFIG.replace("10.0.0.1\"", "10.0.0.99\"")).unwrap();
    let mut state = State::new();
    recover_from_dataplane(&mut state, &config, &w.dp).unwrap();
    assert_eq!(state.service_ids, old_state.service_ids);
    plan(&config, &mut state, &HealthMap::new(), &MacMap::new()).unwrap();
    for (svc, a) in [
        ("compilers", "10.0.0.2"),
        ("compilers", "2001:db8::3"),
        ("ca", "10.0.1.1"),
        ("ca", "10.0.1.2"),
    ] {
        let find = |s: &State| {
            s.backend_slots
                .iter()
                .find(|(_, x)| x.service == svc && x.address == ip(a))
                .map(|(id, x)| (*id, x.generation))
        };
        assert_eq!(find(&state), find(&old_state), "{svc} {a}");
    }
    let (new_id, new_slot) = state
        .backend_slots
        .iter()
        .find(|(_, s)| s.address == ip("10.0.0.99"))
        .unwrap();
    let old = w.dp.backends.get(new_id).copied().unwrap_or_default();
    assert!(old.generation == 0 || old.generation != new_slot.generation);
    assert!(!state.backend_slots[&old1].in_use);
    // The run-time add is in the maps but not in the (lost) overlay: its id
    // is remembered as released, and freed by the next apply.
    let id7 = old_state
        .backend_slots
        .iter()
        .find(|(_, s)| s.address == ip("10.0.0.7"))
        .unwrap()
        .0;
    assert!(!state.backend_slots[id7].in_use);
}

#[test]
fn recovery_bumps_generation_of_an_id_held_by_another_backend() {
    let mut w = World::new(CONFIG);
    w.sync();
    let id = w.id("compilers", "10.0.0.1");
    // An out-of-date state file says the id belongs to someone else.
    let mut state = w.state.clone();
    state.backend_slots.get_mut(&id).unwrap().address = ip("10.0.0.50");
    recover_from_dataplane(&mut state, &w.config, &w.dp).unwrap();
    assert!(state.backend_slots[&id].generation > w.dp.backends[&id].generation);
}

#[test]
fn apply_failure_is_reported() {
    let mut w = World::new(CONFIG);
    w.dp.fail_writes = Some("injected".into());
    let p = w.plan();
    let e = apply(&p.desired, None, &mut w.dp).unwrap_err();
    assert!(e.to_string().contains("injected"));
}

#[test]
fn too_many_backends_for_the_table_is_a_plan_error() {
    let mut w = World::new(&CONFIG.replace("table_size = 1009", "table_size = 307"));
    w.sync();
    w.overlay().added.insert(
        ip("10.0.0.9"),
        AddedBackend {
            name: None,
            weight: 1,
            mac: None,
            tier: 0,
        },
    );
    let e = plan(&w.config, &mut w.state, &w.health, &w.macs).unwrap_err();
    assert!(e.to_string().contains("compilers"), "{e}");
    assert!(e.to_string().contains("too small"), "{e}");
    let _ = w.dp.vips().unwrap();
}

#[test]
fn a_health_event_rebuilds_only_the_table_of_its_service() {
    // Service names unique to this test: the table memo is per process.
    let config = r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "rebuild-a"
vip = "192.0.2.30:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.3.1"
mac = "02:00:00:00:03:01"
[[compiler_services.backends]]
address = "10.0.3.2"
mac = "02:00:00:00:03:02"
[[compiler_services]]
name = "rebuild-b"
vip = "192.0.2.31:8140"
table_size = 1009
health_check = { type = "tcp" }
[[compiler_services.backends]]
address = "10.0.4.1"
mac = "02:00:00:00:04:01"
"#;
    use voxlb::tables::builds_of;
    let mut w = World::new(config);
    w.sync();
    let (a0, b0) = (builds_of("rebuild-a"), builds_of("rebuild-b"));
    w.health.insert(("rebuild-a".into(), ip("10.0.3.2")), false);
    let (_, applied) = w.sync();
    assert_eq!(
        applied.tables, 1,
        "only the touched service's table is written"
    );
    assert_eq!(
        builds_of("rebuild-a"),
        a0 + 1,
        "the touched service is rebuilt"
    );
    assert_eq!(
        builds_of("rebuild-b"),
        b0,
        "the other service is not rebuilt"
    );
    // And back: rebuilt again (its input changed again), the other still not.
    w.health.insert(("rebuild-a".into(), ip("10.0.3.2")), true);
    w.sync();
    assert_eq!(builds_of("rebuild-b"), b0);
    assert!(
        w.table("rebuild-a")
            .contains(&w.id("rebuild-a", "10.0.3.2"))
    );
}

// ---------------------------------------------------------------------------
// The weight controller feeding the table (issue 16): tiers, slow start and
// load weights, for new flows only.

mod weighted {
    use std::collections::HashMap;

    use super::*;
    use voxlb::{
        load::{Controller, LoadInput, LoadSignal},
        reconcile::{WeightMap, effective_backends, plan_weighted},
    };

    /// Four compilers: .1 and .2 in tier 0, .3 and .4 in tier 1.
    fn config(service_keys: &str) -> String {
        format!(
            r#"
interfaces = ["eth0"]
[[compiler_services]]
name = "compilers"
vip = "192.0.2.10:8140"
table_size = 1009
health_check = {{ insecure = true }}
{service_keys}
[[compiler_services.backends]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
[[compiler_services.backends]]
address = "10.0.0.2"
mac = "02:00:00:00:00:02"
[[compiler_services.backends]]
address = "10.0.0.3"
mac = "02:00:00:00:00:03"
tier = 1
[[compiler_services.backends]]
address = "10.0.0.4"
mac = "02:00:00:00:00:04"
tier = 1
"#
        )
    }

    struct Weighted {
        w: World,
        ctl: Controller,
    }

    impl Weighted {
        fn new(service_keys: &str) -> Weighted {
            let w = World::new(&config(service_keys));
            let ctl = Controller::new(w.config.compilers_service().balancing.controller.clone());
            Weighted { w, ctl }
        }

        /// One controller step at `now_ms` with `loads`, then plan and apply.
        fn sync(&mut self, now_ms: u64, loads: &[(&str, LoadInput)]) -> WeightMap {
            let svc = self.w.config.compilers_service().clone();
            let eff = effective_backends(&svc, self.w.state.overlays.get("compilers"));
            let loads: HashMap<IpAddr, LoadInput> =
                loads.iter().map(|(a, l)| (ip(a), *l)).collect();
            let inputs = voxlb::load::compiler_inputs(
                "compilers",
                &eff,
                &self.w.health,
                &self.w.macs,
                &loads,
            );
            let weights: WeightMap = self
                .ctl
                .step(now_ms, &inputs)
                .weights
                .into_iter()
                .map(|w| (("compilers".to_owned(), w.address), w))
                .collect();
            let p = plan_weighted(
                &self.w.config,
                &mut self.w.state,
                &self.w.health,
                &self.w.macs,
                &Default::default(),
                &weights,
            )
            .unwrap();
            apply(&p.desired, self.w.last.as_ref(), &mut self.w.dp).unwrap();
            self.w.last = Some(p.desired);
            weights
        }

        fn share(&self, addr: &str) -> usize {
            self.w.share("compilers", addr)
        }

        fn down(&mut self, addr: &str, down: bool) {
            self.w.health.insert(("compilers".into(), ip(addr)), !down);
        }
    }

    trait First {
        fn compilers_service(&self) -> &voxlb::config::CompilerService;
    }
    impl First for Config {
        fn compilers_service(&self) -> &voxlb::config::CompilerService {
            self.compiler("compilers").unwrap()
        }
    }

    fn busy(occupancy: u32, queue: u32) -> LoadInput {
        LoadInput::Sample(LoadSignal {
            occupancy_permille: occupancy,
            queue_permille: queue,
            borrow_ms: None,
        })
    }

    #[test]
    fn static_weights_through_the_controller_build_the_same_table() {
        // Upgrading to the controller moves nothing: the effective weights
        // of a static service (in thousandths) give the plain table.
        let mut plain = World::new(&config("min_healthy = 1").replace("tier = 1", "tier = 0"));
        plain.sync();
        let mut weighted = Weighted::new("min_healthy = 1");
        let text = config("min_healthy = 1").replace("tier = 1", "tier = 0");
        weighted.w = World::new(&text);
        weighted.sync(0, &[]);
        assert_eq!(plain.table("compilers"), weighted.w.table("compilers"));
    }

    #[test]
    fn tiers_fail_over_to_tier_1_below_min_healthy_and_back() {
        let mut t = Weighted::new("min_healthy = 2");
        t.sync(0, &[]);
        let first = t.w.table("compilers");
        // Tier 0 has two usable compilers: it takes every new flow.
        assert!(t.share("10.0.0.1") > 400 && t.share("10.0.0.2") > 400);
        assert_eq!(t.share("10.0.0.3") + t.share("10.0.0.4"), 0);
        // One of them fails: tier 0 falls below min_healthy, tier 1 takes
        // the new flows (the survivor of tier 0 too gets none).
        t.down("10.0.0.1", true);
        let w = t.sync(1000, &[]);
        assert_eq!(t.share("10.0.0.1") + t.share("10.0.0.2"), 0);
        assert!(t.share("10.0.0.3") > 400 && t.share("10.0.0.4") > 400);
        assert_eq!(
            w[&("compilers".to_owned(), ip("10.0.0.2"))].role,
            voxlb::load::Role::Standby
        );
        // The standby stays ACTIVE in the backend map: its established
        // flows keep going to it.
        let id2 = t.w.id("compilers", "10.0.0.2");
        assert_eq!(t.w.dp.backends[&id2].state, BACKEND_ACTIVE);
        // It recovers: new flows go back to tier 0, the table as before.
        t.down("10.0.0.1", false);
        t.sync(2000, &[]);
        assert_eq!(t.w.table("compilers"), first);
    }

    #[test]
    fn slow_start_ramps_a_recovering_compiler_to_its_full_share() {
        let mut t = Weighted::new("slow_start = \"60s\"\nmax_rewrites_per_minute = 600");
        t.sync(0, &[]);
        let full = t.share("10.0.0.1");
        let first = t.w.table("compilers");
        t.down("10.0.0.1", true);
        t.sync(1000, &[]);
        assert_eq!(t.share("10.0.0.1"), 0);
        t.down("10.0.0.1", false);
        let mut shares = Vec::new();
        for (i, now) in [2000u64, 17_000, 32_000, 47_000, 62_000]
            .into_iter()
            .enumerate()
        {
            let w = t.sync(now, &[]);
            let e = w[&("compilers".to_owned(), ip("10.0.0.1"))];
            shares.push((t.share("10.0.0.1"), e.ramp_permille));
            if i == 0 {
                assert_eq!(e.ramp_permille, 100, "starts at 10%");
            }
        }
        eprintln!("share, ramp: {shares:?} (full share {full})");
        assert!(shares.windows(2).all(|w| w[0].0 < w[1].0), "{shares:?}");
        assert!(shares[0].0 < full / 5, "{shares:?}");
        assert_eq!(shares.last().unwrap().1, 1000);
        assert_eq!(t.w.table("compilers"), first, "warm again: the first table");
    }

    #[test]
    fn load_shrinks_a_busy_compilers_share_within_bounds() {
        let mut t = Weighted::new(
            "balance = \"load\"\nmin_weight_percent = 25\nload_smoothing_percent = 100",
        );
        t.sync(0, &[]);
        let even = t.share("10.0.0.1");
        let idle = busy(100, 0);
        // .1's pool is full with a queue as long as the pool: the floor.
        let w = t.sync(1000, &[("10.0.0.1", busy(1000, 1000)), ("10.0.0.2", idle)]);
        let e = w[&("compilers".to_owned(), ip("10.0.0.1"))];
        assert_eq!(e.load_permille, 250, "floor: min_weight_percent");
        assert_eq!(e.pressure_permille, Some(2000));
        let busy_share = t.share("10.0.0.1");
        // 25 against 100: a fifth of the slots, never zero.
        assert!((180..=225).contains(&busy_share), "{even} -> {busy_share}");
        // Garbage answer = no load data: back to the configured weight.
        t.sync(2000, &[("10.0.0.1", LoadInput::NoData)]);
        assert_eq!(t.share("10.0.0.1"), even);
        // A step without a new answer changes nothing (no rewrite).
        let before = t.w.installs("compilers");
        t.sync(3000, &[]);
        assert_eq!(t.w.installs("compilers"), before);
    }
}
