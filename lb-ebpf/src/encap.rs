//! Routed backends: IPIP and GUE encapsulation, the egress choice, and the
//! "too big" answer when the encapsulated packet would not fit the path.
//!
//! The client's IP packet is never changed: the frame grows at the front
//! (`bpf_xdp_adjust_head`) by the outer headers, and any VLAN tags of the
//! ingress frame are dropped (the route to the compiler decides where the
//! packet goes, and it leaves untagged on that interface).
//!
//! Outer IPv4: DF set, ID 0 (RFC 6864: an atomic datagram needs no ID), TTL
//! from the tunnel entry, TOS (DSCP and ECN) copied from the inner header
//! (RFC 6040's normal mode). Outer IPv6: traffic class copied, the flow
//! label from the flow hash (so that ECMP in the underlay spreads flows),
//! hop limit from the tunnel entry. GUE: version 1 ("direct IP"), the UDP
//! source port from the flow hash in 49152..=65535, the destination port
//! from the tunnel entry. The UDP checksum is 0 over IPv4 (RFC 768). Over
//! IPv6 it is computed (RFC 8200 asks for one) without reading the payload,
//! from the inner TCP/UDP checksum, which already sums the segment (the
//! "local checksum offload" identity, see [`inner_sum`]). Where the inner
//! checksum does not cover everything (IPv6 extension headers, an IPv4 UDP
//! datagram sent without a checksum) the checksum is 0, as RFC 6935/6936
//! allow for tunnels; both `voxlb decap` and the kernel's `fou` (which by
//! default accepts zero UDP checksums on IPv6) take it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{FAMILY_V4, FAMILY_V6, FORWARD_GUE, PROTO_TCP, Reason, TunnelInfo};

use crate::{
    family::Family,
    maps::{ENCAP_JOB, PROGS, TUNNELS, TX_PORTS},
    parse::{self, Cursor, L3, Parsed},
    select::Choice,
    stats,
};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const UDP_HLEN: usize = 8;
/// Bytes of the client's packet quoted in a "too big" answer: its IP header
/// and the start of its TCP header (ports and sequence number) are what
/// the client's stack matches the error to.
const QUOTE4: usize = 68;
const QUOTE6: usize = 88;

/// The client's IP packet as encapsulation sees it. Read again here, on
/// the routed path only, rather than carried in `Parsed`: the L2 fast
/// path's stack has no room for it.
#[derive(Clone, Copy)]
struct IpInfo {
    /// Offset of the IP header (after Ethernet and VLAN tags).
    off: usize,
    /// IPv4 total length / IPv6 40 + payload length: what is carried
    /// (Ethernet padding is not).
    len: u16,
    /// Length of the TCP/UDP segment (the pseudo-header's length).
    l4_len: u16,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN).
    tos: u8,
    /// May not be fragmented on the way (IPv4 DF; always for IPv6).
    df: bool,
    /// The TCP/UDP checksum covers the whole segment and the IP header
    /// holds nothing the pseudo-header does not (no IPv6 extension
    /// headers; not IPv4 UDP without a checksum): see [`inner_sum`].
    csum_derivable: bool,
}

/// [`IpInfo`] of the packet the main program parsed (it checked every
/// length read here), of family `v6`, L4 protocol `proto`.
#[inline(always)]
fn ip_info(c: &Cursor, v6: bool, proto: u8) -> Result<IpInfo, Reason> {
    let (_, off, _) = parse::l2(c)?;
    if v6 {
        let h: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
        // SAFETY: inside the packet (checked by `ptr`).
        let h = unsafe { &*h };
        let payload = u16::from_be_bytes([h[4], h[5]]);
        // TCP/UDP right after the fixed header (no extension header, so
        // no fragment header either).
        let direct = h[6] == proto && (proto == PROTO_TCP || proto == IPPROTO_UDP);
        let udp_zero = direct && proto == IPPROTO_UDP && udp_csum_zero(c, off + 40)?;
        Ok(IpInfo {
            off,
            len: payload + 40,
            l4_len: payload,
            tos: (h[0] << 4) | (h[1] >> 4),
            df: true,
            csum_derivable: direct && !udp_zero,
        })
    } else {
        let h: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
        // SAFETY: inside the packet (checked by `ptr`).
        let h = unsafe { &*h };
        let ihl = ((h[0] & 0x0f) as u16) * 4;
        let len = u16::from_be_bytes([h[2], h[3]]);
        // A fragment's checksum covers the whole datagram, not this part.
        let whole = u16::from_be_bytes([h[6], h[7]]) & 0x3fff == 0;
        let l4 = whole && h[9] == proto && (proto == PROTO_TCP || proto == IPPROTO_UDP);
        let udp_zero = l4 && proto == IPPROTO_UDP && udp_csum_zero(c, off + (ihl as usize & 0x3c))?;
        Ok(IpInfo {
            off,
            len,
            l4_len: len.saturating_sub(ihl),
            tos: h[1],
            df: h[6] & 0x40 != 0,
            csum_derivable: l4 && !udp_zero,
        })
    }
}

