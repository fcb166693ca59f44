//! Structure-aware fuzzing of the XDP program (`cargo xtask fuzz`).
//!
//! Three parts, used by `examples/fuzz_dataplane.rs` and by the regression
//! replay test (`tests/fuzz_regressions.rs`):
//! - [`World`]: a fixed set of VIPs, backends, Maglev tables and CA targets,
//!   written into a private copy of the data plane;
//! - a **reference model** of the program ([`World::expect`]): a separate,
//!   slice-based re-implementation of "what should happen to this frame",
//!   written from the reason codes' definitions, not from the eBPF code;
//! - a **generator** ([`Generator`]) of valid frames of each input class
//!   (compiler, CA and UDP VIPs over IPv4/IPv6, non-VIP traffic, non-IP,
//!   ICMP errors about VIP replies, first and later fragments)
//!   with 1–3 structure-aware mutations, plus a sweep that truncates rich
//!   frames at every byte.
//!
//! [`World::check`] compares a BPF_PROG_TEST_RUN result with the model and
//! with the model-independent rules of the data plane (a frame not forwarded
//! is untouched; a forwarded one differs only in its MACs, goes to a backend
//! of the VIP's own service, and a CA VIP's only to a CA).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_RETIRING, BackendInfo, KIND_CA,
    KIND_COMPILER, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason, VipInfo, VipKey, addr_bytes,
    maglev::{self, Entry},
    reason::Verdict,
};

use voxlb::dataplane::{DataPlane, DataPlaneError};

use crate::{
    harness::{RunOutput, TestDataPlane},
    packet::{CLIENT_MAC, Frame, L4, LB_MAC, arp_request, flags, l3_offset},
    reference::{self, Member},
};

/// XDP action codes as BPF_PROG_TEST_RUN returns them.
/// Reasons only a routed (`ipip`/`gue`) backend can give. The fuzz world
/// forwards by L2 only: these are proven by the encapsulation packet tests
/// (`lb-userspace/tests/encap_packets.rs`), whose outputs the model would
/// have to rebuild byte for byte.
pub const ROUTED_ONLY: [Reason; 4] = [
    Reason::TxTooBig,
    Reason::DropTooBigNoDf,
    Reason::DropNoEgress,
    Reason::DropEncap,
];

pub use lb_common::reason::action::{XDP_DROP, XDP_PASS, XDP_TX};

/// The XDP action a reason implies.
pub fn action_of(r: Reason) -> u32 {
    match r.verdict() {
        Verdict::Tx => XDP_TX,
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}

/// Name of an XDP action code.
pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        _ => "other",
    }
}

mod model;
pub use model::*;

// ---------------------------------------------------------------- the world

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
    model_tables: BTreeMap<u32, Vec<u32>>,
    /// The model's VIP index, by (address, port, protocol).
    vip_index: BTreeMap<(IpAddr, u16, u8), VipInfo>,
    /// Ids removed from a pool, with their service and last generation.
    retired: BTreeMap<u32, (u32, u32)>,
    /// Addresses handed out so far by id reuse (each reuse is a new host).
    reused: u32,
    /// The model's fragment table: datagram -> (backend id, generation) of
    /// the first fragment the program forwarded. Updated by every
    /// prediction (frames must be predicted in the order they are run);
    /// exact while the kernel's LRU does not evict what is asked again.
    frags: RefCell<HashMap<Datagram, (u32, u32)>>,
}

/// A flow entry as the model tracks it: (backend id, generation, closed).
pub type FlowEntry = (u32, u32, bool);

/// The flow table as the model tracks it. Only meaningful while the
/// kernel's table cannot evict (see [`World::step`]).
pub type ModelFlows = HashMap<FlowId, FlowEntry>;

/// A 5-tuple in the model's own form.
pub type FlowId = (IpAddr, IpAddr, u16, u16, u8);

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
                let (addr, family) = addr_bytes(backend_addr(id, v6));
                w.backends.insert(
                    id,
                    BackendInfo {
                        mac: backend_mac(id),
                        state: BACKEND_ACTIVE,
                        service_id: service,
                        addr,
                        family,
                        ..Default::default()
                    },
                );
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
            let (addr, family) = addr_bytes(backend_addr(id, false));
            w.backends.insert(
                id,
                BackendInfo {
                    mac: backend_mac(id),
                    state: BACKEND_ACTIVE,
                    service_id: service,
                    addr,
                    family,
                    ..Default::default()
                },
            );
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
            let (a, family) = addr_bytes(addr);
            self.backends.insert(
                id,
                BackendInfo {
                    mac: backend_mac(id),
                    state: BACKEND_ACTIVE,
                    generation: generation + 1,
                    service_id: service,
                    addr: a,
                    family,
                    ..Default::default()
                },
            );
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
                0 => {
                    be.state = BACKEND_DRAINING;
                    pool[i].weight = 0;
                    format!("drain {id}")
                }
                5 => {
                    be.state = BACKEND_RETIRING;
                    pool[i].weight = 0;
                    format!("retire {id}")
                }
                1 => {
                    be.state = BACKEND_DOWN;
                    pool[i].weight = 0;
                    format!("down {id}")
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

    fn is_ca_backend(&self, id: u32) -> bool {
        self.backends.get(&id).is_some_and(|b| {
            self.vips
                .values()
                .any(|v| v.service_id == b.service_id && v.kind == KIND_CA)
        })
    }
}

// --------------------------------------------------------------- generation

