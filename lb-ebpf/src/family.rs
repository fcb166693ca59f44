//! What differs between IPv4 and IPv6 after parsing: the flow table, the
//! key's hash and the address forms. The packet path is generic over it and
//! compiled once per family.

use aya_ebpf::maps::LruHashMap;
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKeyV4, FlowKeyV6, FlowValue, FragKey, VipAddrKey, VipKey,
    hash::{addr_slot, direct_key, flow_hash_v4, flow_hash_v6, fold_v4, fold_v6},
};

use crate::{
    encap::sum_words,
    maps::{FLOWS4, FLOWS6, VIP_ADDR_BITS, VIP_ADDRS},
};

pub trait Family: Copy + 'static {
    /// IPv6 (else IPv4).
    const V6: bool;
    /// One's-complement sum (unfolded) of the source and destination
    /// addresses: their part of a checksum's pseudo-header.
    fn addr_sum(&self) -> u32;
    /// The family's flow table.
    fn flows() -> &'static LruHashMap<Self, FlowValue>;
    /// The destination address folded to a word (for the pre-filter).
    fn dst_fold(&self) -> u32;
    /// The source address folded to a word (for the spoofing check).
    fn src_fold(&self) -> u32;
    /// The flow hash (equal to `lb_common::hash::flow_hash` of the
    /// family-independent key).
    fn hash(&self) -> u32;
    /// The VIP-map key of the destination.
    fn vip_key(&self) -> VipKey;
    /// The key of the destination in the direct VIP array (IPv4 only).
    fn direct_key(&self, dport_be: u16, proto: u8) -> Option<u64>;
    /// The VIP-address key of the source.
    fn src_key(&self) -> VipAddrKey;
    /// The VIP-address key of the destination.
    fn dst_key(&self) -> VipAddrKey;
    /// The source port, as on the wire.
    fn sport_be(&self) -> u16;
    /// The same addresses with these ports and protocol.
    fn with_l4(self, sport_be: u16, dport_be: u16, proto: u8) -> Self;
    /// The fragment-table key of a datagram of these addresses with IP ID
    /// `id` (IPv4 keys it by protocol too, IPv6 does not).
    fn frag_key(&self, id: u32) -> FragKey;
}

/// A VIP address may hash to this address's slot: its bit in the 8 KiB
/// address bitmap. Clear means certainly not a VIP address.
#[inline(always)]
pub(crate) fn maybe_vip_addr(folded: u32) -> bool {
    let slot = addr_slot(folded);
    match VIP_ADDR_BITS.get(slot >> 6) {
        Some(&w) => (w >> (slot & 63)) & 1 != 0,
        None => false,
    }
}

/// The source address is one of the VIPs' (a land attack or spoofing).
/// One bitmap load on the address; a hash lookup only when a VIP address
/// hashes to the same slot.
#[inline(always)]
pub fn from_vip_addr<K: Family>(key: &K) -> bool {
    maybe_vip_addr(key.src_fold()) && VIP_ADDRS.get_ptr(key.src_key()).is_some()
}

/// The destination is one of the VIPs' addresses (any port): one bitmap
/// load, and a hash lookup only when a VIP address hashes to its slot.
#[inline(always)]
pub fn to_vip_addr<K: Family>(key: &K) -> bool {
    maybe_vip_addr(key.dst_fold()) && VIP_ADDRS.get_ptr(key.dst_key()).is_some()
}

/// An IPv4 address in the 16-byte form of the VIP keys (the rest zero),
/// built from words: LLVM turns a run of zero bytes into a `memset`, which
/// the eBPF build compiles to a call of a byte-loop subprogram (about as
/// costly here as a map lookup); three zero words stay three stores.
#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let w: [u32; 4] = [u32::from_ne_bytes(a), 0, 0, 0];
    // SAFETY: both are 16 plain bytes; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

impl Family for FlowKeyV4 {
    const V6: bool = false;
    #[inline(always)]
    fn addr_sum(&self) -> u32 {
        sum_words(sum_words(0, &self.src), &self.dst)
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<Self, FlowValue> {
        &FLOWS4
    }
    #[inline(always)]
    fn dst_fold(&self) -> u32 {
        fold_v4(&self.dst)
    }
    #[inline(always)]
    fn src_fold(&self) -> u32 {
        fold_v4(&self.src)
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash_v4(self)
    }
    #[inline(always)]
    fn vip_key(&self) -> VipKey {
        VipKey {
            addr: v4_in_16(self.dst),
            port_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V4,
        }
    }
    #[inline(always)]
    fn direct_key(&self, dport_be: u16, proto: u8) -> Option<u64> {
        Some(direct_key(fold_v4(&self.dst), dport_be, proto))
    }
    #[inline(always)]
    fn src_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: v4_in_16(self.src),
            family: FAMILY_V4,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn dst_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: v4_in_16(self.dst),
            family: FAMILY_V4,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn with_l4(self, sport_be: u16, dport_be: u16, proto: u8) -> Self {
        FlowKeyV4 {
            sport_be,
            dport_be,
            proto,
            ..self
        }
    }
    #[inline(always)]
    fn frag_key(&self, id: u32) -> FragKey {
        let mut k = FragKey {
            id,
            proto: self.proto,
            family: FAMILY_V4,
            ..FragKey::default()
        };
        k.src[..4].copy_from_slice(&self.src);
        k.dst[..4].copy_from_slice(&self.dst);
        k
    }
}

impl Family for FlowKeyV6 {
    const V6: bool = true;
    #[inline(always)]
    fn addr_sum(&self) -> u32 {
        sum_words(sum_words(0, &self.src), &self.dst)
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<Self, FlowValue> {
        &FLOWS6
    }
    #[inline(always)]
    fn dst_fold(&self) -> u32 {
        fold_v6(&self.dst)
    }
    #[inline(always)]
    fn src_fold(&self) -> u32 {
        fold_v6(&self.src)
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash_v6(self)
    }
    #[inline(always)]
    fn vip_key(&self) -> VipKey {
        VipKey {
            addr: self.dst,
            port_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V6,
        }
    }
    #[inline(always)]
    fn direct_key(&self, _dport_be: u16, _proto: u8) -> Option<u64> {
        None
    }
    #[inline(always)]
    fn src_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: self.src,
            family: FAMILY_V6,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn dst_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: self.dst,
            family: FAMILY_V6,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn with_l4(self, sport_be: u16, dport_be: u16, proto: u8) -> Self {
        FlowKeyV6 {
            sport_be,
            dport_be,
            proto,
            ..self
        }
    }
    #[inline(always)]
    fn frag_key(&self, id: u32) -> FragKey {
        FragKey {
            src: self.src,
            dst: self.dst,
            id,
            proto: 0,
            family: FAMILY_V6,
            _pad: 0,
        }
    }
}