/// The UDP header at `off` carries no checksum (0).
#[inline(always)]
fn udp_csum_zero(c: &Cursor, off: usize) -> Result<bool, Reason> {
    let u: *const [u8; 8] = c.ptr(off).ok_or(Reason::DropTruncatedL4)?;
    // SAFETY: inside the packet (checked by `ptr`).
    let u = unsafe { &*u };
    Ok(u[6] == 0 && u[7] == 0)
}

/// One's-complement sum of big-endian 16-bit words, not yet folded.
#[inline(always)]
pub fn sum_words<const N: usize>(acc: u32, b: &[u8; N]) -> u32 {
    let acc = sum_range(acc, b, 0, N & !1);
    if N % 2 == 1 {
        acc + ((b[N - 1] as u32) << 8)
    } else {
        acc
    }
}

/// [`sum_words`] over `b[from..to]` (`to - from` even): the checksummed
/// part of a header written in place.
#[inline(always)]
fn sum_range<const N: usize>(mut acc: u32, b: &[u8; N], from: usize, to: usize) -> u32 {
    let mut i = from;
    while i + 1 < to {
        acc += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// Fold a 32-bit accumulator into 16 bits (end-around carry).
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The one's-complement sum of the whole client packet, from headers only.
///
/// A correct TCP/UDP checksum makes pseudo-header + segment sum to zero
/// (0xffff), so the segment's sum is the complement of the pseudo-header's.
/// An IPv4 header with a correct checksum sums to zero itself; an IPv6
/// header without extension headers sums to its first 8 bytes plus the two
/// addresses. So: sum(packet) = sum(IP header) + ~sum(pseudo-header). A
/// corrupted inner checksum gives a wrong outer one, and the compiler drops
/// the datagram at the outer check instead of the inner: the same outcome.
#[inline(always)]
fn inner_sum(v6: bool, addrs: u32, proto: u8, ip: &IpInfo, first8: &[u8; 8]) -> u16 {
    let pseudo = fold(addrs + ip.l4_len as u32 + proto as u32);
    let header = if v6 {
        fold(sum_words(addrs, first8))
    } else {
        0
    };
    fold(header as u32 + !pseudo as u32)
}

/// What the packet path hands the encapsulating program (one per CPU, in
/// `vx_encap_job_v2`): the chosen backend. Nothing of the packet: the
/// encapsulating program parses it again, on its own stack (the packet
/// path's is nearly full, which is why encapsulation is a program of its
/// own).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EncapJob {
    pub backend_id: u32,
    /// Frame length as received, for the backend's byte counter.
    pub bytes: u32,
    /// The next hop's MAC.
    pub mac: [u8; 6],
    /// `FORWARD_IPIP` or `FORWARD_GUE`.
    pub forwarding: u8,
    /// The packet opened a connection (the backend's `new_flows`).
    pub new_flow: u8,
}

/// Hand the forwarding of this packet to the tail-called program in `slot`
/// (`PROG_ENCAP`: [`run`]; `PROG_FIRST_FRAG`: `frag::first`): record the
/// job and tail-call it. Returns only if the tail call failed (the program
/// array is empty mid-load): counted as `drop_encap`.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, choice: &Choice, len: u64, slot: u32) -> Result<u32, Reason> {
    let job = ENCAP_JOB.get_ptr_mut(0).ok_or(Reason::DropInternal)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the run.
    // Field by field: no copy of the job on the packet path's stack.
    unsafe {
        (*job).backend_id = choice.backend_id;
        (*job).bytes = len as u32;
        (*job).mac = choice.mac.bytes();
        (*job).forwarding = choice.forwarding;
        (*job).new_flow = choice.new_flow as u8;
        // Does not return on success.
        PROGS.tail_call(ctx, slot);
    }
    Err(Reason::DropEncap)
}

