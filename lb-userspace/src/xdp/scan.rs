//! Batched reads of the flow tables and per-CPU arrays
//! (`BPF_MAP_LOOKUP_BATCH`): bounded, a syscall per few thousand entries,
//! never one per entry.

use super::*;

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries read per BPF_MAP_LOOKUP_BATCH call.
pub(super) const SCAN_BATCH: usize = 4096;

/// Visit every entry of the map behind `fd` (key `K`, value `V`: a hash
/// map, or an array with `K = u32`), in batches of up to [`SCAN_BATCH`]
/// entries per syscall, until `visit` returns false. Memory is bounded by
/// the batch, whatever the size of the map.
pub(super) fn scan_batched<K: Copy + Default, V: Copy + Default>(
    fd: &OwnedFd,
    visit: &mut dyn FnMut(&K, &V) -> bool,
) -> std::io::Result<()> {
    let mut keys = vec![K::default(); SCAN_BATCH];
    let mut values = vec![V::default(); SCAN_BATCH];
    scan_raw(
        fd,
        std::mem::size_of::<K>(),
        std::mem::size_of::<V>(),
        &mut |kb: &[u8], vb: &[u8], n: usize| {
            // SAFETY: `kb`/`vb` hold `n` keys/values of the map's sizes,
            // which are K's and V's (plain-integer `Pod` types).
            unsafe {
                std::ptr::copy_nonoverlapping(kb.as_ptr(), keys.as_mut_ptr() as *mut u8, kb.len());
                std::ptr::copy_nonoverlapping(
                    vb.as_ptr(),
                    values.as_mut_ptr() as *mut u8,
                    vb.len(),
                );
            }
            (0..n).all(|i| visit(&keys[i], &values[i]))
        },
    )
}

/// [`scan_batched`] for a per-CPU array of `V`: `visit(index, per_cpu)`.
pub(super) fn scan_percpu_array<V: Copy + Default>(
    fd: &OwnedFd,
    ncpu: usize,
    visit: &mut dyn FnMut(u32, &[V]),
) -> std::io::Result<()> {
    // The kernel lays a per-CPU value out as one 8-byte-aligned slot per
    // possible CPU.
    let stride = std::mem::size_of::<V>().next_multiple_of(8);
    let mut row = vec![V::default(); ncpu];
    scan_raw(
        fd,
        4,
        stride * ncpu,
        &mut |kb: &[u8], vb: &[u8], n: usize| {
            for i in 0..n {
                let id =
                    u32::from_ne_bytes([kb[i * 4], kb[i * 4 + 1], kb[i * 4 + 2], kb[i * 4 + 3]]);
                for (c, slot) in row.iter_mut().enumerate() {
                    let off = (i * ncpu + c) * stride;
                    // SAFETY: `off + size_of::<V>()` lies inside `vb` (n rows of
                    // ncpu strides) and V is a plain-integer `Pod` type.
                    *slot = unsafe { std::ptr::read_unaligned(vb.as_ptr().add(off) as *const V) };
                }
                visit(id, &row);
            }
            true
        },
    )
}

/// BPF_MAP_LOOKUP_BATCH over a whole map, [`SCAN_BATCH`] entries at a time,
/// handing each batch's raw keys, values and count to `visit` (which
/// returns false to stop).
pub(super) fn scan_raw(
    fd: &OwnedFd,
    key_size: usize,
    value_size: usize,
    visit: &mut BatchVisitor,
) -> std::io::Result<()> {
    let mut chunk = SCAN_BATCH;
    let mut keys = vec![0u8; chunk * key_size];
    let mut values = vec![0u8; chunk * value_size];
    // The position token of a hash map is a bucket index, of an array an
    // index (u32); 8 bytes leave room whatever the kernel copies.
    let mut token = [0u8; 8];
    let mut next = [0u8; 8];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for the batch commands;
        // the key and value buffers hold `count` elements of the map's key
        // and value sizes, and the token buffers outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            None | Some(libc::ENOENT) => {}
            // One bucket holds more entries than the buffer: grow it.
            Some(libc::ENOSPC) if chunk < 1 << 16 => {
                chunk *= 2;
                keys = vec![0u8; chunk * key_size];
                values = vec![0u8; chunk * value_size];
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
        }
        let n = (attr.count as usize).min(chunk);
        if !visit(&keys[..n * key_size], &values[..n * value_size], n) {
            return Ok(());
        }
        if err.is_some() {
            return Ok(()); // ENOENT: the walk is complete
        }
        token = next;
        first = false;
    }
}
