//! Every map of the data plane, in one place. Names and sizes come from
//! `lb_common::maps`; a userspace test checks that each name there exists in
//! the object, since the `#[map]` attribute needs a literal.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    BackendInfo, BackendStats, Counter, DpConfig, FilterSlot, FloodState, FlowKeyV4, FlowKeyV6,
    FlowValue, TableRegion, VipAddrKey, VipInfo, VipKey,
    hash::FILTER_SLOTS,
    maps::{
        DEFAULT_FLOW_CAPACITY, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_REGIONS, MAX_SERVICES, MAX_VIPS,
    },
    reason::REASON_COUNT,
};

/// Per-CPU LRU lists: inserting a flow takes no lock shared by all CPUs.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// The array can be mmap()ed by userspace (table writes without syscalls).
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "vx_vips_v2")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "vx_vip_filter_v2")]
pub static VIP_FILTER: Array<FilterSlot> = Array::with_max_entries(FILTER_SLOTS, BPF_F_MMAPABLE);

#[map(name = "vx_vip_addrs_v2")]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "vx_backends_v2")]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "vx_maglev_v2")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_CAPACITY, BPF_F_MMAPABLE);

#[map(name = "vx_regions_v2")]
pub static REGIONS: Array<TableRegion> = Array::with_max_entries(MAX_REGIONS, 0);

#[map(name = "vx_active_v2")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "vx_ca_steer_v2")]
pub static CA_STEER: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// Resized by the loader from the config's `flow_capacity`.
#[map(name = "vx_flows4_v2")]
pub static FLOWS4: LruHashMap<FlowKeyV4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_NO_COMMON_LRU);

/// Resized by the loader from the config's `flow_capacity`.
#[map(name = "vx_flows6_v2")]
pub static FLOWS6: LruHashMap<FlowKeyV6, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_NO_COMMON_LRU);

#[map(name = "vx_reasons_v2")]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map(name = "vx_svc_drops_v2")]
pub static SERVICE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "vx_be_stats_v2")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "vx_config_v2")]
pub static CONFIG: Array<DpConfig> = Array::with_max_entries(1, 0);

#[map(name = "vx_flood_v2")]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);
