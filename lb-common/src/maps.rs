//! Map names and capacities: the single source of truth for both sides.
//!
//! Pinned map names carry a layout version (`_v2`): a daemon never reads a
//! pin of another layout as its own. Version 2 changed, against version 1:
//! [`FlowValue`] (closed flag and last-seen time), the flow table split by
//! family ([`FLOWS4`], [`FLOWS6`]), the port pre-filter replaced by the
//! (address, port) filter [`VIP_FILTER`] plus the VIP address set
//! [`VIP_ADDRS`], the counters (one record per forwarded packet), and the
//! flood-mode maps [`CONFIG`] and [`FLOOD`]. A daemon that finds version-1
//! pins migrates them (see [`V1_RENAMED`] and the README, *Upgrading from
//! v1*).
//!
//! [`FlowValue`]: crate::FlowValue

/// Layout version of every pinned map. Bump when any map type in
/// [`crate::types`] changes layout.
pub const MAP_VERSION: u32 = 2;

/// VIP (address, port, protocol) -> [`crate::VipInfo`]. Hash map.
pub const VIPS: &str = "vx_vips_v2";
/// Pre-filter: [`crate::hash::vip_slot`] / [`crate::hash::addr_slot`] ->
/// [`crate::FilterSlot`]. Array of [`crate::hash::FILTER_SLOTS`]. One load
/// tells whether a packet can be for a VIP at all (SSH to the LB host, or
/// port 8140 of another address, is passed without a hash lookup) and
/// whether it can be for a compiler VIP (only then is the flow table read:
/// CA traffic never touches it).
pub const VIP_FILTER: &str = "vx_vip_filter_v2";
/// Address of every VIP ([`crate::VipAddrKey`]) -> number of VIPs on it
/// (u32). Hash map, read only when the filter's address slot is set: a
/// packet from a VIP address is spoofed.
pub const VIP_ADDRS: &str = "vx_vip_addrs_v2";
/// Exact entries of IPv4 VIPs, one `u64` per pre-filter slot
/// ([`crate::hash::direct_entry`]): the VIP a packet is for, read with one
/// array load instead of a hash lookup in [`VIPS`], for every VIP that has
/// its filter slot to itself. Memory-mapped, written by userspace only.
pub const VIP_DIRECT: &str = "vx_vip_direct_v2";
/// The VIP addresses' filter for the spoofed-source check: one bit per
/// [`crate::hash::addr_slot`], [`crate::hash::ADDR_BITS_WORDS`] words (8 KiB,
/// which stays in cache under a flood of random sources, where the 512 KiB
/// pre-filter did not). A set bit means "maybe" (see [`VIP_ADDRS`]).
/// Memory-mapped, written by userspace only.
pub const VIP_ADDR_BITS: &str = "vx_vip_addr_bits_v2";
/// The data plane's clock line ([`crate::ClockBase`]), one entry.
pub const CLOCK: &str = "vx_clock_v2";
/// The program userspace runs (BPF_PROG_TEST_RUN, never attached) to read
/// jiffies and CLOCK_MONOTONIC (coarse) at one instant, into the first 16
/// bytes of the frame.
pub const CLOCK_PROGRAM: &str = "voxlb_clock";
/// Backend id -> [`crate::BackendInfo`]. Array.
pub const BACKENDS: &str = "vx_backends_v2";
/// Maglev slots of every table copy, concatenated. Array of backend ids,
/// memory-mappable (`BPF_F_MMAPABLE`): userspace writes a table copy with
/// plain stores, not one syscall per slot.
pub const MAGLEV: &str = "vx_maglev_v2";
/// Table region id -> [`crate::TableRegion`] (where a table copy lives). Array.
pub const REGIONS: &str = "vx_regions_v2";
/// Service id -> active region id (u32). Array. Flipping this one u32 is how a
/// new table becomes visible: a packet reads it once and uses that copy.
pub const ACTIVE: &str = "vx_active_v2";
/// CA service id -> backend id (u32) of the CA that gets every flow of that
/// VIP (`NO_BACKEND` = none). Array. Userspace flips it on failover.
pub const CA_STEER: &str = "vx_ca_steer_v2";
/// IPv4 flows: [`crate::FlowKeyV4`] -> [`crate::FlowValue`]. LRU hash map.
pub const FLOWS4: &str = "vx_flows4_v2";
/// IPv6 flows: [`crate::FlowKeyV6`] -> [`crate::FlowValue`]. LRU hash map.
pub const FLOWS6: &str = "vx_flows6_v2";
/// Reason code -> [`crate::Counter`]. Per-CPU array. Passes and drops only:
/// the `tx_*` reasons are derived from [`BACKEND_STATS`].
pub const REASON_STATS: &str = "vx_reasons_v2";
/// Service id -> packets dropped for want of a backend (u64). Per-CPU array.
pub const SERVICE_STATS: &str = "vx_svc_drops_v2";
/// Backend id -> [`crate::BackendStats`]. Per-CPU array: the one record a
/// forwarded packet writes.
pub const BACKEND_STATS: &str = "vx_be_stats_v2";
/// One [`crate::DpConfig`]. Array of 1.
pub const CONFIG: &str = "vx_config_v2";
/// One [`crate::FloodState`] per CPU. Per-CPU array of 1.
pub const FLOOD: &str = "vx_flood_v2";
/// Fragmented datagrams to VIPs: [`crate::FragKey`] (source, destination,
/// IP ID, protocol) -> [`crate::FragValue`] (the backend the first fragment
/// went to). LRU hash map of [`FRAG_CAPACITY`], written by first fragments
/// only, read by later ones.
pub const FRAGS: &str = "vx_frags_v2";

