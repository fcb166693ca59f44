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
//!   (compiler, CA and UDP VIPs over IPv4/IPv6, non-VIP traffic, non-IP)
//!   with 1–3 structure-aware mutations, plus a sweep that truncates rich
//!   frames at every byte.
//!
//! [`World::check`] compares a BPF_PROG_TEST_RUN result with the model and
//! with the model-independent rules of the data plane (a frame not forwarded
//! is untouched; a forwarded one differs only in its MACs, goes to a backend
//! of the VIP's own service, and a CA VIP's only to a CA).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_RETIRING, BackendInfo, FAMILY_V4, FAMILY_V6, FlowKey,
    KIND_CA, KIND_COMPILER, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason, VipInfo, VipKey, addr_bytes,
    hash::flow_hash,
    maglev::{self, Entry},
    reason::Verdict,
};

use crate::{
    dataplane::{DataPlane, DataPlaneError},
    packet::{CLIENT_MAC, Frame, L4, LB_MAC, arp_request, flags, l3_offset},
    xdp::{RunOutput, XdpDataPlane},
};

/// XDP action codes as BPF_PROG_TEST_RUN returns them.
pub const XDP_DROP: u32 = 1;
/// See [`XDP_DROP`].
pub const XDP_PASS: u32 = 2;
/// See [`XDP_DROP`].
pub const XDP_TX: u32 = 3;

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

/// The fixed map contents the fuzzer runs against.
#[derive(Clone, Debug)]
pub struct World {
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub backends: BTreeMap<u32, BackendInfo>,
    /// Active Maglev table per compiler service (absent: never installed).
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// CA target per CA service.
    pub ca_targets: BTreeMap<u32, u32>,
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
        };
        let vip = |a: IpAddr, port, proto| VipKey::new(a, port, proto);
        for (k, service_id, kind) in [
            (vip(VIP4.into(), PORT, PROTO_TCP), S_V4, KIND_COMPILER),
            (vip(vip6().into(), PORT, PROTO_TCP), S_V6, KIND_COMPILER),
            (vip(VIP4_CA.into(), PORT, PROTO_TCP), S_CA, KIND_CA),
            (
                vip(VIP4_EMPTY.into(), PORT, PROTO_TCP),
                S_EMPTY,
                KIND_COMPILER,
            ),
            (
                vip(VIP4_UDP.into(), UDP_PORT, PROTO_UDP),
                S_UDP,
                KIND_COMPILER,
            ),
            (vip(vip6_ca().into(), PORT, PROTO_TCP), S_CA6, KIND_CA),
            (
                vip(VIP4_CA_NONE.into(), PORT, PROTO_TCP),
                S_CA_NONE,
                KIND_CA,
            ),
            (
                vip(VIP4_UNINSTALLED.into(), PORT, PROTO_TCP),
                S_UNINSTALLED,
                KIND_COMPILER,
            ),
        ] {
            w.vips.insert(k, VipInfo { service_id, kind });
        }
        for (service, ids, v6) in [
            (S_V4, [0u32, 1, 2], false),
            (S_V6, [10, 11, 12], true),
            (S_UDP, [20, 21, 22], false),
        ] {
            let mut entries = Vec::new();
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
                entries.push(Entry::from_addr(backend_addr(id, v6), 1, id));
            }
            let table = maglev::build(&entries, TABLE).expect("fixture table");
            w.tables.insert(service, table);
        }
        w.tables.insert(S_EMPTY, vec![NO_BACKEND; TABLE as usize]);
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
    pub fn load(&self, flow_capacity: u32) -> Result<XdpDataPlane, DataPlaneError> {
        let mut dp = XdpDataPlane::load_private(flow_capacity)?;
        self.program(&mut dp)?;
        Ok(dp)
    }

    fn is_ca_backend(&self, id: u32) -> bool {
        self.backends.get(&id).is_some_and(|b| {
            self.vips
                .values()
                .any(|v| v.service_id == b.service_id && v.kind == KIND_CA)
        })
    }
}

// ---------------------------------------------------------- reference model

/// What the model says must happen to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub reason: Reason,
    /// Backend id a forwarded frame must go to.
    pub backend: Option<u32>,
    /// The VIP the frame is addressed to, if it parses that far and is one.
    pub vip: Option<VipInfo>,
}

