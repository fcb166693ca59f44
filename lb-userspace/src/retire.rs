//! Retiring backends: how many of their connections are still open.
//!
//! A removed backend (`voxlb backend remove`, or dropped from the config on
//! reload) is *retiring*: out of the Maglev table, its established flows
//! still forwarded to it (state `RETIRING` in the data plane). The daemon
//! frees its slot once none of its flows is open or closing, or when its
//! `retire_grace` has passed, whichever comes first. Whether a flow is open
//! is [`lb_common::FlowValue::is_open`]; this module only counts, per
//! backend, the flows that still belong to it (same id and generation).
//!
//! Counting is one walk of the flow table in batches, done by the daemon's
//! retire tick only while something is retiring (and once per `remove`), not
//! for every control request.

use std::collections::BTreeMap;

use crate::dataplane::{DataPlane, Result};

/// Flows of one backend, at one scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Connections the agent has not closed ([`lb_common::FlowValue::is_open`]).
    pub open: u64,
    /// Closed so recently that the close's last ACKs may still be on their
    /// way ([`lb_common::FlowValue::is_closing`]).
    pub closing: u64,
}

impl FlowCount {
    /// Nothing left that freeing the slot could break.
    pub fn done(&self) -> bool {
        self.open == 0 && self.closing == 0
    }
}

/// Count the open and closing flows of each backend in `backends`
/// (id -> current generation). Backends without flows are in the result
/// with zero counts.
pub fn count_flows(
    dp: &dyn DataPlane,
    backends: &BTreeMap<u32, u32>,
    now_ns: u64,
) -> Result<BTreeMap<u32, FlowCount>> {
    let mut out: BTreeMap<u32, FlowCount> = backends
        .keys()
        .map(|id| (*id, FlowCount::default()))
        .collect();
    if backends.is_empty() {
        return Ok(out);
    }
    dp.scan_flows(&mut |k, v| {
        if backends.get(&v.backend_id) != Some(&v.generation) {
            return;
        }
        let c = out.entry(v.backend_id).or_default();
        if v.is_open(k.proto, now_ns) {
            c.open += 1;
        } else if v.is_closing(now_ns) {
            c.closing += 1;
        }
    })?;
    Ok(out)
}

/// CLOCK_MONOTONIC in ns: the clock the data plane stamps flow entries
/// with (jiffies on the line of `xdp::calibrate_clock`, within a tick).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
