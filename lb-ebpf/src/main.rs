//! voxlb data plane. Read top to bottom: parse; drop out early for ports no
//! VIP uses; an established compiler flow goes where the flow table says;
//! otherwise match the VIP and choose a backend (CA steering or Maglev);
//! rewrite L2 and transmit. Every outcome is counted under one reason.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{KIND_CA, KIND_COMPILER, Reason, VipKey, reason::Verdict};

use crate::{
    maps::{VIP_PORTS, VIPS},
    parse::Cursor,
};

#[xdp]
pub fn voxlb(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    let reason = match try_lb(&c, len) {
        Ok(r) | Err(r) => r,
    };
    stats::count_reason(reason, len);
    match reason.verdict() {
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// `Ok` with a forwarding reason after rewriting the frame; `Err` with the
/// reason for passing or dropping it untouched.
#[inline(always)]
fn try_lb(c: &Cursor, len: u64) -> Result<Reason, Reason> {
    let pkt = parse::parse(c)?;
    // Pre-filter: a port no VIP uses is not ours (one array load).
    let dport = u16::from_be(pkt.key.dport_be) as u32;
    if VIP_PORTS.get(dport).is_none_or(|n| *n == 0) {
        return Err(Reason::PassNotVip);
    }
    // Established compiler flows: the flow table alone decides.
    let known = match select::established(&pkt) {
        Ok(choice) => return forward(c, &pkt, &choice, len, Reason::TxCompiler),
        Err(known) => known,
    };
    let vip = VipKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    let Some(info) = VIPS.get_ptr(vip) else {
        return Err(Reason::PassNotVip);
    };
    // SAFETY: a value pointer from a map lookup, valid for this run.
    let info = unsafe { *info };
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

/// Rewrite for DSR and count the packet for its service and backend.
#[inline(always)]
fn forward(
    c: &Cursor,
    pkt: &parse::Parsed,
    choice: &select::Choice,
    len: u64,
    reason: Reason,
) -> Result<Reason, Reason> {
    if !pkt.unicast {
        // A VIP packet sent to a group address: not something we route.
        return Err(Reason::PassNotUnicast);
    }
    rewrite_l2(c, &choice.mac)?;
    stats::count_forward(choice.service_id, choice.backend_id, len, choice.new_flow);
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
