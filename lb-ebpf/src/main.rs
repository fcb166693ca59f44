//! voxlb data plane. Read top to bottom: parse; one array load drops out
//! early for destinations no VIP uses and tells whether a compiler VIP can
//! be the destination; only then is the family's flow table read, and an
//! established flow goes where it says; otherwise match the VIP, refuse
//! sources that claim to be a VIP, and choose a backend (CA steering, or
//! Maglev with flood mode); rewrite L2 and transmit, or encapsulate for a
//! routed backend (`encap`). A pass or drop is counted under its reason, a
//! forwarded packet in its backend's record.
//! Packets without ports of their own follow a flow instead: an ICMP error
//! quoting a VIP's reply goes to that flow's backend (`icmp`), a later
//! fragment to where its datagram's first fragment went (`frag`).
#![no_std]
#![no_main]

mod encap;
mod family;
mod frag;
mod icmp;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    FORWARD_L2, KIND_CA, KIND_COMPILER, Reason, VipInfo,
    hash::{self, vip_slot},
    maps::{PROG_ENCAP, PROG_FIRST_FRAG, PROG_FRAG, PROG_ICMP},
    wire,
};

use crate::{
    family::Family,
    maps::{VIP_DIRECT, VIP_FILTER, VIPS},
    parse::{Cursor, Gate, L3, Parsed},
};

#[xdp]
// Inlined into the entry the macro generates: as a called function it would
// take the packet pointers as arguments and re-extend them (a shift the
// verifier refuses on a pointer).
#[inline(always)]
pub fn voxlb(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    // A forwarded packet is counted in its backend's record by `forward`.
    finish(try_lb(&ctx, &c, len), len)
}

/// The encapsulating program, reached only by tail call from [`voxlb`]
/// (through `vx_progs_v2`) for a packet to a routed backend: see
/// `encap`. Never attached to an interface.
#[xdp]
pub fn voxlb_encap(ctx: XdpContext) -> u32 {
    let len = Cursor::new(&ctx).len();
    finish(encap::run(&ctx), len)
}

/// `Ok` with the XDP action after rewriting the frame for its backend;
/// `Err` with the reason for passing or dropping it untouched (or for the
/// answer written in its place).
#[inline(always)]
fn try_lb(ctx: &XdpContext, c: &Cursor, len: u64) -> Result<u32, Reason> {
    let (l3, off, unicast) = parse::l2(c)?;
    // Packets without ports of their own are steered by what they carry:
    // ICMP errors by the flow they quote, later fragments by their first.
    match l3 {
        L3::V4 => match parse::ipv4(c, off, unicast, Gate::Vips) {
            Ok(pkt) => lb(ctx, c, pkt, len),
            Err(r) => elsewhere(ctx, r),
        },
        L3::V6 => match parse::ipv6(c, off, unicast, Gate::Vips) {
            Ok(pkt) => lb(ctx, c, pkt, len),
            Err(r) => elsewhere(ctx, r),
        },
    }
}

/// A packet without ports of its own (ICMP, a later fragment) goes on in
/// the program of its kind, by tail call: those paths are rare, and their
/// stack would not fit in this one's. The reason stands if the call fails
/// (the program array is empty while loading), which was the verdict
/// before ICMP steering and fragment tracking existed.
#[inline(always)]
fn elsewhere(ctx: &XdpContext, r: Reason) -> Result<u32, Reason> {
    let slot = match r {
        Reason::PassNotL4 => PROG_ICMP,
        Reason::PassFragment => PROG_FRAG,
        r => return Err(r),
    };
    // SAFETY: tail call with this program's context; returns only on
    // failure.
    unsafe { maps::PROGS.tail_call(ctx, slot) };
    Err(r)
}

/// The ICMP program (tail-called for a packet that is neither TCP nor
/// UDP): an ICMP error about a VIP flow goes to that flow's backend
/// (`icmp`); anything else is passed as before.
#[xdp]
pub fn voxlb_icmp(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    let r = parse::l2(&c).and_then(|(l3, off, unicast)| match l3 {
        L3::V4 => icmp::v4(&ctx, &c, off, unicast, len),
        L3::V6 => icmp::v6(&ctx, &c, off, unicast, len),
    });
    finish(r, len)
}

/// The fragment program (tail-called for a fragment that is not a first
/// one): it goes where its datagram's first fragment went (`frag`).
#[xdp]
pub fn voxlb_frag(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    let r = parse::l2(&c).and_then(|(l3, off, unicast)| match l3 {
        L3::V4 => frag::later_v4(&ctx, &c, off, unicast, len),
        L3::V6 => frag::later_v6(&ctx, &c, off, unicast, len),
    });
    finish(r, len)
}

/// The first-fragment program (tail-called by `forward` for a first
/// fragment, its backend chosen): records the datagram for the later
/// fragments, then forwards it (`frag::first`).
#[xdp]
pub fn voxlb_first_frag(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    let len = c.len();
    finish(frag::first(&ctx, &c), len)
}

