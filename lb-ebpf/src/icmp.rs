//! ICMP errors about VIP flows: path-MTU discovery through DSR.
//!
//! Compilers answer agents with the VIP as source, so a router on the
//! return path that cannot forward a reply sends its ICMP error to the VIP,
//! which routes here. The error quotes the reply's IP header and at least
//! its first 8 bytes (the ports); reversed, that is the agent -> VIP flow,
//! and the message goes to the backend holding that flow (the flow table's
//! entry, else the Maglev pick), untouched but for the MACs, through
//! `forward` like the flow's own packets. Nothing is written.
//!
//! Steered: ICMPv4 destination unreachable (type 3, every code: code 4 is
//! *fragmentation needed*, the others tell the compiler the agent is
//! unreachable, which only the compiler's socket can act on) and ICMPv6
//! destination unreachable (1) and packet too big (2). Every other type
//! (echo, time exceeded, parameter problem, neighbour discovery) is passed
//! to the kernel as before (`pass_not_l4`): those are about the path or
//! addressed to the LB host, not about a compiler's connection.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    DP_NO_ICMP_STEERING, FlowKeyV4, FlowKeyV6, KIND_CA, KIND_COMPILER, PROTO_TCP, PROTO_UDP, Reason,
};

use crate::{
    family::{Family, from_vip_addr, to_vip_addr},
    maps::{CONFIG, VIPS},
    parse::{Cursor, Gate, Parsed, ipv6_chain},
    select,
};

