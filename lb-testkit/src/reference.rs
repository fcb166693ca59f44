//! Reference implementations of what lb-common computes for the data plane,
//! written apart from it for the fuzzer's model, so that a bug in lb-common
//! shows up as a disagreement instead of being copied into the model:
//!
//! - the flow hash is its spec's arithmetic over the flow's 40 key bytes as
//!   `lb_common::hash` lays them out: five 64-bit lanes read from the
//!   bytes, each XORed with its constant and multiplied by its own, the sum
//!   finished; and a table slot is the hash times the table size, over
//!   2^32;
//! - the Maglev table is the paper's population loop in its plainest form:
//!   every permutation written out in full, the next turn found by scanning
//!   every backend for the earliest virtual time (no heap, no round-robin
//!   shortcut), each turn claiming the backend's next free slot;
//! - the address bitmap's slot is its spec's two steps written out: the
//!   address folded to a word, then a multiplicative hash's top 16 bits.

use std::net::IpAddr;

/// An address as 16 bytes (IPv4 in the first four, the rest zero) and its
/// family tag (4 or 6): the form keys and identities use.
pub fn addr16(a: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

/// The 40 bytes the flow hash covers: source (16), destination (16), source
/// and destination port in network order (2 + 2), protocol, family, and two
/// zero bytes.
pub fn flow_bytes(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> [u8; 40] {
    let (s, family) = addr16(src);
    let (d, _) = addr16(dst);
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&s);
    b[16..32].copy_from_slice(&d);
    b[32..34].copy_from_slice(&sport.to_be_bytes());
    b[34..36].copy_from_slice(&dport.to_be_bytes());
    b[36] = proto;
    b[37] = family;
    b
}

/// The flow hash of a 5-tuple, per `lb_common::hash`'s spec, from the 40
/// bytes [`flow_bytes`] lays out. Lane i (0 to 3) holds bytes 4i..4i+4
/// (word i of the source address) as its low half and bytes 16+4i..20+4i
/// (word i of the destination) as its high half, little-endian; lane 4 is
/// bytes 32..40 (ports, protocol, family, zeros) read little-endian as one
/// word. The hash is the sum mod 2^64 of (lane i XOR K[i]) * M[i]; that sum
/// h becomes h XOR (h >> 32), times M[5], XOR itself shifted right by 29,
/// and the top 32 bits of the result are the hash.
pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    const K: [u64; 5] = [
        0x243f6a8885a308d3,
        0x13198a2e03707344,
        0xa4093822299f31d0,
        0x082efa98ec4e6c89,
        0x452821e638d01377,
    ];
    const M: [u64; 6] = [
        0x9e3779b97f4a7c15,
        0xbf58476d1ce4e5b9,
        0x94d049bb133111eb,
        0xd6e8feb86659fd93,
        0xa0761d6478bd642f,
        0xe7037ed1a0b428db,
    ];
    let b = flow_bytes(src, dst, sport, dport, proto);
    let le = |at: usize, n: usize| -> u64 {
        (0..n).fold(0u64, |acc, i| acc | u64::from(b[at + i]) << (8 * i))
    };
    let lanes = [
        le(0, 4) | le(16, 4) << 32,
        le(4, 4) | le(20, 4) << 32,
        le(8, 4) | le(24, 4) << 32,
        le(12, 4) | le(28, 4) << 32,
        le(32, 8),
    ];
    let mut h = 0u64;
    for (i, lane) in lanes.iter().enumerate() {
        h = h.wrapping_add((lane ^ K[i]).wrapping_mul(M[i]));
    }
    h ^= h >> 32;
    h = h.wrapping_mul(M[5]);
    h ^= h >> 29;
    (h >> 32) as u32
}

/// The slot of a table of `size` slots that a flow of hash `hash` takes:
/// floor(hash * size / 2^32), computed in 128 bits.
pub fn table_slot(hash: u32, size: usize) -> usize {
    ((u128::from(hash) * size as u128) >> 32) as usize
}

