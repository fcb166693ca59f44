//! Word-sized packet access. A frame's alignment is unknown, so the eBPF
//! backend splits every multi-byte packet read or write the Rust code
//! makes (`read_unaligned`, byte arrays) into single bytes put together
//! with shifts: a MAC rewrite was 24 byte moves, an IPv4 address four loads
//! and six ALU instructions, and every instruction costs on a path of a few
//! hundred. The verifier accepts unaligned packet access where the
//! architecture handles it (x86-64, the one this program is built for:
//! `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`), so these helpers emit the one
//! load or store the hardware does. Values are in memory (wire) order.
//! Built for the BPF target only; the data plane and the benchmark floors
//! (`lb-testkit-ebpf`) share them.
//!
//! Callers guarantee, as for any packet access, that the bytes lie inside
//! the packet (checked against `data_end` on the same path, so the verifier
//! knows it too).

use core::arch::asm;

/// `load_uN(p)`: the N/8 bytes at `p`, as a native-endian integer of their
/// memory order.
macro_rules! load {
    ($name:ident, $t:ty, $insn:literal) => {
        /// # Safety
        /// The bytes at `p` lie inside the packet.
        #[inline(always)]
        pub unsafe fn $name(p: usize) -> $t {
            let v: u64;
            // SAFETY: per the caller; a plain load with no other effect.
            unsafe {
                asm!($insn, v = out(reg) v, p = in(reg) p,
                    options(readonly, nostack, preserves_flags))
            };
            v as $t
        }
    };
}

/// `store_uN(p, v)`: `v` (memory order) stored at `p`.
macro_rules! store {
    ($name:ident, $t:ty, $insn:literal) => {
        /// # Safety
        /// The bytes at `p` lie inside the packet, which the program may
        /// write.
        #[inline(always)]
        pub unsafe fn $name(p: usize, v: $t) {
            // SAFETY: per the caller.
            unsafe {
                asm!($insn, v = in(reg) v as u64, p = in(reg) p,
                    options(nostack, preserves_flags))
            };
        }
    };
}

load!(load_u32, u32, "{v} = *(u32 *)({p} + 0)");
load!(load_u16, u16, "{v} = *(u16 *)({p} + 0)");
store!(store_u32, u32, "*(u32 *)({p} + 0) = {v}");
store!(store_u16, u16, "*(u16 *)({p} + 0) = {v}");

/// The direct-server-return MAC rewrite of the frame at `p`: the
/// destination MAC becomes the backend's (`hi`, `lo`: its bytes 0..4 and
/// 4..6 in memory order), the source MAC the one the frame was sent to.
/// Two loads and four stores.
///
/// # Safety
/// `p..p + 12` lies inside the packet, which the program may write.
#[inline(always)]
pub unsafe fn dsr_macs(p: usize, hi: u32, lo: u16) {
    // SAFETY: per the caller.
    unsafe {
        let (ours_hi, ours_lo) = (load_u32(p), load_u16(p + 4));
        store_u32(p, hi);
        store_u16(p + 4, lo);
        store_u32(p + 6, ours_hi);
        store_u16(p + 10, ours_lo);
    }
}