/// SplitMix64: tiny, seedable, and good enough to drive mutations. Each case
/// gets its own stream derived from (seed, case index), so one case can be
/// regenerated alone.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The stream of case `index` of a run seeded with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Input classes: what a frame is before it is mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    CompilerV4,
    CompilerV6,
    CaV4,
    CaV6,
    UdpV4,
    EmptyPool,
    NoCa,
    Uninstalled,
    NonVipV4,
    NonVipV6,
    NonIp,
    /// ICMP errors (and other ICMP) about VIP replies, quotes cut or not.
    IcmpV4,
    IcmpV6,
    /// First and later fragments of a few datagrams per VIP.
    FragV4,
    FragV6,
    /// A sweep case (a base frame cut short).
    Sweep,
}

/// (class, weight): most cases aim at the paths that forward.
const CLASSES: [(Class, usize); 15] = [
    (Class::CompilerV4, 20),
    (Class::CompilerV6, 15),
    (Class::CaV4, 10),
    (Class::CaV6, 6),
    (Class::UdpV4, 8),
    (Class::EmptyPool, 3),
    (Class::NoCa, 3),
    (Class::Uninstalled, 2),
    (Class::NonVipV4, 12),
    (Class::NonVipV6, 8),
    (Class::NonIp, 5),
    (Class::IcmpV4, 6),
    (Class::IcmpV6, 4),
    (Class::FragV4, 6),
    (Class::FragV6, 4),
];

impl Class {
    /// Every class, for reports.
    pub fn all() -> impl Iterator<Item = Class> {
        CLASSES.iter().map(|(c, _)| *c)
    }
}

/// One generated input.
#[derive(Clone, Debug)]
pub struct Case {
    pub class: Class,
    pub frame: Vec<u8>,
    /// What was done to it, for reports and saved regressions.
    pub desc: String,
}

/// A valid packet of one of a small set of compiler flows (16 clients × 4
/// ports per compiler VIP, over IPv4, IPv6 and UDP), so that flows recur
/// across world changes: a SYN, an ACK or FIN of an established
/// connection, a datagram, now and then to a group address.
pub fn flow_case(r: &mut Rng) -> Case {
    let (class, dst, dport): (Class, IpAddr, u16) = match r.below(3) {
        0 => (Class::CompilerV4, VIP4.into(), PORT),
        1 => (Class::CompilerV6, vip6().into(), PORT),
        _ => (Class::UdpV4, VIP4_UDP.into(), UDP_PORT),
    };
    let n = r.below(16) as u8;
    let src: IpAddr = if class == Class::CompilerV6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n) + 1).into()
    } else {
        Ipv4Addr::new(192, 0, 2, n + 1).into()
    };
    let sport = 40000 + r.below(4) as u16;
    let proto = if class == Class::UdpV4 {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    if r.chance(10) {
        // A router's ICMP error about the compiler's reply on this flow.
        let f = icmp_about(r, dst, dport, proto, src, sport);
        return Case {
            class: if dst.is_ipv6() {
                Class::IcmpV6
            } else {
                Class::IcmpV4
            },
            frame: f.build(),
            desc: format!("flow {src}:{sport} -> {dst}:{dport}: ICMP {:?}", f.l4),
        };
    }
    if r.chance(10) {
        // A fragment of one of four datagrams of this flow.
        let id = 7 + r.below(4) as u32;
        let (f, what) = fragment_of(r, src, sport, dst, dport, proto, id);
        return Case {
            class: if dst.is_ipv6() {
                Class::FragV6
            } else {
                Class::FragV4
            },
            frame: f.build(),
            desc: format!("flow {src}:{sport} -> {dst}:{dport}: {what} id {id}"),
        };
    }
    let (mut frame, what) = if class == Class::UdpV4 {
        (Frame::udp(src, sport, dst, dport), "datagram")
    } else {
        let (bits, what) = r.pick(&[
            (flags::SYN, "SYN"),
            (flags::ACK, "ACK"),
            (flags::ACK, "ACK"),
            (flags::ACK | flags::PSH, "data"),
            (flags::FIN | flags::ACK, "FIN"),
            (flags::RST, "RST"),
            (flags::SYN | flags::ACK, "SYN-ACK"),
        ]);
        (Frame::tcp(src, sport, dst, dport, bits), what)
    };
    let group = r.chance(5);
    if group {
        frame = frame.with_dst_mac([0x01, 0x00, 0x5e, 0, 0, 1]);
    }
    Case {
        class,
        frame: frame.build(),
        desc: format!(
            "flow {src}:{sport} -> {dst}:{dport} {what}{}",
            if group { " to a group address" } else { "" }
        ),
    }
}

/// The router on the compilers' return path that sends ICMP errors.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// See [`ROUTER4`].
pub fn router6() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)
}

/// An ICMP message from a router about a reply `vip:port -> agent:aport`
/// (what a compiler sends in DSR): mostly an error voxlb steers, with a
/// quote of any length; now and then another type, another destination, a
/// quote of another source or of a later fragment.
fn icmp_about(r: &mut Rng, vip: IpAddr, port: u16, proto: u8, agent: IpAddr, aport: u16) -> Frame {
    let v6 = vip.is_ipv6();
    let mut reply = if proto == PROTO_UDP {
        Frame::udp(vip, port, agent, aport)
    } else {
        Frame::tcp(vip, port, agent, aport, flags::ACK | flags::PSH)
    };
    let n = r.below(64);
    reply = reply.with_payload(&r.bytes(n));
    if r.chance(4) {
        // A reply some other host sent: not ours to steer.
        reply.src = if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x200))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 200))
        };
    }
    if !v6 && r.chance(4) {
        reply.frag = r.pick(&[0x2000u16, 0x2005, 0x0010]);
    }
    let full = if v6 { 48 } else { 28 };
    let len = match r.below(10) {
        0 | 1 => r.below(full + 8),
        2 => full,
        _ => 1500,
    };
    let quote = reply.quote(len);
    let (ty, code, rest) = if v6 {
        match r.below(10) {
            0..=4 => (2, 0, r.pick(&[1280u32, 1400, 1480])),
            5 | 6 => (1, r.below(7) as u8, 0),
            7 => (3, 0, 0),
            8 => (4, r.below(3) as u8, r.below(48) as u32),
            _ => (r.pick(&[128u8, 129, 135, 136]), 0, 0),
        }
    } else {
        match r.below(10) {
            0..=4 => (3, 4, r.pick(&[1280u32, 1400, 1480, 576])),
            5 | 6 => (3, r.below(16) as u8, 0),
            7 => (11, r.below(2) as u8, 0),
            8 => (12, 0, r.below(20) as u32 * 0x0100_0000),
            _ => (r.pick(&[0u8, 8, 5]), 0, 0),
        }
    };
    let from = if r.chance(3) {
        vip
    } else if v6 {
        router6().into()
    } else {
        ROUTER4.into()
    };
    let to = if r.chance(8) {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        }
    } else {
        vip
    };
    Frame::icmp_msg(from, to, ty, code, rest, &quote)
}

