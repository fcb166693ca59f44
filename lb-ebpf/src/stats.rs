//! Per-CPU counters. Per-CPU array slots are private to the CPU running the
//! program, so plain adds are race-free and no cache line is shared.

use crate::maps::{BACKEND_STATS, REASON_STATS, SERVICE_STATS};
use lb_common::Reason;

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

/// A packet forwarded for a service to a backend.
#[inline(always)]
pub fn count_forward(service_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    let n = new_flow as u64;
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += n;
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
            (*b).new_flows += n;
        }
    }
}

/// A packet for a service dropped for want of a backend.
#[inline(always)]
pub fn count_no_backend(service_id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe { (*s).no_backend += 1 }
    }
}
