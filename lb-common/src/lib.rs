//! Types, names and algorithms shared by the voxlb data plane (`lb-ebpf`) and
//! its control plane (`lb-userspace`).
//!
//! Everything that crosses the kernel boundary is `#[repr(C)]`, built from
//! fixed-width integers and byte arrays, with explicit padding, so that every
//! bit pattern the kernel hands back is a valid value. Each type carries a
//! compile-time size assertion: a layout change is a deliberate, visible act.
#![no_std]
// Word-sized packet access for the eBPF programs (`wire`): inline asm, which
// needs this gate on the BPF target only.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod decap;
pub mod hash;
#[cfg(feature = "alloc")]
pub mod maglev;
pub mod maps;
pub mod reason;
pub mod types;
#[cfg(target_arch = "bpf")]
pub mod wire;

pub use reason::Reason;
pub use types::*;
