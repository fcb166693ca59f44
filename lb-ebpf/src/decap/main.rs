//! voxlb-decap: the compiler side of routed forwarding. Strips the IPIP or
//! GUE outer headers of packets addressed to this host whose inner
//! destination is a configured VIP, and passes the inner packet up the
//! stack (the VIP lives on `lo`). Everything else is passed untouched: this
//! program never drops, it only decides whether a frame is ours to unwrap.
//! One reason counted per frame (lb_common::decap::DecapReason).
//!
//! Read top to bottom: Ethernet; the outer IPv4 or IPv6 header (what it
//! carries, addressed to us, well formed); the GUE layer if UDP; the inner
//! header (its version, a VIP); strip and rewrite the Ethernet header.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Counter,
    decap::{
        self as names, DECAP_REASON_COUNT, DecapAddr, DecapConfig, DecapReason as R,
        MAX_DECAP_LOCALS, MAX_DECAP_VIPS,
    },
};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const GUE_V0_HLEN: usize = 4;
/// IPv6 next-header values that are extension headers.
const IPV6_EXT: [u8; 6] = [0, 43, 44, 51, 60, 135];

// The #[map] attribute needs literals; the assertions tie them to lb-common.
const _: () = assert!(
    names::ALL.len() == 4,
    "a decap map was added: declare it here"
);
const _: () = assert!(same("vxd_vips_v1", names::VIPS));
const _: () = assert!(same("vxd_locals_v1", names::LOCALS));
const _: () = assert!(same("vxd_config_v1", names::CONFIG));
const _: () = assert!(same("vxd_stats_v1", names::STATS));

#[map(name = "vxd_vips_v1")]
static VIPS: HashMap<DecapAddr, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);
#[map(name = "vxd_locals_v1")]
static LOCALS: HashMap<DecapAddr, u32> = HashMap::with_max_entries(MAX_DECAP_LOCALS, 0);
#[map(name = "vxd_config_v1")]
static CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);
#[map(name = "vxd_stats_v1")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DECAP_REASON_COUNT, 0);

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[xdp]
pub fn voxlb_decap(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let reason = match try_decap(&ctx) {
        Ok(r) | Err(r) => r,
    };
    if let Some(c) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, valid for this run and touched only by
        // this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    xdp_action::XDP_PASS
}

/// Bounds-checked access to the packet.
struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    fn new(ctx: &XdpContext) -> Self {
        Cursor {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Pointer to a `T` at `off`, if the whole `T` lies inside the packet.
    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(p as *mut T)
    }

    /// A copy of the `N` bytes at `off`.
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p: *const [u8; N] = self.ptr(off)?;
        // SAFETY: the N bytes lie inside the packet (checked by `ptr`).
        Some(unsafe { *p })
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// What the outer layers hold: where the inner packet starts, how long the
/// outer layers say it is, and its IP protocol (4 or 41).
struct Outer {
    inner_off: usize,
    inner_len: usize,
    inner_proto: u8,
    reason: R,
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<R, R> {
    let c = Cursor::new(ctx);
    let eth: [u8; ETH_HLEN] = c.read(0).ok_or(R::PassTruncated)?;
    let outer = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IPV4 => outer_v4(&c)?,
        ETH_P_IPV6 => outer_v6(&c)?,
        _ => return Err(R::PassNotIp),
    };
    let inner_ethertype = inner(&c, &outer)?;
    // Strip: the inner packet moves to just after a new Ethernet header
    // with the same addresses (ours and the sender's next hop).
    let strip = outer.inner_off - ETH_HLEN;
    // SAFETY: a helper call on this program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Err(R::PassAdjustFailed);
    }
    let c = Cursor::new(ctx);
    let new_eth: *mut [u8; ETH_HLEN] = c.ptr(0).ok_or(R::PassAdjustFailed)?;
    let mut hdr = eth;
    let et = inner_ethertype.to_be_bytes();
    hdr[12] = et[0];
    hdr[13] = et[1];
    // SAFETY: the 14 bytes lie inside the (adjusted) packet.
    unsafe { *new_eth = hdr };
    Ok(outer.reason)
}

/// Outer IPv4: IPIP (4, 41) or UDP to the GUE port, to one of our addresses,
/// not a fragment, a valid header (options allowed, checksum verified).
#[inline(always)]
fn outer_v4(c: &Cursor) -> Result<Outer, R> {
    let h: [u8; 20] = c.read(ETH_HLEN).ok_or(R::PassTruncated)?;
    if h[0] >> 4 != 4 {
        return Err(R::PassBadOuter);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(R::PassBadOuter);
    }
    let proto = h[9];
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 && proto != IPPROTO_UDP {
        return Err(R::PassNotEncap);
    }
    // MF set or a non-zero offset: a piece of a datagram we cannot unwrap.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(R::PassFragment);
    }
    let l3_room = c.len() - ETH_HLEN;
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if ihl > l3_room || tot_len < ihl || tot_len > l3_room {
        return Err(R::PassTruncated);
    }
    let (payload_off, payload_len, inner_proto, reason) = if proto == IPPROTO_UDP {
        let (off, len, p) = gue(c, ETH_HLEN + ihl, tot_len - ihl)?;
        (off, len, p, R::DecapGue4)
    } else {
        (ETH_HLEN + ihl, tot_len - ihl, proto, R::DecapIpip4)
    };
    let dst = DecapAddr::v4([h[16], h[17], h[18], h[19]]);
    if LOCALS.get_ptr(dst).is_none() {
        return Err(R::PassNotLocal);
    }
    if !v4_header_ok(c, ihl) {
        return Err(R::PassBadOuter);
    }
    Ok(Outer {
        inner_off: payload_off,
        inner_len: payload_len,
        inner_proto,
        reason,
    })
}

