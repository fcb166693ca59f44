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
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        TestRun, TestRunOptions, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use lb_common::{
    BackendInfo, BackendStats, Counter, FlowKey, FlowValue, FlowValueV1, Reason, ServiceStats,
    TableRegion, VipInfo, VipKey,
    maps::{self as names, MAGLEV_CAPACITY, MAX_REGIONS, MAX_SERVICES},
};
use tracing::{info, warn};

use crate::{
    dataplane::{DataPlane, DataPlaneError, Result},
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
    let boxed: Box<dyn std::error::Error> = e.into();
    let mut msg = boxed.to_string();
    let mut src = boxed.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    DataPlaneError::Other(msg)
}

/// Handles on every map, plus the loaded object when this process loaded it.
pub struct XdpDataPlane {
    ebpf: Option<Ebpf>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_ports: Array<MapData, u32>,
    backends: Array<MapData, BackendInfo>,
    maglev: Array<MapData, u32>,
    regions: Array<MapData, TableRegion>,
    active: Array<MapData, u32>,
    ca_steer: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    /// A descriptor of the flow table for batched reads.
    flows_fd: OwnedFd,
    reasons: PerCpuArray<MapData, Counter>,
    svc_stats: PerCpuArray<MapData, ServiceStats>,
    be_stats: PerCpuArray<MapData, BackendStats>,
    /// What we know each region holds, to write only changed slots.
    shadow: BTreeMap<u32, Vec<u32>>,
    /// What the port pre-filter holds (None: not read yet).
    ports_shadow: Option<BTreeMap<u32, u32>>,
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
        // The attached program of a v1 deployment reads v1 flow values: it
        // is replaced in its links, like `voxlb run --replace`.
        if all_linked && !opts.replace && v1_flows.is_none() {
            info!(pin_dir = %opts.pin_dir.display(), "reusing the attached program and pinned maps");
            let mut maps = BTreeMap::new();
            for name in names::ALL {
                let data = MapData::from_pin(opts.pin_dir.join(name)).map_err(map_err(name))?;
                maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
            }
            let mut dp = Self::from_maps(None, maps, false)?;
            dp.hold_pins(opts)?;
            return Ok(dp);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::FLOWS, opts.flow_capacity);
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
        let mut dp = Self::from_maps(Some(ebpf), maps, false)?;
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
            if self.flows.insert(k, v, 0).is_ok() {
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

    /// Load the object with private (unpinned) maps and attach nothing: for
    /// BPF_PROG_TEST_RUN tests and benchmarks. Each call is an independent
    /// copy of the data plane.
    pub fn load_private(flow_capacity: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS, flow_capacity)
            .load(EBPF_OBJECT)
            .map_err(other)?;
        for name in [PROGRAM_NAME, BENCH_REFLECTOR] {
            program(&mut ebpf, name)?.load().map_err(other)?;
        }
        let maps = take_maps(&mut ebpf)?;
        Self::from_maps(Some(ebpf), maps, true)
    }

    fn from_maps(
        ebpf: Option<Ebpf>,
        mut maps: BTreeMap<&'static str, Map>,
        fresh: bool,
    ) -> Result<Self> {
        macro_rules! take {
            ($name:expr) => {{
                let m = maps
                    .remove($name)
                    .ok_or_else(|| other(format!("map {} missing from the object", $name)))?;
                m.try_into().map_err(map_err($name))?
            }};
        }
        let flows_fd = match maps.get(names::FLOWS) {
            Some(Map::LruHashMap(d) | Map::HashMap(d)) => {
                d.fd().as_fd().try_clone_to_owned().map_err(other)?
            }
            _ => {
                return Err(other(format!(
                    "map {} missing or not a hash map",
                    names::FLOWS
                )));
            }
        };
        Ok(XdpDataPlane {
            ebpf,
            flows_fd,
            vips: take!(names::VIPS),
            vip_ports: take!(names::VIP_PORTS),
            backends: take!(names::BACKENDS),
            maglev: take!(names::MAGLEV),
            regions: take!(names::REGIONS),
            active: take!(names::ACTIVE),
            ca_steer: take!(names::CA_STEER),
            flows: take!(names::FLOWS),
            reasons: take!(names::REASON_STATS),
            svc_stats: take!(names::SERVICE_STATS),
            be_stats: take!(names::BACKEND_STATS),
            shadow: BTreeMap::new(),
            // Maps this process created are all zeroes.
            ports_shadow: fresh.then(BTreeMap::new),
            pins: Vec::new(),
        })
    }