/// Backend id -> [`crate::TunnelInfo`]: the outer headers and egress of a
/// routed (`ipip`/`gue`) backend. Array. Added within layout 2 (a new map,
/// no existing map changed): a daemon that finds the other v2 pins but not
/// this one loads the new program over them (see the README, *Upgrading*).
pub const TUNNELS: &str = "vx_tunnels_v2";
/// Egress interfaces other than the ingress one: ifindex -> ifindex.
/// Devmap hash, the target of `XDP_REDIRECT` for routed backends whose
/// route leaves through another interface voxlb is attached to.
pub const TX_PORTS: &str = "vx_tx_ports_v2";
/// Slot -> a program the packet path tail-calls ([`TAIL_PROGRAMS`]).
/// Program array. The rare or heavy paths (encapsulation, ICMP errors,
/// later fragments) are programs of their own, each with its own 512-byte
/// stack: the packet path's is nearly full, and the L2 fast path must not
/// pay for them. Userspace puts the programs in after loading them.
pub const PROGS: &str = "vx_progs_v2";
/// The job the packet path hands a tail-called program that forwards (the
/// chosen backend): the encapsulating and first-fragment programs. Per-CPU
/// array of 1 (the value type is private to the data plane).
pub const ENCAP_JOB: &str = "vx_encap_job_v2";
/// [`PROGS`] slot of the encapsulating program (routed backends).
pub const PROG_ENCAP: u32 = 0;
/// [`PROGS`] slot of the ICMP-error steering program.
pub const PROG_ICMP: u32 = 1;
/// [`PROGS`] slot of the later-fragment program.
pub const PROG_FRAG: u32 = 2;
/// [`PROGS`] slot of the first-fragment program (records the datagram,
/// then forwards the fragment like the packet path would).
pub const PROG_FIRST_FRAG: u32 = 3;
/// The tail-called programs: (slot, name in the object).
pub const TAIL_PROGRAMS: [(u32, &str); 4] = [
    (PROG_ENCAP, "voxlb_encap"),
    (PROG_ICMP, "voxlb_icmp"),
    (PROG_FRAG, "voxlb_frag"),
    (PROG_FIRST_FRAG, "voxlb_first_frag"),
];
/// Most interfaces in [`TX_PORTS`].
pub const MAX_TX_PORTS: u32 = 64;

/// The version-1 flow table (key [`crate::FlowKey`], value
/// [`crate::FlowValueV1`]): read and converted by an upgrade.
pub const V1_FLOWS: &str = "vx_flows_v1";

/// Version-1 maps whose layout version 2 kept: an upgrade renames their
/// pins (same maps, so VIPs, backends and tables carry over untouched).
pub const V1_RENAMED: [(&str, &str); 6] = [
    ("vx_vips_v1", VIPS),
    ("vx_backends_v1", BACKENDS),
    ("vx_maglev_v1", MAGLEV),
    ("vx_regions_v1", REGIONS),
    ("vx_active_v1", ACTIVE),
    ("vx_ca_steer_v1", CA_STEER),
];

/// Every version-1 map name. Those not in [`V1_RENAMED`] are dropped by an
/// upgrade: the flow table after its entries were copied, the port filter
/// (rebuilt from the VIPs), and the counters (their layout changed: they
/// start again from zero).
pub const V1_ALL: [&str; 11] = [
    "vx_vips_v1",
    "vx_vip_ports_v1",
    "vx_backends_v1",
    "vx_maglev_v1",
    "vx_regions_v1",
    "vx_active_v1",
    "vx_ca_steer_v1",
    V1_FLOWS,
    "vx_reasons_v1",
    "vx_svc_stats_v1",
    "vx_be_stats_v1",
];

/// Every map, for pinning and unpinning in one place.
pub const ALL: [&str; 23] = [
    CLOCK,
    VIPS,
    VIP_FILTER,
    VIP_ADDRS,
    VIP_DIRECT,
    VIP_ADDR_BITS,
    BACKENDS,
    MAGLEV,
    REGIONS,
    ACTIVE,
    CA_STEER,
    FLOWS4,
    FLOWS6,
    REASON_STATS,
    SERVICE_STATS,
    BACKEND_STATS,
    CONFIG,
    FLOOD,
    FRAGS,
    TUNNELS,
    TX_PORTS,
    PROGS,
    ENCAP_JOB,
];

/// Most VIPs (compiler and CA services together).
pub const MAX_VIPS: u32 = 256;
/// Most services; service ids are `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 64;
/// Most backends over all services; backend ids are `0..MAX_BACKENDS`.
pub const MAX_BACKENDS: u32 = 4096;
/// Two table regions per service (the active copy and the one being written).
pub const MAX_REGIONS: u32 = MAX_SERVICES * 2;
/// Total Maglev slots over all regions: 16 Mi slots, 128 MiB (the kernel
/// rounds each array element up to 8 bytes, so a `u32` slot takes 8; packing
/// two slots per element would halve it and the cache footprint of a pick,
/// at the cost of a new map layout, left for the next layout bump). Enough for two
/// copies of 655373-slot tables for 12 services, or of 65537-slot tables for
/// all 64.
pub const MAGLEV_CAPACITY: u32 = 16 * 1024 * 1024;
/// Default flow-table capacity (entries). Configurable at load time.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1_048_576;

/// Entries of the fragment table: datagrams in reassembly at once. A
/// datagram needs its entry only between its first and last fragment (a few
/// milliseconds), so this is ample for a compiler fleet's rare fragments.
pub const FRAG_CAPACITY: u32 = 16384;

/// Default Maglev table size: prime, and large enough that 100s of backends
/// each get hundreds of slots.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
