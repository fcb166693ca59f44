//! Per-CPU counters. Per-CPU array slots are private to the CPU running the
//! program, so plain adds are race-free and no cache line is shared.
//!
//! A forwarded packet writes one record, its backend's; passes and drops
//! write their reason's. Userspace derives service totals and the `tx_*`
//! reasons from the backend records.

use crate::maps::{BACKEND_STATS, REASON_STATS, SERVICE_DROPS};
use lb_common::Reason;

/// A packet passed or dropped.
#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    if let Some(c) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU array slot, valid for the program's run and only
        // touched by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// A packet forwarded to a backend.
#[inline(always)]
pub fn count_forward(backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
            (*b).new_flows += new_flow as u64;
        }
    }
}

/// A packet for a service dropped for want of a backend (on top of its
/// reason counter, which does not say which service).
#[inline(always)]
pub fn count_no_backend(service_id: u32) {
    if let Some(s) = SERVICE_DROPS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *s += 1 }
    }
}
