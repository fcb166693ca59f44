//! Word-sized packet access. A frame's alignment is unknown, so the eBPF
//! backend splits every multi-byte packet read or write the Rust code
//! makes (`read_unaligned`, byte arrays) into single bytes put together
//! with shifts: a MAC rewrite was 24 byte moves, an IPv4 address four loads
//! and six ALU instructions, and every instruction costs on a path of a few
//! hundred. The verifier accepts unaligned packet access where the
//! architecture handles it (x86-64, the one this program is built for:
//! `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`), so these helpers emit the one
//! load or store the hardware does. Values are in memory (wire) order.
//!
//! Callers guarantee, as for any packet access, that the bytes lie inside
//! the packet (checked against `data_end` on the same path, so the verifier
//! knows it too).

use core::arch::asm;

/// The 4 bytes at `p`, as a native-endian `u32` of their memory order.
///
/// # Safety
/// `p..p + 4` lies inside the packet.
#[inline(always)]
pub unsafe fn load_u32(p: usize) -> u32 {
    let v: u64;
    // SAFETY: per the caller; a plain load with no other effect.
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", v = out(reg) v, p = in(reg) p,
            options(readonly, nostack, preserves_flags))
    };
    v as u32
}

/// The 2 bytes at `p`, as a native-endian `u16` of their memory order.
///
/// # Safety
/// `p..p + 2` lies inside the packet.
#[inline(always)]
pub unsafe fn load_u16(p: usize) -> u16 {
    let v: u64;
    // SAFETY: per the caller; a plain load with no other effect.
    unsafe {
        asm!("{v} = *(u16 *)({p} + 0)", v = out(reg) v, p = in(reg) p,
            options(readonly, nostack, preserves_flags))
    };
    v as u16
}

/// Store `v` (memory order) at `p`.
///
/// # Safety
/// `p..p + 4` lies inside the packet, which the program may write.
#[inline(always)]
pub unsafe fn store_u32(p: usize, v: u32) {
    // SAFETY: per the caller.
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", v = in(reg) v as u64, p = in(reg) p,
            options(nostack, preserves_flags))
    };
}

/// Store `v` (memory order) at `p`.
///
/// # Safety
/// `p..p + 2` lies inside the packet, which the program may write.
#[inline(always)]
pub unsafe fn store_u16(p: usize, v: u16) {
    // SAFETY: per the caller.
    unsafe {
        asm!("*(u16 *)({p} + 0) = {v}", v = in(reg) v as u64, p = in(reg) p,
            options(nostack, preserves_flags))
    };
}
