//! The flow hash: which Maglev slot a new flow lands in.
//!
//! It must be the same function on every LB host and in every build (several
//! hosts behind ECMP must pick the same backend for a flow), so it has no
//! random seed and reads words little-endian explicitly. It is MurmurHash3's
//! 32-bit block mix and finaliser over the 5-tuple: cheap in eBPF (no loops
//! over variable lengths, no tables) and well distributed for slot indexing.

const SEED: u32 = 0x766f_786c; // "voxl"
const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

#[inline(always)]
const fn word4(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

/// The hash over the key's words: addresses as four little-endian words
/// each (an IPv4 address is one word and three zeros), then the ports, then
/// protocol and family. Every key form below feeds it the same words.
#[inline(always)]
const fn hash_words(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8, family: u8) -> u32 {
    let mut h = SEED;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    h = mix(h, (proto as u32) | ((family as u32) << 8));
    fmix(h ^ 40)
}

/// Hash of a flow's 5-tuple. Ports are taken as they sit in the key (network
/// byte order), so the data plane can hash without byte swaps.
#[inline(always)]
pub fn flow_hash(key: &crate::FlowKey) -> u32 {
    hash_words(
        [
            word(&key.src, 0),
            word(&key.src, 1),
            word(&key.src, 2),
            word(&key.src, 3),
        ],
        [
            word(&key.dst, 0),
            word(&key.dst, 1),
            word(&key.dst, 2),
            word(&key.dst, 3),
        ],
        (key.sport_be as u32) | ((key.dport_be as u32) << 16),
        key.proto,
        key.family,
    )
}

/// [`flow_hash`] of an IPv4 key, without building the 40-byte form: equal
/// to `flow_hash(&key.to_flow_key())` (a unit test holds it to that), so
/// which backend a flow maps to did not change with the per-family keys.
#[inline(always)]
pub fn flow_hash_v4(key: &crate::FlowKeyV4) -> u32 {
    hash_words(
        [word4(&key.src), 0, 0, 0],
        [word4(&key.dst), 0, 0, 0],
        (key.sport_be as u32) | ((key.dport_be as u32) << 16),
        key.proto,
        crate::FAMILY_V4,
    )
}

/// [`flow_hash`] of an IPv6 key (see [`flow_hash_v4`]).
#[inline(always)]
pub fn flow_hash_v6(key: &crate::FlowKeyV6) -> u32 {
    hash_words(
        [
            word(&key.src, 0),
            word(&key.src, 1),
            word(&key.src, 2),
            word(&key.src, 3),
        ],
        [
            word(&key.dst, 0),
            word(&key.dst, 1),
            word(&key.dst, 2),
            word(&key.dst, 3),
        ],
        (key.sport_be as u32) | ((key.dport_be as u32) << 16),
        key.proto,
        crate::FAMILY_V6,
    )
}

/// Slots of the VIP pre-filter array.
pub const FILTER_SLOTS: u32 = 65536;

/// An address folded to one word: an IPv4 address is its own word; an IPv6
/// one is its four words rotated apart and XORed.
#[inline(always)]
pub const fn fold_v6(a: &[u8; 16]) -> u32 {
    fold_v6_words([word(a, 0), word(a, 1), word(a, 2), word(a, 3)])
}

/// [`fold_v6`] of an address already read as its four little-endian words
/// (the data plane loads them from the packet whole).
#[inline(always)]
pub const fn fold_v6_words(w: [u32; 4]) -> u32 {
    w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3].rotate_left(24)
}

/// [`fold_v6`]'s IPv4 counterpart.
#[inline(always)]
pub const fn fold_v4(a: &[u8; 4]) -> u32 {
    word4(a)
}

/// Pre-filter slot of a destination (folded address, port as on the wire):
/// multiplicative hashing, the top 16 bits.
#[inline(always)]
pub const fn vip_slot(folded: u32, port_be: u16) -> u32 {
    (folded ^ ((port_be as u32) << 16 | port_be as u32)).wrapping_mul(0x9e37_79b1) >> 16
}

/// Words of the VIP address bitmap (one bit per [`addr_slot`]).
pub const ADDR_BITS_WORDS: u32 = FILTER_SLOTS / 64;

/// Set in a [`direct_entry`] that holds a VIP (an all-zero slot holds none).
pub const DIRECT_VALID: u64 = 1 << 63;
/// The bits of a [`direct_entry`] that [`direct_key`] must match.
pub const DIRECT_KEY_MASK: u64 = (1 << 56) - 1;
const _: () = assert!(
    crate::maps::MAX_SERVICES <= 64,
    "service ids fill 6 bits of a direct entry"
);

/// The exact key of an IPv4 destination in the direct VIP array: address
/// (as [`fold_v4`] reads it), port as on the wire, protocol, in 56 bits.
#[inline(always)]
pub const fn direct_key(folded_v4: u32, port_be: u16, proto: u8) -> u64 {
    folded_v4 as u64 | (port_be as u64) << 32 | (proto as u64) << 48
}

/// A direct VIP entry: the key, the service id (6 bits), the kind (1 bit:
/// CA) and [`DIRECT_VALID`], in one word, so that a packet reads a whole
/// entry or none of it (userspace stores it with one 8-byte store).
#[inline(always)]
pub const fn direct_entry(key: u64, service_id: u32, kind: u32) -> u64 {
    (key & DIRECT_KEY_MASK)
        | ((service_id as u64) & 0x3f) << 56
        | ((kind as u64) & 1) << 62
        | DIRECT_VALID
}