/// The quoted IPv6 source (`q[8..24]`) is `a` (byte by byte: no memcmp in BPF).
#[inline(always)]
fn quoted_src_is(q: &[u8; 40 + QUOTED_L4], a: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    for i in 0..16 {
        diff |= q[8 + i] ^ a[i];
    }
    diff == 0
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// ICMP header: type, code, checksum, and 4 bytes (unused, MTU or pointer).
const ICMP_HLEN: usize = 8;
/// What the quote must hold after its IP header: both ports.
const QUOTED_L4: usize = 8;

/// `icmp_steering` is on (the default: a fresh config reads 0). Off, the
/// errors are passed as any other ICMP is.
#[inline(always)]
fn steering_on() -> bool {
    CONFIG
        .get(0)
        .is_none_or(|c| c.flags & DP_NO_ICMP_STEERING == 0)
}

/// An IPv4 packet (already validated by `parse::ipv4`) that is neither TCP
/// nor UDP, at `off`.
#[inline(always)]
pub fn v4(
    ctx: &XdpContext,
    c: &Cursor,
    off: usize,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    let ip: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 20-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    let outer = FlowKeyV4 {
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
        ..FlowKeyV4::default()
    };
    if h[9] != IPPROTO_ICMP || !to_vip_addr(&outer) {
        return Err(Reason::PassNotL4);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        // A first fragment (later ones never come here): its quote may be
        // whole, but the rest of the message could not follow it.
        return Err(Reason::PassFragment);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let icmp_len = (u16::from_be_bytes([h[2], h[3]]) as usize).saturating_sub(ihl);
    let icmp_off = off + ihl;
    if icmp_len < ICMP_HLEN {
        return Err(Reason::PassIcmpMalformed);
    }
    let t: *const [u8; ICMP_HLEN] = c.ptr(icmp_off).ok_or(Reason::PassIcmpMalformed)?;
    // SAFETY: the ICMP header lies inside the packet.
    if unsafe { (*t)[0] } != ICMP_DEST_UNREACH || !steering_on() {
        return Err(Reason::PassNotL4);
    }
    if from_vip_addr(&outer) {
        return Err(Reason::DropSpoofedSource);
    }
    // The quote: an IPv4 header (IHL honoured) and the first 8 bytes after it.
    let q_off = icmp_off + ICMP_HLEN;
    let q_len = icmp_len - ICMP_HLEN;
    if q_len < 20 {
        return Err(Reason::PassIcmpMalformed);
    }
    let q: *const [u8; 20] = c.ptr(q_off).ok_or(Reason::PassIcmpMalformed)?;
    // SAFETY: the quoted fixed header lies inside the packet.
    let q = unsafe { &*q };
    let q_ihl = ((q[0] & 0x0f) as usize) * 4;
    if q[0] >> 4 != 4 || q_ihl < 20 || q_ihl + QUOTED_L4 > q_len {
        return Err(Reason::PassIcmpMalformed);
    }
    let p: *const [u8; QUOTED_L4] = c.ptr(q_off + q_ihl).ok_or(Reason::PassIcmpMalformed)?;
    // SAFETY: the quoted ports lie inside the packet.
    let p = unsafe { &*p };
    let proto = q[9];
    // The quote must be a reply the VIP sent (its source is the address the
    // error came to) carrying ports (not a later fragment).
    if (proto != PROTO_TCP && proto != PROTO_UDP)
        || u16::from_be_bytes([q[6], q[7]]) & 0x1fff != 0
        || u32::from_ne_bytes([q[12], q[13], q[14], q[15]]) != u32::from_ne_bytes(outer.dst)
    {
        return Err(Reason::PassIcmpUnmatched);
    }
    // Reversed: the agent -> VIP flow.
    let key = FlowKeyV4 {
        src: [q[16], q[17], q[18], q[19]],
        dst: outer.dst,
        sport_be: u16::from_ne_bytes([p[2], p[3]]),
        dport_be: u16::from_ne_bytes([p[0], p[1]]),
        proto,
        _pad: 0,
        _pad2: 0,
    };
    steer(ctx, c, key, unicast, len)
}

/// An IPv6 packet (already validated by `parse::ipv6`) that is neither TCP
/// nor UDP, at `off`.
#[inline(always)]
pub fn v6(
    ctx: &XdpContext,
    c: &Cursor,
    off: usize,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    let ch = ipv6_chain(c, off, Gate::Open)?;
    let ip: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 40-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    let mut outer = FlowKeyV6::default();
    outer.src.copy_from_slice(&h[8..24]);
    outer.dst.copy_from_slice(&h[24..40]);
    if ch.next != IPPROTO_ICMPV6 || ch.later_frag || !to_vip_addr(&outer) {
        return Err(Reason::PassNotL4);
    }
    if ch.first_frag {
        return Err(Reason::PassFragment);
    }
    if ch.l4_len < ICMP_HLEN {
        return Err(Reason::PassIcmpMalformed);
    }
    let t: *const [u8; ICMP_HLEN] = c.ptr(ch.l4_off).ok_or(Reason::PassIcmpMalformed)?;
    // SAFETY: the ICMPv6 header lies inside the packet.
    let ty = unsafe { (*t)[0] };
    if (ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG) || !steering_on() {
        return Err(Reason::PassNotL4);
    }
    if from_vip_addr(&outer) {
        return Err(Reason::DropSpoofedSource);
    }
    // The quote: the reply's fixed IPv6 header and its first 8 bytes (a
    // reply from a compiler carries no extension headers).
    let q_off = ch.l4_off + ICMP_HLEN;
    if ch.l4_len - ICMP_HLEN < 40 + QUOTED_L4 {
        return Err(Reason::PassIcmpMalformed);
    }
    let q: *const [u8; 40 + QUOTED_L4] = c.ptr(q_off).ok_or(Reason::PassIcmpMalformed)?;
    // SAFETY: the quoted header and ports lie inside the packet.
    let q = unsafe { &*q };
    if q[0] >> 4 != 6 {
        return Err(Reason::PassIcmpMalformed);
    }
    let proto = q[6];
    if (proto != PROTO_TCP && proto != PROTO_UDP) || !quoted_src_is(q, &outer.dst) {
        return Err(Reason::PassIcmpUnmatched);
    }
    let mut key = FlowKeyV6 {
        dst: outer.dst,
        sport_be: u16::from_ne_bytes([q[42], q[43]]),
        dport_be: u16::from_ne_bytes([q[40], q[41]]),
        proto,
        ..FlowKeyV6::default()
    };
    key.src.copy_from_slice(&q[24..40]);
    steer(ctx, c, key, unicast, len)
}

/// Forward the message to the backend of the (reversed) flow `key`.
#[inline(always)]
fn steer<K: Family>(
    ctx: &XdpContext,
    c: &Cursor,
    key: K,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    // SAFETY: VIP values are plain integers written only by userspace.
    let info = *unsafe { VIPS.get(key.vip_key()) }.ok_or(Reason::PassIcmpUnmatched)?;
    let vip_key = key.vip_key();
    let pkt = Parsed {
        key,
        dport_be: vip_key.port_be,
        proto: vip_key.proto,
        tcp_flags: 0,
        unicast,
        first_frag: false,
        frag_id: 0,
    };
    let choice = match info.kind {
        KIND_COMPILER => select::owner(info.service_id, &pkt),
        KIND_CA => select::ca(info.service_id, &pkt).ok(),
        _ => None,
    };
    let choice = choice.ok_or(Reason::PassIcmpUnmatched)?;
    crate::forward(ctx, c, &pkt, &choice, len)
}
