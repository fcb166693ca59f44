//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! Userspace builds the lookup table; the data plane indexes it with
//! `table_slot(flow_hash, size)` (`crate::hash`), one array read per new flow. The table depends only on
//! the set of (identity, weight) pairs and the size, so every LB host builds
//! the same bytes:
//! - entries are sorted by identity before filling, so insertion order does
//!   not matter;
//! - each backend's permutation derives from its identity alone (never from
//!   its backend id, its position, a seed or the host), through a hash that
//!   reads bytes explicitly and does all arithmetic in `u64`.
//!
//! # Filling
//! As in the paper, backends take turns; in its turn a backend walks its own
//! permutation of the slots (`offset, offset + skip, ...` mod M) and claims
//! the first free slot. Each turn claims exactly one slot, so the slot counts
//! are the turn counts, and weighting is a matter of scheduling turns.
//!
//! Backend `i` with weight `w` takes its turn number `k` at virtual time
//! `(k + 1/2) / w`; ties go to the lower identity. This is the Sainte-Laguë
//! (Webster) apportionment, the unbiased one: a backend ends within one slot
//! of `M * w / W` unless one weight dwarfs the sum of the others (bound in
//! the property test). Each backend's turn times depend on its own weight
//! only, so the schedule needs no normalisation by the largest weight: the
//! first version of this module gave every backend a credit of `w` per round
//! of N and a turn per `max(w)` of credit, which costs `M * N * max(w) / W`
//! steps — 0.4 s for one weight-10⁶ backend among 1000 at M = 655373, against
//! under 20 ms here. With equal weights the schedule is the paper's round robin in
//! identity order, and is computed as such without the heap.
//!
//! # Disruption
//! When a backend goes, its slots must move; Maglev also moves some slots
//! between backends that stay, because freed slots change how far the others
//! walk. Measured (see the tests and `cargo xtask bench maglev`): under 1% of
//! the table at M = 65537 for N up to 655, a few % for small tables (M of a
//! few thousand). The tail comes from pairs of backends whose skips are
//! coupled (`skip_b ≡ ±skip_a`, `±2·skip_a` or `±skip_a/2` mod M: their walks
//! run along one cycle); it is the paper's permutation, as in Katran and Cilium, and a
//! larger M makes such pairs rarer (about 3·N²/M of sets have one).
//!
//! # Cost
//! Turns come from a binary heap, O(M log N), or from a counter when the
//! weights are equal. A claim probes until it finds a free slot; while a fraction `f` of the table is full a probe succeeds with
//! chance about `1 - f`, so the whole build takes about `M ln M` probes (the
//! paper's analysis), e.g. 7·10⁵ for M = 65537 and 9·10⁶ for M = 655373,
//! whatever N. The probe steps by addition and one compare, not `%`.
//! `cargo xtask bench maglev` measures it.

use alloc::collections::BinaryHeap;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::NO_BACKEND;

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stable identity (the backend's address in key form, family tag last).
    pub identity: [u8; 17],
    /// Relative weight; 0 = in no slot (drained for new flows).
    pub weight: u32,
    /// What the slots of this backend hold (its backend id).
    pub value: u32,
}

impl Entry {
    /// An entry whose identity is `addr` in key form (see
    /// [`crate::addr_bytes`]), so the same backend has the same permutation
    /// on every host whatever backend id it was given.
    pub fn from_addr(addr: core::net::IpAddr, weight: u32, value: u32) -> Entry {
        let (bytes, family) = crate::addr_bytes(addr);
        let mut identity = [0u8; 17];
        identity[..16].copy_from_slice(&bytes);
        identity[16] = family;
        Entry {
            identity,
            weight,
            value,
        }
    }
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not prime.
    NotPrime(u32),
    /// The size is too small for the number of backends.
    TooSmall { size: u32, min: u32 },
    /// Two entries share an identity.
    DuplicateIdentity,
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MaglevError::NotPrime(m) => write!(f, "table size {m} is not prime"),
            MaglevError::TooSmall { size, min } => {
                write!(f, "table size {size} is too small: at least {min} needed")
            }
            MaglevError::DuplicateIdentity => write!(f, "two backends share one identity"),
        }
    }
}