/// A fragment of one of a few datagrams from a few agents: the first (with
/// the L4 header) or a later one (offset in 8-byte units, no L4 header).
fn fragment_of(
    r: &mut Rng,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
    id: u32,
) -> (Frame, &'static str) {
    let n = 8 * r.range(1, 8);
    let first = r.chance(50);
    let mut f = if !first {
        Frame {
            l4: L4::Other(proto),
            ..Frame::udp(src, sport, dst, dport)
        }
    } else if proto == PROTO_UDP {
        Frame::udp(src, sport, dst, dport)
    } else {
        Frame::tcp(src, sport, dst, dport, r.pick(&[flags::SYN, flags::ACK]))
    };
    f = f.with_payload(&r.bytes(n)).with_ip_id(id);
    f.frag = if first {
        0x2000
    } else {
        r.pick(&[0x2000u16, 0]) | r.range(1, 200) as u16
    };
    if dst.is_ipv6() {
        f = f.with_ext(44, 8);
    }
    (
        f,
        if first {
            "first fragment"
        } else {
            "later fragment"
        },
    )
}

/// A client address; now and then a VIP address instead (a land attack or
/// a spoofed source, which the data plane must drop, never forward).
fn client4(r: &mut Rng) -> IpAddr {
    if r.chance(2) {
        return IpAddr::V4(r.pick(&[VIP4, VIP4_CA]));
    }
    IpAddr::V4(Ipv4Addr::from(r.next_u64() as u32))
}
fn client6(r: &mut Rng) -> IpAddr {
    if r.chance(2) {
        return IpAddr::V6(vip6());
    }
    let lo = r.next_u64() as u128;
    IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | lo))
}

fn tcp_flags(r: &mut Rng) -> u8 {
    match r.below(10) {
        0..=3 => flags::SYN,
        4..=6 => flags::ACK,
        7 => flags::ACK | flags::PSH,
        _ => r.byte(),
    }
}

/// A valid frame of `class` (before mutation).
fn base(r: &mut Rng, class: Class) -> Result<Frame, Vec<u8>> {
    let sport = r.below(65536) as u16;
    let tcp = |src: IpAddr, dst: IpAddr, port: u16, r: &mut Rng| {
        let len = if r.chance(80) { r.below(48) } else { 0 };
        Frame::tcp(src, sport, dst, port, tcp_flags(r)).with_payload(&r.bytes(len))
    };
    Ok(match class {
        // (Sweep cases are cut from fixed frames and never come here.)
        Class::CompilerV4 | Class::Sweep => tcp(client4(r), VIP4.into(), PORT, r),
        Class::CompilerV6 => tcp(client6(r), vip6().into(), PORT, r),
        Class::CaV4 => tcp(client4(r), VIP4_CA.into(), PORT, r),
        Class::CaV6 => tcp(client6(r), vip6_ca().into(), PORT, r),
        Class::EmptyPool => tcp(client4(r), VIP4_EMPTY.into(), PORT, r),
        Class::NoCa => tcp(client4(r), VIP4_CA_NONE.into(), PORT, r),
        Class::Uninstalled => tcp(client4(r), VIP4_UNINSTALLED.into(), PORT, r),
        Class::UdpV4 => {
            let len = r.below(64);
            Frame::udp(client4(r), sport, VIP4_UDP.into(), UDP_PORT).with_payload(&r.bytes(len))
        }
        Class::NonVipV4 => {
            let src = client4(r);
            match r.below(4) {
                // The LB host's own traffic, e.g. SSH.
                0 => tcp(src, Ipv4Addr::new(10, 0, 0, 1).into(), 22, r),
                // A VIP address, another port.
                1 => tcp(src, VIP4.into(), r.pick(&[22, 443, 8141, 0]), r),
                // A VIP address and port, the other protocol.
                2 => Frame::udp(src, sport, VIP4.into(), PORT),
                _ => tcp(src, client4(r), r.below(65536) as u16, r),
            }
        }
        Class::NonVipV6 => {
            let src = client6(r);
            match r.below(3) {
                0 => tcp(src, vip6().into(), r.pick(&[22, 8141]), r),
                1 => Frame::udp(src, sport, vip6_ca().into(), PORT),
                _ => tcp(src, client6(r), 8140, r),
            }
        }
        Class::IcmpV4 | Class::IcmpV6 => {
            let v6 = class == Class::IcmpV6;
            let (vip, port, proto): (IpAddr, u16, u8) = if v6 {
                r.pick(&[
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6_ca().into(), PORT, PROTO_TCP),
                    (vip6().into(), 22, PROTO_TCP),
                    (vip6().into(), PORT, PROTO_UDP),
                ])
            } else {
                r.pick(&[
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4_CA.into(), PORT, PROTO_TCP),
                    (VIP4_UDP.into(), UDP_PORT, PROTO_UDP),
                    (VIP4_EMPTY.into(), PORT, PROTO_TCP),
                    (VIP4_UNINSTALLED.into(), PORT, PROTO_TCP),
                    (VIP4_CA_NONE.into(), PORT, PROTO_TCP),
                    (VIP4.into(), 22, PROTO_TCP),
                ])
            };
            let agent = if v6 { client6(r) } else { client4(r) };
            icmp_about(r, vip, port, proto, agent, sport)
        }
        Class::FragV4 | Class::FragV6 => {
            let v6 = class == Class::FragV6;
            let (dst, port, proto): (IpAddr, u16, u8) = if v6 {
                r.pick(&[
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6_ca().into(), PORT, PROTO_TCP),
                    (
                        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
                        22,
                        PROTO_TCP,
                    ),
                ])
            } else {
                r.pick(&[
                    (VIP4_UDP.into(), UDP_PORT, PROTO_UDP),
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4_CA.into(), PORT, PROTO_TCP),
                    (VIP4_EMPTY.into(), PORT, PROTO_TCP),
                    (Ipv4Addr::new(10, 0, 0, 1).into(), 22, PROTO_TCP),
                ])
            };
            // A few agents and IDs, so later fragments meet their first.
            let n = r.below(4) as u16 + 1;
            let src: IpAddr = if v6 {
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, n).into()
            } else {
                Ipv4Addr::new(192, 0, 2, 100 + n as u8).into()
            };
            let id = r.pick(&[1u32, 2, 0xfffe, 0x8001_0000]);
            fragment_of(r, src, 40000 + n, dst, port, proto, id).0
        }
        Class::NonIp => {
            return Err(if r.chance(40) {
                arp_request()
            } else {
                let mut f = LB_MAC.to_vec();
                f.extend_from_slice(&CLIENT_MAC);
                let t: u16 = r.pick(&[0x0806, 0x88cc, 0x8847, 0x0842, 0x9100, 0x86dc, 0x0801]);
                let t = if r.chance(20) { r.next_u64() as u16 } else { t };
                f.extend_from_slice(&t.to_be_bytes());
                let n = r.range(28, 100);
                f.extend_from_slice(&r.bytes(n));
                f
            });
        }
    })
}

