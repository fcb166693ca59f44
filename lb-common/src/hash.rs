//! The flow hash: which Maglev slot a new flow lands in.
//!
//! It must be the same function on every LB host and in every build (several
//! hosts behind ECMP must pick the same backend for a flow), so it has no
//! random seed and reads words little-endian explicitly. It is a sum of
//! independent 64-bit products over the 5-tuple's words, mixed down to 32
//! bits ([`hash_words`]), and a table slot is the hash scaled to the table
//! ([`table_slot`]), not a remainder.
//!
//! **Decision: this hash replaced MurmurHash3 (32-bit) in the v2 data plane,
//! with the remainder.** Murmur mixes the ten words one after another, a
//! chain of ten multiplies, and an IPv4 key is six zero words of its ten:
//! in the flood-mode SYN path's profile the hash was 27% of the program's
//! time and the 64-bit `div` behind `% size` another 4%. Here the five
//! products are independent (two multiplies deep, the three zero lanes of
//! an IPv4 key one constant) and the slot is one multiply. Both change
//! which compiler a flow not yet in a flow table is sent to; README,
//! *Upgrading from map layout v1*, says what that means for an upgrade.
//! Quality is held by tests: the per-family forms equal the generic one, a
//! reference implementation written apart from this one agrees
//! (`lb-testkit`), and sequential ports, sequential clients and IPv6
//! clients spread over table slots within chi-square bounds.

/// Which flow hash and slot rule this build uses: 1 was MurmurHash3 and
/// `hash % size` (v1 data plane), 2 is [`flow_hash`] and [`table_slot`] as
/// below. Bumped by any change to either; userspace feeds it into the
/// table fingerprint, so two hosts that would send a new flow to different
/// compilers never show the same fingerprint.
pub const FLOW_HASH_VERSION: u8 = 2;

/// Odd 64-bit multipliers, one per lane and one for the finish.
const M: [u64; 6] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
];
/// What each lane is XORed with first, so that a lane of zeros (the
/// unused words of an IPv4 address) is not multiplied to zero.
const K: [u64; 5] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
];

