//! The fuzzer's world: the VIPs, backends, Maglev tables and CA targets it
//! writes into a private copy of the data plane, and the changes the daemon
//! makes to them (drain, down, return, removal, id reuse, re-weighting).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_RETIRING, BackendInfo, KIND_CA,
    KIND_COMPILER, NO_BACKEND, PROTO_TCP, PROTO_UDP, VipInfo, VipKey, addr_bytes,
    maglev::{self, Entry},
};

use voxlb::dataplane::{DataPlane, DataPlaneError};

use super::{Datagram, Rng};
use crate::{
    harness::TestDataPlane,
    reference::{self, Member},
};

/// Maglev table size of the fixture (small prime: fast to build).
pub const TABLE: u32 = 1009;

/// VIPs of the fixture.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// CA VIP (IPv4).
pub const VIP4_CA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
/// Compiler VIP whose table holds no backend.
pub const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
/// UDP compiler VIP (port [`UDP_PORT`]).
pub const VIP4_UDP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 103);
/// Compiler VIP whose table was never installed.
pub const VIP4_UNINSTALLED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 104);
/// CA VIP with no CA usable.
pub const VIP4_CA_NONE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 105);
/// Port of the UDP VIP.
pub const UDP_PORT: u16 = 5353;
/// The OpenVox server port.
pub const PORT: u16 = 8140;

/// Compiler VIP (IPv6).
pub fn vip6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100)
}
/// CA VIP (IPv6).
pub fn vip6_ca() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x101)
}

const S_V4: u32 = 0;
const S_V6: u32 = 1;
const S_CA: u32 = 2;
const S_EMPTY: u32 = 3;
const S_UDP: u32 = 4;
const S_CA6: u32 = 5;
const S_CA_NONE: u32 = 6;
const S_UNINSTALLED: u32 = 7;

/// CA backend ids: 30 primary and 31 standby of the IPv4 CA, 32 of the IPv6 one.
const CA_IDS: [u32; 3] = [30, 31, 32];

/// Backend MACs: compilers `02:be:..`, CAs `02:ca:..`, so a frame's
/// destination MAC alone says which kind of backend it went to.
pub fn backend_mac(id: u32) -> [u8; 6] {
    let kind = if CA_IDS.contains(&id) { 0xca } else { 0xbe };
    [0x02, kind, 0, 0, (id >> 8) as u8, id as u8]
}

/// The map contents the fuzzer runs against, and the model's own view of
/// them. [`World::standard`] is static; [`World::change`] moves it (drain,
/// down, return, removal, id reuse, re-weighting: each a table flip).
#[derive(Clone, Debug)]
pub struct World {
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub backends: BTreeMap<u32, BackendInfo>,
    /// Active Maglev table per compiler service as the data plane gets it
    /// (lb-common's builder; absent: never installed).
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// CA target per CA service.
    pub ca_targets: BTreeMap<u32, u32>,
    /// Compiler pools: every backend with its table weight (0: drained,
    /// down or otherwise out of the table).
    pools: BTreeMap<u32, Vec<Member>>,
    /// The model's tables, from [`reference::maglev`] over `pools`.
    pub(super) model_tables: BTreeMap<u32, Vec<u32>>,
    /// The model's VIP index, by (address, port, protocol).
    pub(super) vip_index: BTreeMap<(IpAddr, u16, u8), VipInfo>,
    /// Ids removed from a pool, with their service and last generation.
    retired: BTreeMap<u32, (u32, u32)>,
    /// Addresses handed out so far by id reuse (each reuse is a new host).
    reused: u32,
    /// The model's fragment table: datagram -> (backend id, generation) of
    /// the first fragment the program forwarded. Updated by every
    /// prediction (frames must be predicted in the order they are run);
    /// exact while the kernel's LRU does not evict what is asked again.
    pub(super) frags: RefCell<HashMap<Datagram, (u32, u32)>>,
}

/// A flow entry as the model tracks it: (backend id, generation, closed).
pub type FlowEntry = (u32, u32, bool);

/// The flow table as the model tracks it. Only meaningful while the
/// kernel's table cannot evict (see [`World::step`]).
pub type ModelFlows = HashMap<FlowId, FlowEntry>;