impl Expected {
    fn of(reason: Reason) -> Expected {
        Expected {
            reason,
            backend: None,
            vip: None,
        }
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

fn is_vlan(t: usize) -> bool {
    t == 0x8100 || t == 0x88a8
}

/// Ethernet, at most two VLAN tags, then IPv4/IPv6.
fn model_parse(f: &[u8]) -> Result<FlowKey, Reason> {
    if f.len() < 14 {
        return Err(Reason::DropTruncatedL2);
    }
    let mut ethertype = be16(f, 12);
    let mut off = 14;
    for _ in 0..2 {
        if !is_vlan(ethertype) {
            break;
        }
        if f.len() < off + 4 {
            return Err(Reason::DropTruncatedL2);
        }
        ethertype = be16(f, off + 2);
        off += 4;
    }
    match ethertype {
        0x0800 => model_ipv4(&f[off..]),
        0x86dd => model_ipv6(&f[off..]),
        t if is_vlan(t) => Err(Reason::PassVlanDepth),
        _ => Err(Reason::PassNotIp),
    }
}

/// `ip`: from the IPv4 header to the end of the frame.
fn model_ipv4(ip: &[u8]) -> Result<FlowKey, Reason> {
    if ip.len() < 20 {
        return Err(Reason::DropTruncatedL3);
    }
    if ip[0] >> 4 != 4 {
        return Err(Reason::DropBadL3);
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = be16(ip, 2);
    if header < 20 || total < header {
        return Err(Reason::DropBadL3);
    }
    if total > ip.len() {
        return Err(Reason::DropTruncatedL3);
    }
    // MF or a fragment offset; DF and the reserved bit do not matter.
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    let mut key = FlowKey {
        family: FAMILY_V4,
        proto: ip[9],
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&ip[12..16]);
    key.dst[..4].copy_from_slice(&ip[16..20]);
    // Ethernet padding past the IP total length is not payload.
    model_l4(&ip[header..total], key)
}

/// Extension headers walked before handing the packet to the kernel.
const MODEL_EXT_LIMIT: usize = 4;

fn model_ipv6(ip: &[u8]) -> Result<FlowKey, Reason> {
    if ip.len() < 40 {
        return Err(Reason::DropTruncatedL3);
    }
    if ip[0] >> 4 != 6 {
        return Err(Reason::DropBadL3);
    }
    let payload = be16(ip, 4);
    if payload > ip.len() - 40 {
        return Err(Reason::DropTruncatedL3);
    }
    let mut key = FlowKey {
        family: FAMILY_V6,
        ..FlowKey::default()
    };
    key.src.copy_from_slice(&ip[8..24]);
    key.dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut rest = &ip[40..40 + payload];
    let mut walked = 0;
    loop {
        match next {
            // Hop-by-hop, routing, destination options: 8-byte units; AH: 4-byte.
            0 | 43 | 60 | 51 => {
                if walked == MODEL_EXT_LIMIT {
                    return Err(Reason::PassIpv6ExtLimit);
                }
                if rest.len() < 2 {
                    return Err(Reason::DropTruncatedL3);
                }
                let len = if next == 51 {
                    (usize::from(rest[1]) + 2) * 4
                } else {
                    (usize::from(rest[1]) + 1) * 8
                };
                if len > rest.len() {
                    return Err(Reason::DropTruncatedL3);
                }
                next = rest[0];
                rest = &rest[len..];
                walked += 1;
            }
            44 => return Err(Reason::PassFragment),
            59 => return Err(Reason::PassNotL4),
            _ => break,
        }
    }
    key.proto = next;
    model_l4(rest, key)
}

/// `seg`: the L4 header and payload as the IP header delimits them.
fn model_l4(seg: &[u8], mut key: FlowKey) -> Result<FlowKey, Reason> {
    match key.proto {
        PROTO_TCP => {
            if seg.len() < 20 {
                return Err(Reason::DropTruncatedL4);
            }
            let data_offset = usize::from(seg[12] >> 4) * 4;
            if data_offset < 20 || data_offset > seg.len() {
                return Err(Reason::DropBadL4);
            }
        }
        PROTO_UDP => {
            if seg.len() < 8 {
                return Err(Reason::DropTruncatedL4);
            }
        }
        _ => return Err(Reason::PassNotL4),
    }
    key.sport_be = u16::from_ne_bytes([seg[0], seg[1]]);
    key.dport_be = u16::from_ne_bytes([seg[2], seg[3]]);
    Ok(key)
}

impl World {
    /// What the program must do with `frame` in this world. The world never
    /// changes while fuzzing, so a flow entry always names the backend the
    /// table gives: the expected backend does not depend on earlier frames.
    /// (The FIN/RST close mark does not change that either: the flow keeps
    /// its backend, and a SYN on a closed entry is re-picked from the same
    /// table.)
    pub fn expect(&self, frame: &[u8]) -> Expected {
        let key = match model_parse(frame) {
            Ok(k) => k,
            Err(r) => return Expected::of(r),
        };
        let vk = VipKey {
            addr: key.dst,
            port_be: key.dport_be,
            proto: key.proto,
            family: key.family,
        };
        let Some(info) = self.vips.get(&vk).copied() else {
            return Expected::of(Reason::PassNotVip);
        };
        let chosen = match info.kind {
            KIND_COMPILER => self.compiler(info.service_id, &key),
            KIND_CA => self.ca(info.service_id),
            _ => Err(Reason::PassNotVip),
        };
        let (reason, backend) = match chosen {
            // A group-addressed frame is not ours to route, but only once
            // a backend was found (a missing one is the louder problem).
            Ok(_) if frame[0] & 1 != 0 => (Reason::PassNotUnicast, None),
            Ok((r, b)) => (r, Some(b)),
            Err(r) => (r, None),
        };
        Expected {
            reason,
            backend,
            vip: Some(info),
        }
    }

    fn usable(&self, id: u32, service: u32, states: &[u32]) -> bool {
        self.backends
            .get(&id)
            .is_some_and(|b| b.service_id == service && states.contains(&b.state))
    }

    fn compiler(&self, service: u32, key: &FlowKey) -> Result<(Reason, u32), Reason> {
        let table = self.tables.get(&service).ok_or(Reason::DropNoBackend)?;
        if table.is_empty() {
            return Err(Reason::DropNoBackend);
        }
        let id = table[(flow_hash(key) % table.len() as u32) as usize];
        if id == NO_BACKEND
            || !self.usable(
                id,
                service,
                &[BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_RETIRING],
            )
        {
            return Err(Reason::DropNoBackend);
        }
        Ok((Reason::TxCompiler, id))
    }

    fn ca(&self, service: u32) -> Result<(Reason, u32), Reason> {
        let id = self.ca_targets.get(&service).copied().unwrap_or(0);
        if id == NO_BACKEND || !self.usable(id, service, &[BACKEND_ACTIVE]) {
            return Err(Reason::DropNoCa);
        }
        Ok((Reason::TxCa, id))
    }
}

// ---------------------------------------------------------------- checking

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Short class of the problem (for the summary).
    pub kind: &'static str,
    pub detail: String,
}

fn violation(kind: &'static str, detail: String) -> Violation {
    Violation { kind, detail }
}

impl World {
    /// Check one run against the model and the data plane's rules. The
    /// reason counters are checked apart ([`check_counters`]): reading them
    /// costs 17 map lookups, so the fuzzer does it per batch.
    pub fn check(&self, frame: &[u8], out: &RunOutput) -> (Expected, Vec<Violation>) {
        let exp = self.expect(frame);
        let mut v = Vec::new();
        let want = action_of(exp.reason);
        if out.action != want {
            v.push(violation(
                "verdict",
                format!(
                    "action {} but the model says {} ({})",
                    action_name(out.action),
                    action_name(want),
                    exp.reason.label()
                ),
            ));
        }
        // Rules that hold whatever the model says.
        match out.action {
            XDP_TX => v.extend(self.check_tx(frame, out, &exp)),
            XDP_PASS | XDP_DROP => {
                if out.frame != frame {
                    v.push(violation(
                        "modified",
                        format!(
                            "{} frame changed (first difference at byte {})",
                            action_name(out.action),
                            first_difference(frame, &out.frame)
                        ),
                    ));
                }
            }
            other => v.push(violation("verdict", format!("unexpected action {other}"))),
        }
        (exp, v)
    }

    fn check_tx(&self, frame: &[u8], out: &RunOutput, exp: &Expected) -> Vec<Violation> {
        let mut v = Vec::new();
        let o = &out.frame;
        if o.len() != frame.len() || o.get(12..) != frame.get(12..) {
            v.push(violation(
                "rewrite",
                format!(
                    "forwarded frame differs beyond the MACs (lengths {} -> {}, first difference at byte {})",
                    frame.len(),
                    o.len(),
                    first_difference(&frame[12..], o.get(12..).unwrap_or(&[])) + 12
                ),
            ));
        }
        if o.len() >= 12 && o[6..12] != frame[0..6] {
            v.push(violation(
                "rewrite",
                "source MAC is not the frame's original destination".into(),
            ));
        }
        let Some(vip) = exp.vip else {
            v.push(violation(
                "tx-not-vip",
                "forwarded a frame whose destination is not a VIP".into(),
            ));
            return v;
        };
        let mac = &o[0..6.min(o.len())];
        let Some((id, b)) = self.backends.iter().find(|(_, b)| b.mac[..] == *mac) else {
            v.push(violation(
                "backend",
                format!("forwarded to unknown MAC {mac:02x?}"),
            ));
            return v;
        };
        if b.service_id != vip.service_id {
            v.push(violation(
                "backend",
                format!(
                    "service {} traffic sent to backend {id} of service {}",
                    vip.service_id, b.service_id
                ),
            ));
        }
        if (vip.kind == KIND_CA) != self.is_ca_backend(*id) {
            v.push(violation(
                "ca-steering",
                format!(
                    "{} VIP traffic sent to backend {id}, a {}",
                    if vip.kind == KIND_CA {
                        "CA"
                    } else {
                        "compiler"
                    },
                    if self.is_ca_backend(*id) {
                        "CA"
                    } else {
                        "compiler"
                    }
                ),
            ));
        }
        if let Some(want) = exp.backend
            && want != *id
        {
            v.push(violation(
                "backend",
                format!("sent to backend {id}, the table says {want}"),
            ));
        }
        v
    }
}

/// Check a reason-counter delta for one frame: exactly one counter moved,
/// by one, it is the model's reason, and its verdict is the action taken.
pub fn check_counters(exp: &Expected, action: u32, delta: &[u64]) -> Vec<Violation> {
    let mut v = Vec::new();
    let moved: Vec<(usize, u64)> = delta
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, d)| *d != 0)
        .collect();
    let label = |i: usize| Reason::from_code(i as u32).map_or("?", |r| r.label());
    match moved.as_slice() {
        [(i, 1)] => {
            if *i != exp.reason as usize {
                v.push(violation(
                    "reason",
                    format!(
                        "counted as {}, the model says {}",
                        label(*i),
                        exp.reason.label()
                    ),
                ));
            }
            if let Some(r) = Reason::from_code(*i as u32)
                && action_of(r) != action
            {
                v.push(violation(
                    "reason",
                    format!(
                        "counted as {} but the action was {}",
                        r.label(),
                        action_name(action)
                    ),
                ));
            }
        }
        other => {
            let list: Vec<String> = other
                .iter()
                .map(|(i, d)| format!("{}+{d}", label(*i)))
                .collect();
            v.push(violation(
                "counters",
                format!(
                    "not exactly one counter moved by one: [{}]",
                    list.join(", ")
                ),
            ));
        }
    }
    v
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
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
    /// A sweep case (a base frame cut short).
    Sweep,
}

/// (class, weight): most cases aim at the paths that forward.
const CLASSES: [(Class, usize); 11] = [
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

fn client4(r: &mut Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(r.next_u64() as u32))
}
fn client6(r: &mut Rng) -> IpAddr {
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
        let f = syn.clone().with_frag(0x2000).build();
        assert_eq!(w.expect(&f).reason, Reason::PassFragment);
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
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| !seen.contains(&(**r as u32)) && **r != Reason::DropInternal)
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