/// Two words side by side in one lane.
#[inline(always)]
const fn lane(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// One lane's product.
#[inline(always)]
const fn product(lane: u64, i: usize) -> u64 {
    (lane ^ K[i]).wrapping_mul(M[i])
}

/// The sum of the lanes' products, mixed down to 32 bits: the high half
/// folded onto the low one, one multiply, and the high 32 bits taken.
#[inline(always)]
const fn finish(mut h: u64) -> u32 {
    h ^= h >> 32;
    h = h.wrapping_mul(M[5]);
    h ^= h >> 29;
    (h >> 32) as u32
}

/// The products of the three lanes an IPv4 address leaves zero (words 1 to
/// 3 of both addresses), summed once at compile time.
const V4_ZERO_LANES: u64 = product(0, 1)
    .wrapping_add(product(0, 2))
    .wrapping_add(product(0, 3));

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

#[inline(always)]
const fn word4(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

/// The hash over the key's words: five 64-bit lanes (word i of the source
/// address beside word i of the destination, for i in 0..4; then the ports
/// beside protocol and family), each XORed with its constant and multiplied
/// by its own odd constant; the products summed and [`finish`]ed. The five
/// multiplies are independent, so the critical path is two multiplies
/// deep. Every key form below feeds it the same words.
#[inline(always)]
const fn hash_words(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8, family: u8) -> u32 {
    let pf = (proto as u32) | ((family as u32) << 8);
    finish(
        product(lane(src[0], dst[0]), 0)
            .wrapping_add(product(lane(src[1], dst[1]), 1))
            .wrapping_add(product(lane(src[2], dst[2]), 2))
            .wrapping_add(product(lane(src[3], dst[3]), 3))
            .wrapping_add(product(lane(ports, pf), 4)),
    )
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
    let ports = (key.sport_be as u32) | ((key.dport_be as u32) << 16);
    let pf = (key.proto as u32) | ((crate::FAMILY_V4 as u32) << 8);
    finish(
        product(lane(word4(&key.src), word4(&key.dst)), 0)
            .wrapping_add(V4_ZERO_LANES)
            .wrapping_add(product(lane(ports, pf), 4)),
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

/// The slot of a table of `size` slots that a flow of hash `hash` takes:
/// `hash * size / 2^32`, one multiply and a shift where `hash % size` was a
/// 64-bit division (Lemire's "fast range"). It reads the hash's high bits,
/// which [`finish`] mixes best.
#[inline(always)]
pub const fn table_slot(hash: u32, size: u32) -> u32 {
    ((hash as u64 * size as u64) >> 32) as u32
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

    const GOLDEN: (u32, u32) = (2_318_598_589, 1_813_438_023);

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

    /// Pearson's chi-square of `counts` against a uniform spread.
    fn chi_square(counts: &[u32]) -> f64 {
        let n: u32 = counts.iter().sum();
        let e = f64::from(n) / counts.len() as f64;
        counts.iter().map(|&c| (f64::from(c) - e).powi(2) / e).sum()
    }

    /// The slots of a 65537-slot table (the default Maglev size), folded
    /// into 64 buckets, that `keys` reach: uniform within a chi-square
    /// bound of about 4.5 standard deviations above its mean (63 degrees of
    /// freedom: mean 63, sd 11.2), which a hash that clumps exceeds by far
    /// (the identity of the ports word scores in the millions).
    fn assert_spread(what: &str, keys: impl Iterator<Item = FlowKey>) {
        let mut buckets = [0u32; 64];
        for k in keys {
            let slot = table_slot(flow_hash(&k), 65537);
            assert!(slot < 65537);
            buckets[(slot * 64 / 65537) as usize] += 1;
        }
        let x2 = chi_square(&buckets);
        assert!(x2 < 113.0, "{what}: chi-square {x2:.1} over 64 buckets");
    }

    fn v4_key(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey {
            proto: 6,
            family: 4,
            sport_be: sport.to_be(),
            dport_be: 8140u16.to_be(),
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[198, 51, 100, 1]);
        k
    }

    #[test]
    fn spreads_source_ports_evenly() {
        // One NATed site: one address, its ports in sequence.
        assert_spread(
            "sequential ports",
            (0..32000u16).map(|p| v4_key([192, 0, 2, 7], 20000 + p)),
        );
    }

    #[test]
    fn spreads_clients_evenly() {
        // A fleet numbered in sequence, each on the same ephemeral port:
        // the addresses alone must spread.
        assert_spread(
            "sequential IPv4 clients",
            (0..32000u32).map(|i| v4_key([10, 1, (i >> 8) as u8, i as u8], 40000)),
        );
        assert_spread(
            "sequential IPv6 clients",
            (0..32000u32).map(|i| {
                let mut k = FlowKey {
                    proto: 6,
                    family: 6,
                    sport_be: 40000u16.to_be(),
                    dport_be: 8140u16.to_be(),
                    ..Default::default()
                };
                k.src = [
                    0xfd,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (i >> 8) as u8,
                    i as u8,
                ];
                k.dst[..2].copy_from_slice(&[0xfd, 0]);
                k.dst[15] = 1;
                k
            }),
        );
    }

    #[test]
    fn a_chi_square_bound_this_loose_still_catches_a_clumping_hash() {
        // The bound above is not vacuous: the ports word taken as the hash
        // (what a hash that ignores its mixing would give) fails it.
        let mut buckets = [0u32; 64];
        for p in 0..32000u32 {
            let h = (20000 + p) << 16;
            buckets[(table_slot(h, 65537) * 64 / 65537) as usize] += 1;
        }
        assert!(chi_square(&buckets) > 113.0);
    }

    #[test]
    fn table_slot_is_the_hash_scaled_to_the_table() {
        for size in [1u32, 2, 7, 65537, 655_373] {
            assert_eq!(table_slot(0, size), 0);
            assert_eq!(table_slot(u32::MAX, size), size - 1);
            let mut x = 0x9e37_79b9u32;
            for _ in 0..1000 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let s = table_slot(x, size);
                assert!(s < size);
                // The slot whose share of the 2^32 hashes holds x.
                let lo = u64::from(s) << 32;
                assert!(lo <= u64::from(x) * u64::from(size));
                assert!(u64::from(x) * u64::from(size) < lo + (1 << 32));
            }
        }
    }
}
