//! The fuzzer's reference model of the XDP program: what should happen to a
//! frame. It reads the world's own state (its tables, VIP index and
//! fragment table), which `world.rs` opens to the fuzzer's modules but not
//! to their callers. Written from the reason codes' definitions and the
//! README's decisions, with its own flow form, hash and Maglev tables
//! ([`crate::reference`]), never from the eBPF code or lb-common's.

use std::net::IpAddr;

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_RETIRING, KIND_CA, KIND_COMPILER, NO_BACKEND,
    PROTO_TCP, PROTO_UDP, Reason, VipInfo, reason::Verdict,
};

use super::{FlowEntry, FlowId, ModelFlows, World};
use crate::{packet::flags, reference};

// ---------------------------------------------------------- reference model

/// What the model says must happen to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub reason: Reason,
    /// Backend id a forwarded frame must go to.
    pub backend: Option<u32>,
    /// The VIP the frame is addressed to, if it parses that far and is one.
    pub vip: Option<VipInfo>,
    /// The flow table decided (an entry whose backend may still have it).
    pub established: bool,
}

impl Expected {
    pub(super) fn of(reason: Reason) -> Expected {
        Expected {
            reason,
            backend: None,
            vip: None,
            established: false,
        }
    }
}

pub(super) fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

pub(super) fn is_vlan(t: usize) -> bool {
    t == 0x8100 || t == 0x88a8
}

/// A parsed flow as the model sees it: its own form, not lb-common's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
}

impl Flow {
    fn id(&self) -> FlowId {
        (self.src, self.dst, self.sport, self.dport, self.proto)
    }

    /// A TCP SYN without ACK: the only TCP segment that starts a flow.
    fn is_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN
    }

    /// The agent ending its connection: a FIN or RST.
    fn is_close(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (flags::FIN | flags::RST) != 0
    }

    fn hash(&self) -> u32 {
        reference::flow_hash(self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// A fragmented datagram as the model names it: (source, destination, ID,
/// protocol), the protocol 0 for IPv6 (RFC 8200 identifies a datagram by
/// addresses and ID alone).
pub type Datagram = (IpAddr, IpAddr, u32, u8);

/// What a frame is, once parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pkt {
    /// TCP or UDP with its ports; a first fragment (offset 0, more to come)
    /// names its datagram.
    Flow(Flow, Option<Datagram>),
    /// A fragment with a non-zero offset: no ports.
    Later(Datagram),
    /// Any other upper-layer protocol, with its bytes as the IP header
    /// delimits them, and whether it is a first fragment.
    Other {
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        body: Vec<u8>,
        fragmented: bool,
    },
}

/// Ethernet, at most two VLAN tags, then IPv4/IPv6. `gate` says whether a
/// destination address's bit is set in the VIP address bitmap: a clear bit
/// passes the packet (`pass_not_vip`) once the fixed IP header is there
/// with its version, before anything else in it is judged.
pub(super) fn model_parse(f: &[u8], gate: impl Fn(IpAddr) -> bool) -> Result<Pkt, Reason> {
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
        0x0800 => model_ipv4(&f[off..], gate),
        0x86dd => model_ipv6(&f[off..], gate),
        t if is_vlan(t) => Err(Reason::PassVlanDepth),
        _ => Err(Reason::PassNotIp),
    }
}

