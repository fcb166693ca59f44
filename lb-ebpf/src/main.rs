//! voxlb data plane. Read top to bottom: parse; one array load drops out
//! early for destinations no VIP uses and tells whether a compiler VIP can
//! be the destination; only then is the family's flow table read, and an
//! established flow goes where it says; otherwise match the VIP, refuse
//! sources that claim to be a VIP, and choose a backend (CA steering, or
//! Maglev with flood mode); rewrite L2 and transmit. A pass or drop is
//! counted under its reason, a forwarded packet in its backend's record.
//! Packets without ports of their own follow a flow instead: an ICMP error
//! quoting a VIP's reply goes to that flow's backend (`icmp`), a later
//! fragment to where its datagram's first fragment went (`frag`).
#![no_std]
#![no_main]

mod family;
mod frag;
mod icmp;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{KIND_CA, KIND_COMPILER, Reason, hash::vip_slot, reason::Verdict};

use crate::{
    family::Family,
    maps::{VIP_FILTER, VIPS},
    parse::{Cursor, L3, Parsed},
};

#[xdp]
// Inlined into the entry the macro generates: as a called function it would
// take the packet pointers as arguments and re-extend them (a shift the
// verifier refuses on a pointer).
#[inline(always)]
pub fn voxlb(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    match try_lb(&c, len) {
        // Counted in the backend's record by `forward`.
        Ok(_) => xdp_action::XDP_TX,
        Err(reason) => {
            stats::count_reason(reason, len);
            match reason.verdict() {
                Verdict::Tx => xdp_action::XDP_TX,
                Verdict::Pass => xdp_action::XDP_PASS,
                Verdict::Drop => xdp_action::XDP_DROP,
            }
        }
    }
}

/// `Ok` with a forwarding reason after rewriting the frame; `Err` with the
/// reason for passing or dropping it untouched.
#[inline(always)]
fn try_lb(c: &Cursor, len: u64) -> Result<Reason, Reason> {
    let (l3, off, unicast) = parse::l2(c)?;
    // Packets without ports of their own are steered by what they carry:
    // ICMP errors by the flow they quote, later fragments by their first.
    match l3 {
        L3::V4 => match parse::ipv4(c, off, unicast) {
            Ok(pkt) => lb(c, pkt, len),
            Err(Reason::PassNotL4) => icmp::v4(c, off, unicast, len),
            Err(Reason::PassFragment) => frag::later_v4(c, off, unicast, len),
            Err(r) => Err(r),
        },
        L3::V6 => match parse::ipv6(c, off, unicast) {
            Ok(pkt) => lb(c, pkt, len),
            Err(Reason::PassNotL4) => icmp::v6(c, off, unicast, len),
            Err(Reason::PassFragment) => frag::later_v6(c, off, unicast, len),
            Err(r) => Err(r),
        },
    }
}

/// The packet path after parsing, for one address family.
#[inline(always)]
fn lb<K: Family>(c: &Cursor, pkt: Parsed<K>, len: u64) -> Result<Reason, Reason> {
    // Pre-filter: one array load on (destination, port). Nothing there: not
    // ours. No compiler VIP there: CA traffic, which skips the flow table.
    let slot = VIP_FILTER
        .get(vip_slot(pkt.key.dst_fold(), pkt.dport_be))
        .ok_or(Reason::PassNotVip)?;
    let known = if slot.compiler != 0 {
        // Established compiler flows: the flow table alone decides.
        match select::established(&pkt) {
            Ok(choice) => return forward(c, &pkt, &choice, len, Reason::TxCompiler),
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
    let (choice, reason) = match info.kind {
        KIND_COMPILER => (
            select::compiler(info.service_id, &pkt, known),
            Reason::TxCompiler,
        ),
        KIND_CA => (select::ca(info.service_id, &pkt), Reason::TxCa),
        _ => return Err(Reason::PassNotVip),
    };
    match choice {
        Ok(choice) => forward(c, &pkt, &choice, len, reason),
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
    family::from_vip_addr(&pkt.key)
}

/// Rewrite for DSR and count the packet in its backend's record; a first
/// fragment's datagram is recorded for its later fragments.
#[inline(always)]
fn forward<K: Family>(
    c: &Cursor,
    pkt: &Parsed<K>,
    choice: &select::Choice,
    len: u64,
    reason: Reason,
) -> Result<Reason, Reason> {
    if !pkt.unicast {
        // A VIP packet sent to a group address: not something we route.
        return Err(Reason::PassNotUnicast);
    }
    rewrite_l2(c, &choice.mac)?;
    if pkt.first_frag {
        frag::remember(pkt, choice.backend_id);
    }
    stats::count_forward(choice.backend_id, len, choice.new_flow);
    Ok(reason)
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