/// What encapsulation needs of the flow, as words.
#[derive(Clone, Copy)]
struct Flow {
    v6: bool,
    proto: u8,
    /// The flow hash (GUE source port, IPv6 flow label).
    hash: u32,
    /// One's-complement sum of the client's addresses (pseudo-header).
    addrs: u32,
}

impl Flow {
    /// A packet without ports: a hash of its addresses; no protocol whose
    /// checksum could be derived.
    #[inline(always)]
    fn addresses(c: &Cursor, off: usize, v6: bool) -> Result<Flow, Reason> {
        let mut hash = 0x9e37_79b9u32;
        let mut mix = |hi: u8, lo: u8| {
            hash = (hash ^ u16::from_be_bytes([hi, lo]) as u32).wrapping_mul(0x0100_0193);
        };
        if v6 {
            let h: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
            // SAFETY: inside the packet (checked by `ptr`).
            let h = unsafe { &*h };
            let mut i = 8;
            while i < 40 {
                mix(h[i], h[i + 1]);
                i += 2;
            }
        } else {
            let h: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
            // SAFETY: inside the packet (checked by `ptr`).
            let h = unsafe { &*h };
            let mut i = 12;
            while i < 20 {
                mix(h[i], h[i + 1]);
                i += 2;
            }
        }
        Ok(Flow {
            v6,
            proto: 0,
            hash,
            addrs: 0,
        })
    }

    #[inline(always)]
    fn of<K: Family>(pkt: &Parsed<K>) -> Flow {
        Flow {
            v6: K::V6,
            proto: pkt.proto,
            hash: pkt.key.hash(),
            addrs: pkt.key.addr_sum(),
        }
    }
}

/// The encapsulating program's body: the job the packet path recorded,
/// the packet parsed again (the packet path already accepted it), then
/// [`send`]; a sent packet is counted in its backend's record.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Result<u32, Reason> {
    let c = Cursor::new(ctx);
    let job = *ENCAP_JOB.get(0).ok_or(Reason::DropInternal)?;
    let (l3, off, unicast) = parse::l2(&c)?;
    // A TCP/UDP packet: its flow. Anything else the packet path sends to a
    // routed backend (a steered ICMP error, a later fragment) has no ports:
    // its addresses alone make the hash, and its checksum is not derived.
    let flow = match l3 {
        L3::V4 => match parse::ipv4(&c, off, unicast, parse::Gate::Open) {
            Ok(p) => Flow::of(&p),
            Err(_) => Flow::addresses(&c, off, false)?,
        },
        L3::V6 => match parse::ipv6(&c, off, unicast, parse::Gate::Open) {
            Ok(p) => Flow::of(&p),
            Err(_) => Flow::addresses(&c, off, true)?,
        },
    };
    let action = send(ctx, &c, &job, &flow)?;
    stats::count_forward(job.backend_id, job.bytes as u64, job.new_flow != 0);
    Ok(action)
}

