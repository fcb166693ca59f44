//! Every map of the data plane, in one place. Names and sizes come from
//! `lb_common::maps`. The `#[map]` attribute needs a literal name, so each
//! map is declared through [`pinned!`], which also asserts at compile time
//! that the literal equals the lb-common constant: the eBPF build fails on
//! drift instead of a root test at run time.

use crate::encap::EncapJob;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    BackendInfo, BackendStats, ClockBase, Counter, DpConfig, FilterSlot, FloodState, FlowKeyV4,
    FlowKeyV6, FlowValue, FragKey, FragValue, TableRegion, TunnelInfo, VipAddrKey, VipInfo, VipKey,
    hash::{ADDR_BITS_WORDS, FILTER_SLOTS},
    maps as names,
    maps::{
        DEFAULT_FLOW_CAPACITY, FRAG_CAPACITY, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_REGIONS,
        MAX_SERVICES, MAX_TX_PORTS, MAX_VIPS,
    },
    reason::REASON_COUNT,
};

/// Byte-for-byte string equality, usable in a `const` assertion.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declare a map whose literal name must equal an lb-common constant.
macro_rules! pinned {
    ($lit:literal == $name:expr, $(#[$doc:meta])* $vis:vis static $id:ident: $ty:ty = $init:expr;) => {
        const _: () = assert!(
            same($lit, $name),
            concat!("map name \"", $lit, "\" differs from its lb_common::maps constant")
        );
        $(#[$doc])*
        #[map(name = $lit)]
        $vis static $id: $ty = $init;
    };
}

// Every constant of lb_common::maps::ALL is declared below.
const _: () = assert!(names::ALL.len() == 23, "a map was added: declare it here");

/// Per-CPU LRU lists: inserting a flow takes no lock shared by all CPUs.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// The array can be mmap()ed by userspace (table writes without syscalls).
const BPF_F_MMAPABLE: u32 = 1 << 10;

pinned!(
    "vx_vips_v2" == names::VIPS,
    pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);
);

pinned!(
    "vx_vip_filter_v2" == names::VIP_FILTER,
    pub static VIP_FILTER: Array<FilterSlot> =
        Array::with_max_entries(FILTER_SLOTS, BPF_F_MMAPABLE);
);

pinned!(
    "vx_vip_direct_v2" == names::VIP_DIRECT,
    pub static VIP_DIRECT: Array<u64> = Array::with_max_entries(FILTER_SLOTS, BPF_F_MMAPABLE);
);

pinned!(
    "vx_vip_addr_bits_v2" == names::VIP_ADDR_BITS,
    pub static VIP_ADDR_BITS: Array<u64> = Array::with_max_entries(ADDR_BITS_WORDS, BPF_F_MMAPABLE);
);

pinned!(
    "vx_vip_addrs_v2" == names::VIP_ADDRS,
    pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);
);

pinned!(
    "vx_backends_v2" == names::BACKENDS,
    pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);
);

pinned!(
    "vx_maglev_v2" == names::MAGLEV,
    pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_CAPACITY, BPF_F_MMAPABLE);
);

pinned!(
    "vx_regions_v2" == names::REGIONS,
    pub static REGIONS: Array<TableRegion> = Array::with_max_entries(MAX_REGIONS, 0);
);

pinned!(
    "vx_active_v2" == names::ACTIVE,
    pub static ACTIVE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);
);

pinned!(
    "vx_ca_steer_v2" == names::CA_STEER,
    pub static CA_STEER: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);
);

pinned!(
    "vx_flows4_v2" == names::FLOWS4,
    /// Resized by the loader from the config's `flow_capacity`.
    pub static FLOWS4: LruHashMap<FlowKeyV4, FlowValue> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_NO_COMMON_LRU);
);

pinned!(
    "vx_flows6_v2" == names::FLOWS6,
    /// Resized by the loader from the config's `flow_capacity`.
    pub static FLOWS6: LruHashMap<FlowKeyV6, FlowValue> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_NO_COMMON_LRU);
);

pinned!(
    "vx_reasons_v2" == names::REASON_STATS,
    pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
);

pinned!(
    "vx_svc_drops_v2" == names::SERVICE_STATS,
    pub static SERVICE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
);

pinned!(
    "vx_be_stats_v2" == names::BACKEND_STATS,
    pub static BACKEND_STATS: PerCpuArray<BackendStats> =
        PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
);

pinned!(
    "vx_clock_v2" == names::CLOCK,
    pub static CLOCK: Array<ClockBase> = Array::with_max_entries(1, 0);
);

pinned!(
    "vx_config_v2" == names::CONFIG,
    pub static CONFIG: Array<DpConfig> = Array::with_max_entries(1, 0);
);

pinned!(
    "vx_flood_v2" == names::FLOOD,
    pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);
);

pinned!(
    "vx_frags_v2" == names::FRAGS,
    /// One common LRU (not per CPU): fragments are rare, and the fragments
    /// of one datagram may arrive on different CPUs.
    pub static FRAGS: LruHashMap<FragKey, FragValue> =
        LruHashMap::with_max_entries(FRAG_CAPACITY, 0);
);

pinned!(
    "vx_tunnels_v2" == names::TUNNELS,
    pub static TUNNELS: Array<TunnelInfo> = Array::with_max_entries(MAX_BACKENDS, 0);
);

pinned!(
    "vx_tx_ports_v2" == names::TX_PORTS,
    pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);
);

pinned!(
    "vx_progs_v2" == names::PROGS,
    /// The tail-called programs, by `lb_common::maps::PROG_*` slot.
    pub static PROGS: ProgramArray =
        ProgramArray::with_max_entries(names::TAIL_PROGRAMS.len() as u32, 0);
);

pinned!(
    "vx_encap_job_v2" == names::ENCAP_JOB,
    pub static ENCAP_JOB: PerCpuArray<EncapJob> = PerCpuArray::with_max_entries(1, 0);
);