/// A 5-tuple in the model's own form.
pub type FlowId = (IpAddr, IpAddr, u16, u16, u8);

/// An active backend's record.
fn active_backend(id: u32, service: u32, addr: IpAddr, generation: u32) -> BackendInfo {
    let (addr, family) = addr_bytes(addr);
    BackendInfo {
        mac: backend_mac(id),
        state: BACKEND_ACTIVE,
        generation,
        service_id: service,
        addr,
        family,
        ..Default::default()
    }
}

fn backend_addr(id: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, id as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8))
    }
}

impl World {
    /// Compiler pools over IPv4, IPv6 and UDP, two CA services (one with a
    /// standby that gets nothing), and the failure cases: an empty pool, a
    /// never-installed table, a CA service with no CA.
    pub fn standard() -> World {
        let mut w = World {
            vips: BTreeMap::new(),
            backends: BTreeMap::new(),
            tables: BTreeMap::new(),
            ca_targets: BTreeMap::new(),
            pools: BTreeMap::new(),
            model_tables: BTreeMap::new(),
            vip_index: BTreeMap::new(),
            retired: BTreeMap::new(),
            reused: 0,
            frags: RefCell::new(HashMap::new()),
        };
        for (addr, port, proto, service_id, kind) in [
            (IpAddr::from(VIP4), PORT, PROTO_TCP, S_V4, KIND_COMPILER),
            (vip6().into(), PORT, PROTO_TCP, S_V6, KIND_COMPILER),
            (VIP4_CA.into(), PORT, PROTO_TCP, S_CA, KIND_CA),
            (VIP4_EMPTY.into(), PORT, PROTO_TCP, S_EMPTY, KIND_COMPILER),
            (VIP4_UDP.into(), UDP_PORT, PROTO_UDP, S_UDP, KIND_COMPILER),
            (vip6_ca().into(), PORT, PROTO_TCP, S_CA6, KIND_CA),
            (VIP4_CA_NONE.into(), PORT, PROTO_TCP, S_CA_NONE, KIND_CA),
            (
                VIP4_UNINSTALLED.into(),
                PORT,
                PROTO_TCP,
                S_UNINSTALLED,
                KIND_COMPILER,
            ),
        ] {
            let info = VipInfo { service_id, kind };
            // The data plane's key form, and the model's own.
            w.vips.insert(VipKey::new(addr, port, proto), info);
            w.vip_index.insert((addr, port, proto), info);
        }
        for (service, ids, v6) in [
            (S_V4, [0u32, 1, 2], false),
            (S_V6, [10, 11, 12], true),
            (S_UDP, [20, 21, 22], false),
        ] {
            let mut pool = Vec::new();
            for id in ids {
                w.backends
                    .insert(id, active_backend(id, service, backend_addr(id, v6), 0));
                pool.push(Member {
                    addr: backend_addr(id, v6),
                    weight: 1,
                    value: id,
                });
            }
            w.pools.insert(service, pool);
            w.rebuild(service);
        }
        w.pools.insert(S_EMPTY, Vec::new());
        w.rebuild(S_EMPTY);
        for (id, service) in [(30, S_CA), (31, S_CA), (32, S_CA6)] {
            w.backends
                .insert(id, active_backend(id, service, backend_addr(id, false), 0));
        }
        w.ca_targets.insert(S_CA, 30);
        w.ca_targets.insert(S_CA6, 32);
        w.ca_targets.insert(S_CA_NONE, NO_BACKEND);
        w
    }

    /// Write the world into a data plane.
    pub fn program(&self, dp: &mut dyn DataPlane) -> Result<(), DataPlaneError> {
        for (k, v) in &self.vips {
            dp.upsert_vip(*k, *v)?;
        }
        for (id, b) in &self.backends {
            dp.set_backend(*id, *b)?;
        }
        for (s, t) in &self.tables {
            dp.install_table(*s, t)?;
        }
        for (s, b) in &self.ca_targets {
            dp.set_ca_target(*s, *b)?;
        }
        Ok(())
    }

    /// A private copy of the data plane holding this world.
    pub fn load(&self, flow_capacity: u32) -> Result<TestDataPlane, DataPlaneError> {
        let mut dp = TestDataPlane::load(flow_capacity)?;
        self.program(&mut *dp)?;
        Ok(dp)
    }

