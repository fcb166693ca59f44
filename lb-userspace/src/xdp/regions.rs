//! The Maglev table regions and the VIP pre-filter: the memory-mapped
//! arrays userspace writes with plain stores, a region allocator, and the
//! flip that makes a staged table copy the one packets read.

use super::*;

impl XdpDataPlane {
    /// Write `table` into the copy of the service's table that packets are
    /// not reading, and return that copy's index (0 or 1) for [`Self::flip`].
    /// Only slots that differ from what the copy held are written.
    pub fn stage_table(&mut self, service_id: u32, table: &[u32]) -> Result<u32> {
        if service_id >= MAX_SERVICES {
            return Err(DataPlaneError::ServiceId(service_id));
        }
        if let Some(bad) = table
            .iter()
            .find(|&&b| b != lb_common::NO_BACKEND && b >= lb_common::maps::MAX_BACKENDS)
        {
            return Err(DataPlaneError::BackendId(*bad));
        }
        let size = u32::try_from(table.len()).map_err(other)?;
        let active = self
            .active
            .get(&service_id, 0)
            .map_err(map_err(names::ACTIVE))?
            & 1;
        let target = 1 - active;
        let target_id = service_id * 2 + target;
        let old = self.region(target_id)?;
        // Reuse the copy's own space when the size is unchanged; otherwise
        // find room that no other region (the active copy included) uses.
        let reuse = old.size == size && size > 0;
        let base = if reuse {
            old.base
        } else {
            self.allocate(size, target_id)?
        };
        let current = if reuse {
            match self.shadow.get(&target_id) {
                Some(s) if s.len() == table.len() => Some(s.clone()),
                _ => Some(self.read_region(old)?),
            }
        } else {
            None
        };
        // Plain stores into the mapped array: no syscall per slot. The copy
        // is not the active one, so no packet reads these slots now.
        for (slot, &value) in table.iter().enumerate() {
            if current.as_ref().is_some_and(|c| c[slot] == value) {
                continue;
            }
            self.maglev
                .store_u32((base as usize + slot) * MAGLEV_STRIDE, value);
        }
        self.regions
            .set(target_id, TableRegion { base, size }, 0)
            .map_err(map_err(names::REGIONS))?;
        self.shadow.insert(target_id, table.to_vec());
        Ok(target)
    }

    /// Make copy `copy` (from [`Self::stage_table`]) the active one: one
    /// 4-byte array write, so a packet sees either the old table or the new
    /// one, never a mix.
    pub fn flip(&mut self, service_id: u32, copy: u32) -> Result<()> {
        // Every slot store above is visible before the flip (the syscall
        // orders them too; the fence says so in the code).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.active
            .set(service_id, copy & 1, 0)
            .map_err(map_err(names::ACTIVE))
    }

