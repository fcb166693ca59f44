//! Header parsing: a cursor that each step advances after checking bounds.
//!
//! Every read goes through [`Cursor::ptr`], which checks `start + off + size
//! <= end` against the packet the verifier knows; offsets are kept small and
//! bounded so the verifier can track them.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKeyV4, FlowKeyV6, PROTO_TCP, PROTO_UDP, Reason,
    hash::{fold_v4, fold_v6_words},
    wire,
};

use crate::family::maybe_vip_addr;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags we walk (802.1Q, or QinQ 802.1ad + 802.1Q).
const MAX_VLAN: usize = 2;
/// IPv6 extension headers we walk before giving the packet to the kernel.
const MAX_IPV6_EXT: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 flags + fragment offset: more fragments, and the offset bits.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the data plane needs to know about a parsed packet of family `K`
/// (`FlowKeyV4` or `FlowKeyV6`). Generic rather than an enum: the rest of
/// the path is compiled once per family, with no branch on the family and
/// no enum copies on the BPF stack (which the verifier rejects as
/// byte-sized spills of packet pointers).
pub struct Parsed<K> {
    /// 5-tuple, in the flow-table key of its family.
    pub key: K,
    /// Destination port, as on the wire.
    pub dport_be: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
    /// Addressed to a unicast MAC (ours); group-addressed frames are never
    /// forwarded nor remembered.
    pub unicast: bool,
    /// A first fragment (offset 0, more to come): balanced by its ports like
    /// any packet, and its datagram (`frag_id`) recorded so that the later
    /// fragments, which carry no ports, follow it (see `frag`).
    pub first_frag: bool,
    /// The IP ID (IPv4) or fragment-header identification (IPv6) of a
    /// fragment; 0 otherwise.
    pub frag_id: u32,
}

/// Bounds-checked access to the packet.
pub struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Cursor {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Frame length in bytes.
    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    /// Pointer to a `T` at `off`, if the whole `T` lies inside the packet.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(p as *mut T)
    }

    /// Bytes from `off` to the end of the frame (0 if `off` is past it).
    #[inline(always)]
    fn remaining(&self, off: usize) -> usize {
        (self.end - self.start).saturating_sub(off)
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The L3 protocol of a frame.
pub enum L3 {
    V4,
    V6,
}

/// Walk L2: the L3 protocol, where its header starts, and whether the frame
/// was sent to a unicast MAC. `Err(reason)` for anything we do not balance.
#[inline(always)]
pub fn l2(c: &Cursor) -> Result<(L3, usize, bool), Reason> {
    // Ethernet: dst(6) src(6) ethertype(2).
    let eth: *const [u8; ETH_HLEN] = c.ptr(0).ok_or(Reason::DropTruncatedL2)?;
    // SAFETY: `eth` lies inside the packet (checked by `ptr`).
    let mut proto = u16::from_be(unsafe { wire::load_u16(eth as usize + 12) });
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag: *const [u8; VLAN_HLEN] = c.ptr(off).ok_or(Reason::DropTruncatedL2)?;
        // SAFETY: `tag` lies inside the packet.
        proto = be16(unsafe { [(*tag)[2], (*tag)[3]] });
        off += VLAN_HLEN;
    }
    // SAFETY: `eth` lies inside the packet (checked above).
    let unicast = unsafe { (*eth)[0] } & 1 == 0;
    match proto {
        ETH_P_IPV4 => Ok((L3::V4, off, unicast)),
        ETH_P_IPV6 => Ok((L3::V6, off, unicast)),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::PassVlanDepth),
        _ => Err(Reason::PassNotIp),
    }
}

/// Whether the parser first asks the VIP address bitmap about the
/// destination (the packet path, [`Gate::Vips`]), or parses what the packet
/// path already let through ([`Gate::Open`]: the tail-called programs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Vips,
    Open,
}

impl Gate {
    /// `Err(PassNotVip)` for a destination whose bit in the VIP address
    /// bitmap is clear: certainly not a VIP address, so the host's own
    /// traffic (or no one's), passed to its stack as soon as the fixed IP
    /// header is known to be there, before the rest of L3 and L4 is read
    /// or judged. The kernel judges the host's packets itself, malformed
    /// ones included (and counts them in its own IP statistics); voxlb
    /// judges only packets to its VIPs' addresses (README, *Packet path*).
    #[inline(always)]
    fn check(self, folded_dst: u32) -> Result<(), Reason> {
        if self == Gate::Vips && !maybe_vip_addr(folded_dst) {
            return Err(Reason::PassNotVip);
        }
        Ok(())
    }
}