impl core::error::Error for MaglevError {}

/// Whether `n` is prime (trial division: at most 2^15 divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Slots per backend that [`min_size`] demands.
pub const SLOTS_PER_BACKEND: u32 = 100;

/// Smallest table size accepted for `backends` backends: 100 slots each
/// (and never below 101).
///
/// Why 100: a backend's share is a whole number of slots, and the filling
/// puts it within one slot of its ideal, so at M/N ≥ 100 an equal-weight
/// share is within 1% of 1/N; below that the balance promise cannot hold and
/// the size is refused rather than silently degraded. Disruption (slots that
/// move between surviving backends when one comes or goes) is also bounded
/// there but shrinks with M: measured at most 0.8% beyond the ideal at
/// M = 65537 for any N it admits, but up to 3.4% for a small table (M = 1201,
/// N = 11). So prefer the default 65537, and 655373 beyond 655 backends.
///
/// `backends` counts every configured backend, drained ones included, so that
/// draining or a failed health check never makes a valid table size invalid.
pub fn min_size(backends: usize) -> u32 {
    let n = u32::try_from(backends).unwrap_or(u32::MAX);
    n.saturating_mul(SLOTS_PER_BACKEND).max(101)
}

/// Check a table size against the number of backends: it must be prime (so
/// that every skip in `1..M` walks all slots) and at least [`min_size`].
pub fn validate_size(size: u32, backends: usize) -> Result<(), MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let min = min_size(backends);
    if size < min {
        return Err(MaglevError::TooSmall { size, min });
    }
    Ok(())
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A 64-bit hash of an identity under a domain seed. Each 8-byte word is
/// folded in and fully mixed before the next, so any one-bit change (as
/// between neighbouring IPv4 addresses, which differ in one byte of 17)
/// scrambles the result. Words are read little-endian explicitly: the result
/// is the same on every host.
fn identity_hash(seed: u64, id: &[u8; 17]) -> u64 {
    let w0 = u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
    let w1 = u64::from_le_bytes([id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15]]);
    let mut h = fmix64(seed);
    h = fmix64(h ^ w0);
    h = fmix64(h.rotate_left(29) ^ w1);
    fmix64(h.rotate_left(29) ^ (id[16] as u64) ^ (17u64 << 56))
}

/// Domain seeds for the two hashes of the permutation (arbitrary constants;
/// changing either changes every table, which the golden test catches).
const SEED_OFFSET: u64 = 0x766f_786c_6f66_6673; // "voxloffs"
const SEED_SKIP: u64 = 0x766f_786c_736b_6970; // "voxlskip"

/// The permutation of one backend: it visits `offset, offset + skip, ...`
/// (mod M). With M prime and `1 <= skip < M` that is every slot once.
fn permutation(id: &[u8; 17], m: u64) -> (u64, u64) {
    let offset = identity_hash(SEED_OFFSET, id) % m;
    let skip = identity_hash(SEED_SKIP, id) % (m - 1) + 1;
    (offset, skip)
}

/// A pending turn in the heap: backend `idx` (position in identity order)
/// takes its turn number `turns` at virtual time `(2 * turns + 1) / (2 * weight)`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Turn {
    turns: u32,
    weight: u32,
    idx: u32,
}

