//! XDP programs that only tests and benchmarks load; never the daemon.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Benchmark reference: swap the MACs and bounce the frame. It is what
/// `cargo xtask bench dataplane` compares every path of the real program
/// against.
#[xdp]
pub fn vx_bench_reflect(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 address bytes lie inside the packet (checked above).
    let eth = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut tmp = [0u8; 6];
    tmp.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&tmp);
    xdp_action::XDP_TX
}

/// Test topologies only: XDP_TX on a veth delivers the frame only when the
/// peer veth runs an XDP program too; this do-nothing one is attached there.
/// A real NIC needs nothing of the kind.
#[xdp]
pub fn vx_veth_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
