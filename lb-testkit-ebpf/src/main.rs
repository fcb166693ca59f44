//! XDP programs that only tests and benchmarks load; never the daemon.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};
use lb_common::{FlowKeyV4, FlowValue, maps::DEFAULT_FLOW_CAPACITY};

/// The floor's table: the same key, value, size and flags as the
/// production IPv4 flow table (`vx_flows4_v2`), but this object's own, so
/// that nothing of the benchmark lives in the object the daemon loads. The
/// benchmark fills it as full as the production table it compares with.
#[map(name = "vx_bench_flows4")]
static BENCH_FLOWS4: LruHashMap<FlowKeyV4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 1 << 1);

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

/// Benchmark floor: the reflector plus one lookup in an IPv4 flow table (a
/// 16-byte key taken from the frame at offset 26, no parsing): what a
/// single kernel hash lookup costs here, next to which the established path
/// is read.
#[xdp]
pub fn vx_bench_lookup(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 26 + core::mem::size_of::<FlowKeyV4>() > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the key's 16 bytes lie inside the packet (checked above); the
    // read is unaligned because the frame's IP header is not 8-byte aligned.
    let key = unsafe { core::ptr::read_unaligned((start + 26) as *const FlowKeyV4) };
    if BENCH_FLOWS4.get_ptr(key).is_none() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the 12 address bytes lie inside the packet (checked above).
    let eth = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut tmp = [0u8; 6];
    tmp.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&tmp);
    xdp_action::XDP_TX
}

/// The SYN path's floor: the reflector plus a lookup that misses and one
/// insert in an IPv4 flow table as full as the production one (the two
/// table operations every recorded SYN must do), keyed as
/// [`vx_bench_lookup`]. Timed on distinct SYNs at repeat 1.
#[xdp]
pub fn vx_bench_insert(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 26 + core::mem::size_of::<FlowKeyV4>() > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: as in `vx_bench_lookup`.
    let key = unsafe { core::ptr::read_unaligned((start + 26) as *const FlowKeyV4) };
    if BENCH_FLOWS4.get_ptr(&key).is_none() {
        let value = FlowValue {
            backend_id: 1,
            ..FlowValue::default()
        };
        if BENCH_FLOWS4.insert(&key, &value, 0).is_err() {
            return xdp_action::XDP_DROP;
        }
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
