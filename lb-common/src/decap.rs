//! The compiler-side decapsulator (`voxlb decap`): its map names, map types
//! and the closed set of outcomes it counts. Separate from the load
//! balancer's maps: the two programs never share a map, and the decap maps
//! carry their own layout version (`vxd_*_v1`).
//!
//! Wire formats it accepts (the load balancer's `ipip` and `gue` modes must
//! send one of them):
//! - IPIP: an outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or 41,
//!   no extension headers) header addressed to this host, then the inner
//!   IPv4 or IPv6 packet unchanged.
//! - GUE over UDP (outer IPv4 or IPv6) to the configured port, in either
//!   variant that the kernel's `fou` module receives: version 1 ("direct
//!   IP": the UDP payload is the inner IP packet, told apart by its first
//!   nibble) or version 0 with a 4-byte header, no options (hlen 0), not a
//!   control message, protocol 4 or 41. The load balancer sends version 1:
//!   8 bytes of overhead instead of 12 and nothing for a receiver to parse.

/// Inner destination (VIP) -> 1. Hash map of [`DecapAddr`] -> u32.
pub const VIPS: &str = "vxd_vips_v1";
/// Outer destination addresses of this host (what "addressed to this host"
/// means) -> 1. Hash map of [`DecapAddr`] -> u32.
pub const LOCALS: &str = "vxd_locals_v1";
/// Index 0 -> [`DecapConfig`]. Array of one.
pub const CONFIG: &str = "vxd_config_v1";
/// Reason code -> [`crate::Counter`]. Per-CPU array of [`DECAP_REASON_COUNT`].
pub const STATS: &str = "vxd_stats_v1";
/// Every decap map, for pinning and reuse.
pub const ALL: &[&str] = &[VIPS, LOCALS, CONFIG, STATS];

/// Capacity of the VIP set.
pub const MAX_DECAP_VIPS: u32 = 256;
/// Capacity of the local address set.
pub const MAX_DECAP_LOCALS: u32 = 256;
/// Default GUE destination port.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// Address family codes of [`DecapAddr`].
pub const DECAP_V4: u8 = 4;
pub const DECAP_V6: u8 = 6;

/// An IPv4 or IPv6 address as a map key. IPv4 uses the first 4 bytes of
/// `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    /// [`DECAP_V4`] or [`DECAP_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network byte order.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DecapAddr>() == 20);

impl DecapAddr {
    pub const fn v4(a: [u8; 4]) -> Self {
        DecapAddr {
            family: DECAP_V4,
            _pad: [0; 3],
            addr: [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }
    pub const fn v6(addr: [u8; 16]) -> Self {
        DecapAddr {
            family: DECAP_V6,
            _pad: [0; 3],
            addr,
        }
    }
}

/// Runtime settings of the decap program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// GUE destination port, network byte order; 0 = GUE off.
    pub gue_port_be: u16,
    pub _pad: [u8; 2],
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<DecapConfig>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), fixed-width fields, explicit padding: every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::DecapAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DecapConfig {}
}

/// The verdict class of a decap reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapVerdict {
    /// Outer headers stripped, inner packet passed up the stack.
    Decapsulated,
    /// Passed up the stack untouched (not for us, or not well formed: the
    /// kernel decides). The decap program never drops a frame.
    Untouched,
}

macro_rules! decap_reasons {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $label:literal, $verdict:ident; )*) => {
        /// Why the decap program did what it did. One per frame.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DecapReason {
            $( $(#[$doc])* $name = $code, )*
        }

        impl DecapReason {
            /// Every reason, in code order.
            pub const ALL: &'static [DecapReason] = &[$(DecapReason::$name,)*];

            /// Stable snake_case label (CLI, metrics).
            pub const fn label(self) -> &'static str {
                match self { $(DecapReason::$name => $label,)* }
            }

            /// What happened to the frame.
            pub const fn verdict(self) -> DecapVerdict {
                match self { $(DecapReason::$name => DecapVerdict::$verdict,)* }
            }

            /// The reason for a code read back from the map, if any.
            pub const fn from_code(code: u32) -> Option<DecapReason> {
                match code { $($code => Some(DecapReason::$name),)* _ => None }
            }
        }
    };
}

decap_reasons! {
    /// IPIP (IPv4 or IPv6 inner) in an outer IPv4 header: decapsulated.
    DecapIpip4 = 0, "decap_ipip4", Decapsulated;
    /// IPIP in an outer IPv6 header: decapsulated.
    DecapIpip6 = 1, "decap_ipip6", Decapsulated;
    /// GUE in outer IPv4/UDP: decapsulated.
    DecapGue4 = 2, "decap_gue4", Decapsulated;
    /// GUE in outer IPv6/UDP: decapsulated.
    DecapGue6 = 3, "decap_gue6", Decapsulated;
    /// Not IPv4/IPv6 (ARP, ND is IPv6 and counted below, VLAN-tagged, ...).
    PassNotIp = 4, "pass_not_ip", Untouched;
    /// IP, but neither IPIP nor UDP to the GUE port.
    PassNotEncap = 5, "pass_not_encap", Untouched;
    /// Encapsulated, but the outer destination is not an address of this host.
    PassNotLocal = 6, "pass_not_local", Untouched;
    /// Encapsulated to us, but the inner destination is not a configured VIP.
    PassNotVip = 7, "pass_not_vip", Untouched;
    /// Outer IPv4 fragment: left to the kernel (which has no tunnel for it).
    PassFragment = 8, "pass_fragment", Untouched;
    /// Outer IPv6 with extension headers: not what the load balancer sends.
    PassIpv6Ext = 9, "pass_ipv6_ext", Untouched;
    /// GUE version 0 with options or a control message, or an unknown
    /// version/protocol.
    PassGueUnsupported = 10, "pass_gue_unsupported", Untouched;
    /// A header runs past the frame, or a length field disagrees with it.
    PassTruncated = 11, "pass_truncated", Untouched;
    /// Outer IPv4 header invalid (IHL < 5, header checksum wrong).
    PassBadOuter = 12, "pass_bad_outer", Untouched;
    /// Inner header's version differs from what the outer header announced.
    PassBadInner = 13, "pass_bad_inner", Untouched;
    /// bpf_xdp_adjust_head refused (frame left as it was).
    PassAdjustFailed = 14, "pass_adjust_failed", Untouched;
}

/// Number of decap reason codes; the size of the counter array.
pub const DECAP_REASON_COUNT: u32 = 15;

const _: () = assert!(DecapReason::ALL.len() == DECAP_REASON_COUNT as usize);