/// Encapsulate the frame for the routed backend `backend_id` (next hop
/// `next_hop`, mode `mode`) and choose the egress: the XDP action, or the
/// reason the packet was not sent (`TxTooBig` after the answer was
/// written). Headers are written straight into the frame, not built on the
/// stack: the program's stack (512 bytes) is shared with the parser.
#[inline(always)]
fn send(ctx: &XdpContext, c: &Cursor, job: &EncapJob, flow: &Flow) -> Result<u32, Reason> {
    let t: &TunnelInfo = TUNNELS.get(job.backend_id).ok_or(Reason::DropEncap)?;
    let gue = job.forwarding == FORWARD_GUE;
    let inner_v6 = flow.v6;
    let next_hop = &job.mac;
    let v6 = match t.family {
        FAMILY_V4 => false,
        FAMILY_V6 => true,
        _ => return Err(Reason::DropEncap),
    };
    let outer = if v6 { 40 } else { 20 } + if gue { UDP_HLEN } else { 0 };
    let ip = ip_info(c, inner_v6, flow.proto)?;
    if t.mtu != 0 && ip.len as usize + outer > t.mtu as usize {
        if !ip.df {
            return Err(Reason::DropTooBigNoDf);
        }
        let usable = (t.mtu as usize).saturating_sub(outer) as u32;
        return if inner_v6 {
            too_big_v6(ctx, c, ip.off, usable)
        } else {
            too_big_v4(ctx, c, ip.off, usable)
        };
    }
    // Read from the old frame before it moves.
    let ours = c.ptr::<[u8; 6]>(0).ok_or(Reason::DropTruncatedL2)?;
    // SAFETY: inside the packet (checked by `ptr`).
    let ours = unsafe { *ours };
    let src_mac = if t.src_mac == [0; 6] { ours } else { t.src_mac };
    let (hash, addrs, proto) = (flow.hash, flow.addrs, flow.proto);
    let delta = (ETH_HLEN + outer) as i32 - ip.off as i32;
    // SAFETY: helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
        return Err(Reason::DropEncap);
    }
    let c = Cursor::new(ctx);
    let inner_proto = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let l4 = if gue { IPPROTO_UDP } else { inner_proto };
    let udp_len = (ip.len as usize + UDP_HLEN) as u16;
    let sport = 0xc000 | (fold(hash) & 0x3fff);
    if !v6 {
        let h: *mut [u8; ETH_HLEN + 20] = c.ptr(0).ok_or(Reason::DropEncap)?;
        // SAFETY: the 34 bytes lie inside the packet (checked by `ptr`).
        let h = unsafe { &mut *h };
        eth(h, next_hop, &src_mac, ETH_P_IPV4);
        let total = (ip.len as usize + outer) as u16;
        let tl = total.to_be_bytes();
        h[14] = 0x45;
        h[15] = ip.tos;
        h[16] = tl[0];
        h[17] = tl[1];
        h[18] = 0;
        h[19] = 0;
        h[20] = 0x40; // DF
        h[21] = 0;
        h[22] = t.ttl;
        h[23] = l4;
        h[24] = 0;
        h[25] = 0;
        h[26..30].copy_from_slice(&t.src[..4]);
        h[30..34].copy_from_slice(&t.dst[..4]);
        let csum = (!fold(sum_range(0, h, ETH_HLEN, ETH_HLEN + 20))).to_be_bytes();
        h[24] = csum[0];
        h[25] = csum[1];
        if gue {
            let u: *mut [u8; UDP_HLEN] = c.ptr(ETH_HLEN + 20).ok_or(Reason::DropEncap)?;
            // SAFETY: inside the packet (checked by `ptr`).
            udp(unsafe { &mut *u }, sport, t.gue_port_be, udp_len, 0);
        }
    } else {
        let h: *mut [u8; ETH_HLEN + 40] = c.ptr(0).ok_or(Reason::DropEncap)?;
        // SAFETY: the 54 bytes lie inside the packet (checked by `ptr`).
        let h = unsafe { &mut *h };
        eth(h, next_hop, &src_mac, ETH_P_IPV6);
        let payload = ((ip.len as usize + outer - 40) as u16).to_be_bytes();
        let label = hash & 0xf_ffff;
        h[14] = 0x60 | (ip.tos >> 4);
        h[15] = (ip.tos << 4) | ((label >> 16) as u8 & 0x0f);
        h[16] = (label >> 8) as u8;
        h[17] = label as u8;
        h[18] = payload[0];
        h[19] = payload[1];
        h[20] = l4;
        h[21] = t.ttl;
        h[22..38].copy_from_slice(&t.src);
        h[38..54].copy_from_slice(&t.dst);
        if gue {
            let csum = if ip.csum_derivable {
                // The inner header's first 8 bytes, now behind ours.
                let f = c
                    .ptr::<[u8; 8]>(ETH_HLEN + outer)
                    .ok_or(Reason::DropEncap)?;
                // SAFETY: inside the packet (checked by `ptr`).
                let first8 = unsafe { &*f };
                // Pseudo-header (addresses, length, protocol), the UDP
                // header (length again), and the inner packet.
                let mut s = sum_words(0, &t.src);
                s = sum_words(s, &t.dst);
                s += 2 * udp_len as u32 + IPPROTO_UDP as u32;
                s += sport as u32 + u16::from_be(t.gue_port_be) as u32;
                s += inner_sum(inner_v6, addrs, proto, &ip, first8) as u32;
                match !fold(s) {
                    0 => 0xffff,
                    x => x,
                }
            } else {
                0
            };
            let u: *mut [u8; UDP_HLEN] = c.ptr(ETH_HLEN + 40).ok_or(Reason::DropEncap)?;
            // SAFETY: inside the packet (checked by `ptr`).
            udp(unsafe { &mut *u }, sport, t.gue_port_be, udp_len, csum);
        }
    }
    egress(ctx, t.ifindex)
}

