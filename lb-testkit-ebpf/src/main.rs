//! XDP programs that only tests and benchmarks load; never the daemon.
#![no_std]
#![no_main]

use aya_ebpf::helpers::bpf_jiffies64;
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    BackendInfo, Counter, FloodState, FlowKeyV4, FlowValue, TableRegion,
    hash::{ADDR_BITS_WORDS, FILTER_SLOTS, flow_hash_v4, table_slot},
    maps::{DEFAULT_FLOW_CAPACITY, MAX_BACKENDS, MAX_REGIONS, MAX_SERVICES},
    wire,
};

/// The floor's table: the same key, value, size and flags as the
/// production IPv4 flow table (`vx_flows4_v2`), but this object's own, so
/// that nothing of the benchmark lives in the object the daemon loads. The
/// benchmark fills it as full as the production table it compares with.
#[map(name = "vx_bench_flows4")]
static BENCH_FLOWS4: LruHashMap<FlowKeyV4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 1 << 1);

/// The bookkeeping floor's pre-filter (same size and element as
/// `vx_vip_filter_v2`) and counter (one per-CPU record, as a reason's).
#[map(name = "vx_bench_filter")]
static BENCH_FILTER: Array<u64> = Array::with_max_entries(FILTER_SLOTS, 0);
/// The CA floor's own copies of the address bitmap, the CA steering array
/// and the backend array (same sizes and elements as `vx_vip_addr_bits_v2`,
/// `vx_ca_steer_v2` and `vx_backends_v2`).
#[map(name = "vx_bench_addr_bits")]
static BENCH_ADDR_BITS: Array<u64> = Array::with_max_entries(ADDR_BITS_WORDS, 0);
#[map(name = "vx_bench_steer")]
static BENCH_STEER: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);
#[map(name = "vx_bench_backends")]
static BENCH_BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);
/// The flood floor's own per-CPU flood state, active-copy and region
/// arrays (as `vx_flood_v2`, `vx_active_v2`, `vx_regions_v2`) and a Maglev
/// array of two 65537-slot copies, laid out by the benchmark as a
/// production service's (`TestDataPlane::set_bench_regions`). A SYN reads
/// one slot of its service's region, so the region's size decides what the
/// read touches (cache lines, pages), not the production array's 16 Mi
/// slots (128 MiB, which every test harness would then load twice).
#[map(name = "vx_bench_flood_state")]
static BENCH_FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "vx_bench_active")]
static BENCH_ACTIVE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);
#[map(name = "vx_bench_regions")]
static BENCH_REGIONS: Array<TableRegion> = Array::with_max_entries(MAX_REGIONS, 0);
#[map(name = "vx_bench_maglev")]
static BENCH_MAGLEV: Array<u32> = Array::with_max_entries(2 * 65537, 0);
#[map(name = "vx_bench_counter")]
static BENCH_COUNT: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Swap the MACs of the frame at `start` (its first 12 bytes, which the
/// caller checked lie inside the packet) and bounce it: the reflector's
/// whole work, which every floor does too.
#[inline(always)]
fn reflect(start: usize) -> u32 {
    // SAFETY: the caller checked that the 12 address bytes lie inside the
    // packet.
    let eth = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut tmp = [0u8; 6];
    tmp.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&tmp);
    xdp_action::XDP_TX
}

/// The 16-byte IPv4 flow key at offset 26 of the frame (no parsing), with
/// the frame's start, if the frame holds it.
#[inline(always)]
fn frame_key(ctx: &XdpContext) -> Option<(usize, FlowKeyV4)> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 26 + core::mem::size_of::<FlowKeyV4>() > end {
        return None;
    }
    // SAFETY: the key's 16 bytes lie inside the packet (checked above); the
    // read is unaligned because the frame's IP header is not 8-byte aligned.
    let key = unsafe { core::ptr::read_unaligned((start + 26) as *const FlowKeyV4) };
    Some((start, key))
}

/// Benchmark reference: swap the MACs and bounce the frame. It is what
/// `cargo xtask bench dataplane` compares every path of the real program
/// against.
#[xdp]
pub fn vx_bench_reflect(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return xdp_action::XDP_PASS;
    }
    reflect(start)
}

