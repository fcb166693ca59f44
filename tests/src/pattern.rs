//! The bytes of every generated body: byte `i` is `i % 251`. 251 is prime and
//! not a power of two, so a dropped, duplicated or reordered block of any
//! usual size shows up as a mismatch.

/// The byte at offset `i` of a body.
pub fn byte_at(i: u64) -> u8 {
    (i % 251) as u8
}

/// Offset of the first byte of `bytes` (which starts at body offset `start`)
/// that is not the pattern, or `None` if all are.
pub fn first_mismatch(start: u64, bytes: &[u8]) -> Option<u64> {
    bytes
        .iter()
        .zip(start..)
        .find(|&(&b, i)| b != byte_at(i))
        .map(|(_, i)| i)
}

/// A block of the pattern long enough to take any slice of up to [`BLOCK`]
/// bytes starting at any phase: `block()[i % 251..][..n]` is the body from
/// offset `i`, for `n <= BLOCK`.
pub fn block() -> &'static [u8] {
    static BLOCK_BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BLOCK_BYTES.get_or_init(|| (0..(BLOCK + 251) as u64).map(byte_at).collect())
}

/// Largest slice [`block`] serves at once.
pub const BLOCK: usize = 64 * 1024;

/// The body bytes from `start` for `len <= BLOCK` bytes.
pub fn slice(start: u64, len: usize) -> &'static [u8] {
    assert!(len <= BLOCK, "pattern slice of {len} bytes");
    let phase = (start % 251) as usize;
    &block()[phase..phase + len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_continue_the_pattern() {
        let mut body = Vec::new();
        let mut at = 0u64;
        for len in [1, 250, 251, 252, BLOCK, 7, BLOCK] {
            body.extend_from_slice(slice(at, len));
            at += len as u64;
        }
        assert_eq!(first_mismatch(0, &body), None);
        assert_eq!(first_mismatch(5, &body[5..]), None);
        body[1000] ^= 1;
        assert_eq!(first_mismatch(0, &body), Some(1000));
    }
}
