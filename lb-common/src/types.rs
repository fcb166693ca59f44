//! `#[repr(C)]` map keys and values. Fixed-width fields, explicit padding,
//! and a size assertion for each.

/// Address family tag used in keys (our own numbering, not AF_*).
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers we balance.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// Sentinel backend id: "no backend" (empty Maglev slot, no active CA).
pub const NO_BACKEND: u32 = u32::MAX;

/// Key of the VIP map. An IPv4 address sits in the first four bytes of
/// `addr`, the rest zero. `port` is in network byte order, as on the wire.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// Service kind of a VIP.
pub const KIND_COMPILER: u32 = 0;
/// See [`KIND_COMPILER`].
pub const KIND_CA: u32 = 1;

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into the per-service maps (`ACTIVE`, `CA_STEER`, stats).
    pub service_id: u32,
    /// [`KIND_COMPILER`] or [`KIND_CA`]; any other value is treated as "not ours".
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 8);

/// Backend state, as the data plane sees it.
/// Slot unused, or backend removed: gets nothing; its flows are re-picked.
pub const BACKEND_EMPTY: u32 = 0;
/// Serving: in the Maglev table, keeps its flows.
pub const BACKEND_ACTIVE: u32 = 1;
/// Draining: out of the Maglev table, keeps its established flows.
pub const BACKEND_DRAINING: u32 = 2;
/// Down (failed health check): out of the table; its flows are re-picked,
/// since the backend cannot answer them anyway.
pub const BACKEND_DOWN: u32 = 3;
/// Retiring (removed by the operator or dropped from the config): to the
/// data plane exactly like [`BACKEND_DRAINING`] — out of the table, keeps
/// its established flows, a SYN is re-picked — but a distinct value so
/// that the maps alone say which it is. Userspace frees the slot (state
/// [`BACKEND_EMPTY`]) when its last flow has ended or its grace has passed.
pub const BACKEND_RETIRING: u32 = 4;

/// Whether a backend in `state` keeps its established (non-SYN) flows.
#[inline(always)]
pub const fn keeps_flows(state: u32) -> bool {
    matches!(state, BACKEND_ACTIVE | BACKEND_DRAINING | BACKEND_RETIRING)
}

/// How a packet reaches a backend ([`BackendInfo::forwarding`]).
/// Layer-2 direct server return: the frame, L3 untouched, to the backend's
/// MAC on the segment it arrived on.
pub const FORWARD_L2: u8 = 0;
/// IP-in-IP to a routed backend: an outer IPv4 or IPv6 header (protocol 4
/// or 41), then the client's packet unchanged. See [`TunnelInfo`].
pub const FORWARD_IPIP: u8 = 1;
/// GUE version 1 ("direct IP") over UDP to a routed backend: outer IP, UDP
/// to [`TunnelInfo::gue_port_be`], then the client's packet unchanged.
pub const FORWARD_GUE: u8 = 2;

/// Value of the backend array. Only `mac`, `forwarding`, `state` and
/// `generation` are read by the data plane; the address is there so that
/// the maps alone say where each flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// Destination MAC: the backend's own ([`FORWARD_L2`]), or the next
    /// hop's on the route to it (encapsulating modes).
    pub mac: [u8; 6],
    /// [`FORWARD_L2`], [`FORWARD_IPIP`] or [`FORWARD_GUE`]. Was padding in
    /// the first v2 layout, written as 0 (= L2): the size is unchanged.
    pub forwarding: u8,
    pub _pad0: u8,
    /// One of the `BACKEND_*` states.
    pub state: u32,
    /// Bumped each time the id is given to a different backend, so that a
    /// flow recorded for the old holder of the id is re-picked.
    pub generation: u32,
    /// Service the backend belongs to.
    pub service_id: u32,
    /// Backend address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad1: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 40);