impl Ord for Turn {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest turn;
    /// ties go to the lower index. Times are compared exactly, by
    /// cross-multiplying in `u128`: floating point would make ties depend on
    /// rounding.
    fn cmp(&self, other: &Self) -> Ordering {
        let a = (2 * self.turns as u128 + 1) * other.weight as u128;
        let b = (2 * other.turns as u128 + 1) * self.weight as u128;
        b.cmp(&a).then(other.idx.cmp(&self.idx))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Who takes the next turn.
enum Schedule {
    /// Equal weights: `0, 1, .., n-1, 0, 1, ..` — what the heap would yield,
    /// since all turns number `k` tie and ties go to the lower index.
    RoundRobin {
        next: u32,
        n: u32,
    },
    Weighted(BinaryHeap<Turn>),
}

impl Schedule {
    fn new(sorted: &[Entry], force_heap: bool) -> Schedule {
        let equal = sorted.windows(2).all(|w| w[0].weight == w[1].weight);
        if equal && !force_heap {
            return Schedule::RoundRobin {
                next: 0,
                n: sorted.len() as u32,
            };
        }
        let heap = sorted
            .iter()
            .enumerate()
            .map(|(i, e)| Turn {
                turns: 0,
                weight: e.weight,
                idx: i as u32,
            })
            .collect();
        Schedule::Weighted(heap)
    }

    fn next(&mut self) -> usize {
        match self {
            Schedule::RoundRobin { next, n } => {
                let i = *next;
                *next = if i + 1 == *n { 0 } else { i + 1 };
                i as usize
            }
            Schedule::Weighted(heap) => {
                // One turn per backend is always queued: pop it, queue the next.
                let mut top = heap.peek_mut().expect("no backend in the schedule");
                top.turns += 1;
                top.idx as usize
            }
        }
    }
}

/// Build the lookup table of `size` slots. Entries with weight 0 get no slot;
/// with no positive weight at all, every slot is [`NO_BACKEND`]. `value`s are
/// opaque here: two backends may share one, and [`NO_BACKEND`] is not
/// special.
///
/// Errors: `size` fails [`validate_size`] for `entries.len()` backends, or two
/// entries (drained or not) share an identity — a duplicate is a config bug,
/// and dropping one silently would hide it.
pub fn build(entries: &[Entry], size: u32) -> Result<Vec<u32>, MaglevError> {
    build_inner(entries, size, false)
}

fn build_inner(entries: &[Entry], size: u32, force_heap: bool) -> Result<Vec<u32>, MaglevError> {
    validate_size(size, entries.len())?;
    let mut sorted: Vec<Entry> = entries.to_vec();
    sorted.sort_unstable_by_key(|e| e.identity);
    if sorted.windows(2).any(|w| w[0].identity == w[1].identity) {
        return Err(MaglevError::DuplicateIdentity);
    }
    sorted.retain(|e| e.weight > 0);
    if sorted.is_empty() {
        return Ok(vec![NO_BACKEND; size as usize]);
    }

    let m = size as u64;
    // `pos[i]` is where backend i's walk continues; `skip[i]` its stride.
    let (mut pos, skip): (Vec<u64>, Vec<u64>) =
        sorted.iter().map(|e| permutation(&e.identity, m)).unzip();

    // Owner index per slot, so that no backend value can be mistaken for
    // "free". `n < M`, so `u32::MAX` is never an index.
    const FREE: u32 = u32::MAX;
    let mut owner = vec![FREE; size as usize];
    let mut schedule = Schedule::new(&sorted, force_heap);
    for _ in 0..size {
        let i = schedule.next();
        // The walk visits every slot once per M steps and the table is not
        // full yet, so this ends within M probes.
        let mut p = pos[i];
        while owner[p as usize] != FREE {
            p += skip[i];
            if p >= m {
                p -= m;
            }
        }
        owner[p as usize] = i as u32;
        p += skip[i];
        if p >= m {
            p -= m;
        }
        pos[i] = p;
    }

    Ok(owner
        .into_iter()
        .map(|o| sorted[o as usize].value)
        .collect())
}

/// Slots whose value differs between two tables of the same size, with their
/// new value. A size change is a full rewrite: every slot is returned.
pub fn diff(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    if old.len() != new.len() {
        return new
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, *v))
            .collect();
    }
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (_, b))| (i as u32, *b))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Every test here checks a property the issue promises and fails if the
    //! property breaks. Sizes are kept so the suite stays fast in debug.
    extern crate std;
    use super::*;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    const M: u32 = 65537;

    /// `n` backends 10.0.x.y with weight `w` and value = position.
    fn backends(n: usize, w: u32) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1);
                Entry::from_addr(IpAddr::V4(ip), w, i as u32)
            })
            .collect()
    }

    /// Slots held per value `0..n`.
    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &v in table {
            c[v as usize] += 1;
        }
        c
    }

    /// Deterministic shuffle (xorshift + Fisher-Yates), no dependency on the
    /// host or a random seed: a failure reproduces.
    fn shuffle<T>(v: &mut [T], mut state: u64) {
        for i in (1..v.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.swap(i, (state % (i as u64 + 1)) as usize);
        }
    }

    #[test]
    fn primes_and_sizes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(655373) && is_prime(4_294_967_291));
        assert!(!is_prime(65536) && !is_prime(655371) && !is_prime(u32::MAX));
        assert!(!is_prime(65537 * 3) && !is_prime(251 * 257));

        assert_eq!(min_size(0), 101);
        assert_eq!(min_size(655), 65500);
        assert_eq!(min_size(usize::MAX), u32::MAX);
        assert_eq!(validate_size(65537, 655), Ok(()));
        assert_eq!(
            validate_size(65537, 656),
            Err(MaglevError::TooSmall {
                size: 65537,
                min: 65600
            })
        );
        assert_eq!(validate_size(655373, 6553), Ok(()));
        assert_eq!(validate_size(65536, 1), Err(MaglevError::NotPrime(65536)));
        assert_eq!(
            validate_size(97, 0),
            Err(MaglevError::TooSmall { size: 97, min: 101 })
        );
        assert!(matches!(
            build(&backends(3, 1), 65535),
            Err(MaglevError::NotPrime(_))
        ));
        assert!(matches!(
            build(&backends(700, 1), M),
            Err(MaglevError::TooSmall { .. })
        ));
    }

    #[test]
    fn balance_equal_weights() {
        let (mut worst_max, mut worst_min) = (0f64, f64::MAX);
        for n in [2, 3, 5, 10, 50, 100] {
            let table = build(&backends(n, 1), M).unwrap();
            let ideal = M as f64 / n as f64;
            let c = counts(&table, n);
            let max = *c.iter().max().unwrap() as f64 / ideal;
            let min = *c.iter().min().unwrap() as f64 / ideal;
            assert!(
                max <= 1.01 && min >= 0.99,
                "n={n}: max/ideal {max}, min/ideal {min}"
            );
            worst_max = worst_max.max(max);
            worst_min = worst_min.min(min);
        }
        std::eprintln!("worst balance: max/ideal {worst_max:.5}, min/ideal {worst_min:.5}");
    }

    #[test]
    fn weights_are_followed() {
        let mut e = backends(3, 0);
        for (i, w) in [1, 2, 3].into_iter().enumerate() {
            e[i].weight = w;
        }
        let c = counts(&build(&e, M).unwrap(), 3);
        for (i, w) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            let ratio = c[i] as f64 / (M as f64 * w / 6.0);
            assert!((0.99..=1.01).contains(&ratio), "weight {w}: ratio {ratio}");
        }
    }

    #[test]
    fn zero_weight_gets_no_slot() {
        let mut e = backends(4, 5);
        e[2].weight = 0;
        let c = counts(&build(&e, 1009).unwrap(), 4);
        assert_eq!(c[2], 0);
        assert!(c.iter().enumerate().all(|(i, &n)| i == 2 || n > 0));

        let drained = backends(4, 0);
        assert!(
            build(&drained, 1009)
                .unwrap()
                .iter()
                .all(|&v| v == NO_BACKEND)
        );
        assert!(build(&[], 101).unwrap().iter().all(|&v| v == NO_BACKEND));
    }

    #[test]
    fn values_are_opaque() {
        // A backend whose value is NO_BACKEND still gets its share: the
        // builder tracks free slots itself.
        let mut e = backends(2, 1);
        e[1].value = NO_BACKEND;
        let t = build(&e, 1009).unwrap();
        let held = t.iter().filter(|&&v| v == NO_BACKEND).count();
        assert!((504..=505).contains(&held), "{held}");
    }

    #[test]
    fn duplicate_identity_is_an_error() {
        let mut e = backends(3, 1);
        e[2].identity = e[0].identity;
        assert_eq!(build(&e, 1009), Err(MaglevError::DuplicateIdentity));
        // Also when one copy is drained: the config is wrong either way.
        e[2].weight = 0;
        assert_eq!(build(&e, 1009), Err(MaglevError::DuplicateIdentity));
    }

    /// Slots that moved between two backends that are both in `old` and
    /// `new`, i.e. disruption beyond what the change itself forces.
    fn extra_moves(old: &[u32], new: &[u32], gone: Option<u32>, came: Option<u32>) -> usize {
        old.iter()
            .zip(new)
            .filter(|(a, b)| a != b && Some(**a) != gone && Some(**b) != came)
            .count()
    }

    #[test]
    fn disruption_remove_and_add() {
        for n in [3, 5, 10, 50, 100] {
            let all = backends(n + 1, 1);
            let full = build(&all, M).unwrap();
            // Remove a few different backends, not just the last one.
            for gone in [0, n / 2, n] {
                let mut fewer = all.clone();
                fewer.remove(gone);
                let t = build(&fewer, M).unwrap();
                let extra = extra_moves(&full, &t, Some(gone as u32), None);
                assert!(
                    extra as f64 <= 0.01 * M as f64,
                    "remove from n={}: {extra} extra slots",
                    n + 1
                );
                // Adding it back is the reverse change: at most 1/(n+1) + 1%.
                let moved = diff(&t, &full).len() as f64 / M as f64;
                assert!(
                    moved <= 1.0 / (n + 1) as f64 + 0.01,
                    "add to n={n}: moved {moved}"
                );
            }
        }
    }

    #[test]
    fn disruption_weighted_heaviest_leaves() {
        // Losing the heaviest backend frees the most slots at once, and
        // changes the largest weight: still at most 1% moves beyond its slots.
        let mut all = backends(21, 1);
        for (i, e) in all.iter_mut().enumerate() {
            e.weight = 1 + (i as u32 % 4);
        }
        all[7].weight = 10;
        let full = build(&all, M).unwrap();
        let mut fewer = all.clone();
        fewer.remove(7);
        let extra = extra_moves(&full, &build(&fewer, M).unwrap(), Some(7), None);
        assert!(extra as f64 <= 0.01 * M as f64, "{extra} extra slots");
    }

    #[test]
    fn round_robin_is_the_equal_weight_schedule() {
        // The fast path must give the very table the heap would, or tables
        // would change when one weight changes and changes back.
        for w in [1, 7] {
            let e = backends(30, w);
            assert_eq!(build(&e, 4099), build_inner(&e, 4099, true));
        }
    }

    #[test]
    fn deterministic_in_insertion_order() {
        let mut e = backends(40, 1);
        for (i, x) in e.iter_mut().enumerate() {
            x.weight = (i as u32 % 3) + 1;
        }
        e[5].weight = 0;
        let reference = build(&e, 4099).unwrap();
        for seed in 1..6u64 {
            shuffle(&mut e, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert_eq!(build(&e, 4099).unwrap(), reference);
        }
    }

    /// Pins the hash and the fill order. If this fails, tables built by this
    /// code differ from tables built by the previous release: two LB hosts
    /// on different versions would disagree on every flow. Change the pinned
    /// values only for a deliberate, announced change.
    #[test]
    fn golden() {
        let id = Entry::from_addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1, 0).identity;
        assert_eq!(
            id,
            [
                10,
                0,
                0,
                1,
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
                crate::FAMILY_V4
            ]
        );
        assert_eq!(identity_hash(SEED_OFFSET, &id), GOLDEN_HASH_OFFSET);
        assert_eq!(identity_hash(SEED_SKIP, &id), GOLDEN_HASH_SKIP);

        let mut e = backends(4, 1);
        e[1].weight = 2;
        e.push(Entry::from_addr(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10)),
            3,
            9,
        ));
        let t = build(&e, 1009).unwrap();
        assert_eq!(t[..32], GOLDEN_FIRST_SLOTS);
        // The whole table, folded, so a change past the first slots shows too.
        let fold = t
            .iter()
            .fold(0u64, |h, &v| fmix64(h ^ v as u64).wrapping_add(1));
        assert_eq!(fold, GOLDEN_FOLD);
    }

    const GOLDEN_HASH_OFFSET: u64 = 0x89a6_3165_c48c_e9f2;
    const GOLDEN_HASH_SKIP: u64 = 0x1b29_0536_d5b4_bc0b;
    const GOLDEN_FIRST_SLOTS: [u32; 32] = [
        9, 9, 9, 0, 1, 9, 2, 1, 2, 0, 1, 9, 9, 9, 1, 3, //
        1, 1, 9, 9, 9, 1, 2, 2, 9, 0, 9, 3, 9, 0, 9, 1,
    ];
    const GOLDEN_FOLD: u64 = 0x0a31_1a4b_fd4f_aa1a;

    #[test]
    fn diff_reports_changed_slots() {
        let old = build(&backends(5, 1), 1009).unwrap();
        let new = build(&backends(6, 1), 1009).unwrap();
        let d = diff(&old, &new);
        let mut patched = old.clone();
        for &(slot, v) in &d {
            assert_ne!(old[slot as usize], v);
            patched[slot as usize] = v;
        }
        assert_eq!(patched, new);
        assert!(diff(&new, &new).is_empty());
        // A size change rewrites everything.
        let bigger = build(&backends(6, 1), 1013).unwrap();
        let d = diff(&new, &bigger);
        assert_eq!(d.len(), 1013);
        assert!(d.iter().all(|&(s, v)| bigger[s as usize] == v));
    }

    /// Random backend sets: up to 12 distinct identities (v4 and v6) with
    /// weights 0..=20, and one of `sizes` (primes that fit 12 backends).
    fn entry_set(sizes: &'static [u32]) -> impl Strategy<Value = (Vec<Entry>, u32)> {
        let ident = (any::<bool>(), any::<[u8; 16]>()).prop_map(|(v4, b)| {
            if v4 {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(b))
            }
        });
        let sizes = prop::sample::select(sizes);
        (
            prop::collection::btree_set(ident, 1..=12),
            prop::collection::vec(0u32..=20, 12),
            sizes,
        )
            .prop_map(|(ips, weights, size)| {
                let e = ips
                    .into_iter()
                    .zip(weights)
                    .enumerate()
                    .map(|(i, (ip, w))| Entry::from_addr(ip, w, i as u32))
                    .collect();
                (e, size)
            })
    }

    const SMALL: &[u32] = &[1201, 2003, 4099, 8191];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn prop_shares_follow_weights((e, size) in entry_set(SMALL)) {
            let t = build(&e, size).unwrap();
            let total: u64 = e.iter().map(|x| x.weight as u64).sum();
            if total == 0 {
                prop_assert!(t.iter().all(|&v| v == NO_BACKEND));
                return Ok(());
            }
            let c = counts(&t, e.len());
            let n = e.iter().filter(|x| x.weight > 0).count() as f64;
            for (x, &got) in e.iter().zip(&c) {
                // Webster apportionment: within 1/2 + N·w/(2W) of the quota
                // (see the module doc); 1/2 more for float slack.
                let share = x.weight as f64 / total as f64;
                let quota = size as f64 * share;
                prop_assert!((got as f64 - quota).abs() <= 1.0 + n * share / 2.0,
                    "weight {} got {} of quota {}", x.weight, got, quota);
            }
        }

        #[test]
        fn prop_order_does_not_matter((e, size) in entry_set(SMALL), seed in 1u64..) {
            let mut shuffled = e.clone();
            shuffle(&mut shuffled, seed);
            prop_assert_eq!(build(&e, size).unwrap(), build(&shuffled, size).unwrap());
        }

        #[test]
        fn prop_removal_moves_little((e, size) in entry_set(&[M]), pick in any::<prop::sample::Index>()) {
            let gone = pick.index(e.len());
            let mut fewer = e.clone();
            fewer.remove(gone);
            let before = build(&e, size).unwrap();
            let after = build(&fewer, size).unwrap();
            let extra = extra_moves(&before, &after, Some(gone as u32), None);
            // At M = 65537 and N ≤ 12 with random weights, 9000 cases moved
            // at most 2.9% extra (rare sets whose skips are coupled, see the
            // module doc); a hash that is not consistent moves most slots.
            // Small tables are noisier, hence M = 65537 here.
            prop_assert!(extra as f64 <= 0.05 * size as f64,
                "{} extra of {}", extra, size);
            let d = diff(&before, &after);
            let mut patched = before.clone();
            for (s, v) in d {
                patched[s as usize] = v;
            }
            prop_assert_eq!(patched, after);
        }
    }
}