/// Mutations of the frame description (applied before it is built).
#[derive(Clone, Copy, Debug)]
enum SpecOp {
    IpOptions,
    Fragment,
    ExtChain,
    TcpFlags,
    TcpOptions,
    DstMac,
    L4Kind,
    BigPayload,
}

/// Mutations of the built bytes, at offsets the frame's structure gives.
#[derive(Clone, Copy, Debug)]
enum ByteOp {
    Vlans,
    Ethertype,
    Version,
    Ihl,
    IpLength,
    ExtField,
    DataOffset,
    BitFlip,
    ByteSet,
    Pad,
    Splice,
    Truncate,
}

enum Op {
    Spec(SpecOp),
    Byte(ByteOp),
}

const OPS: [Op; 20] = [
    Op::Spec(SpecOp::IpOptions),
    Op::Spec(SpecOp::Fragment),
    Op::Spec(SpecOp::ExtChain),
    Op::Spec(SpecOp::TcpFlags),
    Op::Spec(SpecOp::TcpOptions),
    Op::Spec(SpecOp::DstMac),
    Op::Spec(SpecOp::L4Kind),
    Op::Spec(SpecOp::BigPayload),
    Op::Byte(ByteOp::Vlans),
    Op::Byte(ByteOp::Ethertype),
    Op::Byte(ByteOp::Version),
    Op::Byte(ByteOp::Ihl),
    Op::Byte(ByteOp::IpLength),
    Op::Byte(ByteOp::ExtField),
    Op::Byte(ByteOp::DataOffset),
    Op::Byte(ByteOp::BitFlip),
    Op::Byte(ByteOp::ByteSet),
    Op::Byte(ByteOp::Pad),
    Op::Byte(ByteOp::Splice),
    Op::Byte(ByteOp::Truncate),
];