/// Value of the tunnel array (`vx_tunnels_v2`), indexed by backend id:
/// how to encapsulate for a backend whose [`BackendInfo::forwarding`] is
/// [`FORWARD_IPIP`] or [`FORWARD_GUE`]. Never read for L2 backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Outer source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// Outer destination: the backend's address.
    pub dst: [u8; 16],
    /// Source MAC of the encapsulated frame: the egress interface's.
    pub src_mac: [u8; 6],
    /// GUE destination port, network byte order (unused for IPIP).
    pub gue_port_be: u16,
    /// Egress interface: the ingress one means `XDP_TX`, another one is
    /// reached by `XDP_REDIRECT` through the `vx_tx_ports_v2` devmap.
    pub ifindex: u32,
    /// Largest outer packet the path to the backend carries (bytes of IP);
    /// a bigger one is answered with "fragmentation needed" / "packet too
    /// big". 0: no limit.
    pub mtu: u16,
    /// Outer family: [`FAMILY_V4`] or [`FAMILY_V6`]; 0 = not set up.
    pub family: u8,
    /// Outer TTL / hop limit.
    pub ttl: u8,
}
const _: () = assert!(core::mem::size_of::<TunnelInfo>() == 48);

/// Where one copy of a service's Maglev table lives in the `MAGLEV` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRegion {
    /// First slot in the `MAGLEV` array.
    pub base: u32,
    /// Number of slots (the table size M, prime); 0 = region unused.
    pub size: u32,
}
const _: () = assert!(core::mem::size_of::<TableRegion>() == 8);

/// A flow's 5-tuple in one family-independent form (ports in network byte
/// order, IPv4 addresses in the first four bytes of each address). This is
/// what userspace, the flow hash and the tests speak; the data plane stores
/// flows under the per-family keys [`FlowKeyV4`] and [`FlowKeyV6`], in two
/// maps, so that an IPv4 flow is hashed and compared as 16 bytes, not 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Key of the IPv4 flow table (`vx_flows4_v2`): 16 bytes. Aligned to 8
/// (no size change) so the data plane copies and hashes it in words, not
/// byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// Padding as scalars (a byte and a word), not `[u8; 3]`: the eBPF
    /// build zeroes a byte array through a call to a byte-loop `memset`
    /// subprogram, and scalars with plain stores
    /// (`lb-userspace/tests/object_code.rs`).
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);

/// Key of the IPv6 flow table (`vx_flows6_v2`): 40 bytes, no family tag
/// (the map is the family). Aligned to 8 like [`FlowKeyV4`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// Scalar padding: see [`FlowKeyV4::_pad`].
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKeyV6>() == 40);

impl FlowKeyV4 {
    /// The family-independent form.
    pub fn to_flow_key(&self) -> FlowKey {
        let mut k = FlowKey {
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&self.src);
        k.dst[..4].copy_from_slice(&self.dst);
        k
    }
}

impl FlowKeyV6 {
    /// The family-independent form.
    pub fn to_flow_key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        }
    }
}

/// A [`FlowKey`] split by family, as the data plane stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyKey {
    V4(FlowKeyV4),
    V6(FlowKeyV6),
}

impl FlowKey {
    /// The per-family key; `None` for an unknown family tag.
    pub fn split(&self) -> Option<FamilyKey> {
        match self.family {
            FAMILY_V4 => {
                let mut k = FlowKeyV4 {
                    sport_be: self.sport_be,
                    dport_be: self.dport_be,
                    proto: self.proto,
                    ..FlowKeyV4::default()
                };
                k.src.copy_from_slice(&self.src[..4]);
                k.dst.copy_from_slice(&self.dst[..4]);
                Some(FamilyKey::V4(k))
            }
            FAMILY_V6 => Some(FamilyKey::V6(FlowKeyV6 {
                src: self.src,
                dst: self.dst,
                sport_be: self.sport_be,
                dport_be: self.dport_be,
                proto: self.proto,
                _pad: 0,
                _pad2: 0,
            })),
            _ => None,
        }
    }
}