#[inline(always)]
fn eth<const N: usize>(h: &mut [u8; N], dst: &[u8; 6], src: &[u8; 6], proto: [u8; 2]) {
    h[0..6].copy_from_slice(dst);
    h[6..12].copy_from_slice(src);
    h[12..14].copy_from_slice(&proto);
}

#[inline(always)]
fn udp(u: &mut [u8; UDP_HLEN], sport: u16, dport_be: u16, len: u16, csum: u16) {
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport_be.to_ne_bytes());
    u[4..6].copy_from_slice(&len.to_be_bytes());
    u[6..8].copy_from_slice(&csum.to_be_bytes());
}

/// The ingress interface: `XDP_TX`. Another one: `XDP_REDIRECT` through
/// the devmap, which holds only interfaces voxlb is attached to.
#[inline(always)]
fn egress(ctx: &XdpContext, ifindex: u32) -> Result<u32, Reason> {
    // SAFETY: reading a field of this program's context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if ifindex == ingress {
        return Ok(xdp_action::XDP_TX);
    }
    TX_PORTS
        .redirect(ifindex, 0)
        .map_err(|_| Reason::DropNoEgress)
}

/// Shrink the frame to `len` bytes.
#[inline(always)]
fn truncate(ctx: &XdpContext, cur: usize, len: usize) -> Result<(), Reason> {
    let delta = len as i32 - cur as i32;
    // SAFETY: helper call on this program's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Reason::DropEncap);
    }
    Ok(())
}

/// Swap the MACs of the frame at `c` (the answer goes back where the
/// packet came from; VLAN tags stay as they were).
#[inline(always)]
fn reflect_l2(c: &Cursor) -> Result<(), Reason> {
    let e: *mut [u8; 12] = c.ptr(0).ok_or(Reason::DropEncap)?;
    // SAFETY: inside the packet (checked by `ptr`).
    let e = unsafe { &mut *e };
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&e[0..6]);
    src.copy_from_slice(&e[6..12]);
    e[0..6].copy_from_slice(&src);
    e[6..12].copy_from_slice(&dst);
    Ok(())
}

/// Turn the frame into an answer to its sender: the MACs swapped (VLAN
/// tags kept), `hdr` bytes of new headers inserted before the IP packet,
/// which is cut to its first `quote` bytes. Done in place (the frame grows
/// at the front, the L2 header moves forward, the tail is cut), so nothing
/// large is copied to the stack.
#[inline(always)]
fn reply_frame(
    ctx: &XdpContext,
    c: &Cursor,
    off: usize,
    hdr: usize,
    quote: usize,
) -> Result<Cursor, Reason> {
    reflect_l2(c)?;
    let new_len = off + hdr + quote;
    // SAFETY: helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hdr as i32)) } != 0 {
        return Err(Reason::DropEncap);
    }
    let c = Cursor::new(ctx);
    // The L2 header (at most 22 bytes) now starts at `hdr`: move it back
    // to the front. Copying 22 bytes whatever its length is harmless: what
    // follows a shorter header is overwritten by the new headers.
    let from: *const [u8; 22] = c.ptr(hdr).ok_or(Reason::DropEncap)?;
    let to: *mut [u8; 22] = c.ptr(0).ok_or(Reason::DropEncap)?;
    // SAFETY: both lie inside the packet (checked by `ptr`) and do not
    // overlap (`hdr` >= 28 > 22).
    unsafe { *to = *from };
    truncate(ctx, c.len() as usize, new_len)?;
    Ok(Cursor::new(ctx))
}

