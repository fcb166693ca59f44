//! Map names and capacities: the single source of truth for both sides.
//!
//! Pinned map names carry a layout version (`_v2`): a daemon never reads a
//! pin of another layout as its own. Version 2 changed only [`FlowValue`]
//! (closed flag and last-seen time); a daemon that finds version-1 pins
//! migrates them (see [`V1_FLOWS`] and the README, *Upgrading from v1*).
//!
//! [`FlowValue`]: crate::FlowValue

/// Layout version of every pinned map. Bump when any map type in
/// [`crate::types`] changes layout.
pub const MAP_VERSION: u32 = 2;

/// VIP (address, port, protocol) -> [`crate::VipInfo`]. Hash map.
pub const VIPS: &str = "vx_vips_v2";
/// Destination port (host order) -> number of VIPs on that port (u32).
/// Array of 65536. A one-load pre-filter: traffic to a port no VIP uses
/// (SSH, ...) is passed without a hash lookup.
pub const VIP_PORTS: &str = "vx_vip_ports_v2";
/// Backend id -> [`crate::BackendInfo`]. Array.
pub const BACKENDS: &str = "vx_backends_v2";
/// Maglev slots of every table copy, concatenated. Array of backend ids.
pub const MAGLEV: &str = "vx_maglev_v2";
/// Table region id -> [`crate::TableRegion`] (where a table copy lives). Array.
pub const REGIONS: &str = "vx_regions_v2";
/// Service id -> active region id (u32). Array. Flipping this one u32 is how a
/// new table becomes visible: a packet reads it once and uses that copy.
pub const ACTIVE: &str = "vx_active_v2";
/// CA service id -> backend id (u32) of the CA that gets every flow of that
/// VIP (`NO_BACKEND` = none). Array. Userspace flips it on failover.
pub const CA_STEER: &str = "vx_ca_steer_v2";
/// Flow 5-tuple -> [`crate::FlowValue`]. LRU hash map.
pub const FLOWS: &str = "vx_flows_v2";
/// Reason code -> [`crate::Counter`]. Per-CPU array.
pub const REASON_STATS: &str = "vx_reasons_v2";
/// Service id -> [`crate::ServiceStats`]. Per-CPU array.
pub const SERVICE_STATS: &str = "vx_svc_stats_v2";
/// Backend id -> [`crate::BackendStats`]. Per-CPU array.
pub const BACKEND_STATS: &str = "vx_be_stats_v2";

/// The version-1 flow table (key [`crate::FlowKey`], value
/// [`crate::FlowValueV1`]): the one map whose layout changed in version 2.
pub const V1_FLOWS: &str = "vx_flows_v1";

/// Every version-1 map name. All but [`V1_FLOWS`] have the same layout in
/// version 2, so an upgrade renames their pins to the version-2 names and
/// the maps (VIPs, backends, tables) carry over untouched.
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
pub const ALL: [&str; 11] = [
    VIPS,
    VIP_PORTS,
    BACKENDS,
    MAGLEV,
    REGIONS,
    ACTIVE,
    CA_STEER,
    FLOWS,
    REASON_STATS,
    SERVICE_STATS,
    BACKEND_STATS,
];

/// Most VIPs (compiler and CA services together).
pub const MAX_VIPS: u32 = 256;
/// Most services; service ids are `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 64;
/// Most backends over all services; backend ids are `0..MAX_BACKENDS`.
pub const MAX_BACKENDS: u32 = 4096;
/// Two table regions per service (the active copy and the one being written).
pub const MAX_REGIONS: u32 = MAX_SERVICES * 2;
/// Total Maglev slots over all regions: 16 Mi slots, 64 MiB. Enough for two
/// copies of 655373-slot tables for 12 services, or of 65537-slot tables for
/// all 64.
pub const MAGLEV_CAPACITY: u32 = 16 * 1024 * 1024;
/// Default flow-table capacity (entries). Configurable at load time.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1_048_576;

/// Default Maglev table size: prime, and large enough that 100s of backends
/// each get hundreds of slots.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