/// Value of the flow table (layout version 2).
///
/// Written by the data plane: in full when a flow is created (a SYN, a UDP
/// datagram, or a packet whose entry is stale), then only
/// - `closed_ns`, once, on the first agent FIN or RST of the flow;
/// - `last_seen_ns`, at most once per [`LAST_SEEN_GRANULARITY_NS`], so that
///   "idle" can be defined without a write on every packet.
///
/// What "open" means is defined once, by [`FlowValue::is_open`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend chosen for the flow.
    pub backend_id: u32,
    /// `BackendInfo::generation` at the time of the choice.
    pub generation: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the entry was created.
    pub created_ns: u64,
    /// When the agent's first FIN or RST was seen; 0 = not seen (open).
    /// The flow keeps its backend after that (the last ACKs of the close
    /// must reach the compiler that holds the connection); a SYN on a closed
    /// entry is a new connection and is re-picked.
    pub closed_ns: u64,
    /// Last packet of the flow, to within [`LAST_SEEN_GRANULARITY_NS`].
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);

/// `FlowValue::last_seen_ns` is refreshed when it is at least this old.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// A UDP flow has no close: it counts as open while it saw a packet within
/// this long. (TCP flows have FIN/RST and do not use it: an agent waiting
/// for a slow catalog compile sends nothing for minutes and must still
/// count as connected.)
pub const UDP_OPEN_IDLE_NS: u64 = 30_000_000_000;

/// After the agent's FIN/RST, the close's last ACKs still have to reach
/// the compiler: a backend's slot is not freed while one of its flows
/// closed less than this long ago.
pub const CLOSE_LINGER_NS: u64 = 5_000_000_000;

impl FlowValue {
    /// The one definition of an open connection, used by retirement and
    /// anything that counts connections per backend: the agent has not sent
    /// FIN or RST, and, for UDP (no close), it was seen within
    /// [`UDP_OPEN_IDLE_NS`]. `now_ns` is CLOCK_MONOTONIC, like the
    /// timestamps. Whether the flow still belongs to a backend (same id and
    /// generation) is the caller's check.
    pub fn is_open(&self, proto: u8, now_ns: u64) -> bool {
        if self.closed_ns != 0 {
            return false;
        }
        proto == PROTO_TCP || now_ns.saturating_sub(self.last_seen_ns) < UDP_OPEN_IDLE_NS
    }

    /// Closed, but so recently that the close's last packets may still be
    /// on their way (see [`CLOSE_LINGER_NS`]).
    pub fn is_closing(&self, now_ns: u64) -> bool {
        self.closed_ns != 0 && now_ns.saturating_sub(self.closed_ns) < CLOSE_LINGER_NS
    }
}

/// Value of the version-1 flow table, read only to migrate it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValueV1 {
    pub backend_id: u32,
    pub generation: u32,
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValueV1>() == 16);

impl FlowValueV1 {
    /// The version-2 value: open, last seen `now_ns` (the v1 layout did not
    /// record closes; a flow that had ended is counted as open until its
    /// entry ages out or its backend's grace passes).
    pub fn upgrade(self, now_ns: u64) -> FlowValue {
        FlowValue {
            backend_id: self.backend_id,
            generation: self.generation,
            created_ns: self.created_ns,
            closed_ns: 0,
            last_seen_ns: now_ns,
        }
    }
}

/// A packets/bytes pair (per reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Per-service counters as userspace reports them. Only `no_backend` is
/// counted by the data plane (per service, on that drop only); packets,
/// bytes and new flows are the sums of the service's backends'
/// [`BackendStats`], so a forwarded packet writes one counter record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole frames).
    pub bytes: u64,
    /// Connections opened (see [`BackendStats::new_flows`]).
    pub new_flows: u64,
    /// Packets dropped because no backend was usable.
    pub no_backend: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);

/// Per-backend counters: the one per-CPU record a forwarded packet writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    /// Connections: a TCP SYN that created or re-took a flow entry (a port
    /// reused after TIME_WAIT included), a UDP datagram that created one,
    /// and, for CA services (no flow table), every SYN. Never a non-SYN
    /// miss, a retransmitted SYN, or a SYN forwarded in flood mode.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 24);