/// Answer an IPv4 packet that does not fit with ICMP "fragmentation
/// needed" (type 3 code 4) carrying `mtu`, from the VIP to the client.
#[inline(always)]
fn too_big_v4(ctx: &XdpContext, c: &Cursor, off: usize, mtu: u32) -> Result<u32, Reason> {
    let c = reply_frame(ctx, c, off, 28, QUOTE4)?;
    let p: *mut [u8; 28 + QUOTE4] = c.ptr(off).ok_or(Reason::DropEncap)?;
    // SAFETY: inside the packet (checked by `ptr`).
    let p = unsafe { &mut *p };
    // From the VIP (the quoted packet's destination) to its source.
    let (mut src, mut dst) = ([0u8; 4], [0u8; 4]);
    src.copy_from_slice(&p[28 + 12..28 + 16]);
    dst.copy_from_slice(&p[28 + 16..28 + 20]);
    let tl = ((28 + QUOTE4) as u16).to_be_bytes();
    p[0] = 0x45;
    p[1] = 0xc0; // internetwork control, as the kernel's own ICMP errors
    p[2] = tl[0];
    p[3] = tl[1];
    p[4..8].copy_from_slice(&[0, 0, 0, 0]);
    p[8] = 64;
    p[9] = IPPROTO_ICMP;
    p[10] = 0;
    p[11] = 0;
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    let csum = (!fold(sum_range(0, p, 0, 20))).to_be_bytes();
    p[10] = csum[0];
    p[11] = csum[1];
    let m = (mtu.min(0xffff) as u16).to_be_bytes();
    p[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, m[0], m[1]]);
    let csum = (!fold(sum_range(0, p, 20, 28 + QUOTE4))).to_be_bytes();
    p[22] = csum[0];
    p[23] = csum[1];
    Err(Reason::TxTooBig)
}

/// Answer an IPv6 packet that does not fit with ICMPv6 "packet too big"
/// (type 2) carrying `mtu`, from the VIP to the client.
#[inline(always)]
fn too_big_v6(ctx: &XdpContext, c: &Cursor, off: usize, mtu: u32) -> Result<u32, Reason> {
    let c = reply_frame(ctx, c, off, 48, QUOTE6)?;
    let p: *mut [u8; 48 + QUOTE6] = c.ptr(off).ok_or(Reason::DropEncap)?;
    // SAFETY: inside the packet (checked by `ptr`).
    let p = unsafe { &mut *p };
    let plen = ((8 + QUOTE6) as u16).to_be_bytes();
    p[0..8].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], IPPROTO_ICMPV6, 64]);
    // From the VIP (the quoted packet's destination) to its source, copied
    // word by word within the frame.
    let mut i = 0;
    while i < 16 {
        p[8 + i] = p[48 + 24 + i];
        p[24 + i] = p[48 + 8 + i];
        i += 1;
    }
    let m = mtu.to_be_bytes();
    p[40..48].copy_from_slice(&[2, 0, 0, 0, m[0], m[1], m[2], m[3]]);
    // Pseudo-header: the addresses, the length, the next header.
    let pseudo = u16::from_be_bytes(plen) as u32 + IPPROTO_ICMPV6 as u32;
    let csum = (!fold(sum_range(pseudo, p, 8, 48 + QUOTE6))).to_be_bytes();
    p[42] = csum[0];
    p[43] = csum[1];
    Err(Reason::TxTooBig)
}
