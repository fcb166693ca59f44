//! Header parsing: a cursor that each step advances after checking bounds.
//!
//! Every read goes through [`Cursor::ptr`], which checks `start + off + size
//! <= end` against the packet the verifier knows; offsets are kept small and
//! bounded so the verifier can track them.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

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

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the data plane needs to know about a parsed packet.
pub struct Parsed {
    /// 5-tuple, in flow-table key form.
    pub key: FlowKey,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
    /// Addressed to a unicast MAC (ours); group-addressed frames are never
    /// forwarded nor remembered.
    pub unicast: bool,
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

/// Walk L2 and L3 and L4; `Err(reason)` for anything we do not balance.
#[inline(always)]
pub fn parse(c: &Cursor) -> Result<Parsed, Reason> {
    // Ethernet: dst(6) src(6) ethertype(2).
    let eth: *const [u8; ETH_HLEN] = c.ptr(0).ok_or(Reason::DropTruncatedL2)?;
    // SAFETY: `eth` lies inside the packet (checked by `ptr`).
    let mut proto = be16(unsafe { [(*eth)[12], (*eth)[13]] });
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
    let mut parsed = match proto {
        ETH_P_IPV4 => parse_ipv4(c, off),
        ETH_P_IPV6 => parse_ipv6(c, off),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::PassVlanDepth),
        _ => Err(Reason::PassNotIp),
    }?;
    parsed.unicast = unicast;
    Ok(parsed)
}

#[inline(always)]
fn parse_ipv4(c: &Cursor, off: usize) -> Result<Parsed, Reason> {
    let ip: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 20-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    if h[0] >> 4 != 4 {
        return Err(Reason::DropBadL3);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Reason::DropBadL3);
    }
    let tot_len = be16([h[2], h[3]]) as usize;
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
    let frag = be16([h[6], h[7]]);
    if frag & 0x3fff != 0 {
        // MF set or a non-zero offset: see the README on fragments.
        return Err(Reason::PassFragment);
    }
    let proto = h[9];
    let mut key = FlowKey {
        family: FAMILY_V4,
        proto,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&h[12..16]);
    key.dst[..4].copy_from_slice(&h[16..20]);
    parse_l4(c, off + ihl, tot_len - ihl, key)
}

#[inline(always)]
fn parse_ipv6(c: &Cursor, off: usize) -> Result<Parsed, Reason> {
    let ip: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 40-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    if h[0] >> 4 != 6 {
        return Err(Reason::DropBadL3);
    }
    let payload_len = be16([h[4], h[5]]) as usize;
    if payload_len > c.remaining(off + 40) {
        return Err(Reason::DropTruncatedL3);
    }
    let mut key = FlowKey {
        family: FAMILY_V6,
        ..FlowKey::default()
    };
    key.src.copy_from_slice(&h[8..24]);
    key.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4_off = off + 40;
    let mut l4_len = payload_len;
    for _ in 0..MAX_IPV6_EXT {
        let ext_len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let e: *const [u8; 2] = c.ptr(l4_off).ok_or(Reason::DropTruncatedL3)?;
                // SAFETY: the two-byte extension prefix lies inside the packet.
                let (nh, len) = unsafe { ((*e)[0], (*e)[1] as usize) };
                let is_ah = next == IPPROTO_AH;
                next = nh;
                if is_ah { (len + 2) * 4 } else { (len + 1) * 8 }
            }
            IPPROTO_FRAGMENT => return Err(Reason::PassFragment),
            _ => break,
        };
        if ext_len > l4_len {
            return Err(Reason::DropTruncatedL3);
        }
        l4_off += ext_len;
        l4_len -= ext_len;
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
            return Err(Reason::PassIpv6ExtLimit);
        }
        IPPROTO_FRAGMENT => return Err(Reason::PassFragment),
        IPPROTO_NONE => return Err(Reason::PassNotL4),
        _ => {}
    }
    key.proto = next;
    parse_l4(c, l4_off, l4_len, key)
}

#[inline(always)]
fn parse_l4(c: &Cursor, off: usize, l4_len: usize, mut key: FlowKey) -> Result<Parsed, Reason> {
    match key.proto {
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
            key.sport_be = u16::from_ne_bytes([t[0], t[1]]);
            key.dport_be = u16::from_ne_bytes([t[2], t[3]]);
            Ok(Parsed {
                key,
                tcp_flags: t[13],
                unicast: true,
            })
        }
        PROTO_UDP => {
            if l4_len < 8 {
                return Err(Reason::DropTruncatedL4);
            }
            let u: *const [u8; 8] = c.ptr(off).ok_or(Reason::DropTruncatedL4)?;
            // SAFETY: the 8-byte UDP header lies inside the packet.
            let u = unsafe { &*u };
            key.sport_be = u16::from_ne_bytes([u[0], u[1]]);
            key.dport_be = u16::from_ne_bytes([u[2], u[3]]);
            Ok(Parsed {
                key,
                tcp_flags: 0,
                unicast: true,
            })
        }
        _ => Err(Reason::PassNotL4),
    }
}