/// One slot of the VIP pre-filter (`vx_vip_filter_v2`, an array indexed by
/// [`crate::hash::vip_slot`] and [`crate::hash::addr_slot`]). The counts say
/// how many VIPs hash to the slot; a slot may be shared (a hash collision),
/// so a non-zero count means "maybe", zero means "certainly not".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterSlot {
    /// Compiler VIPs whose (address, port) hash here: only then can the
    /// packet belong to a flow-table entry.
    pub compiler: u16,
    /// CA VIPs whose (address, port) hash here.
    pub ca: u16,
    /// VIP addresses (any port) that hash here by address alone. This
    /// build's data plane reads the bitmap `vx_vip_addr_bits_v2` instead
    /// (8 KiB, which stays in cache); the count is still written for the
    /// program of an earlier v2 build until an upgrade replaces it.
    pub addrs: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FilterSlot>() == 8);

/// Key of the VIP address set (`vx_vip_addrs_v2`): the addresses of every
/// VIP, whatever the port, to drop packets that claim to come from one.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    /// Scalar padding: see [`FlowKeyV4::_pad`].
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<VipAddrKey>() == 20);

/// Data-plane settings written by userspace (`vx_config_v2`, one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpConfig {
    /// New-flow inserts per second per CPU above which SYNs are forwarded by
    /// the Maglev table alone, without a flow entry (flood mode). 0 = never.
    pub flood_threshold: u32,
    /// `DP_*` bits. 0 (a fresh map) is the default behaviour.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DpConfig>() == 8);

/// The data plane's clock (`vx_clock_v2`): CLOCK_MONOTONIC in ns read as
/// `base_ns + (jiffies - base_jiffies) * ns_per_jiffy`. The kernel keeps
/// jiffies in step with CLOCK_MONOTONIC (one tick every `TICK_NSEC` of it),
/// so this line gives what `bpf_ktime_get_coarse_ns()` gives, to within a
/// tick, without a helper call: `bpf_jiffies64()` is inlined by the
/// verifier into one load. The daemon fits the line once per boot through
/// readings of both clocks (`voxlb_clock`); `ns_per_jiffy == 0` (never
/// drawn) makes the data plane call `bpf_ktime_get_coarse_ns()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockBase {
    pub base_ns: u64,
    pub base_jiffies: u64,
    /// Last, so that a packet that reads it non-zero reads a whole line
    /// (userspace writes the line before any program uses it).
    pub ns_per_jiffy: u64,
}
const _: () = assert!(core::mem::size_of::<ClockBase>() == 24);

impl ClockBase {
    /// The line through readings of (jiffies, coarse ns), each taken at
    /// one instant, in time order, spanning at least two ticks.
    ///
    /// The kernel's tick advances jiffies a moment before the coarse clock,
    /// so a reading can pair new jiffies with the old time: one tick of skew
    /// in any single reading (seen under load). The tick is therefore the
    /// `TICK_NSEC` of the standard `HZ` (100, 250, 300, 1000) on which every
    /// reading's offset (ns minus jiffies × tick) lies within about a tick
    /// of the others (the readings should span ten ticks or more, so that a
    /// wrong standard tick spreads them further), else the standard tick
    /// within 10% of the slope from first to last, else that slope; the
    /// base is one tick below the reading whose clock was freshest (largest
    /// offset).
    /// `None` if the readings span less than two ticks or run backwards.
    pub fn from_readings(r: &[(u64, u64)]) -> Option<ClockBase> {
        let (first, last) = (*r.first()?, *r.last()?);
        let dj = last.0.checked_sub(first.0)?;
        let dn = last.1.checked_sub(first.1)?;
        if dj < 2 {
            return None;
        }
        // Offsets relative to the first reading (small, signed).
        let offset = |(j, n): (u64, u64), tick: u64| -> i64 {
            n.wrapping_sub(first.1) as i64 - j.wrapping_sub(first.0).wrapping_mul(tick) as i64
        };
        let spread = |tick: u64| -> u64 {
            let (lo, hi) = r.iter().fold((i64::MAX, i64::MIN), |(lo, hi), x| {
                let o = offset(*x, tick);
                (lo.min(o), hi.max(o))
            });
            hi.abs_diff(lo)
        };
        let standard = [100u64, 250, 300, 1000].map(|hz| (1_000_000_000 + hz / 2) / hz);
        let measured = dn / dj;
        let tick = standard
            .iter()
            .copied()
            .filter(|t| spread(*t) <= t + t / 2)
            .min_by_key(|t| spread(*t))
            .or_else(|| {
                // Late ticks (a busy VM) spread every offset: the standard
                // tick nearest the slope, if within 10% of it.
                standard
                    .iter()
                    .copied()
                    .find(|t| measured.abs_diff(*t) * 10 <= *t)
            })
            .unwrap_or(measured);
        let base = *r.iter().max_by_key(|x| offset(**x, tick))?;
        // The freshest reading can still be late in its tick (a CPU woken
        // from idle moves the coarse clock to the wake-up time, mid-tick):
        // the line runs one tick below it, so that a stamp is never ahead
        // of CLOCK_MONOTONIC (userspace subtracts stamps from it) and at
        // most two ticks behind it.
        Some(ClockBase {
            base_ns: base.1.saturating_sub(tick),
            base_jiffies: base.0,
            ns_per_jiffy: tick,
        })
    }