/// The slot of an address in the VIP address bitmap (one bit per slot,
/// 65536 slots), per `lb_common::hash::addr_slot`'s spec: the address read
/// as little-endian words, an IPv4 address its one word, an IPv6 address's
/// four words XORed after rotating the second, third and fourth left by 8,
/// 16 and 24; that word XOR 0xa5a55a5a, times 0x85ebca6b (mod 2^32), its
/// top 16 bits.
pub fn addr_slot(a: IpAddr) -> u32 {
    let folded = match a {
        IpAddr::V4(v4) => u32::from_le_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (0..4).fold(0u32, |acc, i| {
                let w = u32::from_le_bytes(o[i * 4..i * 4 + 4].try_into().unwrap());
                acc ^ w.rotate_left(8 * i as u32)
            })
        }
    };
    (folded ^ 0xa5a5_5a5a).wrapping_mul(0x85eb_ca6b) >> 16
}

/// MurmurHash3's 64-bit finaliser (fmix64).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A backend's identity hash under a seed, per `lb_common::maglev`'s spec:
/// the 17 identity bytes (address as 16, family tag) as two little-endian
/// words and a last word holding the tag and the length 17 in its top byte,
/// each folded in after rotating the state left by 29 (not before the
/// first), with fmix64 after every step, starting from fmix64(seed).
fn identity_hash(seed: u64, addr: IpAddr) -> u64 {
    let (a, family) = addr16(addr);
    let words = [
        u64::from_le_bytes(a[..8].try_into().unwrap()),
        u64::from_le_bytes(a[8..].try_into().unwrap()),
        u64::from(family) | (17 << 56),
    ];
    let mut h = fmix64(seed);
    for (i, w) in words.into_iter().enumerate() {
        let state = if i == 0 { h } else { h.rotate_left(29) };
        h = fmix64(state ^ w);
    }
    h
}

const SEED_OFFSET: u64 = u64::from_be_bytes(*b"voxloffs");
const SEED_SKIP: u64 = u64::from_be_bytes(*b"voxlskip");

/// One backend of a reference table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub addr: IpAddr,
    /// 0: in no slot.
    pub weight: u32,
    /// What its slots hold.
    pub value: u32,
}

