//! The real data plane: the embedded XDP object, its pinned maps and its
//! attachment. A thin layer: policy lives in the daemon; this only loads,
//! attaches, reads and writes maps.
//!
//! ## Lifecycle
//! Every map is pinned under `pin_dir` by its versioned name, and each
//! interface's XDP attachment is a BPF link pinned as `pin_dir/link_<ifname>`.
//! Pins outlive the daemon, so:
//! - a stopped daemon leaves the program forwarding (an edge host must not
//!   blackhole traffic because its control plane restarted);
//! - a started daemon that finds the link pins reuses the attached program
//!   and the pinned maps (flow table included) as they are;
//! - `replace` loads the embedded program against the same pinned maps and
//!   swaps it into the existing links atomically (`bpf_link_update`): an
//!   in-place upgrade with no gap and no lost flow;
//! - [`detach`] removes the links and the pins on purpose;
//! - pins of map layout version 1 are migrated (see [`migrate_v1`]).
//!
//! ## Rooms
//! This file: the handles on every map and the [`DataPlane`] methods over
//! them (map access). [`loader`]: load, pin, attach, migrate, detach.
//! [`pins`]: the raw `bpf(2)` pin calls. [`regions`]: Maglev table regions
//! and the pre-filter, memory-mapped. [`scan`]: batched map reads.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, ProgramArray},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use lb_common::{
    BackendInfo, BackendStats, ClockBase, Counter, DP_NO_ICMP_STEERING, DpConfig, FAMILY_V4,
    FamilyKey, FilterSlot, FloodState, FlowKey, FlowKeyV4, FlowKeyV6, FlowValue, FlowValueV1,
    FragKey, FragValue, KIND_CA, KIND_COMPILER, Reason, ServiceStats, TableRegion, TunnelInfo,
    VipAddrKey, VipInfo, VipKey,
    hash::{
        ADDR_BITS_WORDS, FILTER_SLOTS, addr_slot, direct_entry, direct_key, fold_addr, vip_slot,
    },
    maps::{self as names, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_REGIONS, MAX_SERVICES},
};
use tracing::{info, warn};

use crate::{
    dataplane::{DataPlane, DataPlaneError, FloodStatus, Result},
    object::{EBPF_OBJECT, PROGRAM_NAME},
};

mod clock;
mod loader;
mod pins;
mod regions;
mod scan;

pub use clock::calibrate_clock;
use loader::take_maps;
pub use loader::{detach, install_tail_programs, link_pin, migrate_v1};
pub(crate) use pins::check_bpffs;
use pins::{bpf_obj_get, bpf_obj_pin};
use regions::{FILTER_STRIDE, MAGLEV_STRIDE, Mmap, filter_word};
use scan::{scan_batched, scan_percpu_array};

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (fast path); fails where the driver lacks XDP.
    Native,
    /// In the generic (skb) path: works everywhere, slower.
    Generic,
    /// Native, falling back to generic with a logged warning.
    #[default]
    Auto,
}

/// How to load the data plane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    pub pin_dir: PathBuf,
    pub flow_capacity: u32,
    /// Load the embedded program and swap it into existing links.
    pub replace: bool,
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { map, source }
}

/// Flatten an error and its sources into one line (aya's syscall errors keep
/// the errno in their source).
fn other<E: Into<Box<dyn std::error::Error>>>(e: E) -> DataPlaneError {
    DataPlaneError::Other(crate::dataplane::flatten_error(e))
}

