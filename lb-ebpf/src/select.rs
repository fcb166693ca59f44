//! Backend selection: the flow tables, CA steering, the Maglev table and
//! flood mode.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use lb_common::{
    BACKEND_ACTIVE, BackendInfo, FLOOD_WINDOW_NS, FloodState, FlowValue, LAST_SEEN_GRANULARITY_NS,
    NO_BACKEND, PROTO_TCP, Reason, hash::table_slot, keeps_flows,
};

use crate::{
    family::Family,
    maps::{ACTIVE, BACKENDS, CA_STEER, CLOCK, CONFIG, FLOOD, MAGLEV, REGIONS},
    parse::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// CLOCK_MONOTONIC (coarse) in ns, from jiffies on the line userspace drew
/// (`lb_common::ClockBase`): `bpf_jiffies64()` is inlined into one load,
/// where the clock helper was a call that cost the established path about
/// a tenth of its time. Without a line, the helper.
#[inline(always)]
pub fn now_ns() -> u64 {
    if let Some(c) = CLOCK.get(0)
        && c.ns_per_jiffy != 0
    {
        // SAFETY: helper call without arguments (inlined by the verifier).
        let j = unsafe { bpf_jiffies64() };
        return c
            .base_ns
            .wrapping_add(j.wrapping_sub(c.base_jiffies).wrapping_mul(c.ns_per_jiffy));
    }
    // SAFETY: helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A MAC address as two words in its memory order (bytes 0..4 and 4..6):
/// read from a backend's entry with two aligned loads and written to a
/// frame with two stores (`wire`), where a `[u8; 6]` moved byte by byte
/// (six loads, then six stores).
#[derive(Clone, Copy)]
pub struct Mac {
    pub hi: u32,
    pub lo: u16,
}

const _: () = assert!(core::mem::offset_of!(BackendInfo, mac) == 0);
const _: () = assert!(core::mem::align_of::<BackendInfo>() >= 4);

impl Mac {
    /// The MAC of a backend's entry.
    #[inline(always)]
    pub fn of(be: &BackendInfo) -> Mac {
        let p = be as *const BackendInfo as *const u8;
        // SAFETY: `mac` is the first field of a `BackendInfo`, which is
        // 4-aligned (asserted above): bytes 0..4 and 4..6 are an aligned
        // `u32` and an aligned `u16` inside it.
        unsafe {
            Mac {
                hi: *(p as *const u32),
                lo: *(p.add(4) as *const u16),
            }
        }
    }

    /// From its six bytes.
    #[inline(always)]
    pub fn from_bytes(m: &[u8; 6]) -> Mac {
        Mac {
            hi: u32::from_ne_bytes([m[0], m[1], m[2], m[3]]),
            lo: u16::from_ne_bytes([m[4], m[5]]),
        }
    }

    /// Its six bytes.
    #[inline(always)]
    pub fn bytes(self) -> [u8; 6] {
        let (h, l) = (self.hi.to_ne_bytes(), self.lo.to_ne_bytes());
        [h[0], h[1], h[2], h[3], l[0], l[1]]
    }
}

/// The backend a packet goes to.
pub struct Choice {
    pub backend_id: u32,
    pub mac: Mac,
    /// `FORWARD_*`: how the packet reaches the backend.
    pub forwarding: u8,
    /// The packet opened a connection (see `BackendStats::new_flows`).
    pub new_flow: bool,
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static BackendInfo> {
    BACKENDS.get(id)
}

#[inline(always)]
pub fn is_syn<K>(pkt: &Parsed<K>) -> bool {
    pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The agent is ending its connection (FIN or RST).
#[inline(always)]
fn is_close<K>(pkt: &Parsed<K>) -> bool {
    pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// What the flow table says about a packet's flow.
pub enum Known {
    /// No entry.
    Miss,
    /// An entry whose backend may no longer take it (removed, down, id
    /// reused, or drained and this is a new SYN): re-pick and overwrite.
    Stale,
    /// Not looked up: a SYN while this CPU is in flood mode ([`flooding`]
    /// said so, and found this CPU's flood state there, which the pick
    /// counts the SYN in without looking it up again).
    Flood(*mut FloodState),
}

/// The established-flow fast path: one hash lookup in the family's table,
/// and the backend the flow was given, if it may still have it. The entry
/// itself says where the flow goes, so no VIP lookup is needed.
#[inline(always)]
pub fn established<K: Family>(pkt: &Parsed<K>) -> Result<Choice, Known> {
    let Some(p) = K::flows().get_ptr_mut(pkt.key) else {
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
    // CLOCK_MONOTONIC at jiffy resolution: enough for one-second
    // granularity, and cheaper than reading the clocksource (in a VM, a
    // paravirtual clock read) on every established packet.
    let now = now_ns();
    let close = is_close(pkt) && v.closed_ns == 0;
    if close || now.saturating_sub(v.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
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
        backend_id: v.backend_id,
        mac: Mac::of(be),
        forwarding: be.forwarding,
        new_flow: false,
    })
}

/// CA VIP: every flow goes to the CA backend userspace marked active. No
/// flow table: the steering map alone decides.
#[inline(always)]
pub fn ca<K>(service_id: u32, pkt: &Parsed<K>) -> Result<Choice, Reason> {
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
        backend_id: id,
        mac: Mac::of(be),
        forwarding: be.forwarding,
        new_flow: is_syn(pkt),
    })
}

/// Compiler VIP, flow not (usably) known: a Maglev pick, remembered when
/// the packet opens a connection and this CPU is not in flood mode.
#[inline(always)]
pub fn compiler<K: Family>(
    service_id: u32,
    pkt: &Parsed<K>,
    known: Known,
) -> Result<Choice, Reason> {
    let id = pick(service_id, pkt)?;
    let be = backend(id).ok_or(Reason::DropNoBackend)?;
    if be.service_id != service_id || !keeps_flows(be.state) {
        return Err(Reason::DropNoBackend);
    }
    // Only a SYN (or UDP, which has no handshake) opens a connection and
    // creates an entry, so a flood of random ACKs cannot evict established
    // flows from the LRU. Another packet of a stale entry (its backend is
    // gone) re-takes the entry for the new pick, so the rest of the flow
    // sticks to it; that is not a new connection.
    let opens = is_syn(pkt) || pkt.proto != PROTO_TCP;
    let stale = matches!(known, Known::Stale);
    // The Maglev pick as it is, not recorded.
    let unrecorded = Choice {
        backend_id: id,
        mac: Mac::of(be),
        forwarding: be.forwarding,
        new_flow: false,
    };
    // A group-addressed frame is passed by `forward`: it records nothing.
    if !pkt.unicast || (!opens && !stale) {
        return Ok(unrecorded);
    }
    // Flood mode: the Maglev table alone, which every LB host agrees on,
    // forwards the SYN; the LRU keeps the established flows. A SYN
    // `flooding` found in flood mode is counted in the state it found,
    // without the clock being read again.
    if let Known::Flood(st) = known {
        count_flood_syn(st);
        return Ok(unrecorded);
    }
    let now = now_ns();
    if opens && under_flood(now) {
        return Ok(unrecorded);
    }
    let v = FlowValue {
        backend_id: id,
        generation: be.generation,
        created_ns: now,
        // A stale entry re-picked by a FIN/RST is already closing.
        closed_ns: if is_close(pkt) { now } else { 0 },
        last_seen_ns: now,
    };
    // A full LRU evicts its least recently used entry; an insert can only
    // fail for want of memory, and the packet still goes out.
    let _ = K::flows().insert(pkt.key, v, 0);
    Ok(Choice {
        new_flow: opens,
        ..unrecorded
    })
}

/// This CPU is in flood mode now (a peek: nothing is counted): its flood
/// state, if so. Reads the clock only past the threshold, so a SYN outside
/// a flood pays two array loads for it. In flood mode a SYN skips the flow
/// table altogether (see `lb`): a spoofed SYN would only miss there, and
/// that miss, in a table of a million entries, is most of what it costs.
#[inline(always)]
pub fn flooding() -> Option<*mut FloodState> {
    let threshold = match CONFIG.get(0) {
        Some(c) if c.flood_threshold != 0 => c.flood_threshold as u64,
        _ => return None,
    };
    let st = FLOOD.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array (see `under_flood`).
    let (attempts, start) = unsafe { ((*st).attempts, (*st).window_start_ns) };
    if attempts <= threshold {
        return None;
    }
    (now_ns().saturating_sub(start) < FLOOD_WINDOW_NS).then_some(st)
}

/// A SYN [`flooding`] found in flood mode (`st`, this CPU's flood state),
/// forwarded without an entry: counted as [`under_flood`] would count it
/// (the window is open and past the threshold, so it only adds to the
/// attempts and the flood SYNs).
#[inline(always)]
fn count_flood_syn(st: *mut FloodState) {
    // SAFETY: this CPU's slot of a per-CPU array, from `flooding` in this
    // run (see `under_flood`).
    unsafe {
        (*st).attempts += 1;
        (*st).flood_syns += 1;
    }
}

/// Katran's `is_under_flood`, per CPU: count the flow creations asked for
/// in the current one-second window; past the configured threshold, say no
/// (and count it) until the window ends.
#[inline(always)]
fn under_flood(now: u64) -> bool {
    let threshold = match CONFIG.get(0) {
        Some(c) if c.flood_threshold != 0 => c.flood_threshold as u64,
        _ => return false,
    };
    let Some(st) = FLOOD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the run and
    // touched by no other CPU.
    unsafe {
        if now.saturating_sub((*st).window_start_ns) >= FLOOD_WINDOW_NS {
            (*st).window_start_ns = now;
            (*st).attempts = 0;
        }
        (*st).attempts += 1;
        if (*st).attempts <= threshold {
            return false;
        }
        if (*st).attempts == threshold + 1 {
            (*st).flood_windows += 1;
        }
        (*st).flood_syns += 1;
    }
    true
}

/// The backend a packet about flow `pkt` belongs to, for traffic that
/// must follow the flow but never changes it (ICMP errors quoting it): the
/// flow table's entry if its backend still keeps flows, else the Maglev
/// pick, which is where the flow's next packet would go. Writes nothing.
#[inline(always)]
pub fn owner<K: Family>(service_id: u32, pkt: &Parsed<K>) -> Option<Choice> {
    if let Some(p) = K::flows().get_ptr(pkt.key) {
        // SAFETY: a value pointer from a map lookup, valid for this run
        // (plain integers, see `established`).
        let v = unsafe { *p };
        if let Some(c) = recorded(v.backend_id, v.generation) {
            return Some(c);
        }
    }
    let id = pick(service_id, pkt).ok()?;
    let be = backend(id)?;
    if be.service_id != service_id || !keeps_flows(be.state) {
        return None;
    }
    Some(Choice {
        backend_id: id,
        mac: Mac::of(be),
        forwarding: be.forwarding,
        new_flow: false,
    })
}

/// A backend recorded for a flow or a datagram, if it still keeps flows and
/// its id was not given to another host since (same generation).
#[inline(always)]
pub fn recorded(backend_id: u32, generation: u32) -> Option<Choice> {
    let be = backend(backend_id)?;
    if !keeps_flows(be.state) || be.generation != generation {
        return None;
    }
    Some(Choice {
        backend_id,
        mac: Mac::of(be),
        forwarding: be.forwarding,
        new_flow: false,
    })
}

/// Index the service's active Maglev table with the flow hash.
#[inline(always)]
fn pick<K: Family>(service_id: u32, pkt: &Parsed<K>) -> Result<u32, Reason> {
    let copy = *ACTIVE.get(service_id).ok_or(Reason::DropInternal)? & 1;
    let region = REGIONS
        .get(service_id * 2 + copy)
        .ok_or(Reason::DropInternal)?;
    let (base, size) = (region.base, region.size);
    if size == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = base.wrapping_add(table_slot(pkt.key.hash(), size));
    let id = *MAGLEV.get(slot).ok_or(Reason::DropInternal)?;
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    Ok(id)
}