    /// CLOCK_MONOTONIC at `jiffies` on this line.
    pub fn ns_at(&self, jiffies: u64) -> u64 {
        self.base_ns.wrapping_add(
            jiffies
                .wrapping_sub(self.base_jiffies)
                .wrapping_mul(self.ns_per_jiffy),
        )
    }
}

/// [`DpConfig::flags`]: ICMP errors about VIP flows are passed to the
/// kernel instead of steered to the flow's backend (`icmp_steering =
/// false`).
pub const DP_NO_ICMP_STEERING: u32 = 1;

/// Length of a flood-mode window: the threshold is per window, per CPU.
pub const FLOOD_WINDOW_NS: u64 = 1_000_000_000;

/// Flood-mode state of one CPU (`vx_flood_v2`, per-CPU, one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// Start of the current window (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Flow creations asked for in the window (SYNs and new UDP flows),
    /// inserted or not.
    pub attempts: u64,
    /// SYNs (and new UDP flows) forwarded without an entry, ever.
    pub flood_syns: u64,
    /// Windows that went into flood mode, ever.
    pub flood_windows: u64,
}
const _: () = assert!(core::mem::size_of::<FloodState>() == 32);

impl FloodState {
    /// Whether this CPU is in flood mode at `now_ns`: its current window
    /// has asked for more than `threshold` creations.
    pub fn in_flood(&self, threshold: u32, now_ns: u64) -> bool {
        threshold != 0
            && now_ns.saturating_sub(self.window_start_ns) < FLOOD_WINDOW_NS
            && self.attempts > threshold as u64
    }
}