/// Handles on every map, plus the loaded object when this process loaded it.
pub struct XdpDataPlane {
    /// The object when this process loaded it: owning it keeps the program
    /// loaded while the links are being made and pinned.
    _ebpf: Option<Ebpf>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    /// The pre-filter, memory-mapped.
    vip_filter: Mmap,
    /// The direct IPv4 VIP entries, memory-mapped (one `u64` per filter slot).
    vip_direct: Mmap,
    /// The VIP address bitmap, memory-mapped.
    vip_addr_bits: Mmap,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    backends: Array<MapData, BackendInfo>,
    /// A descriptor of the backend array for batched reads.
    backends_fd: OwnedFd,
    /// Every Maglev slot, memory-mapped: a table copy is written with plain
    /// stores, not one syscall per slot.
    maglev: Mmap,
    regions: Array<MapData, TableRegion>,
    active: Array<MapData, u32>,
    ca_steer: Array<MapData, u32>,
    /// The clock line flow stamps are drawn on (one entry).
    clock: Array<MapData, ClockBase>,
    flows4: HashMap<MapData, FlowKeyV4, FlowValue>,
    flows6: HashMap<MapData, FlowKeyV6, FlowValue>,
    /// Descriptors of the flow tables for batched reads.
    flows4_fd: OwnedFd,
    flows6_fd: OwnedFd,
    reasons: PerCpuArray<MapData, Counter>,
    svc_drops: PerCpuArray<MapData, u64>,
    /// A descriptor of the per-backend counters for batched reads.
    be_stats_fd: OwnedFd,
    be_stats: PerCpuArray<MapData, BackendStats>,
    config: Array<MapData, DpConfig>,
    flood: PerCpuArray<MapData, FloodState>,
    tunnels: Array<MapData, TunnelInfo>,
    tx_ports: DevMapHash<MapData>,
    /// Holds the tail-called programs (an unpinned program array loses its
    /// entries when its last descriptor closes: this is that one).
    _progs: ProgramArray<MapData>,
    /// Fragmented datagrams to VIPs (written by the data plane only).
    frags: HashMap<MapData, FragKey, FragValue>,
    /// What we know each region holds, to write only changed slots.
    shadow: BTreeMap<u32, Vec<u32>>,
    /// Every pin of a [`Self::load`]ed data plane (maps and links) with a
    /// descriptor of what it pins, to put it back if it is deleted.
    pins: Vec<(PathBuf, OwnedFd)>,
}

impl XdpDataPlane {
    /// A data plane over the maps of an object the caller loaded without
    /// pins and attached nowhere (the test kit's BPF_PROG_TEST_RUN harness,
    /// which keeps `ebpf` to run its programs). The maps are taken out of
    /// `ebpf`; they start empty, so nothing is read back.
    pub fn from_unpinned(ebpf: &mut Ebpf) -> Result<Self> {
        let maps = take_maps(ebpf)?;
        Self::from_maps(None, maps)
    }