/// Benchmark floor: the reflector plus one lookup in an IPv4 flow table (a
/// 16-byte key taken from the frame at offset 26, no parsing): what a
/// single kernel hash lookup costs here, next to which the established path
/// is read.
#[xdp]
pub fn vx_bench_lookup(ctx: XdpContext) -> u32 {
    let Some((start, key)) = frame_key(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    if BENCH_FLOWS4.get_ptr(key).is_none() {
        return xdp_action::XDP_DROP;
    }
    reflect(start)
}

/// The SYN path's floor: the reflector plus a lookup that misses and one
/// insert in an IPv4 flow table as full as the production one (the two
/// table operations every recorded SYN must do), keyed as
/// [`vx_bench_lookup`]. Timed on distinct SYNs at repeat 1.
#[xdp]
pub fn vx_bench_insert(ctx: XdpContext) -> u32 {
    let Some((start, key)) = frame_key(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    if BENCH_FLOWS4.get_ptr(key).is_none() {
        let value = FlowValue {
            backend_id: 1,
            ..FlowValue::default()
        };
        if BENCH_FLOWS4.insert(key, value, 0).is_err() {
            return xdp_action::XDP_DROP;
        }
    }
    reflect(start)
}

/// The bookkeeping floor: the reflector plus what every packet voxlb
/// handles pays whatever its path, one pre-filter read indexed by the
/// destination address and port (at fixed offsets, no parsing) and one
/// per-CPU counter record. Next to it the non-VIP pass row is read.
#[xdp]
pub fn vx_bench_count(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 38 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bytes 30..38 lie inside the packet (checked above).
    let (addr, port) = unsafe {
        (
            core::ptr::read_unaligned((start + 30) as *const u32),
            core::ptr::read_unaligned((start + 36) as *const u16),
        )
    };
    let slot = addr.wrapping_mul(0x9e37_79b1) ^ u32::from(port);
    if BENCH_FILTER.get(slot & (FILTER_SLOTS - 1)).copied() == Some(u64::MAX) {
        return xdp_action::XDP_DROP;
    }
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (end - start) as u64;
        }
    }
    reflect(start)
}

/// The CA path's floor: the reflector's frame bounce, plus the table reads
/// no CA packet can skip, at fixed offsets of an untagged IPv4 TCP frame (no
/// parsing, no validation): the pre-filter entry of (destination, port)
/// (which VIP), the address bit of the source (spoofing), the service's
/// steering entry (which CA), that backend's entry (its MAC, written as the
/// frame's destination), and one per-CPU counter record. Next to it the CA
/// row is read.
#[xdp]
pub fn vx_bench_ca(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 38 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bytes 26..38 lie inside the packet (checked above).
    let (src, dst, port) = unsafe {
        (
            wire::load_u32(start + 26),
            wire::load_u32(start + 30),
            wire::load_u16(start + 36),
        )
    };
    ca_reads(start, end, src, dst, port)
}

/// The CA floor again, with the parse no real packet lets a path skip: the
/// Ethernet type behind up to two VLAN tags, the IPv4 version and header
/// length (options move the port), the protocol, and the bounds of each.
/// Nothing is judged beyond what finding the port needs (no length fields,
/// fragments, TCP data offset, address gate). Next to it the CA row is read
/// too: what a CA path that parses must cost at least.
#[xdp]
pub fn vx_bench_ca_parse(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    match find_port(start, end) {
        Some((src, dst, port)) => ca_reads(start, end, src, dst, port),
        None => xdp_action::XDP_PASS,
    }
}

/// The source and destination addresses and the destination port of an
/// IPv4 TCP frame, found as a parser must find them (see
/// [`vx_bench_ca_parse`]); `None` for anything else.
#[inline(always)]
fn find_port(start: usize, end: usize) -> Option<(u32, u32, u16)> {
    let mut off = 12;
    let mut ethertype = 0;
    for _ in 0..3 {
        if start + off + 2 > end {
            return None;
        }
        // SAFETY: the 2 bytes at `off` lie inside the packet (checked).
        ethertype = u16::from_be(unsafe { wire::load_u16(start + off) });
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        off += 4;
    }
    let ip = start + off + 2;
    if ethertype != 0x0800 || ip + 20 > end {
        return None;
    }
    // SAFETY: the 20-byte fixed IPv4 header lies inside the packet.
    let (v_ihl, proto, src, dst) = unsafe {
        (
            *(ip as *const u8),
            *((ip + 9) as *const u8),
            wire::load_u32(ip + 12),
            wire::load_u32(ip + 16),
        )
    };
    let ihl = usize::from(v_ihl & 0x0f) * 4;
    if v_ihl >> 4 != 4 || ihl < 20 || proto != 6 || ip + ihl + 4 > end {
        return None;
    }
    // SAFETY: the 4 port bytes after the header lie inside (checked).
    Some((src, dst, unsafe { wire::load_u16(ip + ihl + 2) }))
}

