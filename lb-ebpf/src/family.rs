//! What differs between IPv4 and IPv6 after parsing: the flow table, the
//! key's hash and the address forms. The packet path is generic over it and
//! compiled once per family.

use aya_ebpf::maps::LruHashMap;
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKeyV4, FlowKeyV6, FlowValue, VipAddrKey, VipKey,
    hash::{flow_hash_v4, flow_hash_v6, fold_v4, fold_v6},
};

use crate::maps::{FLOWS4, FLOWS6};

pub trait Family: Copy + 'static {
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
    /// The VIP-address key of the source.
    fn src_key(&self) -> VipAddrKey;
}

impl Family for FlowKeyV4 {
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
        let mut k = VipKey {
            port_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V4,
            ..VipKey::default()
        };
        k.addr[..4].copy_from_slice(&self.dst);
        k
    }
    #[inline(always)]
    fn src_key(&self) -> VipAddrKey {
        let mut k = VipAddrKey {
            family: FAMILY_V4,
            ..VipAddrKey::default()
        };
        k.addr[..4].copy_from_slice(&self.src);
        k
    }
}

impl Family for FlowKeyV6 {
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
    fn src_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: self.src,
            family: FAMILY_V6,
            _pad: [0; 3],
        }
    }
}