    fn from_maps(ebpf: Option<Ebpf>, mut maps: BTreeMap<&'static str, Map>) -> Result<Self> {
        macro_rules! take {
            ($name:expr) => {{
                let m = maps
                    .remove($name)
                    .ok_or_else(|| other(format!("map {} missing from the object", $name)))?;
                m.try_into().map_err(map_err($name))?
            }};
        }
        let fd_of = |name: &'static str| -> Result<OwnedFd> {
            match maps.get(name) {
                Some(
                    Map::LruHashMap(d) | Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d),
                ) => d.fd().as_fd().try_clone_to_owned().map_err(other),
                _ => Err(other(format!("map {name} missing or of another type"))),
            }
        };
        let flows4_fd = fd_of(names::FLOWS4)?;
        let flows6_fd = fd_of(names::FLOWS6)?;
        let backends_fd = fd_of(names::BACKENDS)?;
        let be_stats_fd = fd_of(names::BACKEND_STATS)?;
        let maglev = Mmap::new(
            &fd_of(names::MAGLEV)?,
            names::MAGLEV,
            MAGLEV_CAPACITY as usize * MAGLEV_STRIDE,
        )?;
        let vip_filter = Mmap::new(
            &fd_of(names::VIP_FILTER)?,
            names::VIP_FILTER,
            FILTER_SLOTS as usize * FILTER_STRIDE,
        )?;
        let vip_direct = Mmap::new(
            &fd_of(names::VIP_DIRECT)?,
            names::VIP_DIRECT,
            FILTER_SLOTS as usize * 8,
        )?;
        let vip_addr_bits = Mmap::new(
            &fd_of(names::VIP_ADDR_BITS)?,
            names::VIP_ADDR_BITS,
            ADDR_BITS_WORDS as usize * 8,
        )?;
        Ok(XdpDataPlane {
            _ebpf: ebpf,
            vip_direct,
            vip_addr_bits,
            flows4_fd,
            flows6_fd,
            backends_fd,
            be_stats_fd,
            maglev,
            vip_filter,
            vips: take!(names::VIPS),
            vip_addrs: take!(names::VIP_ADDRS),
            backends: take!(names::BACKENDS),
            regions: take!(names::REGIONS),
            active: take!(names::ACTIVE),
            ca_steer: take!(names::CA_STEER),
            clock: take!(names::CLOCK),
            flows4: take!(names::FLOWS4),
            flows6: take!(names::FLOWS6),
            reasons: take!(names::REASON_STATS),
            svc_drops: take!(names::SERVICE_STATS),
            be_stats: take!(names::BACKEND_STATS),
            config: take!(names::CONFIG),
            flood: take!(names::FLOOD),
            tunnels: take!(names::TUNNELS),
            tx_ports: take!(names::TX_PORTS),
            _progs: take!(names::PROGS),
            frags: take!(names::FRAGS),
            shadow: BTreeMap::new(),
            pins: Vec::new(),
        })
    }

    /// The clock line the data plane stamps flows on (jiffies to
    /// CLOCK_MONOTONIC), as `calibrate_clock` wrote it.
    pub fn clock(&self) -> Result<ClockBase> {
        self.clock.get(&0, 0).map_err(map_err(names::CLOCK))
    }

    /// Look one flow up, in its family's table.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        match key.split()? {
            FamilyKey::V4(k) => self.flows4.get(&k, 0).ok(),
            FamilyKey::V6(k) => self.flows6.get(&k, 0).ok(),
        }
    }

    /// Write one flow entry into its family's table (the v1 upgrade, and
    /// tests that plant an entry).
    pub fn insert_flow(&mut self, key: &FlowKey, value: FlowValue) -> Result<()> {
        match key.split() {
            Some(FamilyKey::V4(k)) => self
                .flows4
                .insert(k, value, 0)
                .map_err(map_err(names::FLOWS4)),
            Some(FamilyKey::V6(k)) => self
                .flows6
                .insert(k, value, 0)
                .map_err(map_err(names::FLOWS6)),
            None => Err(other(format!("flow key of unknown family {}", key.family))),
        }
    }

    /// Read, change and write back the one data-plane config slot (only
    /// this process writes it).
    fn update_config(&mut self, f: impl FnOnce(&mut DpConfig)) -> Result<()> {
        let mut c = self.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        f(&mut c);
        self.config.set(0, c, 0).map_err(map_err(names::CONFIG))
    }

    /// The fragment table's records: which backend each fragmented
    /// datagram's first fragment went to (tests, diagnostics).
    pub fn fragments(&self) -> Result<Vec<(FragKey, FragValue)>> {
        self.frags
            .iter()
            .map(|r| r.map_err(map_err(names::FRAGS)))
            .collect()
    }

    /// Write one entry under a raw IPv4 key (the benchmark's floor program
    /// looks up 16 bytes of the frame as they are).
    pub fn insert_flow4(&mut self, key: &FlowKeyV4, value: FlowValue) -> Result<()> {
        self.flows4
            .insert(key, value, 0)
            .map_err(map_err(names::FLOWS4))
    }

    /// Entries in the IPv4 and the IPv6 flow table (a batched walk).
    pub fn flow_counts(&self) -> Result<(usize, usize)> {
        let (mut n4, mut n6) = (0, 0);
        scan_batched::<FlowKeyV4, FlowValue>(&self.flows4_fd, &mut |_, _| {
            n4 += 1;
            true
        })
        .map_err(|e| other(format!("reading {}: {e}", names::FLOWS4)))?;
        scan_batched::<FlowKeyV6, FlowValue>(&self.flows6_fd, &mut |_, _| {
            n6 += 1;
            true
        })
        .map_err(|e| other(format!("reading {}: {e}", names::FLOWS6)))?;
        Ok((n4, n6))
    }

    /// Forwarded packets, bytes and new flows per backend id (summed over
    /// CPUs), for every backend with a counted packet: two batched walks.
    fn all_backend_stats(&self) -> Result<BTreeMap<u32, (BackendInfo, BackendStats)>> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| other(e))?;
        let mut out = BTreeMap::new();
        scan_percpu_array::<BackendStats>(&self.be_stats_fd, ncpu, &mut |id, per_cpu| {
            let mut t = BackendStats::default();
            for v in per_cpu {
                t.packets += v.packets;
                t.bytes += v.bytes;
                t.new_flows += v.new_flows;
            }
            if t != BackendStats::default() {
                out.insert(id, (BackendInfo::default(), t));
            }
        })
        .map_err(|e| other(format!("reading {}: {e}", names::BACKEND_STATS)))?;
        if !out.is_empty() {
            scan_batched::<u32, BackendInfo>(&self.backends_fd, &mut |id, info| {
                if let Some(e) = out.get_mut(id) {
                    e.0 = *info;
                }
                true
            })
            .map_err(|e| other(format!("reading {}: {e}", names::BACKENDS)))?;
        }
        Ok(out)
    }
}

/// Receives one batch: raw keys, raw values, and how many entries; returns
/// false to stop the walk.
type BatchVisitor<'a> = dyn FnMut(&[u8], &[u8], usize) -> bool + 'a;

// SAFETY: the mapping is plain shared memory owned by this value; it is only
// accessed through `&self`/`&mut self` with volatile, aligned word accesses.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