/// The CA floor's table reads and send, from the addresses and port.
#[inline(always)]
fn ca_reads(start: usize, end: usize, src: u32, dst: u32, port: u16) -> u32 {
    let vip = match vip_and_source(dst, port, src) {
        Ok(vip) => vip,
        Err(action) => return action,
    };
    let Some(&id) = BENCH_STEER.get(vip as u32 & (MAX_SERVICES - 1)) else {
        return xdp_action::XDP_PASS;
    };
    let Some(backend) = BENCH_BACKENDS.get(id) else {
        return xdp_action::XDP_DROP;
    };
    send_to(start, end, backend.mac)
}

/// The CA and flood floors' first reads: the pre-filter word of
/// (destination, port) and the source address's bit (set: a spoofed
/// source, dropped). `Err` with the action when the packet stops here.
#[inline(always)]
fn vip_and_source(dst: u32, port: u16, src: u32) -> Result<u64, u32> {
    let slot = (dst ^ u32::from(port)).wrapping_mul(0x9e37_79b1) >> 16;
    let &vip = BENCH_FILTER.get(slot).ok_or(xdp_action::XDP_PASS)?;
    let bit = src.wrapping_mul(0x85eb_ca6b) >> 16;
    let &bits = BENCH_ADDR_BITS.get(bit >> 6).ok_or(xdp_action::XDP_PASS)?;
    if (bits >> (bit & 63)) & 1 != 0 {
        return Err(xdp_action::XDP_DROP);
    }
    Ok(vip)
}

/// The CA and flood floors' last step, as the product's `forward`: one
/// per-CPU counter record, and the frame bounced to `mac` (the bytes
/// `start..end`, of which the first 12 are known to be in the packet).
#[inline(always)]
fn send_to(start: usize, end: usize, mac: [u8; 6]) -> u32 {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (end - start) as u64;
        }
    }
    // The product's MAC rewrite (`lb_common::wire`).
    // SAFETY: the first 12 bytes lie inside the packet (per the caller).
    unsafe {
        wire::dsr_macs(
            start,
            u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u16::from_ne_bytes([mac[4], mac[5]]),
        )
    };
    xdp_action::XDP_TX
}

/// The flood-mode SYN's floor: the reflector's bounce plus what a SYN
/// forwarded by the Maglev table alone cannot skip, at fixed offsets of an
/// untagged IPv4 TCP frame (no parsing, no validation): the pre-filter
/// entry, the source address bit, this CPU's flood state (a window on
/// jiffies, counted), the service's active copy and its region, the flow
/// hash (lb-common's, which every LB host agrees on) modulo the table size,
/// the Maglev slot, the backend's entry (its MAC written) and one counter
/// record. Next to it the warm flood-mode row is read.
#[xdp]
pub fn vx_bench_flood(ctx: XdpContext) -> u32 {
    let Some((start, key)) = frame_key(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let (dst, src) = (u32::from_le_bytes(key.dst), u32::from_le_bytes(key.src));
    let vip = match vip_and_source(dst, key.dport_be, src) {
        Ok(vip) => vip,
        Err(action) => return action,
    };
    let Some(st) = BENCH_FLOOD.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: helper call without arguments (inlined by the verifier); a
    // per-CPU value, written only by this CPU.
    unsafe {
        let now = bpf_jiffies64();
        if now.wrapping_sub((*st).window_start_ns) > 250 {
            (*st).window_start_ns = now;
            (*st).attempts = 0;
        }
        (*st).attempts += 1;
        (*st).flood_syns += 1;
    }
    let service = vip as u32 & (MAX_SERVICES - 1);
    let Some(&copy) = BENCH_ACTIVE.get(service) else {
        return xdp_action::XDP_PASS;
    };
    let Some(region) = BENCH_REGIONS.get(service * 2 + (copy & 1)) else {
        return xdp_action::XDP_PASS;
    };
    let size = region.size | 1;
    let Some(&id) = BENCH_MAGLEV.get(
        region
            .base
            .wrapping_add(table_slot(flow_hash_v4(&key), size)),
    ) else {
        return xdp_action::XDP_DROP;
    };
    let Some(backend) = BENCH_BACKENDS.get(id) else {
        return xdp_action::XDP_DROP;
    };
    send_to(start, ctx.data_end(), backend.mac)
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
