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

/// Hash of a flow's 5-tuple. Ports are taken as they sit in the key (network
/// byte order), so the data plane can hash without byte swaps.
#[inline(always)]
pub fn flow_hash(key: &crate::FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 1));
    h = mix(h, word(&key.src, 2));
    h = mix(h, word(&key.src, 3));
    h = mix(h, word(&key.dst, 0));
    h = mix(h, word(&key.dst, 1));
    h = mix(h, word(&key.dst, 2));
    h = mix(h, word(&key.dst, 3));
    h = mix(h, (key.sport_be as u32) | ((key.dport_be as u32) << 16));
    h = mix(h, (key.proto as u32) | ((key.family as u32) << 8));
    fmix(h ^ 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowKey;

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