/// The VIP a direct entry holds for `key`: `None` if it holds no VIP or
/// another one (a different address, port or protocol in the same slot).
#[inline(always)]
pub const fn direct_vip(entry: u64, key: u64) -> Option<crate::VipInfo> {
    if entry & DIRECT_VALID == 0 || entry & DIRECT_KEY_MASK != key {
        return None;
    }
    Some(crate::VipInfo {
        service_id: ((entry >> 56) & 0x3f) as u32,
        kind: ((entry >> 62) & 1) as u32,
    })
}

/// Pre-filter slot of an address alone (the spoofed-source check).
#[inline(always)]
pub const fn addr_slot(folded: u32) -> u32 {
    (folded ^ 0xa5a5_5a5a).wrapping_mul(0x85eb_ca6b) >> 16
}

/// Fold an address in its 16-byte key form (see [`crate::addr_bytes`]).
pub const fn fold_addr(addr: &[u8; 16], family: u8) -> u32 {
    if family == crate::FAMILY_V4 {
        fold_v4(&[addr[0], addr[1], addr[2], addr[3]])
    } else {
        fold_v6(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowKey;

    #[test]
    fn a_direct_entry_gives_back_its_vip_for_its_own_key_only() {
        let key = direct_key(fold_v4(&[10, 0, 0, 100]), 8140u16.to_be(), 6);
        for (sid, kind) in [(0, 0), (1, 1), (63, 0), (63, 1)] {
            let e = direct_entry(key, sid, kind);
            assert_eq!(
                direct_vip(e, key),
                Some(crate::VipInfo {
                    service_id: sid,
                    kind
                })
            );
        }
        let e = direct_entry(key, 5, 1);
        assert_eq!(direct_vip(0, key), None, "an empty slot holds no VIP");
        let other_addr = direct_key(fold_v4(&[10, 0, 0, 101]), 8140u16.to_be(), 6);
        let other_port = direct_key(fold_v4(&[10, 0, 0, 100]), 8141u16.to_be(), 6);
        let other_proto = direct_key(fold_v4(&[10, 0, 0, 100]), 8140u16.to_be(), 17);
        for k in [other_addr, other_port, other_proto] {
            assert_eq!(direct_vip(e, k), None);
        }
    }

    #[test]
    fn golden_values_pin_the_hash() {
        // Changing these values changes which backend every flow of every
        // deployed host maps to; it must be a deliberate act.
        let mut k = FlowKey::default();
        assert_eq!(flow_hash(&k), flow_hash(&FlowKey::default()));
        k.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.dst[..4].copy_from_slice(&[10, 0, 0, 100]);
        k.sport_be = 40000u16.to_be();
        k.dport_be = 8140u16.to_be();
        k.proto = 6;
        k.family = 4;
        let a = flow_hash(&k);
        k.sport_be = 40001u16.to_be();
        let b = flow_hash(&k);
        assert_ne!(a, b);
        assert_eq!((a, b), GOLDEN);
    }

    const GOLDEN: (u32, u32) = (720_333_561, 3_480_018_192);

    #[test]
    fn per_family_hashes_equal_the_generic_one() {
        use crate::{FAMILY_V4, FAMILY_V6, FamilyKey};
        let mut x = 0x1234_5678u32;
        for i in 0..2000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let mut k = FlowKey {
                sport_be: x as u16,
                dport_be: (x >> 16) as u16,
                proto: if i % 2 == 0 { 6 } else { 17 },
                family: if i % 3 == 0 { FAMILY_V6 } else { FAMILY_V4 },
                ..Default::default()
            };
            let n = if k.family == FAMILY_V4 { 4 } else { 16 };
            for j in 0..n {
                k.src[j] = (x >> (j % 4 * 8)) as u8 ^ j as u8;
                k.dst[j] = (x >> (j % 3 * 8)) as u8 ^ (i as u8);
            }
            let h = match k.split().unwrap() {
                FamilyKey::V4(k4) => {
                    assert_eq!(k4.to_flow_key(), k);
                    flow_hash_v4(&k4)
                }
                FamilyKey::V6(k6) => {
                    assert_eq!(k6.to_flow_key(), k);
                    flow_hash_v6(&k6)
                }
            };
            assert_eq!(h, flow_hash(&k), "key {k:?}");
        }
    }

    #[test]
    fn filter_slots_stay_in_range_and_spread() {
        let mut hit = [0u16; 1024];
        for i in 0..4096u32 {
            let a = [10, 0, (i >> 8) as u8, i as u8];
            let s = vip_slot(fold_v4(&a), 8140u16.to_be());
            let t = addr_slot(fold_v4(&a));
            assert!(s < FILTER_SLOTS && t < FILTER_SLOTS);
            hit[(s >> 6) as usize] += 1;
        }
        assert!(hit.iter().all(|&n| n < 20), "filter slots clump");
    }

    #[test]
    fn spreads_source_ports_evenly() {
        let mut buckets = [0u32; 16];
        let mut k = FlowKey {
            proto: 6,
            family: 4,
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&[192, 0, 2, 7]);
        k.dst[..4].copy_from_slice(&[198, 51, 100, 1]);
        k.dport_be = 8140u16.to_be();
        for p in 0..16000u16 {
            k.sport_be = (20000 + p).to_be();
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..=1100).contains(&b), "bucket count {b} far from 1000");
        }
    }
}
