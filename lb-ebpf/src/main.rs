//! voxlb data plane. Read top to bottom: parse; one array load drops out
//! early for destinations no VIP uses and tells whether a compiler VIP can
//! be the destination; only then is the family's flow table read, and an
//! established flow goes where it says; otherwise match the VIP, refuse
//! sources that claim to be a VIP, and choose a backend (CA steering, or
//! Maglev with flood mode); rewrite L2 and transmit, or encapsulate for a
//! routed backend (`encap`). A pass or drop is counted under its reason, a
//! forwarded packet in its backend's record.
#![no_std]
#![no_main]

mod encap;
mod family;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    FORWARD_L2, KIND_CA, KIND_COMPILER, Reason,
    hash::{addr_slot, vip_slot},
};

use crate::{
    family::Family,
    maps::{VIP_ADDRS, VIP_FILTER, VIPS},
    parse::{Cursor, L3, Parsed},
};

#[xdp]
pub fn voxlb(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    match try_lb(&ctx, &c, len) {
        // Counted in the backend's record by `forward`.
        Ok(action) => action,
        Err(reason) => {
            stats::count_reason(reason, len);
            reason.verdict().action()
        }
    }
}

/// The encapsulating program, reached only by tail call from [`voxlb`]
/// (through `vx_encap_prog_v2`) for a packet to a routed backend: see
/// `encap`. Never attached to an interface.
#[xdp]
pub fn voxlb_encap(ctx: XdpContext) -> u32 {
    match encap::run(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            let len = Cursor::new(&ctx).len();
            stats::count_reason(reason, len);
            reason.verdict().action()
        }
    }
}

/// `Ok` with the XDP action after rewriting the frame for its backend;
/// `Err` with the reason for passing or dropping it untouched (or for the
/// answer written in its place).
#[inline(always)]
fn try_lb(ctx: &XdpContext, c: &Cursor, len: u64) -> Result<u32, Reason> {
    let (l3, off, unicast) = parse::l2(c)?;
    match l3 {
        L3::V4 => lb(ctx, c, parse::ipv4(c, off, unicast)?, len),
        L3::V6 => lb(ctx, c, parse::ipv6(c, off, unicast)?, len),
    }
}

/// The packet path after parsing, for one address family.
#[inline(always)]
fn lb<K: Family>(ctx: &XdpContext, c: &Cursor, pkt: Parsed<K>, len: u64) -> Result<u32, Reason> {
    // Pre-filter: one array load on (destination, port). Nothing there: not
    // ours. No compiler VIP there: CA traffic, which skips the flow table.
    let slot = VIP_FILTER
        .get(vip_slot(pkt.key.dst_fold(), pkt.dport_be))
        .ok_or(Reason::PassNotVip)?;
    let known = if slot.compiler != 0 {
        // Established compiler flows: the flow table alone decides.
        match select::established(&pkt) {
            Ok(choice) => return forward(ctx, c, &pkt, &choice, len),
            Err(known) => known,
        }
    } else if slot.ca != 0 {
        select::Known::Miss
    } else {
        return Err(Reason::PassNotVip);
    };
    // SAFETY: VIP values are plain integers written only by userspace; a
    // concurrent update can only make us read an older or newer value.
    let info = *unsafe { VIPS.get(pkt.key.vip_key()) }.ok_or(Reason::PassNotVip)?;
    // Nothing is forwarded (nor recorded) for a source that claims to be
    // one of our VIPs. Established flows were checked when they were made.
    if spoofed(&pkt) {
        return Err(Reason::DropSpoofedSource);
    }
    let choice = match info.kind {
        KIND_COMPILER => select::compiler(info.service_id, &pkt, known),
        KIND_CA => select::ca(info.service_id, &pkt),
        _ => return Err(Reason::PassNotVip),
    };
    match choice {
        Ok(choice) => forward(ctx, c, &pkt, &choice, len),
        Err(r) => {
            stats::count_no_backend(info.service_id);
            Err(r)
        }
    }
}

/// The source address is one of the VIPs' (a land attack or spoofing).
/// One array load on the address; a hash lookup only when a VIP address
/// hashes to the same slot.
#[inline(always)]
fn spoofed<K: Family>(pkt: &Parsed<K>) -> bool {
    match VIP_FILTER.get(addr_slot(pkt.key.src_fold())) {
        Some(s) if s.addrs != 0 => VIP_ADDRS.get_ptr(pkt.key.src_key()).is_some(),
        _ => false,
    }
}

/// Rewrite for DSR (or encapsulate for a routed backend) and count the
/// packet in its backend's record. The tx reason (compiler or CA) is the
/// backend's service's kind: userspace derives it from the record.
#[inline(always)]
fn forward<K: Family>(
    ctx: &XdpContext,
    c: &Cursor,
    pkt: &Parsed<K>,
    choice: &select::Choice,
    len: u64,
) -> Result<u32, Reason> {
    if !pkt.unicast {
        // A VIP packet sent to a group address: not something we route.
        return Err(Reason::PassNotUnicast);
    }
    if choice.forwarding != FORWARD_L2 {
        // Counted by the encapsulating program once sent.
        return encap::hand_over(ctx, choice, len);
    }
    rewrite_l2(c, &choice.mac)?;
    stats::count_forward(choice.backend_id, len, choice.new_flow);
    Ok(xdp_action::XDP_TX)
}

/// Direct server return: the frame goes to the backend's MAC, from the MAC
/// it was addressed to (ours), with L3 and above untouched.
#[inline(always)]
fn rewrite_l2(c: &Cursor, backend_mac: &[u8; 6]) -> Result<(), Reason> {
    let eth: *mut [u8; 12] = c.ptr(0).ok_or(Reason::DropTruncatedL2)?;
    // SAFETY: the 12 address bytes lie inside the packet (checked by `ptr`).
    let eth = unsafe { &mut *eth };
    let mut ours = [0u8; 6];
    ours.copy_from_slice(&eth[0..6]);
    eth[0..6].copy_from_slice(backend_mac);
    eth[6..12].copy_from_slice(&ours);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