/// IPv4 and L4 from `off`.
#[inline(always)]
pub fn ipv4(
    c: &Cursor,
    off: usize,
    unicast: bool,
    gate: Gate,
) -> Result<Parsed<FlowKeyV4>, Reason> {
    let ip: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 20-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    if h[0] >> 4 != 4 {
        return Err(Reason::DropBadL3);
    }
    let at = ip as usize;
    // The destination alone first: a packet the gate passes reads nothing
    // more (the other fields, loaded before it, were spilled to the stack
    // and cost the host's traffic about 2 ns).
    // SAFETY: bytes 16..20 of the 20-byte header (inside the packet); a
    // word load (`wire`).
    let dst_w = unsafe { wire::load_u32(at + 16) };
    gate.check(fold_v4(&dst_w.to_ne_bytes()))?;
    // SAFETY: bytes 2..8 and 12..16 of the 20-byte header (inside the
    // packet); word loads (`wire`).
    let (len_w, id_w, frag_w, src_w) = unsafe {
        (
            wire::load_u16(at + 2),
            wire::load_u16(at + 4),
            wire::load_u16(at + 6),
            wire::load_u32(at + 12),
        )
    };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Reason::DropBadL3);
    }
    let tot_len = u16::from_be(len_w) as usize;
    if tot_len < ihl {
        return Err(Reason::DropBadL3);
    }
    if tot_len > c.remaining(off) {
        return Err(Reason::DropTruncatedL3);
    }
    // Options are legal: the L4 header starts after IHL words, and the whole
    // header must be in the frame.
    if ihl > c.remaining(off) {
        return Err(Reason::DropTruncatedL3);
    }
    let frag = u16::from_be(frag_w);
    if frag & IP_OFFSET != 0 {
        // A later fragment carries no ports: `frag::later_v4` follows it.
        return Err(Reason::PassFragment);
    }
    let proto = h[9];
    // In a first fragment `tot_len` covers this fragment only; the L4
    // header must lie in it (it always does: a first fragment carries at
    // least 8 bytes of data, and the whole TCP header under any MTU >= 68),
    // and UDP's length field, which covers the whole datagram, is not
    // checked against it.
    let l4 = parse_l4(c, off + ihl, tot_len - ihl, proto)?;
    let key = FlowKeyV4 {
        src: src_w.to_ne_bytes(),
        dst: dst_w.to_ne_bytes(),
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let mut p = l4.parsed(key, proto, unicast);
    if frag & IP_MF != 0 {
        p.first_frag = true;
        p.frag_id = u16::from_be(id_w) as u32;
    }
    Ok(p)
}

/// An IPv6 header and its extension headers, walked.
pub struct Ipv6Chain {
    /// The upper-layer protocol.
    pub next: u8,
    /// Where its header starts, and how many bytes the payload length leaves it.
    pub l4_off: usize,
    pub l4_len: usize,
    /// A fragment header with offset 0 and M set was walked: a first fragment.
    pub first_frag: bool,
    /// A fragment header with a non-zero offset stopped the walk: a later
    /// fragment, whose upper-layer header is elsewhere (`next` is its
    /// fragment header's next-header field).
    pub later_frag: bool,
    /// The last fragment header's identification.
    pub frag_id: u32,
}

/// The fixed IPv6 header at `off` and up to four extension headers (a
/// fragment header counts as one; an atomic fragment, offset 0 without M,
/// is a whole packet).
#[inline(always)]
pub fn ipv6_chain(c: &Cursor, off: usize, gate: Gate) -> Result<Ipv6Chain, Reason> {
    let ip: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 40-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    if h[0] >> 4 != 6 {
        return Err(Reason::DropBadL3);
    }
    // SAFETY: bytes 24..40 of the 40-byte header, inside the packet.
    gate.check(fold_v6_words(unsafe { words16(ip as usize + 24) }))?;
    let payload_len = be16([h[4], h[5]]) as usize;
    if payload_len > c.remaining(off + 40) {
        return Err(Reason::DropTruncatedL3);
    }
    let mut ch = Ipv6Chain {
        next: h[6],
        l4_off: off + 40,
        l4_len: payload_len,
        first_frag: false,
        later_frag: false,
        frag_id: 0,
    };
    for _ in 0..MAX_IPV6_EXT {
        let ext_len = match ch.next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let e: *const [u8; 2] = c.ptr(ch.l4_off).ok_or(Reason::DropTruncatedL3)?;
                // SAFETY: the two-byte extension prefix lies inside the packet.
                let (nh, len) = unsafe { ((*e)[0], (*e)[1] as usize) };
                let is_ah = ch.next == IPPROTO_AH;
                ch.next = nh;
                if is_ah { (len + 2) * 4 } else { (len + 1) * 8 }
            }
            IPPROTO_FRAGMENT => {
                let e: *const [u8; 8] = c.ptr(ch.l4_off).ok_or(Reason::DropTruncatedL3)?;
                // SAFETY: the 8-byte fragment header lies inside the packet.
                let e = unsafe { &*e };
                ch.next = e[0];
                let off_m = be16([e[2], e[3]]);
                ch.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                ch.first_frag = off_m & 1 != 0;
                ch.later_frag = off_m >> 3 != 0;
                8
            }
            _ => break,
        };
        if ext_len > ch.l4_len {
            return Err(Reason::DropTruncatedL3);
        }
        ch.l4_off += ext_len;
        ch.l4_len -= ext_len;
        if ch.later_frag {
            return Ok(ch);
        }
    }
    match ch.next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Err(Reason::PassIpv6ExtLimit)
        }
        IPPROTO_NONE => Err(Reason::PassNotL4),
        _ => Ok(ch),
    }
}