/// Key of the fragment table (`vx_frags_v2`): one fragmented datagram.
/// IPv4 identifies it by (source, destination, 16-bit ID, protocol) as RFC
/// 791 does; IPv6 by (source, destination, 32-bit ID) (RFC 8200), with
/// `proto` 0. Addresses in the 16-byte form (IPv4 in the first four).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The IP ID (IPv4: zero-extended), host byte order.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// Value of the fragment table: where the first fragment went, and the
/// ports and protocol it carried (later fragments have none), so a later
/// fragment is forwarded exactly as its flow's packets are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub backend_id: u32,
    /// `BackendInfo::generation` when recorded: a later fragment whose
    /// backend id was since given to another host is not followed.
    pub generation: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// Scalar padding: see [`FlowKeyV4::_pad`].
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TableRegion {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TunnelInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FilterSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DpConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FloodState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValueV1 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClockBase {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragValue {}
}

impl VipKey {
    /// Build a key from an address, a host-order port and a protocol.
    pub fn new(addr: core::net::IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = addr_bytes(addr);
        VipKey {
            addr,
            port_be: port.to_be(),
            proto,
            family,
        }
    }
}

impl VipAddrKey {
    /// The key of a VIP address.
    pub fn new(addr: core::net::IpAddr) -> Self {
        let (addr, family) = addr_bytes(addr);
        VipAddrKey {
            addr,
            family,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// An address as the 16-byte key form plus its family tag.
pub fn addr_bytes(addr: core::net::IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match addr {
        core::net::IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4)
        }
        core::net::IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// The inverse of [`addr_bytes`]; `None` for an unknown family tag.
pub fn addr_from_bytes(addr: &[u8; 16], family: u8) -> Option<core::net::IpAddr> {
    match family {
        FAMILY_V4 => Some(core::net::IpAddr::V4(core::net::Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        FAMILY_V6 => Some(core::net::IpAddr::V6(core::net::Ipv6Addr::from(*addr))),
        _ => None,
    }
}

#[cfg(test)]
mod clock_tests {
    extern crate std;
    use std::vec::Vec;

    use super::ClockBase;

    /// Readings `dj` jiffies after `a`, on the tick `tick` (coarse ns on
    /// the tick), every one in `stale` read with the clock a tick behind.
    fn readings(a: (u64, u64), tick: u64, n: u64, stale: &[u64]) -> Vec<(u64, u64)> {
        (0..n)
            .map(|k| {
                let late = if stale.contains(&k) { tick } else { 0 };
                (a.0 + k, a.1 + k * tick - late)
            })
            .collect()
    }

    #[test]
    fn a_clock_line_snaps_to_the_tick_of_a_standard_hz() {
        let a = (4_294_937_296, 1_000_000_000);
        // HZ = 250: 4 ms a tick.
        let r = readings(a, 4_000_000, 8, &[]);
        let l = ClockBase::from_readings(&r).unwrap();
        assert_eq!(l.ns_per_jiffy, 4_000_000);
        // One tick below the readings: never ahead of the clock.
        assert_eq!(l.ns_at(a.0 + 7), a.1 + 6 * 4_000_000);
        assert_eq!(l.ns_at(a.0 + 7 + 250), a.1 + 6 * 4_000_000 + 1_000_000_000);
        assert_eq!(l.ns_at(a.0 + 1), a.1);
        // HZ = 300 (3333333 ns a tick), read a little off the tick.
        let r = [(a.0, a.1), (a.0 + 30, a.1 + 30 * 3_333_333 + 500)];
        assert_eq!(
            ClockBase::from_readings(&r).unwrap().ns_per_jiffy,
            3_333_333
        );
        // An odd tick is taken as measured.
        let r = readings(a, 2_000_000, 11, &[]);
        assert_eq!(
            ClockBase::from_readings(&r).unwrap().ns_per_jiffy,
            2_000_000
        );
    }

    /// Seen under load: a reading with new jiffies and the old clock. Two
    /// such readings at the ends made a two-reading line 6 ms a tick at
    /// HZ = 250; the fit keeps 4 ms and bases the line on a fresh reading.
    #[test]
    fn readings_a_tick_stale_neither_bend_the_tick_nor_move_the_base() {
        let a = (4_294_937_296, 1_000_000_000);
        for stale in [&[0u64][..], &[24], &[0, 5, 24], &[3, 4]] {
            let r = readings(a, 4_000_000, 25, stale);
            let l = ClockBase::from_readings(&r).unwrap();
            assert_eq!(l.ns_per_jiffy, 4_000_000, "stale {stale:?}");
            assert_eq!(l.ns_at(a.0 + 10), a.1 + 36_000_000, "stale {stale:?}");
        }
        // HZ = 100 with the last reading stale: still 10 ms.
        let r = readings(a, 10_000_000, 12, &[11]);
        assert_eq!(
            ClockBase::from_readings(&r).unwrap().ns_per_jiffy,
            10_000_000
        );
    }

    #[test]
    fn no_line_from_readings_within_one_tick_or_backwards() {
        assert_eq!(ClockBase::from_readings(&[(5, 100), (5, 200)]), None);
        assert_eq!(ClockBase::from_readings(&[(5, 100), (6, 200)]), None);
        assert_eq!(ClockBase::from_readings(&[(7, 100), (5, 200)]), None);
        assert_eq!(ClockBase::from_readings(&[(5, 200), (8, 100)]), None);
        assert_eq!(ClockBase::from_readings(&[]), None);
    }
}