    /// Run a program of this copy on one frame (BPF_PROG_TEST_RUN).
    /// `program` is [`PROGRAM_NAME`] or [`BENCH_REFLECTOR`].
    pub fn test_run(&mut self, program_name: &str, frame: &[u8], repeat: u32) -> Result<RunOutput> {
        let ebpf = self
            .ebpf
            .as_mut()
            .ok_or_else(|| other("program not loaded by this process"))?;
        let prog = program(ebpf, program_name)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let r = prog.test_run(opts).map_err(other)?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            action: r.return_value,
            frame: out,
            duration: r.duration,
        })
    }

    /// Remove every entry of the flow table (tests).
    pub fn clear_flows(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = self.flows.remove(&k);
        }
        Ok(())
    }

    /// Look one flow up.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok()
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
        for (slot, &value) in table.iter().enumerate() {
            if current.as_ref().is_some_and(|c| c[slot] == value) {
                continue;
            }
            self.maglev
                .set(base + slot as u32, value, 0)
                .map_err(map_err(names::MAGLEV))?;
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
        self.active
            .set(service_id, copy & 1, 0)
            .map_err(map_err(names::ACTIVE))
    }

    /// Make the port pre-filter say exactly how many VIPs use each port.
    fn sync_vip_ports(&mut self) -> Result<()> {
        let mut want: BTreeMap<u32, u32> = BTreeMap::new();
        for (k, _) in self.vips()? {
            *want.entry(u16::from_be(k.port_be) as u32).or_default() += 1;
        }
        // What the map holds: read in full once (pins reused from an
        // earlier run), then tracked here.
        let current = match self.ports_shadow.take() {
            Some(c) => c,
            None => (0..=u16::MAX as u32)
                .filter_map(|p| match self.vip_ports.get(&p, 0) {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some((p, n)),
                })
                .collect(),
        };
        for p in current.keys() {
            if !want.contains_key(p) {
                self.vip_ports
                    .set(*p, 0, 0)
                    .map_err(map_err(names::VIP_PORTS))?;
            }
        }
        for (p, n) in &want {
            if current.get(p) != Some(n) {
                self.vip_ports
                    .set(*p, *n, 0)
                    .map_err(map_err(names::VIP_PORTS))?;
            }
        }
        self.ports_shadow = Some(want);
        Ok(())
    }

    /// Read a region's slots back from the kernel.
    fn read_region(&self, region: TableRegion) -> Result<Vec<u32>> {
        (region.base..region.base + region.size)
            .map(|i| self.maglev.get(&i, 0).map_err(map_err(names::MAGLEV)))
            .collect()
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
/// map whose layout did not change (all but the flow table) is renamed to
/// its v2 pin name, so VIPs, backends and tables stay exactly as they were
/// (the v1 program still attached keeps using the very same maps); the v1
/// flow table is read and its entries converted (open, last seen now).
/// Returns the converted flows, to be written once the v2 table exists
/// (see [`XdpDataPlane::finish_v1_migration`]); `None` without v1 pins.
pub fn migrate_v1(pin_dir: &Path) -> Result<Option<Vec<(FlowKey, FlowValue)>>> {
    let any_v1 = names::V1_ALL.iter().any(|n| pin_dir.join(n).exists());
    if !any_v1 {
        return Ok(None);
    }
    warn!(pin_dir = %pin_dir.display(), "found pins of map layout v1; upgrading them to v2");
    for (v1, v2) in names::V1_ALL.iter().zip(names::ALL) {
        if *v1 == names::V1_FLOWS {
            continue;
        }
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

/// Visit every entry of the hash map behind `fd` (key `K`, value `V`), in
/// batches of up to [`SCAN_BATCH`] entries per syscall.
fn scan_batched<K: Copy + Default, V: Copy + Default>(
    fd: &OwnedFd,
    visit: &mut dyn FnMut(&K, &V),
) -> std::io::Result<()> {
    let mut chunk = SCAN_BATCH;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The position token of a hash map is a bucket index (u32); 8 bytes
    // leave room whatever the kernel copies.
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
        // and value sizes (K and V are the map's own types), and the token
        // buffers outlive the call.
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
            Some(libc::ENOSPC) if chunk < 1 << 20 => {
                chunk *= 2;
                keys = vec![K::default(); chunk];
                values = vec![V::default(); chunk];
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
        }
        for i in 0..(attr.count as usize).min(chunk) {
            visit(&keys[i], &values[i]);
        }
        if err.is_some() {
            return Ok(()); // ENOENT: the walk is complete
        }
        token = next;
        first = false;
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_DROP` = 1).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured average time per repeat.
    pub duration: std::time::Duration,
}

/// Name of the veth-peer helper program (see [`attach_veth_peer`]).
pub const VETH_PEER: &str = "vx_veth_peer";

/// Attach the do-nothing XDP program to `iface` (the veth peer of an
/// interface voxlb runs on) and pin its link at `pin`, so that XDP_TX works
/// across the veth pair after this process exits. Test topologies and the
/// demo need it; a physical NIC does not. Runs in the caller's network
/// namespace.
pub fn attach_veth_peer(iface: &str, pin: &Path) -> Result<()> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, 16)
        .map_max_entries(names::MAGLEV, 16)
        .load(EBPF_OBJECT)
        .map_err(other)?;
    let prog = program(&mut ebpf, VETH_PEER)?;
    prog.load().map_err(other)?;
    let id = prog.attach(iface, AyaXdpMode::Driver).map_err(other)?;
    let link = prog.take_link(id).map_err(other)?;
    FdLink::try_from(link)
        .map_err(other)?
        .pin(pin)
        .map_err(other)?;
    Ok(())
}

/// Name of the benchmark reference program in the object.
pub const BENCH_REFLECTOR: &str = "vx_bench_reflect";

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

fn check_bpffs(dir: &Path) -> Result<()> {
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
        // The port pre-filter first: a VIP is never hidden behind it.
        let port = u16::from_be(key.port_be) as u32;
        let n = self
            .vip_ports
            .get(&port, 0)
            .map_err(map_err(names::VIP_PORTS))?;
        if n == 0 {
            self.vip_ports
                .set(port, 1, 0)
                .map_err(map_err(names::VIP_PORTS))?;
        }
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(names::VIPS))?;
        self.sync_vip_ports()
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        match self.vips.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::VIPS)(e)),
        }
        self.sync_vip_ports()
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

    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>> {
        Reason::ALL
            .iter()
            .map(|r| {
                sum_percpu(&self.reasons, *r as u32, names::REASON_STATS, |t, v| {
                    t.packets += v.packets;
                    t.bytes += v.bytes;
                })
                .map(|c| (*r, c))
            })
            .collect()
    }

    fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        sum_percpu(&self.svc_stats, service_id, names::SERVICE_STATS, |t, v| {
            t.packets += v.packets;
            t.bytes += v.bytes;
            t.new_flows += v.new_flows;
            t.no_backend += v.no_backend;
        })
    }

    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
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

    fn scan_flows(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<()> {
        scan_batched::<FlowKey, FlowValue>(&self.flows_fd, visit)
            .map_err(|e| other(format!("reading {} in batches: {e}", names::FLOWS)))
    }

    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut out = Vec::new();
        for r in self.flows.iter() {
            if out.len() >= limit {
                break;
            }
            // An entry evicted mid-walk is simply skipped.
            if let Ok(kv) = r {
                out.push(kv);
            }
        }
        Ok(out)
    }
}