/// IPv6 (with up to four extension headers) and L4 from `off`.
#[inline(always)]
pub fn ipv6(
    c: &Cursor,
    off: usize,
    unicast: bool,
    gate: Gate,
) -> Result<Parsed<FlowKeyV6>, Reason> {
    let ch = ipv6_chain(c, off, gate)?;
    if ch.later_frag {
        // No ports here: `frag::later_v6` follows it.
        return Err(Reason::PassFragment);
    }
    let l4 = parse_l4(c, ch.l4_off, ch.l4_len, ch.next)?;
    let ip: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: bytes 8..40 of the 40-byte fixed header, inside the packet.
    let (src, dst) = unsafe { (words16(ip as usize + 8), words16(ip as usize + 24)) };
    let key = FlowKeyV6 {
        src: bytes16(src),
        dst: bytes16(dst),
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: ch.next,
        ..FlowKeyV6::default()
    };
    let mut p = l4.parsed(key, ch.next, unicast);
    p.first_frag = ch.first_frag;
    p.frag_id = ch.frag_id;
    Ok(p)
}

/// The 16 bytes at `p` (an IPv6 address) as four words of their memory
/// order, four loads (`wire`).
///
/// # Safety
/// `p..p + 16` lies inside the packet.
#[inline(always)]
unsafe fn words16(p: usize) -> [u32; 4] {
    // SAFETY: per the caller.
    unsafe {
        [
            wire::load_u32(p),
            wire::load_u32(p + 4),
            wire::load_u32(p + 8),
            wire::load_u32(p + 12),
        ]
    }
}

/// [`words16`]' bytes again, in memory order.
#[inline(always)]
fn bytes16(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: 16 plain bytes either way; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// The source and destination ports (as on the wire) of the TCP or UDP
/// header at `p`: its first 4 bytes.
///
/// # Safety
/// `p..p + 4` lies inside the packet.
#[inline(always)]
unsafe fn ports(p: usize) -> (u16, u16) {
    // SAFETY: per the caller.
    unsafe { (wire::load_u16(p), wire::load_u16(p + 2)) }
}

/// What the L4 header says.
struct L4 {
    sport_be: u16,
    dport_be: u16,
    tcp_flags: u8,
}

impl L4 {
    #[inline(always)]
    fn parsed<K>(self, key: K, proto: u8, unicast: bool) -> Parsed<K> {
        Parsed {
            key,
            dport_be: self.dport_be,
            proto,
            tcp_flags: self.tcp_flags,
            unicast,
            first_frag: false,
            frag_id: 0,
        }
    }
}

#[inline(always)]
fn parse_l4(c: &Cursor, off: usize, l4_len: usize, proto: u8) -> Result<L4, Reason> {
    match proto {
        PROTO_TCP => {
            if l4_len < 20 {
                return Err(Reason::DropTruncatedL4);
            }
            let t: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL4)?;
            // SAFETY: the 20-byte TCP header lies inside the packet.
            let t = unsafe { &*t };
            let doff = ((t[12] >> 4) as usize) * 4;
            if doff < 20 || doff > l4_len {
                return Err(Reason::DropBadL4);
            }
            // SAFETY: the ports are the header's first 4 bytes (inside).
            let (sport_be, dport_be) = unsafe { ports(t.as_ptr() as usize) };
            Ok(L4 {
                sport_be,
                dport_be,
                tcp_flags: t[13],
            })
        }
        PROTO_UDP => {
            if l4_len < 8 {
                return Err(Reason::DropTruncatedL4);
            }
            let u: *const [u8; 8] = c.ptr(off).ok_or(Reason::DropTruncatedL4)?;
            // SAFETY: the 8-byte UDP header lies inside the packet.
            let u = unsafe { &*u };
            // SAFETY: the ports are the header's first 4 bytes (inside).
            let (sport_be, dport_be) = unsafe { ports(u.as_ptr() as usize) };
            Ok(L4 {
                sport_be,
                dport_be,
                tcp_flags: 0,
            })
        }
        _ => Err(Reason::PassNotL4),
    }
}
