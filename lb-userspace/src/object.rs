//! The XDP object built by `build.rs`, embedded in the binary.

/// The compiled `lb-ebpf` ELF object (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Name of the XDP program inside [`EBPF_OBJECT`].
pub const PROGRAM_NAME: &str = "voxlb";

/// The compiled decapsulator object (`voxlb decap`), a second bin of the
/// lb-ebpf crate with its own maps (empty with `AYA_BUILD_SKIP=1`).
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/voxlb-decap"));

/// Name of the XDP program inside [`DECAP_OBJECT`].
pub const DECAP_PROGRAM_NAME: &str = "voxlb_decap";