/// The IPv4 header checksum (IHL words, options included) sums to 0xffff.
#[inline(always)]
fn v4_header_ok(c: &Cursor, ihl: usize) -> bool {
    let mut sum: u32 = 0;
    for i in 0..30usize {
        if i * 2 >= ihl {
            break;
        }
        let Some(w) = c.read::<2>(ETH_HLEN + i * 2) else {
            return false;
        };
        sum += u16::from_be_bytes(w) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// Outer IPv6 without extension headers: IPIP (4, 41) or UDP to the GUE
/// port, to one of our addresses.
#[inline(always)]
fn outer_v6(c: &Cursor) -> Result<Outer, R> {
    let h: [u8; IPV6_HLEN] = c.read(ETH_HLEN).ok_or(R::PassTruncated)?;
    if h[0] >> 4 != 6 {
        return Err(R::PassBadOuter);
    }
    let next = h[6];
    if next != IPPROTO_IPIP && next != IPPROTO_IPV6 && next != IPPROTO_UDP {
        if IPV6_EXT.contains(&next) {
            return Err(R::PassIpv6Ext);
        }
        return Err(R::PassNotEncap);
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    if IPV6_HLEN + payload_len > c.len() - ETH_HLEN {
        return Err(R::PassTruncated);
    }
    let start = ETH_HLEN + IPV6_HLEN;
    let (payload_off, inner_len, inner_proto, reason) = if next == IPPROTO_UDP {
        let (off, len, p) = gue(c, start, payload_len)?;
        (off, len, p, R::DecapGue6)
    } else {
        (start, payload_len, next, R::DecapIpip6)
    };
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[24..40]);
    if LOCALS.get_ptr(DecapAddr::v6(a)).is_none() {
        return Err(R::PassNotLocal);
    }
    Ok(Outer {
        inner_off: payload_off,
        inner_len,
        inner_proto,
        reason,
    })
}

/// UDP at `off` (with `room` bytes of IP payload) to the GUE port, then a
/// GUE version 1 (direct IP) or a plain version 0 header. Returns where the
/// inner packet starts, its length per the UDP header, and its protocol.
/// The UDP checksum is not verified: see the README ("Routed compilers").
#[inline(always)]
fn gue(c: &Cursor, off: usize, room: usize) -> Result<(usize, usize, u8), R> {
    let u: [u8; UDP_HLEN] = c.read(off).ok_or(R::PassTruncated)?;
    let port = CONFIG.get(0).map(|cfg| cfg.gue_port_be).unwrap_or(0);
    if port == 0 || u16::from_ne_bytes([u[2], u[3]]) != port {
        return Err(R::PassNotEncap);
    }
    let udp_len = u16::from_be_bytes([u[4], u[5]]) as usize;
    if udp_len < UDP_HLEN || udp_len > room {
        return Err(R::PassTruncated);
    }
    let g_off = off + UDP_HLEN;
    let g_len = udp_len - UDP_HLEN;
    // Four bytes: a GUE v0 header, or the start of an inner IP header.
    let b: [u8; 4] = c.read(g_off).ok_or(R::PassTruncated)?;
    match b[0] >> 6 {
        // Direct IP: the first nibble is the inner IP version.
        1 => match b[0] >> 4 {
            4 => Ok((g_off, g_len, IPPROTO_IPIP)),
            6 => Ok((g_off, g_len, IPPROTO_IPV6)),
            _ => Err(R::PassGueUnsupported),
        },
        0 => {
            let g = b;
            if g_len < GUE_V0_HLEN {
                return Err(R::PassTruncated);
            }
            // C bit (control message) or options (hlen > 0): not ours.
            if g[0] & 0x3f != 0 || (g[1] != IPPROTO_IPIP && g[1] != IPPROTO_IPV6) {
                return Err(R::PassGueUnsupported);
            }
            Ok((g_off + GUE_V0_HLEN, g_len - GUE_V0_HLEN, g[1]))
        }
        _ => Err(R::PassGueUnsupported),
    }
}

/// The inner header: the version the outer layer announced, complete, to a
/// VIP. Returns the ethertype of the inner packet.
#[inline(always)]
fn inner(c: &Cursor, o: &Outer) -> Result<u16, R> {
    if o.inner_proto == IPPROTO_IPIP {
        let h: [u8; 20] = c.read(o.inner_off).ok_or(R::PassTruncated)?;
        if o.inner_len < 20 {
            return Err(R::PassTruncated);
        }
        if h[0] >> 4 != 4 {
            return Err(R::PassBadInner);
        }
        if VIPS
            .get_ptr(DecapAddr::v4([h[16], h[17], h[18], h[19]]))
            .is_none()
        {
            return Err(R::PassNotVip);
        }
        Ok(ETH_P_IPV4)
    } else {
        let h: [u8; IPV6_HLEN] = c.read(o.inner_off).ok_or(R::PassTruncated)?;
        if o.inner_len < IPV6_HLEN {
            return Err(R::PassTruncated);
        }
        if h[0] >> 4 != 6 {
            return Err(R::PassBadInner);
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[24..40]);
        if VIPS.get_ptr(DecapAddr::v6(a)).is_none() {
            return Err(R::PassNotVip);
        }
        Ok(ETH_P_IPV6)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