/// The Maglev table of `m` (prime) slots: `u32::MAX` everywhere when no
/// member has a weight.
pub fn maglev(members: &[Member], m: u32) -> Vec<u32> {
    let m = m as usize;
    let mut live: Vec<Member> = members.iter().copied().filter(|b| b.weight > 0).collect();
    // Identity order: address bytes, then family (IPv4 sorts by its four
    // bytes followed by zeroes).
    live.sort_by_key(|b| {
        let (a, f) = addr16(b.addr);
        (a, f)
    });
    if live.is_empty() {
        return vec![u32::MAX; m];
    }
    // The paper's permutation table, written out in full.
    let permutation: Vec<Vec<usize>> = live
        .iter()
        .map(|b| {
            let offset = (identity_hash(SEED_OFFSET, b.addr) % m as u64) as usize;
            let skip = (identity_hash(SEED_SKIP, b.addr) % (m as u64 - 1) + 1) as usize;
            (0..m).map(|j| (offset + j * skip) % m).collect()
        })
        .collect();
    let mut next = vec![0usize; live.len()];
    let mut turns = vec![0u64; live.len()];
    let mut table: Vec<Option<usize>> = vec![None; m];
    for _ in 0..m {
        // Backend i's turn k falls at (k + 1/2) / w_i; the earliest goes,
        // ties to the lower identity. Compared exactly: (2k+1) * w_j.
        let mut who = 0;
        for i in 1..live.len() {
            let mine = (2 * turns[i] + 1) as u128 * live[who].weight as u128;
            let theirs = (2 * turns[who] + 1) as u128 * live[i].weight as u128;
            if mine < theirs {
                who = i;
            }
        }
        turns[who] += 1;
        let mut c = permutation[who][next[who]];
        while table[c].is_some() {
            next[who] += 1;
            c = permutation[who][next[who]];
        }
        table[c] = Some(who);
        next[who] += 1;
    }
    table
        .into_iter()
        .map(|o| live[o.expect("every slot filled")].value)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn lb_common_flow_hash_and_table_slot_are_the_spec() {
        let mut r = crate::fuzz::Rng::new(7);
        for _ in 0..20_000 {
            let v6 = r.chance(50);
            let addr = |r: &mut crate::fuzz::Rng| -> IpAddr {
                if v6 {
                    Ipv6Addr::from(u128::from(r.next_u64()) << 64 | u128::from(r.next_u64())).into()
                } else {
                    Ipv4Addr::from(r.next_u64() as u32).into()
                }
            };
            let (src, dst) = (addr(&mut r), addr(&mut r));
            let (sport, dport) = (r.next_u64() as u16, r.next_u64() as u16);
            let proto = r.pick(&[6u8, 17]);
            let ((s, family), (d, _)) = (lb_common::addr_bytes(src), lb_common::addr_bytes(dst));
            let key = lb_common::FlowKey {
                src: s,
                dst: d,
                sport_be: sport.to_be(),
                dport_be: dport.to_be(),
                proto,
                family,
                ..Default::default()
            };
            let h = flow_hash(src, dst, sport, dport, proto);
            assert_eq!(
                lb_common::hash::flow_hash(&key),
                h,
                "{src} {sport} -> {dst} {dport} proto {proto}"
            );
            let size = r.pick(&[1u32, 251, 65537, 655_373]);
            assert_eq!(
                lb_common::hash::table_slot(h, size) as usize,
                table_slot(h, size as usize)
            );
        }
    }

    #[test]
    fn lb_common_maglev_equals_the_plain_population_loop() {
        let mut r = crate::fuzz::Rng::new(11);
        for round in 0..40 {
            let n = 1 + r.below(12);
            let equal = round % 2 == 0;
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    addr: if r.chance(30) {
                        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, round, i as u16).into()
                    } else {
                        Ipv4Addr::new(10, round as u8, 0, i as u8 + 1).into()
                    },
                    weight: if equal {
                        1
                    } else {
                        r.pick(&[0, 1, 2, 3, 10, 100])
                    },
                    value: i as u32,
                })
                .collect();
            let m = r.pick(&[1201, 2003, 4099]);
            let entries: Vec<lb_common::maglev::Entry> = members
                .iter()
                .map(|b| lb_common::maglev::Entry::from_addr(b.addr, b.weight, b.value))
                .collect();
            assert_eq!(
                lb_common::maglev::build(&entries, m).unwrap(),
                maglev(&members, m),
                "round {round}: {members:?} M={m}"
            );
        }
    }

    #[test]
    fn lb_common_addr_slot_is_the_spec() {
        // Two addresses worked by hand from the spec: 10.0.0.1 is the word
        // 0x0100000a; ::1's words are 0, 0, 0, 0x01000000, the last
        // rotated left by 24 to 0x00010000.
        let by_hand = |folded: u32| (folded ^ 0xa5a5_5a5a).wrapping_mul(0x85eb_ca6b) >> 16;
        assert_eq!(
            addr_slot(Ipv4Addr::new(10, 0, 0, 1).into()),
            by_hand(0x0100_000a)
        );
        assert_eq!(addr_slot(Ipv6Addr::LOCALHOST.into()), by_hand(0x0001_0000));
        let mut r = crate::fuzz::Rng::new(13);
        let mut slots = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let a: IpAddr = if r.chance(50) {
                Ipv6Addr::from(u128::from(r.next_u64()) << 64 | u128::from(r.next_u64())).into()
            } else {
                Ipv4Addr::from(r.next_u64() as u32).into()
            };
            let (bytes, family) = lb_common::addr_bytes(a);
            let slot = lb_common::hash::addr_slot(lb_common::hash::fold_addr(&bytes, family));
            assert_eq!(slot, addr_slot(a), "{a}");
            slots.insert(slot);
        }
        // A hash, not a constant: the slots spread.
        assert!(slots.len() > 10_000, "{} distinct slots", slots.len());
    }
}
