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
    BackendInfo, BackendStats, Counter, DP_NO_ICMP_STEERING, DpConfig, FamilyKey, FilterSlot,
    FloodState, FlowKey, FlowKeyV4, FlowKeyV6, FlowValue, FlowValueV1, FragKey, FragValue, KIND_CA,
    Reason, ServiceStats, TableRegion, TunnelInfo, VipAddrKey, VipInfo, VipKey,
    hash::{FILTER_SLOTS, addr_slot, fold_addr, vip_slot},
    maps::{self as names, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_REGIONS, MAX_SERVICES},
};
use tracing::{info, warn};

use crate::{
    dataplane::{DataPlane, DataPlaneError, FloodStatus, Result},
    object::{EBPF_OBJECT, PROGRAM_NAME},
};

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

/// `pin_dir/link_<ifname>`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

impl XdpDataPlane {
    /// Load, pin and attach per `opts` (see the module docs for reuse).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if opts.interfaces.is_empty() {
            return Err(other("no interface to attach to"));
        }
        // Every interface must exist before anything is created or pinned.
        for (i, iface) in opts.interfaces.iter().enumerate() {
            let c = std::ffi::CString::new(iface.as_bytes()).map_err(other)?;
            // SAFETY: `c` is a valid C string.
            if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
                return Err(other(format!(
                    "interfaces[{i}]: no interface named {iface:?} here"
                )));
            }
        }
        let fresh_dir = !opts.pin_dir.exists();
        std::fs::create_dir_all(&opts.pin_dir)
            .map_err(|e| other(format!("creating {}: {e}", opts.pin_dir.display())))?;
        check_bpffs(&opts.pin_dir)?;
        // A v1 deployment: carry its maps over before anything is created.
        let v1_flows = migrate_v1(&opts.pin_dir)?;
        let all_linked = opts
            .interfaces
            .iter()
            .all(|i| link_pin(&opts.pin_dir, i).exists());
        // A short reason array (a build with fewer reasons) is made again:
        // its counters restart from zero (they are rates to every consumer).
        let reasons_pin = opts.pin_dir.join(names::REASON_STATS);
        if reasons_pin.exists() {
            let short = MapData::from_pin(&reasons_pin)
                .ok()
                .and_then(|m| m.info().ok().map(|i| i.max_entries()))
                .is_some_and(|n| n < lb_common::reason::REASON_COUNT);
            if short {
                info!("the pinned reason counters predate this build's reasons: made again");
                std::fs::remove_file(&reasons_pin)
                    .map_err(|e| other(format!("removing {}: {e}", reasons_pin.display())))?;
            }
        }
        // A map this build added (e.g. the fragment table) is not pinned by
        // an older deployment, whose attached program does not know it: the
        // new program is loaded with the existing maps (reused by their
        // pins) plus the new one, and swapped into the links.
        let missing: Vec<&str> = names::ALL
            .iter()
            .copied()
            .filter(|n| !opts.pin_dir.join(n).exists())
            .collect();
        if all_linked && !missing.is_empty() {
            info!(maps = ?missing, "maps missing from the pins; loading this build's program into the links");
        }
        // The attached program of a v1 deployment reads v1 flow values: it
        // is replaced in its links, like `voxlb run --replace`.
        if all_linked && !opts.replace && v1_flows.is_none() && missing.is_empty() {
            info!(pin_dir = %opts.pin_dir.display(), "reusing the attached program and pinned maps");
            let mut maps = BTreeMap::new();
            for name in names::ALL {
                let data = MapData::from_pin(opts.pin_dir.join(name)).map_err(map_err(name))?;
                maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
            }
            let mut dp = Self::from_maps(None, maps)?;
            dp.sync_vip_filter()?;
            dp.sync_tx_ports(&opts.interfaces)?;
            dp.hold_pins(opts)?;
            return Ok(dp);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::FLOWS4, opts.flow_capacity);
        loader.map_max_entries(names::FLOWS6, opts.flow_capacity);
        // The flow table's LRU lists are per CPU: each possible CPU evicts
        // from its own share of the entries (see README, flow-table sizing).
        if let Ok(cpus) = aya::util::nr_cpus() {
            info!(
                entries = opts.flow_capacity,
                possible_cpus = cpus,
                per_cpu = opts.flow_capacity as usize / cpus.max(1),
                "flow table"
            );
        }
        let pins: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|n| (*n, opts.pin_dir.join(n)))
            .collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let existed: Vec<bool> = pins.iter().map(|(_, p)| p.exists()).collect();
        let loaded = loader
            .load(EBPF_OBJECT)
            .map_err(other)
            .and_then(|mut ebpf| {
                // The tail-called programs are in the program array before
                // the packet path that calls them is attached.
                install_tail_programs(&mut ebpf)?;
                let prog: &mut Xdp = program(&mut ebpf, PROGRAM_NAME)?;
                prog.load().map_err(other)?;
                for iface in &opts.interfaces {
                    attach(prog, iface, opts)?;
                }
                Ok(ebpf)
            });
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(e) => {
                // Leave no half-made data plane behind: remove the pins this
                // attempt created (never ones that held an earlier run's
                // state), and the directory if we made it.
                for ((_, path), existed) in pins.iter().zip(existed) {
                    if !existed {
                        let _ = std::fs::remove_file(path);
                    }
                }
                if fresh_dir {
                    let _ = std::fs::remove_dir(&opts.pin_dir);
                }
                return Err(e);
            }
        };
        let maps = take_maps(&mut ebpf)?;
        let mut dp = Self::from_maps(Some(ebpf), maps)?;
        // The filter is derived from the VIP map: rebuilt here, it is right
        // after an upgrade (v1 had a port filter) and after any crash.
        dp.sync_vip_filter()?;
        dp.sync_tx_ports(&opts.interfaces)?;
        if let Some(flows) = v1_flows {
            dp.finish_v1_migration(&opts.pin_dir, flows)?;
        }
        dp.hold_pins(opts)?;
        Ok(dp)
    }

    /// Write the converted v1 flows into the v2 table, then drop the v1
    /// flow-table pin (the last v1 pin). Done after the new program is in
    /// the links: a crash before the unpin repeats the migration.
    fn finish_v1_migration(
        &mut self,
        pin_dir: &Path,
        flows: Vec<(FlowKey, FlowValue)>,
    ) -> Result<()> {
        let mut copied = 0usize;
        for (k, v) in &flows {
            // A full table keeps what fits (LRU), like the data plane does.
            // Each entry goes to its family's table.
            if self.insert_flow(k, *v).is_ok() {
                copied += 1;
            }
        }
        let p = pin_dir.join(names::V1_FLOWS);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(other(format!("removing {}: {e}", p.display()))),
        }
        info!(
            flows = copied,
            of = flows.len(),
            "upgraded map layout v1 -> v2: flow entries carried over, v1 pins removed"
        );
        Ok(())
    }

    /// The egress devmap holds exactly the attached interfaces: a routed
    /// compiler's route through one of them is reachable by redirect.
    fn sync_tx_ports(&mut self, interfaces: &[String]) -> Result<()> {
        let mut want = std::collections::BTreeSet::new();
        for iface in interfaces {
            let c = std::ffi::CString::new(iface.as_bytes()).map_err(other)?;
            // SAFETY: `c` is a valid C string.
            let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if idx != 0 {
                want.insert(idx);
            }
        }
        let have: Vec<u32> = self.tx_ports.keys().filter_map(|k| k.ok()).collect();
        for k in have {
            if !want.contains(&k) {
                let _ = self.tx_ports.remove(k);
            }
        }
        for idx in want {
            self.set_tx_port(idx, idx)?;
        }
        Ok(())
    }

    /// Make `key` (a routed backend's egress ifindex) redirect to
    /// interface `ifindex`.
    pub fn set_tx_port(&mut self, key: u32, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(key, ifindex, None, 0)
            .map_err(|e| other(format!("{}: {e}", names::TX_PORTS)))
    }

    /// Open every pin (maps and links) so that [`DataPlane::ensure_pinned`]
    /// can restore it. Holding the links open also keeps the program
    /// attached while this process lives, whatever happens to the pins.
    fn hold_pins(&mut self, opts: &LoadOptions) -> Result<()> {
        let paths = names::ALL
            .iter()
            .map(|n| opts.pin_dir.join(n))
            .chain(opts.interfaces.iter().map(|i| link_pin(&opts.pin_dir, i)));
        for path in paths {
            let fd = bpf_obj_get(&path)
                .map_err(|e| other(format!("opening pin {}: {e}", path.display())))?;
            self.pins.push((path, fd));
        }
        Ok(())
    }

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
        Ok(XdpDataPlane {
            _ebpf: ebpf,
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
    fn sync_vip_filter(&mut self) -> Result<()> {
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
                    _pad: [0; 3],
                })
                .or_default() += 1;
        }
        for a in addrs.keys() {
            let s = want
                .entry(addr_slot(fold_addr(&a.addr, a.family)))
                .or_default();
            s.addrs = s.addrs.saturating_add(1);
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
    fn read_region(&self, region: TableRegion) -> Result<Vec<u32>> {
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

    fn region(&self, id: u32) -> Result<TableRegion> {
        self.regions.get(&id, 0).map_err(map_err(names::REGIONS))
    }

    /// First-fit space for `size` slots, avoiding every region but `except`.
    fn allocate(&self, size: u32, except: u32) -> Result<u32> {
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

/// If `pin_dir` holds pins of map layout version 1, carry them over: every
/// map whose layout did not change ([`names::V1_RENAMED`]: VIPs, backends,
/// tables, steering) is renamed to its v2 pin name, so they stay exactly as
/// they were (the v1 program still attached keeps using the very same
/// maps); the v1 flow table is read and its entries converted (open, last
/// seen now) for the per-family v2 tables; the v1 port filter and counters
/// are unpinned (the filter is rebuilt from the VIPs, the counters start
/// again from zero: their layout changed).
/// Returns the converted flows, to be written once the v2 table exists
/// (see [`XdpDataPlane::finish_v1_migration`]); `None` without v1 pins.
pub fn migrate_v1(pin_dir: &Path) -> Result<Option<Vec<(FlowKey, FlowValue)>>> {
    let any_v1 = names::V1_ALL.iter().any(|n| pin_dir.join(n).exists());
    if !any_v1 {
        return Ok(None);
    }
    warn!(pin_dir = %pin_dir.display(), "found pins of map layout v1; upgrading them to v2");
    for v1 in names::V1_ALL {
        let renamed = names::V1_RENAMED.iter().find(|(n, _)| *n == v1);
        if v1 == names::V1_FLOWS || renamed.is_some() {
            continue;
        }
        let p = pin_dir.join(v1);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(other(format!("removing {}: {e}", p.display()))),
        }
    }
    for (v1, v2) in names::V1_RENAMED {
        let (from, to) = (pin_dir.join(v1), pin_dir.join(v2));
        if !from.exists() {
            continue;
        }
        if to.exists() {
            // A v2 map already exists (an interrupted upgrade): it wins.
            std::fs::remove_file(&from)
                .map_err(|e| other(format!("removing {}: {e}", from.display())))?;
        } else {
            std::fs::rename(&from, &to).map_err(|e| {
                other(format!(
                    "renaming {} to {}: {e}",
                    from.display(),
                    to.display()
                ))
            })?;
        }
    }
    let v1_flows = pin_dir.join(names::V1_FLOWS);
    let mut flows = Vec::new();
    if v1_flows.exists() {
        let data = MapData::from_pin(&v1_flows).map_err(map_err(names::V1_FLOWS))?;
        let map = Map::from_map_data(data).map_err(map_err(names::V1_FLOWS))?;
        let table: HashMap<MapData, FlowKey, FlowValueV1> =
            map.try_into().map_err(map_err(names::V1_FLOWS))?;
        let now = crate::retire::monotonic_ns();
        // One syscall per entry, once, at an upgrade.
        for (k, v) in table.iter().flatten() {
            flows.push((k, v.upgrade(now)));
        }
    }
    Ok(Some(flows))
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries read per BPF_MAP_LOOKUP_BATCH call.
const SCAN_BATCH: usize = 4096;

/// Visit every entry of the map behind `fd` (key `K`, value `V`: a hash
/// map, or an array with `K = u32`), in batches of up to [`SCAN_BATCH`]
/// entries per syscall, until `visit` returns false. Memory is bounded by
/// the batch, whatever the size of the map.
fn scan_batched<K: Copy + Default, V: Copy + Default>(
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
fn scan_percpu_array<V: Copy + Default>(
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

/// Receives one batch: raw keys, raw values, and how many entries; returns
/// false to stop the walk.
type BatchVisitor<'a> = dyn FnMut(&[u8], &[u8], usize) -> bool + 'a;

/// BPF_MAP_LOOKUP_BATCH over a whole map, [`SCAN_BATCH`] entries at a time,
/// handing each batch's raw keys, values and count to `visit` (which
/// returns false to stop).
fn scan_raw(
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

/// Bytes per Maglev slot in the mapped array: the kernel rounds an array
/// element up to 8 bytes.
const MAGLEV_STRIDE: usize = 8;
/// Bytes per pre-filter slot in the mapped array.
const FILTER_STRIDE: usize = 8;

/// A filter slot as the one 8-byte word the kernel stores.
fn filter_word(s: FilterSlot) -> u64 {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&s.compiler.to_ne_bytes());
    b[2..4].copy_from_slice(&s.ca.to_ne_bytes());
    b[4..6].copy_from_slice(&s.addrs.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// A `BPF_F_MMAPABLE` array mapped shared into this process.
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only
// accessed through `&self`/`&mut self` with volatile, aligned word accesses.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    fn new(fd: &OwnedFd, name: &'static str, len: usize) -> Result<Self> {
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

    fn load_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked); the kernel may write it
        // concurrently, hence volatile.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u32) }
    }

    fn store_u32(&mut self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as in `load_u32`; an aligned 4-byte store is atomic.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u32, v) }
    }

    fn load_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: as in `load_u32`.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u64) }
    }

    fn store_u64(&mut self, off: usize, v: u64) {
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

/// Load the tail-called programs of `ebpf` (encapsulation, ICMP errors,
/// later fragments) and put each in its slot of `vx_progs_v2`.
pub fn install_tail_programs(ebpf: &mut Ebpf) -> Result<()> {
    for (slot, name) in names::TAIL_PROGRAMS {
        let prog: &mut Xdp = program(ebpf, name)?;
        prog.load().map_err(other)?;
        let fd = prog.fd().map_err(other)?.try_clone().map_err(other)?;
        let map = ebpf
            .map_mut(names::PROGS)
            .ok_or_else(|| other(format!("map {} missing from the object", names::PROGS)))?;
        let mut arr: ProgramArray<&mut MapData> =
            ProgramArray::try_from(map).map_err(map_err(names::PROGS))?;
        arr.set(slot, &fd, 0).map_err(map_err(names::PROGS))?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| other(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(other)
}

fn take_maps(ebpf: &mut Ebpf) -> Result<BTreeMap<&'static str, Map>> {
    let mut maps = BTreeMap::new();
    for name in names::ALL {
        let m = ebpf
            .take_map(name)
            .ok_or_else(|| other(format!("map {name} missing from the object")))?;
        maps.insert(name, m);
    }
    Ok(maps)
}

fn attach(prog: &mut Xdp, iface: &str, opts: &LoadOptions) -> Result<()> {
    let pin = link_pin(&opts.pin_dir, iface);
    if pin.exists() {
        // Atomic swap of the program behind the existing link.
        let pinned = PinnedLink::from_pin(&pin).map_err(other)?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(other)?;
        prog.attach_to_link(link).map_err(other)?;
        info!(iface, "replaced the attached program in place");
        return Ok(());
    }
    let id = match opts.mode {
        XdpMode::Native => prog.attach(iface, AyaXdpMode::Driver).map_err(other)?,
        XdpMode::Generic => prog.attach(iface, AyaXdpMode::Skb).map_err(other)?,
        XdpMode::Auto => match prog.attach(iface, AyaXdpMode::Driver) {
            Ok(id) => id,
            Err(e) => {
                warn!(iface, error = %e, "native XDP unavailable; falling back to generic mode");
                prog.attach(iface, AyaXdpMode::Skb).map_err(other)?
            }
        },
    };
    let link = prog.take_link(id).map_err(other)?;
    let fd_link = FdLink::try_from(link).map_err(other)?;
    fd_link.pin(&pin).map_err(other)?;
    info!(iface, pin = %pin.display(), "attached");
    Ok(())
}

/// Remove the program from the interfaces and every pin, on purpose.
pub fn detach(opts: &LoadOptions) -> Result<()> {
    for iface in &opts.interfaces {
        let pin = link_pin(&opts.pin_dir, iface);
        match std::fs::remove_file(&pin) {
            Ok(()) => info!(iface, "detached"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(other(format!("removing {}: {e}", pin.display()))),
        }
    }
    for name in names::ALL {
        let p = opts.pin_dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) | Err(_) if !p.exists() => {}
            Ok(()) => {}
            Err(e) => return Err(other(format!("removing {}: {e}", p.display()))),
        }
    }
    let _ = std::fs::remove_dir(&opts.pin_dir);
    Ok(())
}

/// `union bpf_attr` as the BPF_OBJ_PIN and BPF_OBJ_GET commands read it.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

fn bpf_obj(cmd: libc::c_long, path: &Path, fd: u32) -> std::io::Result<libc::c_long> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for the OBJ commands, its
    // size is passed, and `c` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// A new descriptor of the BPF object pinned at `path`.
fn bpf_obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pin the BPF object behind `fd` at `path`.
fn bpf_obj_pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    bpf_obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(|_| ())
}

pub(crate) fn check_bpffs(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(other)?;
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(other(format!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(other(format!(
            "{} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`",
            dir.display()
        )));
    }
    Ok(())
}

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