fn apply_spec(r: &mut Rng, f: &mut Frame, op: SpecOp, log: &mut String) {
    let v6 = f.dst.is_ipv6();
    match op {
        SpecOp::IpOptions if !v6 => {
            let n = r.pick(&[1, 4, 8, 12, 39, 40]);
            f.ip_options = r.bytes(n);
            let _ = write!(log, " ip-options({n})");
        }
        SpecOp::Fragment if !v6 => {
            f.frag = match r.below(6) {
                0 => 0x2000,                        // MF: first fragment
                1 => r.range(1, 0x1fff) as u16,     // later fragment
                2 => 0x2000 | r.range(1, 8) as u16, // middle fragment
                3 => 0x8000,                        // reserved bit only
                4 => 0,                             // DF cleared
                _ => r.next_u64() as u16,
            };
            let _ = write!(log, " frag({:#06x})", f.frag);
        }
        SpecOp::Fragment | SpecOp::ExtChain | SpecOp::IpOptions => {
            // IPv6 (or IPv4 asked for an IPv6 mutation): an extension chain.
            if !v6 {
                return;
            }
            let n = r.range(1, 6);
            if r.chance(30) {
                // Fragment headers' offset, M flag and ID.
                f.frag = match r.below(4) {
                    0 => 0x2000,
                    1 => r.range(1, 0x1fff) as u16,
                    2 => 0x2000 | r.range(1, 8) as u16,
                    _ => r.next_u64() as u16,
                };
                f.ip_id = r.next_u64() as u32;
            }
            for _ in 0..n {
                let kind = r.pick(&[0u8, 43, 60, 51, 44, 60, 0]);
                let len = match kind {
                    44 => 8,
                    51 => 4 * r.range(2, 16),
                    _ => 8 * r.range(1, 8),
                };
                f.ext.push(lb_ext(kind, len));
            }
            let kinds: Vec<String> = f
                .ext
                .iter()
                .map(|e| format!("{}/{}", e.kind, e.len))
                .collect();
            let _ = write!(log, " ext[{}]", kinds.join(","));
        }
        SpecOp::TcpFlags => {
            if let L4::Tcp { flags, .. } = &mut f.l4 {
                *flags = r.byte();
                let _ = write!(log, " flags({:#04x})", *flags);
            }
        }
        SpecOp::TcpOptions => {
            if let L4::Tcp { options, .. } = &mut f.l4 {
                let n = r.range(1, 40);
                *options = r.bytes(n);
                let _ = write!(log, " tcp-options({n})");
            }
        }
        SpecOp::DstMac => {
            f.dst_mac = match r.below(3) {
                0 => [0xff; 6],
                1 => [0x01, 0x00, 0x5e, 0, 0, r.byte()],
                _ => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(&r.bytes(6));
                    m
                }
            };
            let _ = write!(log, " dst-mac({:02x?})", f.dst_mac);
        }
        SpecOp::L4Kind => {
            let (sport, dport) = match f.l4 {
                L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
                _ => (1, 1),
            };
            f.l4 = match r.below(4) {
                0 => L4::Udp { sport, dport },
                1 => L4::Tcp {
                    sport,
                    dport,
                    flags: flags::SYN,
                    options: Vec::new(),
                },
                2 => L4::Icmp,
                _ => L4::Other(r.pick(&[0, 1, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255])),
            };
            let _ = write!(log, " l4({:?})", f.l4);
        }
        SpecOp::BigPayload => {
            let n = r.range(200, 1400);
            f.payload = r.bytes(n);
            let _ = write!(log, " payload({n})");
        }
    }
}

fn lb_ext(kind: u8, len: usize) -> crate::packet::Ext {
    crate::packet::Ext { kind, len }
}

/// Where the headers of a (still valid) built frame are.
struct Layout {
    ethertype_at: usize,
    l3: Option<usize>,
    v6: bool,
    /// Offsets of IPv6 extension headers.
    ext: Vec<usize>,
    l4: Option<usize>,
}

fn layout(f: &[u8], spec: Option<&Frame>) -> Layout {
    let l3 = l3_offset(f);
    let mut lay = Layout {
        ethertype_at: l3 - 2,
        l3: None,
        v6: false,
        ext: Vec::new(),
        l4: None,
    };
    let Some(spec) = spec else {
        return lay;
    };
    lay.l3 = Some(l3);
    match spec.dst {
        IpAddr::V4(_) => {
            lay.l4 = Some(l3 + usize::from(f[l3] & 0x0f) * 4);
        }
        IpAddr::V6(_) => {
            lay.v6 = true;
            let mut off = l3 + 40;
            for e in &spec.ext {
                lay.ext.push(off);
                off += e.len;
            }
            lay.l4 = Some(off);
        }
    }
    lay
}

fn set_u16(f: &mut [u8], at: usize, v: u16) -> bool {
    if at + 2 > f.len() {
        return false;
    }
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    true
}

fn apply_byte(r: &mut Rng, f: &mut Vec<u8>, lay: &Layout, op: ByteOp, log: &mut String) {
    let len = f.len();
    match op {
        ByteOp::Vlans => {
            let n = r.range(1, 3);
            let mut tags = Vec::new();
            for _ in 0..n {
                let tpid: u16 = r.pick(&[0x8100, 0x88a8, 0x8100, 0x9100]);
                tags.extend_from_slice(&tpid.to_be_bytes());
                tags.extend_from_slice(&(r.below(4096) as u16).to_be_bytes());
            }
            // Tags go between the source MAC and the ethertype.
            f.splice(12..12, tags);
            let _ = write!(log, " vlans({n})");
        }
        ByteOp::Ethertype => {
            let at = if r.chance(50) { 12 } else { lay.ethertype_at };
            let t: u16 = r.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x9100]);
            let t = if r.chance(15) { r.next_u64() as u16 } else { t };
            if set_u16(f, at, t) {
                let _ = write!(log, " ethertype@{at}={t:#06x}");
            }
        }
        ByteOp::Version => {
            if let Some(l3) = lay.l3.filter(|o| *o < len) {
                let v = r.pick(&[4u8, 6, 0, 5, 15]);
                f[l3] = (v << 4) | (f[l3] & 0x0f);
                let _ = write!(log, " version={v}");
            }
        }
        ByteOp::Ihl => {
            if let Some(l3) = lay.l3.filter(|o| *o < len && !lay.v6) {
                let ihl = r.below(16) as u8;
                f[l3] = (f[l3] & 0xf0) | ihl;
                let _ = write!(log, " ihl={ihl}");
            }
        }
        ByteOp::IpLength => {
            let Some(l3) = lay.l3 else { return };
            let at = if lay.v6 { l3 + 4 } else { l3 + 2 };
            if at + 2 > len {
                return;
            }
            let cur = be16(f, at) as i64;
            let v = match r.below(7) {
                0 => 0,
                1 => 0xffff,
                2 => r.pick(&[19, 20, 21, 39, 40, 41]),
                3 => cur + r.range(1, 8) as i64,
                4 => cur - r.range(1, 8) as i64,
                5 => (len - l3) as i64 + r.range(0, 3) as i64 - 1,
                _ => r.below(0x10000) as i64,
            };
            let v = v.clamp(0, 0xffff) as u16;
            set_u16(f, at, v);
            let _ = write!(log, " ip-length={v}");
        }
        ByteOp::ExtField => {
            if lay.ext.is_empty() {
                return;
            }
            let at = lay.ext[r.below(lay.ext.len())];
            if r.chance(50) {
                if at < len {
                    let any = r.byte();
                    f[at] = r.pick(&[0u8, 6, 17, 43, 44, 51, 59, 60, 58, any]);
                    let _ = write!(log, " ext-next@{at}={}", f[at]);
                }
            } else if at + 1 < len {
                let any = r.byte();
                f[at + 1] = r.pick(&[0u8, 1, 2, 0xff, any]);
                let _ = write!(log, " ext-len@{at}={}", f[at + 1]);
            }
        }
        ByteOp::DataOffset => {
            if let Some(at) = lay.l4.map(|o| o + 12).filter(|o| *o < len) {
                let d = r.below(16) as u8;
                f[at] = (d << 4) | (f[at] & 0x0f);
                let _ = write!(log, " doff={d}");
            }
        }
        ByteOp::BitFlip => {
            let at = r.below(len.min(128));
            let bit = r.below(8);
            f[at] ^= 1 << bit;
            let _ = write!(log, " flip@{at}.{bit}");
        }
        ByteOp::ByteSet => {
            let at = r.below(len.min(128));
            let any = r.byte();
            f[at] = r.pick(&[0u8, 0xff, 0x80, any]);
            let _ = write!(log, " set@{at}={:#04x}", f[at]);
        }
        ByteOp::Pad => {
            let n = r.range(1, 64);
            f.extend(std::iter::repeat_n(0u8, n));
            let _ = write!(log, " pad({n})");
        }
        ByteOp::Splice => {
            let at = r.range(12, len.min(120));
            if r.chance(50) {
                // Never below the 14 bytes the kernel insists on.
                let n = r.range(1, 8).min(len - at).min(len - 14);
                f.drain(at..at + n);
                let _ = write!(log, " delete@{at}({n})");
            } else {
                let n = r.range(1, 8);
                f.splice(at..at, r.bytes(n));
                let _ = write!(log, " insert@{at}({n})");
            }
        }
        ByteOp::Truncate => {
            // Mostly inside the headers, where the parser lives.
            let hi = if r.chance(80) { len.min(140) } else { len };
            if hi > 14 {
                let cut = r.range(14, hi - 1);
                f.truncate(cut);
                let _ = write!(log, " truncate({cut})");
            }
        }
    }
}

