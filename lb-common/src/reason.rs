//! The closed set of outcomes of the XDP program. Each packet is counted under
//! exactly one reason; the codes double as metric labels.
//!
//! The data plane counts passes and drops in the reason array; a forwarded
//! packet writes only its backend's counter record, and userspace derives
//! the `tx_*` reasons from those (by the kind of the backend's service).

/// The verdict class of a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// XDP_TX: forwarded to a backend.
    Tx,
    /// XDP_PASS: handed to the kernel untouched.
    Pass,
    /// XDP_DROP.
    Drop,
}

/// The kernel's XDP action codes (`enum xdp_action`), for userspace and
/// tests reading a verdict back (the data plane itself uses aya's
/// bindings, which are the same numbers).
pub mod action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
}

impl Verdict {
    /// The XDP action code of this verdict.
    pub const fn action(self) -> u32 {
        match self {
            Verdict::Tx => action::XDP_TX,
            Verdict::Pass => action::XDP_PASS,
            Verdict::Drop => action::XDP_DROP,
        }
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $label:literal, $verdict:ident; )*) => {
        /// Why the program returned what it returned.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[$doc])* $name = $code, )*
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Stable snake_case label (metrics, CLI).
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }

            /// The XDP verdict this reason implies.
            pub const fn verdict(self) -> Verdict {
                match self { $(Reason::$name => Verdict::$verdict,)* }
            }

            /// The reason for a code read back from a map, if any.
            pub const fn from_code(code: u32) -> Option<Reason> {
                match code { $($code => Some(Reason::$name),)* _ => None }
            }
        }
    };
}

reasons! {
    /// Compiler VIP: forwarded to the flow's backend.
    TxCompiler = 0, "tx_compiler", Tx;
    /// CA VIP: forwarded to the active CA backend.
    TxCa = 1, "tx_ca", Tx;
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 2, "pass_not_ip", Pass;
    /// IP, but the destination is not a VIP (address, port, protocol). A
    /// destination whose bit in the VIP address bitmap is clear is counted
    /// here as soon as the fixed IP header is read, whatever follows it
    /// (the host's own traffic, malformed or not, is its kernel's to judge).
    PassNotVip = 3, "pass_not_vip", Pass;
    /// IP, but neither TCP nor UDP (ICMP, ...).
    PassNotL4 = 4, "pass_not_l4", Pass;
    /// A fragment to a VIP address that cannot be followed: a later
    /// fragment (non-zero offset) whose first fragment was not seen (or whose
    /// backend is gone), or a fragmented ICMP message (see README, *ICMP and
    /// fragments*). First fragments carry the ports and are balanced.
    PassFragment = 5, "pass_fragment", Pass;
    /// More than two VLAN tags.
    PassVlanDepth = 6, "pass_vlan_depth", Pass;
    /// IPv6 extension header chain longer than we walk.
    PassIpv6ExtLimit = 7, "pass_ipv6_ext_limit", Pass;
    /// Frame not addressed to a unicast MAC (broadcast/multicast).
    PassNotUnicast = 8, "pass_not_unicast", Pass;
    /// Frame shorter than its Ethernet/VLAN headers.
    DropTruncatedL2 = 9, "drop_truncated_l2", Drop;
    /// Frame shorter than its IP header, or IP total length beyond the frame.
    DropTruncatedL3 = 10, "drop_truncated_l3", Drop;
    /// IPv4 IHL < 5, version mismatch, or total length < header length.
    DropBadL3 = 11, "drop_bad_l3", Drop;
    /// Frame (or IP payload) shorter than the TCP/UDP header.
    DropTruncatedL4 = 12, "drop_truncated_l4", Drop;
    /// TCP data offset < 5 or beyond the IP payload.
    DropBadL4 = 13, "drop_bad_l4", Drop;
    /// Compiler VIP with no usable backend (empty or all-down table).
    DropNoBackend = 14, "drop_no_backend", Drop;
    /// CA VIP with no active CA backend.
    DropNoCa = 15, "drop_no_ca", Drop;
    /// A map lookup that cannot fail did (inconsistent maps mid-update).
    DropInternal = 16, "drop_internal", Drop;
    /// A packet to a VIP whose source address is a VIP address: spoofed (a
    /// land attack, or reflection bait); never forwarded to a backend.
    DropSpoofedSource = 17, "drop_spoofed_source", Drop;
    /// An ICMP error to a VIP address (fragmentation needed, destination
    /// unreachable, ICMPv6 packet too big ...) whose ICMP header or quoted
    /// IP header plus 8 bytes is cut short or is not an IP header.
    PassIcmpMalformed = 18, "pass_icmp_malformed", Pass;
    /// An ICMP error to a VIP address that names no VIP flow: the quoted
    /// packet is not TCP/UDP from that VIP's (address, port), or is a later
    /// fragment, or no backend of the VIP's service is usable.
    PassIcmpUnmatched = 19, "pass_icmp_unmatched", Pass;
    /// Encapsulation would exceed the path MTU to the compilers and the
    /// client's packet may not be fragmented (IPv4 DF, or any IPv6): the
    /// client was sent "fragmentation needed" / "packet too big" with the
    /// usable MTU, from the VIP, out the interface the packet came in on.
    TxTooBig = 20, "tx_too_big", Tx;
    /// Encapsulation would exceed the path MTU and the IPv4 packet allows
    /// fragmentation (DF clear). XDP cannot fragment, and the compiler-side
    /// decap cannot reassemble: dropped (see README, *Path MTU*).
    DropTooBigNoDf = 21, "drop_too_big_no_df", Drop;
    /// A routed backend's egress interface is neither the ingress one nor
    /// in the devmap of interfaces voxlb is attached to (maps mid-update).
    DropNoEgress = 22, "drop_no_egress", Drop;
    /// The frame could not be grown for the outer headers
    /// (`bpf_xdp_adjust_head` refused: no headroom), or the backend's tunnel
    /// entry is not set up.
    DropEncap = 23, "drop_encap", Drop;
}

/// Number of reason codes; the size of the reason counter array.
pub const REASON_COUNT: u32 = 24;

const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);