    /// Make the pre-filter and the VIP address set say exactly what the
    /// VIP map holds. The filter is rebuilt in full in memory and only the
    /// slots that differ are stored (8-byte stores, each atomic).
    pub(super) fn sync_vip_filter(&mut self) -> Result<()> {
        let vips = self.vips()?;
        let mut want: BTreeMap<u32, FilterSlot> = BTreeMap::new();
        let mut addrs: BTreeMap<VipAddrKey, u32> = BTreeMap::new();
        for (k, info) in &vips {
            let folded = fold_addr(&k.addr, k.family);
            let s = want.entry(vip_slot(folded, k.port_be)).or_default();
            if info.kind == KIND_CA {
                s.ca = s.ca.saturating_add(1);
            } else {
                s.compiler = s.compiler.saturating_add(1);
            }
            *addrs
                .entry(VipAddrKey {
                    addr: k.addr,
                    family: k.family,
                    _pad: 0,
                    _pad2: 0,
                })
                .or_default() += 1;
        }
        let mut bits = vec![0u64; ADDR_BITS_WORDS as usize];
        for a in addrs.keys() {
            let s = addr_slot(fold_addr(&a.addr, a.family));
            bits[(s >> 6) as usize] |= 1 << (s & 63);
            // Still counted in the pre-filter for the program of an earlier
            // build, which reads it until an upgrade swaps this one in.
            let f = want.entry(s).or_default();
            f.addrs = f.addrs.saturating_add(1);
        }
        // Addresses first when adding (a VIP is never reachable from its
        // own address), last when removing (the same, the other way).
        for (a, n) in &addrs {
            if self.vip_addrs.get(a, 0).ok() != Some(*n) {
                self.vip_addrs
                    .insert(a, n, 0)
                    .map_err(map_err(names::VIP_ADDRS))?;
            }
        }
        // Direct entries: an IPv4 VIP alone in its slot. Written before the
        // filter words, cleared (below) once no VIP map entry backs them;
        // each is one 8-byte store, which a packet reads whole.
        let mut direct: BTreeMap<u32, u64> = BTreeMap::new();
        for (k, info) in &vips {
            let slot = vip_slot(fold_addr(&k.addr, k.family), k.port_be);
            let alone = want
                .get(&slot)
                .is_some_and(|s| u32::from(s.compiler) + u32::from(s.ca) == 1);
            if alone
                && k.family == FAMILY_V4
                && (info.kind == KIND_CA || info.kind == KIND_COMPILER)
            {
                let key = direct_key(fold_addr(&k.addr, k.family), k.port_be, k.proto);
                direct.insert(slot, direct_entry(key, info.service_id, info.kind));
            }
        }
        for slot in 0..FILTER_SLOTS {
            let off = slot as usize * 8;
            let w = direct.get(&slot).copied().unwrap_or(0);
            if self.vip_direct.load_u64(off) != w {
                self.vip_direct.store_u64(off, w);
            }
        }
        // The address bits after the address set (a bit never promises an
        // address the set lacks), each word one 8-byte store.
        for (i, &w) in bits.iter().enumerate() {
            if self.vip_addr_bits.load_u64(i * 8) != w {
                self.vip_addr_bits.store_u64(i * 8, w);
            }
        }
        for slot in 0..FILTER_SLOTS {
            let w = want.get(&slot).copied().unwrap_or_default();
            let off = slot as usize * FILTER_STRIDE;
            if self.vip_filter.load_u64(off) != filter_word(w) {
                self.vip_filter.store_u64(off, filter_word(w));
            }
        }
        let stale: Vec<VipAddrKey> = self
            .vip_addrs
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !addrs.contains_key(k))
            .collect();
        for k in stale {
            match self.vip_addrs.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::VIP_ADDRS)(e)),
            }
        }
        Ok(())
    }

    /// The direct entry of (address, port, protocol)'s filter slot, as
    /// [`lb_common::hash::direct_vip`] reads it for that destination: what
    /// the data plane will take without a VIP map lookup (tests).
    pub fn direct_vip(&self, addr: std::net::IpAddr, port: u16, proto: u8) -> Option<VipInfo> {
        let std::net::IpAddr::V4(v4) = addr else {
            return None;
        };
        let folded = lb_common::hash::fold_v4(&v4.octets());
        let off = vip_slot(folded, port.to_be()) as usize * 8;
        lb_common::hash::direct_vip(
            self.vip_direct.load_u64(off),
            direct_key(folded, port.to_be(), proto),
        )
    }

    /// What the pre-filter says about (address, port): tests check that
    /// their CA VIP does not share a slot with a compiler VIP.
    pub fn filter_slot(&self, addr: std::net::IpAddr, port: u16) -> FilterSlot {
        let (a, family) = lb_common::addr_bytes(addr);
        let off = vip_slot(fold_addr(&a, family), port.to_be()) as usize * FILTER_STRIDE;
        let w = self.vip_filter.load_u64(off).to_ne_bytes();
        FilterSlot {
            compiler: u16::from_ne_bytes([w[0], w[1]]),
            ca: u16::from_ne_bytes([w[2], w[3]]),
            addrs: u16::from_ne_bytes([w[4], w[5]]),
            _pad: 0,
        }
    }

    /// Read a region's slots back from the mapped array.
    pub(super) fn read_region(&self, region: TableRegion) -> Result<Vec<u32>> {
        if region.base as usize + region.size as usize > MAGLEV_CAPACITY as usize {
            return Err(other(format!(
                "{}: region {}+{} out of range",
                names::REGIONS,
                region.base,
                region.size
            )));
        }
        Ok((region.base..region.base + region.size)
            .map(|i| self.maglev.load_u32(i as usize * MAGLEV_STRIDE))
            .collect())
    }

    pub(super) fn region(&self, id: u32) -> Result<TableRegion> {
        self.regions.get(&id, 0).map_err(map_err(names::REGIONS))
    }

    /// First-fit space for `size` slots, avoiding every region but `except`.
    pub(super) fn allocate(&self, size: u32, except: u32) -> Result<u32> {
        let mut used: Vec<(u32, u32)> = Vec::new();
        for id in 0..MAX_REGIONS {
            if id == except {
                continue;
            }
            let r = self.region(id)?;
            if r.size > 0 {
                used.push((r.base, r.base + r.size));
            }
        }
        used.sort_unstable();
        let mut start = 0u32;
        for (b, e) in used {
            if b >= start && b - start >= size {
                break;
            }
            start = start.max(e);
        }
        if start
            .checked_add(size)
            .is_none_or(|end| end > MAGLEV_CAPACITY)
        {
            return Err(DataPlaneError::TableSpace {
                size: size as usize,
                reason: format!("the {MAGLEV_CAPACITY}-slot table array is full"),
            });
        }
        Ok(start)
    }
}

/// Bytes per Maglev slot in the mapped array: the kernel rounds an array
/// element up to 8 bytes.
pub(super) const MAGLEV_STRIDE: usize = 8;

/// Bytes per pre-filter slot in the mapped array.
pub(super) const FILTER_STRIDE: usize = 8;

/// A filter slot as the one 8-byte word the kernel stores.
pub(super) fn filter_word(s: FilterSlot) -> u64 {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&s.compiler.to_ne_bytes());
    b[2..4].copy_from_slice(&s.ca.to_ne_bytes());
    b[4..6].copy_from_slice(&s.addrs.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// A `BPF_F_MMAPABLE` array mapped shared into this process.
pub(super) struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    pub(super) fn new(fd: &OwnedFd, name: &'static str, len: usize) -> Result<Self> {
        // SAFETY: mapping a BPF array's descriptor; the kernel checks the
        // length against the map and the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(other(format!(
                "mmap of {name}: {} (a map pinned by an older build without \
                 BPF_F_MMAPABLE: `voxlb detach` and start again)",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Mmap {
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub(super) fn load_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked); the kernel may write it
        // concurrently, hence volatile.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u32) }
    }

    pub(super) fn store_u32(&mut self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as in `load_u32`; an aligned 4-byte store is atomic.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u32, v) }
    }

    pub(super) fn load_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: as in `load_u32`.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u64) }
    }

    pub(super) fn store_u64(&mut self, off: usize, v: u64) {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: as in `load_u32`; an aligned 8-byte store is atomic.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u64, v) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
