//! Backend selection: the flow table, CA steering and the Maglev table.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    BACKEND_ACTIVE, BackendInfo, FlowValue, LAST_SEEN_GRANULARITY_NS, NO_BACKEND, PROTO_TCP,
    Reason, hash::flow_hash, keeps_flows,
};

use crate::{
    maps::{ACTIVE, BACKENDS, CA_STEER, FLOWS, MAGLEV, REGIONS},
    parse::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The backend a packet goes to.
pub struct Choice {
    pub service_id: u32,
    pub backend_id: u32,
    pub mac: [u8; 6],
    /// The flow got its backend from the table (or CA steering) just now.
    pub new_flow: bool,
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static BackendInfo> {
    BACKENDS.get(id)
}

#[inline(always)]
pub fn is_syn(pkt: &Parsed) -> bool {
    pkt.key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The agent is ending its connection (FIN or RST).
#[inline(always)]
fn is_close(pkt: &Parsed) -> bool {
    pkt.key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// What the flow table says about a packet's flow.
pub enum Known {
    /// No entry.
    Miss,
    /// An entry whose backend may no longer take it (removed, down, id
    /// reused, or drained and this is a new SYN): re-pick and overwrite.
    Stale,
}

/// The established-flow fast path: one hash lookup, and the backend the
/// flow was given, if it may still have it. The entry itself says which
/// service it belongs to (through its backend), so no VIP lookup is needed.
#[inline(always)]
pub fn established(pkt: &Parsed) -> Result<Choice, Known> {
    let Some(p) = FLOWS.get_ptr_mut(pkt.key) else {
        return Err(Known::Miss);
    };
    // SAFETY: a value pointer from a map lookup, valid for this run; a
    // concurrent update can only make us read an older or newer value of
    // plain integers.
    let v = unsafe { *p };
    let be = backend(v.backend_id).ok_or(Known::Stale)?;
    // Active, draining and retiring backends keep their flows, but a SYN is
    // a new connection when the backend takes no new ones (draining,
    // retiring) or when the agent already closed this 5-tuple: re-picked.
    let syn = is_syn(pkt);
    let usable = keeps_flows(be.state)
        && !(syn && (be.state != BACKEND_ACTIVE || v.closed_ns != 0))
        && be.generation == v.generation;
    if !usable {
        return Err(Known::Stale);
    }
    // The only writes on this path: the close mark, once per flow, and the
    // coarse last-seen time, at most once per second per flow.
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let close = is_close(pkt) && v.closed_ns == 0;
    if close || now.wrapping_sub(v.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
        // SAFETY: `p` points into the map value (see above); racing writers
        // store timestamps of the same flow, any of which is right.
        unsafe {
            (*p).last_seen_ns = now;
            if close {
                (*p).closed_ns = now;
            }
        }
    }
    Ok(Choice {
        service_id: be.service_id,
        backend_id: v.backend_id,
        mac: be.mac,
        new_flow: false,
    })
}

/// CA VIP: every flow goes to the CA backend userspace marked active.
#[inline(always)]
pub fn ca(service_id: u32, pkt: &Parsed) -> Result<Choice, Reason> {
    let id = *CA_STEER.get(service_id).ok_or(Reason::DropInternal)?;
    if id == NO_BACKEND {
        return Err(Reason::DropNoCa);
    }
    let be = backend(id).ok_or(Reason::DropNoCa)?;
    // The steering slot of a service never set up reads 0: only a backend of
    // this very service, alive, may receive its traffic.
    if be.service_id != service_id || be.state != BACKEND_ACTIVE {
        return Err(Reason::DropNoCa);
    }
    Ok(Choice {
        service_id,
        backend_id: id,
        mac: be.mac,
        new_flow: is_syn(pkt),
    })
}

/// Compiler VIP, flow not (usably) known: a Maglev pick, remembered.
#[inline(always)]
pub fn compiler(service_id: u32, pkt: &Parsed, known: Known) -> Result<Choice, Reason> {
    let id = pick(service_id, pkt)?;
    let be = backend(id).ok_or(Reason::DropNoBackend)?;
    if be.service_id != service_id || !keeps_flows(be.state) {
        return Err(Reason::DropNoBackend);
    }
    // Only a SYN (or UDP, which has no handshake) creates an entry, so a
    // flood of random ACKs cannot evict established flows from the LRU. An
    // existing entry whose backend is gone is overwritten.
    // A group-addressed frame is passed, never forwarded: it records nothing.
    let creates = is_syn(pkt) || pkt.key.proto != PROTO_TCP || matches!(known, Known::Stale);
    if creates && pkt.unicast {
        // SAFETY: helper call without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let v = FlowValue {
            backend_id: id,
            generation: be.generation,
            created_ns: now,
            // A stale entry re-picked by a FIN/RST is already closing.
            closed_ns: if is_close(pkt) { now } else { 0 },
            last_seen_ns: now,
        };
        // A full LRU evicts its least recently used entry; an insert can
        // only fail for want of memory, and the packet still goes out.
        let _ = FLOWS.insert(pkt.key, v, 0);
    }
    Ok(Choice {
        service_id,
        backend_id: id,
        mac: be.mac,
        new_flow: true,
    })
}

/// Index the service's active Maglev table with the flow hash.
#[inline(always)]
fn pick(service_id: u32, pkt: &Parsed) -> Result<u32, Reason> {
    let copy = *ACTIVE.get(service_id).ok_or(Reason::DropInternal)? & 1;
    let region = REGIONS
        .get(service_id * 2 + copy)
        .ok_or(Reason::DropInternal)?;
    let (base, size) = (region.base, region.size);
    if size == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = base.wrapping_add(flow_hash(&pkt.key) % size);
    let id = *MAGLEV.get(slot).ok_or(Reason::DropInternal)?;
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    Ok(id)
}
