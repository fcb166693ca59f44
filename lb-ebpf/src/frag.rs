//! Fragments to VIPs. Only a datagram's first fragment carries the ports:
//! it is balanced like any packet of its flow (`parse` lets it through),
//! and once forwarded its datagram is recorded here, (source, destination,
//! IP ID, protocol) -> backend, so that the later fragments follow it to
//! the same backend, which reassembles them.
//!
//! A later fragment whose first was not seen (reordered ahead of it, or
//! the first was not forwarded), or whose backend no longer keeps flows, is
//! passed to the kernel (`pass_fragment`): voxlb cannot know its backend,
//! and sending it to a guess would only make the wrong compiler hold a
//! reassembly buffer. Records are never deleted by the last fragment
//! (fragments reorder); the LRU ages them out.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FORWARD_L2, FlowKeyV4, FlowKeyV6, FragValue, Reason, maps::PROG_ENCAP};

use crate::{
    family::{Family, to_vip_addr},
    maps::{BACKENDS, ENCAP_JOB, FRAGS, PROGS},
    parse::{self, Cursor, L3, Parsed, ipv6_chain},
    select, stats,
};

/// Record the datagram of a first fragment that went to `backend_id`.
#[inline(always)]
pub fn remember<K: Family>(pkt: &Parsed<K>, backend_id: u32) {
    let Some(be) = BACKENDS.get(backend_id) else {
        return;
    };
    let v = FragValue {
        backend_id,
        generation: be.generation,
        sport_be: pkt.key.sport_be(),
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        _pad: 0,
        _pad2: 0,
    };
    // A full LRU evicts its oldest datagram; a failed insert (no memory)
    // only means the later fragments are passed.
    let _ = FRAGS.insert(pkt.key.frag_key(pkt.frag_id), v, 0);
}

/// The first-fragment program's body: the packet path chose the backend
/// (the job); record the datagram, then forward as the packet path would
/// (L2 rewrite, or on to the encapsulating program).
#[inline(always)]
pub fn first(ctx: &XdpContext, c: &Cursor) -> Result<u32, Reason> {
    let job = *ENCAP_JOB.get(0).ok_or(Reason::DropInternal)?;
    let (l3, off, unicast) = parse::l2(c)?;
    match l3 {
        L3::V4 => remember(
            &parse::ipv4(c, off, unicast, parse::Gate::Open)?,
            job.backend_id,
        ),
        L3::V6 => remember(
            &parse::ipv6(c, off, unicast, parse::Gate::Open)?,
            job.backend_id,
        ),
    }
    if job.forwarding != FORWARD_L2 {
        // The job stands for the encapsulating program too.
        // SAFETY: tail call with this program's context; returns only on
        // failure.
        unsafe { PROGS.tail_call(ctx, PROG_ENCAP) };
        return Err(Reason::DropEncap);
    }
    crate::rewrite_l2(c, crate::select::Mac::from_bytes(&job.mac))?;
    stats::count_forward(job.backend_id, job.bytes as u64, job.new_flow != 0);
    Ok(xdp_action::XDP_TX)
}

/// A later IPv4 fragment (already validated by `parse::ipv4`) at `off`.
#[inline(always)]
pub fn later_v4(
    ctx: &XdpContext,
    c: &Cursor,
    off: usize,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    let ip: *const [u8; 20] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 20-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    let key = FlowKeyV4 {
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
        proto: h[9],
        ..FlowKeyV4::default()
    };
    follow(
        ctx,
        c,
        key,
        u16::from_be_bytes([h[4], h[5]]) as u32,
        unicast,
        len,
    )
}

/// A later IPv6 fragment at `off`.
#[inline(always)]
pub fn later_v6(
    ctx: &XdpContext,
    c: &Cursor,
    off: usize,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    let ch = ipv6_chain(c, off, parse::Gate::Open)?;
    if !ch.later_frag {
        return Err(Reason::PassFragment);
    }
    let ip: *const [u8; 40] = c.ptr(off).ok_or(Reason::DropTruncatedL3)?;
    // SAFETY: the 40-byte fixed header lies inside the packet.
    let h = unsafe { &*ip };
    let mut key = FlowKeyV6::default();
    key.src.copy_from_slice(&h[8..24]);
    key.dst.copy_from_slice(&h[24..40]);
    follow(ctx, c, key, ch.frag_id, unicast, len)
}

/// Forward a later fragment where its datagram's first fragment went.
#[inline(always)]
fn follow<K: Family>(
    ctx: &XdpContext,
    c: &Cursor,
    key: K,
    id: u32,
    unicast: bool,
    len: u64,
) -> Result<u32, Reason> {
    // The host's own fragments never touch the table.
    if !to_vip_addr(&key) {
        return Err(Reason::PassNotVip);
    }
    // SAFETY: a value from a map lookup, copied at once (plain integers).
    let v = *unsafe { FRAGS.get(key.frag_key(id)) }.ok_or(Reason::PassFragment)?;
    let choice = select::recorded(v.backend_id, v.generation).ok_or(Reason::PassFragment)?;
    // The first fragment's ports and protocol: forwarded as its flow is.
    let pkt = Parsed {
        key: key.with_l4(v.sport_be, v.dport_be, v.proto),
        dport_be: v.dport_be,
        proto: v.proto,
        tcp_flags: 0,
        unicast,
        first_frag: false,
        frag_id: id,
    };
    crate::forward(ctx, c, &pkt, &choice, len)
}
