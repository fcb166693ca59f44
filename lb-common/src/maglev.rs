//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! Userspace builds the lookup table; the data plane indexes it with
//! `flow_hash % size`. The table depends only on the set of
//! (identity, weight) pairs and the size: entries are sorted by identity
//! before filling, and the permutation of each backend derives from its
//! identity alone, never from its slot id or from insertion order.

use alloc::vec;
use alloc::vec::Vec;

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

/// Whether `n` is prime (trial division; sizes are at most a few million).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Smallest table size accepted for `backends` backends: 100 slots per
/// backend keeps each share within about 1% of its ideal.
pub fn min_size(backends: usize) -> u32 {
    (backends as u32).saturating_mul(100).max(101)
}

/// Check a table size against the number of backends.
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

fn fnv1a64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV alone is weak in its low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Build the lookup table of `size` slots. Entries with weight 0 get no slot;
/// with no positive weight at all, every slot is [`NO_BACKEND`].
pub fn build(entries: &[Entry], size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_size(size, entries.len())?;
    let mut sorted: Vec<Entry> = entries.iter().copied().filter(|e| e.weight > 0).collect();
    sorted.sort_by(|a, b| a.identity.cmp(&b.identity));
    if sorted.windows(2).any(|w| w[0].identity == w[1].identity) {
        return Err(MaglevError::DuplicateIdentity);
    }
    let mut table = vec![NO_BACKEND; size as usize];
    if sorted.is_empty() {
        return Ok(table);
    }
    let m = size as u64;
    let n = sorted.len();
    let offset: Vec<u64> = sorted.iter().map(|e| fnv1a64(0, &e.identity) % m).collect();
    let skip: Vec<u64> = sorted
        .iter()
        .map(|e| fnv1a64(0x5bd1_e995, &e.identity) % (m - 1) + 1)
        .collect();
    let mut next = vec![0u64; n];
    let max_w = sorted.iter().map(|e| e.weight).max().unwrap_or(1) as u64;
    // Weighted turns: in round r, backend i takes a turn when its weight
    // says it is due, so turns (and slots) follow the weights.
    let mut credit = vec![0u64; n];
    let mut filled = 0u64;
    while filled < m {
        for i in 0..n {
            credit[i] += sorted[i].weight as u64;
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;
            loop {
                let slot = (offset[i] + next[i] * skip[i]) % m;
                next[i] += 1;
                if table[slot as usize] == NO_BACKEND {
                    table[slot as usize] = sorted[i].value;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    Ok(table)
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