/// Never attached: userspace runs it with BPF_PROG_TEST_RUN to read
/// jiffies and the coarse CLOCK_MONOTONIC at one instant (the frame's first
/// 16 bytes, in that order), from which it draws the data plane's clock
/// line (`lb_common::ClockBase`, `select::now_ns`).
#[xdp]
pub fn voxlb_clock(ctx: XdpContext) -> u32 {
    let c = Cursor::new(&ctx);
    if let Some(p) = c.ptr::<[u64; 2]>(0) {
        // SAFETY: helper calls without arguments; the 16 bytes lie inside
        // the frame (checked by `ptr`), written unaligned.
        unsafe {
            let v = [bpf_jiffies64(), bpf_ktime_get_coarse_ns()];
            core::ptr::write_unaligned(p, v);
        }
    }
    xdp_action::XDP_PASS
}

/// The verdict of a program (the packet path or a tail-called one): the
/// action, or the reason counted.
#[inline(always)]
fn finish(r: Result<u32, Reason>, len: u64) -> u32 {
    match r {
        Ok(action) => action,
        Err(reason) => {
            stats::count_reason(reason, len);
            reason.verdict().action()
        }
    }
}

/// The packet path after parsing, for one address family.
#[inline(always)]
fn lb<K: Family>(ctx: &XdpContext, c: &Cursor, pkt: Parsed<K>, len: u64) -> Result<u32, Reason> {
    let index = vip_slot(pkt.key.dst_fold(), pkt.dport_be);
    // An IPv4 VIP alone in its slot is known from the direct array (one
    // load, the key compared in one word): kind and service at once, so the
    // pre-filter is not read and neither is the VIP map later. Otherwise
    // the pre-filter: nothing there, not ours; no compiler VIP there, CA
    // traffic. CA traffic skips the flow table either way.
    let (compiler, direct) = match direct_vip(&pkt, index) {
        Some(info) => (info.kind != KIND_CA, Some(info)),
        None => {
            let slot = VIP_FILTER.get(index).ok_or(Reason::PassNotVip)?;
            if slot.compiler == 0 && slot.ca == 0 {
                return Err(Reason::PassNotVip);
            }
            (slot.compiler != 0, None)
        }
    };
    let known = if compiler {
        match compiler_flow(&pkt) {
            Ok(choice) => return forward(ctx, c, &pkt, &choice, len),
            Err(known) => known,
        }
    } else {
        select::Known::Miss
    };
    let info = match direct {
        Some(info) => info,
        // SAFETY: VIP values are plain integers written only by userspace;
        // a concurrent update can only make us read an older or newer value.
        None => *unsafe { VIPS.get(pkt.key.vip_key()) }.ok_or(Reason::PassNotVip)?,
    };
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

/// A packet to a compiler VIP: its flow's backend if the flow table knows
/// it (established flows: the table alone decides), else what the table
/// said. A SYN while this CPU is in flood mode neither reads nor writes the
/// flow table: the Maglev table, which every LB host agrees on, sends it
/// (as Katran sends every SYN); established flows keep theirs.
#[inline(always)]
fn compiler_flow<K: Family>(pkt: &Parsed<K>) -> Result<select::Choice, select::Known> {
    if let Some(st) = select::is_syn(pkt).then(select::flooding).flatten() {
        return Err(select::Known::Flood(st));
    }
    select::established(pkt)
}

/// The VIP of an IPv4 packet from the direct array: the one VIP of its
/// pre-filter slot, if the packet's (address, port, protocol) is that VIP's.
#[inline(always)]
fn direct_vip<K: Family>(pkt: &Parsed<K>, index: u32) -> Option<VipInfo> {
    let key = pkt.key.direct_key(pkt.dport_be, pkt.proto)?;
    let &entry = VIP_DIRECT.get(index)?;
    hash::direct_vip(entry, key)
}

/// The source address is one of the VIPs' (a land attack or spoofing).
/// One array load on the address; a hash lookup only when a VIP address
/// hashes to the same slot.
#[inline(always)]
fn spoofed<K: Family>(pkt: &Parsed<K>) -> bool {
    family::from_vip_addr(&pkt.key)
}

/// Rewrite for DSR (or encapsulate for a routed backend) and count the
/// packet in its backend's record; a first fragment's datagram is recorded
/// for its later fragments. The tx reason (compiler or CA) is the backend's
/// service's kind: userspace derives it from the record.
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
    if pkt.first_frag {
        // Recorded for the later fragments, then forwarded, by the
        // first-fragment program (its stack is its own).
        return encap::hand_over(ctx, choice, len, PROG_FIRST_FRAG);
    }
    if choice.forwarding != FORWARD_L2 {
        // Counted by the encapsulating program once sent.
        return encap::hand_over(ctx, choice, len, PROG_ENCAP);
    }
    rewrite_l2(c, choice.mac)?;
    stats::count_forward(choice.backend_id, len, choice.new_flow);
    Ok(xdp_action::XDP_TX)
}

/// Direct server return: the frame goes to the backend's MAC, from the MAC
/// it was addressed to (ours), with L3 and above untouched.
#[inline(always)]
pub(crate) fn rewrite_l2(c: &Cursor, backend_mac: select::Mac) -> Result<(), Reason> {
    let eth: *mut [u8; 12] = c.ptr(0).ok_or(Reason::DropTruncatedL2)?;
    let p = eth as usize;
    // Word moves (`wire`): byte moves were 24 instructions here, and a
    // `copy_from_slice` from a map value a call of a `memmove` subprogram.
    // SAFETY: the 12 address bytes of the frame lie inside the packet
    // (checked by `ptr`).
    unsafe { wire::dsr_macs(p, backend_mac.hi, backend_mac.lo) };
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