fn sum_percpu<T: Copy + Default + aya::Pod>(
    map: &PerCpuArray<MapData, T>,
    index: u32,
    name: &'static str,
    add: impl Fn(&mut T, &T),
) -> Result<T> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    let mut total = T::default();
    for v in values.iter() {
        add(&mut total, v);
    }
    Ok(total)
}

impl DataPlane for XdpDataPlane {
    fn upsert_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        if info.service_id >= MAX_SERVICES {
            return Err(DataPlaneError::ServiceId(info.service_id));
        }
        // The pre-filter first: a VIP is never hidden behind it. (Marked as
        // both kinds until the sync: a packet may then read the flow table
        // for a CA VIP, which finds nothing.)
        let off = vip_slot(fold_addr(&key.addr, key.family), key.port_be) as usize * FILTER_STRIDE;
        let w = self.vip_filter.load_u64(off);
        self.vip_filter.store_u64(
            off,
            w | filter_word(FilterSlot {
                compiler: 1,
                ca: 1,
                ..FilterSlot::default()
            }),
        );
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(names::VIPS))?;
        self.sync_vip_filter()
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        match self.vips.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::VIPS)(e)),
        }
        self.sync_vip_filter()
    }

    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        self.vips
            .iter()
            .map(|r| r.map_err(map_err(names::VIPS)))
            .collect()
    }

    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        if id >= lb_common::maps::MAX_BACKENDS {
            return Err(DataPlaneError::BackendId(id));
        }
        self.backends
            .set(id, info, 0)
            .map_err(map_err(names::BACKENDS))
    }

    fn backend(&self, id: u32) -> Result<BackendInfo> {
        self.backends.get(&id, 0).map_err(map_err(names::BACKENDS))
    }

    fn set_tunnel(&mut self, id: u32, info: TunnelInfo) -> Result<()> {
        if id >= lb_common::maps::MAX_BACKENDS {
            return Err(DataPlaneError::BackendId(id));
        }
        self.tunnels
            .set(id, info, 0)
            .map_err(map_err(names::TUNNELS))
    }

    fn tunnel(&self, id: u32) -> Result<TunnelInfo> {
        self.tunnels.get(&id, 0).map_err(map_err(names::TUNNELS))
    }

    fn install_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        let copy = self.stage_table(service_id, table)?;
        self.flip(service_id, copy)
    }

    fn active_table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        if service_id >= MAX_SERVICES {
            return Err(DataPlaneError::ServiceId(service_id));
        }
        let active = self
            .active
            .get(&service_id, 0)
            .map_err(map_err(names::ACTIVE))?
            & 1;
        let id = service_id * 2 + active;
        let r = self.region(id)?;
        if r.size == 0 {
            return Ok(None);
        }
        if let Some(s) = self.shadow.get(&id) {
            return Ok(Some(s.clone()));
        }
        self.read_region(r).map(Some)
    }

    fn set_ca_target(&mut self, service_id: u32, backend_id: u32) -> Result<()> {
        if service_id >= MAX_SERVICES {
            return Err(DataPlaneError::ServiceId(service_id));
        }
        self.ca_steer
            .set(service_id, backend_id, 0)
            .map_err(map_err(names::CA_STEER))
    }

    fn ca_target(&self, service_id: u32) -> Result<u32> {
        self.ca_steer
            .get(&service_id, 0)
            .map_err(map_err(names::CA_STEER))
    }

    /// Passes and drops as counted; `tx_*` derived from the backend
    /// records, by the kind of the service each backend belongs to (a
    /// service with no CA VIP counts as a compiler one).
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>> {
        let mut out: Vec<(Reason, Counter)> = Reason::ALL
            .iter()
            .map(|r| {
                // Forwarded packets are counted in their backends' records
                // (below); a Tx reason of its own (an answer the data plane
                // wrote, `tx_too_big`) is counted like a pass or drop.
                if matches!(r, Reason::TxCompiler | Reason::TxCa) {
                    return Ok((*r, Counter::default()));
                }
                sum_percpu(&self.reasons, *r as u32, names::REASON_STATS, |t, v| {
                    t.packets += v.packets;
                    t.bytes += v.bytes;
                })
                .map(|c| (*r, c))
            })
            .collect::<Result<_>>()?;
        let ca_services: std::collections::BTreeSet<u32> = self
            .vips()?
            .into_iter()
            .filter(|(_, i)| i.kind == KIND_CA)
            .map(|(_, i)| i.service_id)
            .collect();
        for (info, st) in self.all_backend_stats()?.values() {
            let r = if ca_services.contains(&info.service_id) {
                Reason::TxCa
            } else {
                Reason::TxCompiler
            };
            let c = &mut out[r as usize].1;
            c.packets += st.packets;
            c.bytes += st.bytes;
        }
        Ok(out)
    }

    /// `no_backend` as counted; the rest summed over the backends whose slot
    /// belongs to the service now.
    fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        if service_id >= MAX_SERVICES {
            return Err(DataPlaneError::ServiceId(service_id));
        }
        let mut st = ServiceStats {
            no_backend: sum_percpu(&self.svc_drops, service_id, names::SERVICE_STATS, |t, v| {
                *t += v
            })?,
            ..ServiceStats::default()
        };
        for (info, b) in self.all_backend_stats()?.values() {
            if info.service_id == service_id {
                st.packets += b.packets;
                st.bytes += b.bytes;
                st.new_flows += b.new_flows;
            }
        }
        Ok(st)
    }

    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        if backend_id >= MAX_BACKENDS {
            return Err(DataPlaneError::BackendId(backend_id));
        }
        sum_percpu(&self.be_stats, backend_id, names::BACKEND_STATS, |t, v| {
            t.packets += v.packets;
            t.bytes += v.bytes;
            t.new_flows += v.new_flows;
        })
    }

    fn ensure_pinned(&mut self) -> Result<bool> {
        let mut repinned = false;
        for (path, fd) in &self.pins {
            match std::fs::symlink_metadata(path) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(other(format!("{}: {e}", path.display()))),
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| other(format!("creating {}: {e}", dir.display())))?;
            }
            bpf_obj_pin(fd, path)
                .map_err(|e| other(format!("re-pinning {}: {e}", path.display())))?;
            warn!(pin = %path.display(), "pin was deleted under the running daemon; re-pinned");
            repinned = true;
        }
        Ok(repinned)
    }

    fn set_flood_threshold(&mut self, per_cpu_per_s: u32) -> Result<()> {
        self.update_config(|c| c.flood_threshold = per_cpu_per_s)
    }

    fn set_icmp_steering(&mut self, on: bool) -> Result<()> {
        self.update_config(|c| {
            if on {
                c.flags &= !DP_NO_ICMP_STEERING;
            } else {
                c.flags |= DP_NO_ICMP_STEERING;
            }
        })
    }

    fn flow_capacity(&self) -> Option<u64> {
        // `flow_capacity` applies to each family's table.
        use aya::maps::IterableMap as _;
        let cap = |m: &MapData| m.info().ok().map(|i| u64::from(i.max_entries()));
        Some(cap(self.flows4.map())? + cap(self.flows6.map())?)
    }

    fn flood_status(&self) -> Result<FloodStatus> {
        let threshold = self
            .config
            .get(&0, 0)
            .map_err(map_err(names::CONFIG))?
            .flood_threshold;
        let now = crate::retire::monotonic_ns();
        let per_cpu = self.flood.get(&0, 0).map_err(map_err(names::FLOOD))?;
        let mut st = FloodStatus {
            threshold,
            ..FloodStatus::default()
        };
        for f in per_cpu.iter() {
            st.cpus_in_flood += u32::from(f.in_flood(threshold, now));
            st.flood_syns += f.flood_syns;
            st.flood_windows += f.flood_windows;
        }
        Ok(st)
    }

    fn scan_flows(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<()> {
        scan_batched::<FlowKeyV4, FlowValue>(&self.flows4_fd, &mut |k, v| {
            visit(&k.to_flow_key(), v);
            true
        })
        .map_err(|e| other(format!("reading {} in batches: {e}", names::FLOWS4)))?;
        scan_batched::<FlowKeyV6, FlowValue>(&self.flows6_fd, &mut |k, v| {
            visit(&k.to_flow_key(), v);
            true
        })
        .map_err(|e| other(format!("reading {} in batches: {e}", names::FLOWS6)))
    }

    /// Batched reads of both tables, stopping at `limit`: memory is the
    /// batch buffers plus the answer, whatever the tables hold.
    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        scan_batched::<FlowKeyV4, FlowValue>(&self.flows4_fd, &mut |k, v| {
            out.push((k.to_flow_key(), *v));
            out.len() < limit
        })
        .map_err(|e| other(format!("reading {} in batches: {e}", names::FLOWS4)))?;
        if out.len() < limit {
            scan_batched::<FlowKeyV6, FlowValue>(&self.flows6_fd, &mut |k, v| {
                out.push((k.to_flow_key(), *v));
                out.len() < limit
            })
            .map_err(|e| other(format!("reading {} in batches: {e}", names::FLOWS6)))?;
        }
        Ok(out)
    }
}