/// Frames truncated at every byte in the sweep: one rich frame per path.
fn sweep_bases() -> Vec<(Vec<u8>, &'static str)> {
    let c4: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
    let c6: IpAddr = "2001:db8::10".parse().expect("address");
    let syn = |src: IpAddr, dst: IpAddr| Frame::tcp(src, 40000, dst, PORT, flags::SYN);
    vec![
        (syn(c4, VIP4.into()).build(), "IPv4 SYN"),
        (syn(c6, vip6().into()).build(), "IPv6 SYN"),
        (
            syn(c4, VIP4.into())
                .with_ip_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
                .with_vlan(0x88a8, 7)
                .with_vlan(0x8100, 42)
                .build(),
            "IPv4 SYN, QinQ, IP options",
        ),
        (
            syn(c6, vip6().into())
                .with_vlan(0x8100, 9)
                .with_ext(0, 8)
                .with_ext(60, 16)
                .with_ext(51, 24)
                .build(),
            "IPv6 SYN, VLAN, hop-by-hop + dst options + AH",
        ),
        (
            Frame::tcp(c4, 40001, VIP4_CA.into(), PORT, flags::ACK | flags::PSH)
                .with_payload(b"GET /puppet-ca/v1/certificate/ca")
                .build(),
            "IPv4 CA data segment",
        ),
        (syn(c6, vip6_ca().into()).build(), "IPv6 CA SYN"),
        (
            Frame::udp(c4, 40002, VIP4_UDP.into(), UDP_PORT)
                .with_payload(b"q")
                .build(),
            "UDP datagram",
        ),
        (
            Frame {
                l4: L4::Tcp {
                    sport: 40003,
                    dport: PORT,
                    flags: flags::SYN,
                    options: vec![2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
                },
                ..syn(c4, VIP4.into())
            }
            .build(),
            "IPv4 SYN with TCP options",
        ),
        (
            Frame::tcp(c4, 40004, Ipv4Addr::new(10, 0, 0, 1).into(), 22, flags::ACK).build(),
            "IPv4 non-VIP",
        ),
        (
            syn(c6, vip6().into())
                .with_ext(0, 8)
                .with_ext(44, 8)
                .build(),
            "IPv6 fragment header",
        ),
        (arp_request(), "ARP"),
        (
            Frame::icmp_msg(
                ROUTER4.into(),
                VIP4.into(),
                3,
                4,
                1400,
                &Frame::tcp(VIP4.into(), PORT, c4, 40005, flags::ACK)
                    .with_payload(&[0x5a; 24])
                    .quote(1500),
            )
            .build(),
            "ICMP fragmentation needed about a VIP reply",
        ),
        (
            Frame::icmp_msg(
                router6().into(),
                vip6().into(),
                2,
                0,
                1280,
                &Frame::tcp(vip6().into(), PORT, c6, 40006, flags::ACK)
                    .with_payload(&[0x5a; 16])
                    .quote(1500),
            )
            .build(),
            "ICMPv6 packet too big about a VIP reply",
        ),
        (
            Frame::udp(c4, 40007, VIP4_UDP.into(), UDP_PORT)
                .with_payload(&[0x11; 32])
                .with_frag(0x2000)
                .with_ip_id(77)
                .build(),
            "IPv4 first fragment",
        ),
        (
            syn(c6, vip6().into())
                .with_ext(44, 8)
                .with_frag(0x2000)
                .with_ip_id(78)
                .build(),
            "IPv6 first fragment",
        ),
    ]
}

/// Generates the cases of a run: first the truncation sweep (every base
/// frame cut at every length, raw and with the IP length fields made to
/// agree with the cut), then random mutated cases.
pub struct Generator {
    seed: u64,
    sweep: Vec<(Vec<u8>, &'static str)>,
    /// Cases in the sweep.
    sweep_len: u64,
}

/// Rewrite a cut frame's IP length fields to match its length, so the cut
/// lands in the L4 parser instead of always being an L3 truncation.
fn fix_lengths(f: &mut [u8]) {
    let l3 = l3_offset(f);
    if l3 < 2 || l3 > f.len() {
        return;
    }
    let ethertype = be16(f, l3 - 2);
    if ethertype == 0x0800 {
        let n = f.len() - l3;
        set_u16(f, l3 + 2, n as u16);
    } else if ethertype == 0x86dd {
        let n = f.len().saturating_sub(l3 + 40);
        set_u16(f, l3 + 4, n as u16);
    }
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let sweep = sweep_bases();
        let sweep_len = sweep.iter().map(|(f, _)| 2 * (f.len() - 13) as u64).sum();
        Generator {
            seed,
            sweep,
            sweep_len,
        }
    }

    /// Number of sweep cases at the start of a run.
    pub fn sweep_len(&self) -> u64 {
        self.sweep_len
    }

    /// Case number `index` of the run.
    pub fn case(&self, index: u64) -> Case {
        if index < self.sweep_len {
            return self.sweep_case(index);
        }
        let mut r = Rng::for_case(self.seed, index);
        let total: usize = CLASSES.iter().map(|(_, w)| w).sum();
        let mut pick = r.below(total);
        let class = CLASSES
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(c, _)| *c)
            .expect("weights cover the range");
        let mut desc = format!("{class:?}:");
        let base = base(&mut r, class);
        let n = r.range(1, 3);
        let mut spec_ops = Vec::new();
        let mut byte_ops = Vec::new();
        for _ in 0..n {
            match OPS[r.below(OPS.len())] {
                Op::Spec(s) => spec_ops.push(s),
                Op::Byte(b) => byte_ops.push(b),
            }
        }
        let (mut frame, spec) = match base {
            Ok(mut spec) => {
                for op in spec_ops {
                    apply_spec(&mut r, &mut spec, op, &mut desc);
                }
                (spec.build(), Some(spec))
            }
            Err(raw) => (raw, None),
        };
        let lay = layout(&frame, spec.as_ref());
        // Field edits first, then edits that move bytes, truncation last.
        byte_ops.sort_by_key(|op| match op {
            ByteOp::Truncate => 2,
            ByteOp::Vlans | ByteOp::Splice | ByteOp::Pad => 1,
            _ => 0,
        });
        for op in byte_ops {
            apply_byte(&mut r, &mut frame, &lay, op, &mut desc);
        }
        Case { class, frame, desc }
    }

    fn sweep_case(&self, mut index: u64) -> Case {
        for (base, name) in &self.sweep {
            let n = 2 * (base.len() - 13) as u64;
            if index >= n {
                index -= n;
                continue;
            }
            let cut = 14 + (index / 2) as usize;
            let mut frame = base[..cut].to_vec();
            let fixed = index % 2 == 1;
            if fixed {
                fix_lengths(&mut frame);
            }
            return Case {
                class: Class::Sweep,
                frame,
                desc: format!(
                    "sweep: {name} cut at {cut}{}",
                    if fixed { ", IP length fixed" } else { "" }
                ),
            };
        }
        unreachable!("sweep index in range")
    }
}

