//! The test XDP object built by `build.rs` (crate `lb-testkit-ebpf`).

/// The compiled `lb-testkit-ebpf` ELF object (empty with `AYA_BUILD_SKIP=1`).
pub static TEST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-testkit-ebpf"));

/// The benchmark reference program: swaps the MACs and returns XDP_TX.
pub const BENCH_REFLECTOR: &str = "vx_bench_reflect";

/// The benchmark floor: the reflector plus one IPv4 flow-table lookup.
pub const BENCH_LOOKUP: &str = "vx_bench_lookup";

/// The SYN path's floor: the reflector plus a flow-table miss and insert.
pub const BENCH_INSERT: &str = "vx_bench_insert";

/// The bookkeeping floor: the reflector plus a pre-filter read and a
/// per-CPU counter record.
pub const BENCH_COUNT: &str = "vx_bench_count";

/// The CA path's floor: the reflector plus the pre-filter, source address
/// bit, CA steering and backend reads and a counter record.
pub const BENCH_CA: &str = "vx_bench_ca";

/// The CA floor with the parse that finds the port (VLAN tags, IHL).
pub const BENCH_CA_PARSE: &str = "vx_bench_ca_parse";

/// The flood-mode SYN's floor: the reflector plus the table reads, the
/// flood state and the flow hash of a SYN the Maglev table alone forwards.
pub const BENCH_FLOOD: &str = "vx_bench_flood";

/// Every benchmark program of the test object (loaded by the harness).
pub const BENCH_PROGRAMS: [&str; 7] = [
    BENCH_REFLECTOR,
    BENCH_COUNT,
    BENCH_CA,
    BENCH_CA_PARSE,
    BENCH_FLOOD,
    BENCH_LOOKUP,
    BENCH_INSERT,
];

/// The floor's own flow table (key and value as `vx_flows4_v2`).
pub const BENCH_FLOWS4: &str = "vx_bench_flows4";
/// The flood floor's region array (`TableRegion` per service and copy, as
/// `vx_regions_v2`).
pub const BENCH_REGIONS: &str = "vx_bench_regions";

/// The do-nothing program attached to the peer of a veth voxlb runs on.
pub const VETH_PEER: &str = "vx_veth_peer";
