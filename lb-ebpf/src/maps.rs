//! Every map of the data plane, in one place. Names and sizes come from
//! `lb_common::maps`; a userspace test checks that each name there exists in
//! the object, since the `#[map]` attribute needs a literal.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    BackendInfo, BackendStats, Counter, FlowKey, FlowValue, ServiceStats, TableRegion, VipInfo,
    VipKey,
    maps::{
        DEFAULT_FLOW_CAPACITY, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_REGIONS, MAX_SERVICES, MAX_VIPS,
    },
    reason::REASON_COUNT,
};

/// Per-CPU LRU lists: inserting a flow takes no lock shared by all CPUs.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

#[map(name = "vx_vips_v2")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "vx_vip_ports_v2")]
pub static VIP_PORTS: Array<u32> = Array::with_max_entries(65536, 0);

#[map(name = "vx_backends_v2")]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "vx_maglev_v2")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_CAPACITY, 0);

#[map(name = "vx_regions_v2")]
pub static REGIONS: Array<TableRegion> = Array::with_max_entries(MAX_REGIONS, 0);

#[map(name = "vx_active_v2")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "vx_ca_steer_v2")]
pub static CA_STEER: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// Resized by the loader from the config's `flow_capacity`.
#[map(name = "vx_flows_v2")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_NO_COMMON_LRU);

#[map(name = "vx_reasons_v2")]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map(name = "vx_svc_stats_v2")]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "vx_be_stats_v2")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