    /// Rebuild a compiler service's table from its pool: lb-common's builder
    /// for the data plane, the reference loop for the model.
    fn rebuild(&mut self, service: u32) {
        let pool = &self.pools[&service];
        let entries: Vec<Entry> = pool
            .iter()
            .map(|m| Entry::from_addr(m.addr, m.weight, m.value))
            .collect();
        let table = maglev::build(&entries, TABLE).expect("fixture table");
        self.tables.insert(service, table);
        self.model_tables
            .insert(service, reference::maglev(pool, TABLE));
    }

    /// Change the world as the daemon would, in the model and in `dp`: one
    /// compiler backend is drained, taken down, brought back, removed, or
    /// re-weighted, or a removed id is given to a new host (generation
    /// bumped); the service's new table is staged and flipped. Returns what
    /// was done.
    pub fn change(
        &mut self,
        r: &mut Rng,
        dp: &mut dyn DataPlane,
    ) -> Result<String, DataPlaneError> {
        let service = r.pick(&[S_V4, S_V6, S_UDP]);
        let retired: Vec<u32> = self
            .retired
            .iter()
            .filter(|(_, (s, _))| *s == service)
            .map(|(id, _)| *id)
            .collect();
        let pool = self.pools.get_mut(&service).expect("compiler pool");
        let what = if !retired.is_empty() && (pool.is_empty() || r.chance(25)) {
            // Id reuse: a new host, the old id, the next generation.
            let id = r.pick(&retired);
            let (_, generation) = self.retired.remove(&id).expect("retired id");
            self.reused += 1;
            let addr = match backend_addr(id, service == S_V6) {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 0, 2, self.reused as u8)),
                IpAddr::V6(_) => {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, self.reused as u16))
                }
            };
            self.backends
                .insert(id, active_backend(id, service, addr, generation + 1));
            pool.push(Member {
                addr,
                weight: 1,
                value: id,
            });
            format!("reuse id {id} for {addr} (generation {})", generation + 1)
        } else if pool.is_empty() {
            return Ok("nothing to change".into());
        } else {
            let i = r.below(pool.len());
            let id = pool[i].value;
            let be = self.backends.get_mut(&id).expect("pool backend");
            match r.below(6) {
                // Out of the table: drained, retiring or down.
                n @ (0 | 1 | 5) => {
                    let (state, what) = match n {
                        0 => (BACKEND_DRAINING, "drain"),
                        5 => (BACKEND_RETIRING, "retire"),
                        _ => (BACKEND_DOWN, "down"),
                    };
                    be.state = state;
                    pool[i].weight = 0;
                    format!("{what} {id}")
                }
                2 => {
                    be.state = BACKEND_ACTIVE;
                    pool[i].weight = pool[i].weight.max(1);
                    format!("activate {id}")
                }
                3 => {
                    let generation = be.generation;
                    self.backends.remove(&id);
                    pool.remove(i);
                    self.retired.insert(id, (service, generation));
                    format!("remove {id}")
                }
                _ => {
                    be.state = BACKEND_ACTIVE;
                    pool[i].weight = r.pick(&[1, 2, 5]);
                    format!("weight {id} = {}", pool[i].weight)
                }
            }
        };
        self.rebuild(service);
        // What the daemon writes: every backend of the service (a removed
        // one as an empty slot), then the table.
        for m in &self.pools[&service] {
            dp.set_backend(m.value, self.backends[&m.value])?;
        }
        for (id, (s, _)) in &self.retired {
            if *s == service {
                dp.set_backend(*id, BackendInfo::default())?;
            }
        }
        dp.install_table(service, &self.tables[&service])?;
        Ok(what)
    }

    /// Datagrams the model's fragment table holds.
    pub fn fragments_tracked(&self) -> usize {
        self.frags.borrow().len()
    }

    /// Whether any compiler table the model holds gives slots to `id`.
    pub fn in_table(&self, id: u32) -> bool {
        self.model_tables.values().any(|t| t.contains(&id))
    }

    pub(super) fn is_ca_backend(&self, id: u32) -> bool {
        self.backends.get(&id).is_some_and(|b| {
            self.vips
                .values()
                .any(|v| v.service_id == b.service_id && v.kind == KIND_CA)
        })
    }
}