/// `ip`: from the IPv4 header to the end of the frame.
pub(super) fn model_ipv4(ip: &[u8], gate: impl Fn(IpAddr) -> bool) -> Result<Pkt, Reason> {
    if ip.len() < 20 {
        return Err(Reason::DropTruncatedL3);
    }
    if ip[0] >> 4 != 4 {
        return Err(Reason::DropBadL3);
    }
    if !gate(IpAddr::from([ip[16], ip[17], ip[18], ip[19]])) {
        return Err(Reason::PassNotVip);
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = be16(ip, 2);
    if header < 20 || total < header {
        return Err(Reason::DropBadL3);
    }
    if total > ip.len() {
        return Err(Reason::DropTruncatedL3);
    }
    let v4 = |at: usize| IpAddr::from([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    let (src, dst, proto) = (v4(12), v4(16), ip[9]);
    // DF and the reserved bit do not matter; the offset and MF do.
    let flags = be16(ip, 6);
    let datagram = (src, dst, be16(ip, 4) as u32, proto);
    if flags & 0x1fff != 0 {
        return Ok(Pkt::Later(datagram));
    }
    let first = (flags & 0x2000 != 0).then_some(datagram);
    // Ethernet padding past the IP total length is not payload.
    model_l4(&ip[header..total], proto, src, dst, first)
}

/// Extension headers walked before handing the packet to the kernel.
pub(super) const MODEL_EXT_LIMIT: usize = 4;

pub(super) fn model_ipv6(ip: &[u8], gate: impl Fn(IpAddr) -> bool) -> Result<Pkt, Reason> {
    if ip.len() < 40 {
        return Err(Reason::DropTruncatedL3);
    }
    if ip[0] >> 4 != 6 {
        return Err(Reason::DropBadL3);
    }
    if !gate(IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap())) {
        return Err(Reason::PassNotVip);
    }
    let payload = be16(ip, 4);
    if payload > ip.len() - 40 {
        return Err(Reason::DropTruncatedL3);
    }
    let v6 = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
    let mut next = ip[6];
    let mut rest = &ip[40..40 + payload];
    let mut walked = 0;
    let (src, dst) = (v6(8), v6(24));
    let mut first = None;
    loop {
        match next {
            // A fragment header: 8 bytes; a non-zero offset ends the walk
            // (the rest is the middle of a datagram); with offset 0 the last
            // fragment header seen says whether this is a first fragment (M)
            // or a whole packet (an atomic fragment).
            44 => {
                if walked == MODEL_EXT_LIMIT {
                    return Err(Reason::PassIpv6ExtLimit);
                }
                if rest.len() < 8 {
                    return Err(Reason::DropTruncatedL3);
                }
                let id = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                let offset = be16(rest, 2) >> 3;
                let more = rest[3] & 1 == 1;
                next = rest[0];
                rest = &rest[8..];
                walked += 1;
                if offset != 0 {
                    return Ok(Pkt::Later((src, dst, id, 0)));
                }
                first = more.then_some((src, dst, id, 0));
            }
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
            59 => return Err(Reason::PassNotL4),
            _ => break,
        }
    }
    model_l4(rest, next, src, dst, first)
}

/// `seg`: the L4 header and payload as the IP header delimits them (in a
/// first fragment, this fragment's part: only the L4 header itself must be
/// in it).
pub(super) fn model_l4(
    seg: &[u8],
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    first: Option<Datagram>,
) -> Result<Pkt, Reason> {
    match proto {
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
        _ => {
            return Ok(Pkt::Other {
                proto,
                src,
                dst,
                body: seg.to_vec(),
                fragmented: first.is_some(),
            });
        }
    }
    let flow = Flow {
        src,
        dst,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        proto,
        tcp_flags: if proto == PROTO_TCP { seg[13] } else { 0 },
    };
    Ok(Pkt::Flow(flow, first))
}

impl World {
    /// What the program must do with `frame` in this world, flow table
    /// aside: valid while the world has not changed since the data plane
    /// was programmed (every flow entry then names the backend the table
    /// gives, so the expected backend does not depend on earlier frames).
    pub fn expect(&self, frame: &[u8]) -> Expected {
        self.predict(frame, None).0
    }

    /// What the program must do with `frame`, with the model's copy of the
    /// flow table, which this updates as the program updates its own: for a
    /// world that changes between frames. Exact only while the kernel's flow
    /// table does not evict (give it room for every flow the run creates).
    pub fn step(&self, frame: &[u8], flows: &mut ModelFlows) -> Expected {
        let (exp, write) = self.predict(frame, Some(flows));
        if let Some((id, entry)) = write {
            flows.insert(id, entry);
        }
        exp
    }

    /// The outcome, and the flow entry the program writes, if any. A first
    /// fragment that is forwarded has its datagram recorded in the model's
    /// fragment table, as the program records it in its own.
    fn predict(
        &self,
        frame: &[u8],
        flows: Option<&ModelFlows>,
    ) -> (Expected, Option<(FlowId, FlowEntry)>) {
        let unicast = frame[0] & 1 == 0;
        match model_parse(frame, |a| self.addr_bit(a)) {
            Err(r) => (Expected::of(r), None),
            Ok(Pkt::Flow(flow, first)) => {
                let (exp, write) = self.predict_flow(flow, unicast, flows);
                if let (Some(datagram), Some(id)) = (first, exp.backend)
                    && exp.reason.verdict() == Verdict::Tx
                {
                    let generation = self.backends[&id].generation;
                    self.frags.borrow_mut().insert(datagram, (id, generation));
                }
                (exp, write)
            }
            Ok(Pkt::Later(datagram)) => (self.predict_later(datagram, unicast), None),
            Ok(Pkt::Other {
                proto,
                src,
                dst,
                body,
                fragmented,
            }) => (
                self.predict_icmp(proto, src, dst, &body, fragmented, unicast, flows),
                None,
            ),
        }
    }

    /// Whether `addr`'s bit is set in the VIP address bitmap: some VIP's
    /// address shares its slot ([`reference::addr_slot`]).
    fn addr_bit(&self, addr: IpAddr) -> bool {
        let slot = reference::addr_slot(addr);
        self.vip_index
            .keys()
            .any(|(a, _, _)| reference::addr_slot(*a) == slot)
    }

    /// Whether `addr` is the address of some VIP (any port, protocol).
    fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.vip_index.keys().any(|(a, _, _)| *a == addr)
    }

    /// The VIP a backend's traffic is counted under: its service, and CA
    /// when the service has a CA VIP.
    fn vip_of_backend(&self, id: u32) -> VipInfo {
        VipInfo {
            service_id: self.backends[&id].service_id,
            kind: if self.is_ca_backend(id) {
                KIND_CA
            } else {
                KIND_COMPILER
            },
        }
    }

    /// Whether backend `id` still holds what was recorded for it at
    /// `generation`: it keeps flows and the id was not reused.
    fn still_holds(&self, id: u32, generation: u32) -> bool {
        self.backends.get(&id).is_some_and(|b| {
            [BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_RETIRING].contains(&b.state)
                && b.generation == generation
        })
    }

    /// A later fragment: to a VIP address, it goes where its datagram's
    /// first fragment went, if that backend still holds it; otherwise it is
    /// passed (`pass_fragment`). The host's own fragments: `pass_not_vip`.
    fn predict_later(&self, datagram: Datagram, unicast: bool) -> Expected {
        if !self.is_vip_addr(datagram.1) {
            return Expected::of(Reason::PassNotVip);
        }
        let Some(&(id, generation)) = self.frags.borrow().get(&datagram) else {
            return Expected::of(Reason::PassFragment);
        };
        if !self.still_holds(id, generation) {
            return Expected::of(Reason::PassFragment);
        }
        let vip = self.vip_of_backend(id);
        if !unicast {
            return Expected {
                vip: Some(vip),
                ..Expected::of(Reason::PassNotUnicast)
            };
        }
        let reason = if vip.kind == KIND_CA {
            Reason::TxCa
        } else {
            Reason::TxCompiler
        };
        Expected {
            reason,
            backend: Some(id),
            vip: Some(vip),
            established: false,
        }
    }

    /// Neither TCP nor UDP: an ICMP error to a VIP address about one of its
    /// replies goes to the backend of the flow it quotes (README, *ICMP
    /// and fragments*); everything else is `pass_not_l4`.
    #[allow(clippy::too_many_arguments)]
    fn predict_icmp(
        &self,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        body: &[u8],
        fragmented: bool,
        unicast: bool,
        flows: Option<&ModelFlows>,
    ) -> Expected {
        let v4 = dst.is_ipv4();
        if proto != (if v4 { 1 } else { 58 }) || !self.is_vip_addr(dst) {
            return Expected::of(Reason::PassNotL4);
        }
        if fragmented {
            return Expected::of(Reason::PassFragment);
        }
        if body.len() < 8 {
            return Expected::of(Reason::PassIcmpMalformed);
        }
        // Destination unreachable (v4: 3, v6: 1) and packet too big (v6: 2).
        let steered = if v4 {
            body[0] == 3
        } else {
            body[0] == 1 || body[0] == 2
        };
        if !steered {
            return Expected::of(Reason::PassNotL4);
        }
        if self.is_vip_addr(src) {
            return Expected::of(Reason::DropSpoofedSource);
        }
        let quote = &body[8..];
        // The quoted header, its protocol, addresses, and where the ports are.
        let (qproto, qsrc, qdst, ports_at, later) = if v4 {
            if quote.len() < 20 {
                return Expected::of(Reason::PassIcmpMalformed);
            }
            let ihl = usize::from(quote[0] & 0x0f) * 4;
            if quote[0] >> 4 != 4 || ihl < 20 || ihl + 8 > quote.len() {
                return Expected::of(Reason::PassIcmpMalformed);
            }
            let a =
                |at: usize| IpAddr::from([quote[at], quote[at + 1], quote[at + 2], quote[at + 3]]);
            (quote[9], a(12), a(16), ihl, be16(quote, 6) & 0x1fff != 0)
        } else {
            if quote.len() < 48 {
                return Expected::of(Reason::PassIcmpMalformed);
            }
            if quote[0] >> 4 != 6 {
                return Expected::of(Reason::PassIcmpMalformed);
            }
            let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&quote[at..at + 16]).unwrap());
            (quote[6], a(8), a(24), 40, false)
        };
        if !(qproto == PROTO_TCP || qproto == PROTO_UDP) || later || qsrc != dst {
            return Expected::of(Reason::PassIcmpUnmatched);
        }
        // The quoted reply went VIP -> agent: its flow is agent -> VIP.
        let flow = Flow {
            src: qdst,
            dst: qsrc,
            sport: be16(quote, ports_at + 2) as u16,
            dport: be16(quote, ports_at) as u16,
            proto: qproto,
            tcp_flags: 0,
        };
        let Some(info) = self
            .vip_index
            .get(&(flow.dst, flow.dport, flow.proto))
            .copied()
        else {
            return Expected::of(Reason::PassIcmpUnmatched);
        };
        let chosen = match info.kind {
            KIND_COMPILER => {
                // The flow's entry, if its backend still holds it; else the
                // table's pick. Nothing is written.
                let entry = flows
                    .and_then(|f| f.get(&flow.id()))
                    .filter(|(id, generation, _)| self.still_holds(*id, *generation));
                match entry {
                    Some(&(id, _, _)) => Ok((Reason::TxCompiler, id)),
                    None => self.compiler(info.service_id, &flow),
                }
            }
            KIND_CA => self.ca(info.service_id),
            _ => Err(Reason::PassNotVip),
        };
        let Ok((reason, id)) = chosen else {
            return Expected::of(Reason::PassIcmpUnmatched);
        };
        if !unicast {
            return Expected {
                vip: Some(info),
                ..Expected::of(Reason::PassNotUnicast)
            };
        }
        Expected {
            reason,
            backend: Some(id),
            vip: Some(info),
            established: false,
        }
    }

    /// A TCP/UDP packet (a first fragment included).
    fn predict_flow(
        &self,
        flow: Flow,
        unicast: bool,
        flows: Option<&ModelFlows>,
    ) -> (Expected, Option<(FlowId, FlowEntry)>) {
        // The established-flow path comes before the VIP lookup, but only
        // for ports some VIP uses (the pre-filter).
        let port_used = self.vip_index.keys().any(|(_, p, _)| *p == flow.dport);
        let mut stale = false;
        if let (true, Some(&(id, generation, closed))) =
            (port_used, flows.and_then(|f| f.get(&flow.id())))
        {
            let be = self.backends.get(&id).copied().unwrap_or_default();
            // Active, draining and retiring backends keep their flows; a SYN
            // is a new connection when the backend takes no new ones or the
            // agent already closed this 5-tuple.
            let keeps = [BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_RETIRING].contains(&be.state);
            let usable = keeps && !(flow.is_syn() && (be.state != BACKEND_ACTIVE || closed));
            if usable && be.generation == generation {
                // The agent's first FIN/RST marks the entry closed, whatever
                // the frame's destination MAC.
                let mark =
                    (flow.is_close() && !closed).then(|| (flow.id(), (id, generation, true)));
                let info = VipInfo {
                    service_id: be.service_id,
                    kind: KIND_COMPILER,
                };
                let exp = if unicast {
                    Expected {
                        reason: Reason::TxCompiler,
                        backend: Some(id),
                        vip: Some(info),
                        established: true,
                    }
                } else {
                    Expected {
                        vip: Some(info),
                        established: true,
                        ..Expected::of(Reason::PassNotUnicast)
                    }
                };
                return (exp, mark);
            }
            stale = true;
        }
        let Some(info) = self
            .vip_index
            .get(&(flow.dst, flow.dport, flow.proto))
            .copied()
        else {
            return (Expected::of(Reason::PassNotVip), None);
        };
        // A source claiming to be a VIP address is dropped before anything
        // is chosen (no flow of such a source can exist).
        if self.vip_index.keys().any(|(addr, _, _)| *addr == flow.src) {
            return (
                Expected {
                    reason: Reason::DropSpoofedSource,
                    backend: None,
                    vip: Some(info),
                    established: false,
                },
                None,
            );
        }
        let chosen = match info.kind {
            KIND_COMPILER => self.compiler(info.service_id, &flow),
            KIND_CA => self.ca(info.service_id),
            _ => Err(Reason::PassNotVip),
        };
        let mut insert = None;
        let (reason, backend) = match chosen {
            // A group-addressed frame is not ours to route, but only once
            // a backend was found (a missing one is the louder problem).
            Ok(_) if !unicast => (Reason::PassNotUnicast, None),
            Ok((r, b)) => {
                // Only a SYN, a UDP datagram or a stale entry's packet
                // writes the flow table.
                if r == Reason::TxCompiler && (flow.is_syn() || flow.proto != PROTO_TCP || stale) {
                    let entry = (b, self.backends[&b].generation, flow.is_close());
                    insert = Some((flow.id(), entry));
                }
                (r, Some(b))
            }
            Err(r) => (r, None),
        };
        (
            Expected {
                reason,
                backend,
                vip: Some(info),
                established: false,
            },
            insert,
        )
    }

    fn usable(&self, id: u32, service: u32, states: &[u32]) -> bool {
        self.backends
            .get(&id)
            .is_some_and(|b| b.service_id == service && states.contains(&b.state))
    }

    fn compiler(&self, service: u32, flow: &Flow) -> Result<(Reason, u32), Reason> {
        let table = self
            .model_tables
            .get(&service)
            .ok_or(Reason::DropNoBackend)?;
        if table.is_empty() {
            return Err(Reason::DropNoBackend);
        }
        let id = table[reference::table_slot(flow.hash(), table.len())];
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        fuzz::{
            Generator, PORT, ROUTED_ONLY, ROUTER4, VIP4, VIP4_CA, VIP4_CA_NONE, VIP4_EMPTY, vip6,
            vip6_ca,
        },
        packet::{Frame, arp_request},
    };

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
}