// --------------------------------------------------------- regression file

/// A saved failing input: the verdict and reason it must get, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    pub reason: Reason,
    pub frame: Vec<u8>,
    pub desc: String,
}

impl Regression {
    /// One line of `tests/fuzz_regressions.txt`:
    /// `<action> <reason> <hex> # <description>`.
    pub fn to_line(&self) -> String {
        let hex: String = self.frame.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{} {} {hex} # {}",
            action_name(action_of(self.reason)),
            self.reason.label(),
            self.desc.replace('\n', " ")
        )
    }

    /// Parse a line; `Ok(None)` for blank and comment lines.
    pub fn parse(line: &str) -> Result<Option<Regression>, String> {
        let (data, desc) = match line.split_once('#') {
            Some((d, c)) => (d, c.trim()),
            None => (line, ""),
        };
        let words: Vec<&str> = data.split_whitespace().collect();
        if words.is_empty() {
            return Ok(None);
        }
        let [action, reason, hex] = words[..] else {
            return Err(format!(
                "want `<action> <reason> <hex>`, got {} fields",
                words.len()
            ));
        };
        let reason = Reason::ALL
            .iter()
            .copied()
            .find(|r| r.label() == reason)
            .ok_or_else(|| format!("unknown reason {reason:?}"))?;
        if action_name(action_of(reason)) != action {
            return Err(format!(
                "action {action:?} does not match reason {}",
                reason.label()
            ));
        }
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        let frame = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        Ok(Some(Regression {
            reason,
            frame,
            desc: desc.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c4() -> IpAddr {
        Ipv4Addr::new(192, 0, 2, 10).into()
    }

    #[test]
    fn model_forwards_a_syn_to_the_table_backend() {
        let w = World::standard();
        let f = Frame::tcp(c4(), 40000, VIP4.into(), PORT, flags::SYN).build();
        let e = w.expect(&f);
        assert_eq!(e.reason, Reason::TxCompiler);
        let b = e.backend.unwrap();
        assert!(b < 3);
        let ca = Frame::tcp(c4(), 40000, VIP4_CA.into(), PORT, flags::ACK).build();
        assert_eq!(w.expect(&ca).backend, Some(30));
        let ca6 = Frame::tcp("2001:db8::1".parse().unwrap(), 1, vip6_ca().into(), PORT, 0);
        assert_eq!(w.expect(&ca6.build()).backend, Some(32));
    }

    #[test]
    fn model_classifies_the_failure_paths() {
        let w = World::standard();
        let syn = Frame::tcp(c4(), 40000, VIP4.into(), PORT, flags::SYN);
        let mut f = syn.build();
        f.truncate(30);
        assert_eq!(w.expect(&f).reason, Reason::DropTruncatedL3);
        // A later fragment whose first was not seen; then its first, which
        // is balanced and recorded, and the later one follows it.
        let later = syn.clone().with_frag(0x0010).build();
        assert_eq!(w.expect(&later).reason, Reason::PassFragment);
        let first = w.expect(&syn.clone().with_frag(0x2000).build());
        assert_eq!(first.reason, Reason::TxCompiler);
        assert_eq!(w.expect(&later).backend, first.backend);
        assert_eq!(w.fragments_tracked(), 1);
        // ICMP errors about a VIP's reply: steered to the flow's backend;
        // cut short: malformed; about another host's reply: unmatched.
        let reply = Frame::tcp(VIP4.into(), PORT, c4(), 40000, flags::ACK);
        let icmp = |q: Vec<u8>| Frame::icmp_msg(ROUTER4.into(), VIP4.into(), 3, 4, 1400, &q);
        assert_eq!(
            w.expect(&icmp(reply.quote(28)).build()).backend,
            w.expect(&syn.build()).backend
        );
        assert_eq!(
            w.expect(&icmp(reply.quote(27)).build()).reason,
            Reason::PassIcmpMalformed
        );
        let stranger = Frame::tcp(c4(), PORT, c4(), 40000, flags::ACK);
        assert_eq!(
            w.expect(&icmp(stranger.quote(28)).build()).reason,
            Reason::PassIcmpUnmatched
        );
        let f = syn.clone().with_dst_mac([0xff; 6]).build();
        assert_eq!(w.expect(&f).reason, Reason::PassNotUnicast);
        let f = Frame::tcp(c4(), 1, VIP4_EMPTY.into(), PORT, flags::SYN)
            .with_dst_mac([0xff; 6])
            .build();
        assert_eq!(w.expect(&f).reason, Reason::DropNoBackend);
        let f = Frame::tcp(c4(), 1, VIP4_CA_NONE.into(), PORT, 0).build();
        assert_eq!(w.expect(&f).reason, Reason::DropNoCa);
        let v6 = |n: usize| {
            (0..n)
                .fold(
                    Frame::tcp("2001:db8::1".parse().unwrap(), 1, vip6().into(), PORT, 2),
                    |f, _| f.with_ext(60, 8),
                )
                .build()
        };
        assert_eq!(w.expect(&v6(4)).reason, Reason::TxCompiler);
        assert_eq!(w.expect(&v6(5)).reason, Reason::PassIpv6ExtLimit);
        assert_eq!(w.expect(&arp_request()).reason, Reason::PassNotIp);
    }

    #[test]
    fn generator_is_deterministic_and_covers_every_class() {
        let g = Generator::new(7);
        let n = g.sweep_len() + 5000;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..n {
            let c = g.case(i);
            assert!(c.frame.len() >= 14, "case {i}: {}", c.desc);
            assert_eq!(c.frame, g.case(i).frame);
            seen.insert(format!("{:?}", c.class));
        }
        assert_eq!(seen.len(), Class::all().count() + 1, "{seen:?}");
        assert_ne!(
            Generator::new(8).case(g.sweep_len() + 1).frame,
            g.case(g.sweep_len() + 1).frame
        );
    }

    #[test]
    fn model_reaches_every_reason() {
        let w = World::standard();
        let g = Generator::new(1);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..g.sweep_len() + 50_000 {
            seen.insert(w.expect(&g.case(i).frame).reason as u32);
        }
        let routed_only = ROUTED_ONLY;
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| {
                !seen.contains(&(**r as u32))
                    && **r != Reason::DropInternal
                    && !routed_only.contains(r)
            })
            .map(|r| r.label())
            .collect();
        assert!(missing.is_empty(), "never produced: {missing:?}");
    }

    #[test]
    fn counter_check_wants_exactly_the_model_reason_once() {
        let exp = Expected::of(Reason::PassNotVip);
        let mut d = vec![0u64; Reason::ALL.len()];
        assert_eq!(check_counters(&exp, XDP_PASS, &d)[0].kind, "counters");
        d[Reason::PassNotVip as usize] = 1;
        assert!(check_counters(&exp, XDP_PASS, &d).is_empty());
        assert_eq!(check_counters(&exp, XDP_DROP, &d)[0].kind, "reason");
        d[Reason::DropBadL3 as usize] = 1;
        assert_eq!(check_counters(&exp, XDP_PASS, &d)[0].kind, "counters");
        d[Reason::PassNotVip as usize] = 0;
        assert_eq!(check_counters(&exp, XDP_DROP, &d)[0].kind, "reason");
    }

    #[test]
    fn regression_lines_round_trip() {
        let r = Regression {
            reason: Reason::DropBadL3,
            frame: vec![0, 1, 0xab, 0xff],
            desc: "x".into(),
        };
        let line = r.to_line();
        assert_eq!(line, "drop drop_bad_l3 0001abff # x");
        assert_eq!(Regression::parse(&line).unwrap(), Some(r));
        assert_eq!(Regression::parse("  # comment").unwrap(), None);
        assert!(Regression::parse("tx drop_bad_l3 00").is_err());
        assert!(Regression::parse("drop nonsense 00").is_err());
        assert!(Regression::parse("drop drop_bad_l3 0").is_err());
    }
}
