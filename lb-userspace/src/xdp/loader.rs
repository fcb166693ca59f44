//! Loading, pinning and attaching: the object's maps pinned by their
//! versioned names (reused when they are there), the tail-called programs
//! put in their slots, the program attached by a pinned BPF link per
//! interface (swapped in place on an upgrade), the v1 -> v2 migration, and
//! detaching on purpose.

use super::*;

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
        let from_v1 = migrate_v1(&opts.pin_dir)?;
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
        if all_linked && !opts.replace && !from_v1 && missing.is_empty() {
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
                // The clock line is in place before a packet reads it.
                super::calibrate_clock(&mut ebpf)?;
                program(&mut ebpf, PROGRAM_NAME)?.load().map_err(other)?;
                let maps = take_maps(&mut ebpf)?;
                let mut dp = Self::from_maps(None, maps)?;
                // The maps derived from the VIP map (pre-filter, direct
                // entries, address bitmap) are right before a packet reads
                // them. The program's first question to a packet is the
                // address bitmap's, so a bitmap this build adds to older
                // pins (or a v1 migration) would otherwise pass every VIP
                // packet to the kernel until the first sync. Rebuilt on
                // every load, they are also right after any crash.
                dp.sync_vip_filter()?;
                let prog: &mut Xdp = program(&mut ebpf, PROGRAM_NAME)?;
                for iface in &opts.interfaces {
                    attach(prog, iface, opts)?;
                }
                dp._ebpf = Some(ebpf);
                Ok(dp)
            });
        let mut dp = match loaded {
            Ok(dp) => dp,
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
        dp.sync_tx_ports(&opts.interfaces)?;
        if from_v1 {
            dp.finish_v1_migration(&opts.pin_dir)?;
        }
        dp.hold_pins(opts)?;
        Ok(dp)
    }

    /// Read the v1 flow table, write its entries converted (open, last seen
    /// now) into the v2 tables, then drop the v1 flow-table pin (the last
    /// v1 pin). Done after the new program is in the links, so the read
    /// sees every flow the v1 program made, those it made while this one
    /// was being loaded and verified included: v2's flow hash differs from
    /// v1's, so a v1 flow left out would be re-picked and could land on
    /// another compiler. A crash before the unpin repeats the migration.
    pub(super) fn finish_v1_migration(&mut self, pin_dir: &Path) -> Result<()> {
        let flows = read_v1_flows(pin_dir)?;
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
    pub(super) fn sync_tx_ports(&mut self, interfaces: &[String]) -> Result<()> {
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
    pub(super) fn hold_pins(&mut self, opts: &LoadOptions) -> Result<()> {
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
}

/// `pin_dir/link_<ifname>`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// If `pin_dir` holds pins of map layout version 1, carry them over: every
/// map whose layout did not change ([`names::V1_RENAMED`]: VIPs, backends,
/// tables, steering) is renamed to its v2 pin name, so they stay exactly as
/// they were (the v1 program still attached keeps using the very same
/// maps); the v1 port filter and counters are unpinned (the filter is
/// rebuilt from the VIPs, the counters start again from zero: their layout
/// changed). The v1 flow table stays pinned: its entries are converted once
/// the v2 program is in the links ([`XdpDataPlane::finish_v1_migration`]).
/// Returns whether there were v1 pins.
pub fn migrate_v1(pin_dir: &Path) -> Result<bool> {
    let any_v1 = names::V1_ALL.iter().any(|n| pin_dir.join(n).exists());
    if !any_v1 {
        return Ok(false);
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
    Ok(true)
}

/// The pinned v1 flow table's entries, converted to v2 values (open, last
/// seen now); none if it is not pinned.
fn read_v1_flows(pin_dir: &Path) -> Result<Vec<(FlowKey, FlowValue)>> {
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
    Ok(flows)
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

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| other(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(other)
}

pub(super) fn take_maps(ebpf: &mut Ebpf) -> Result<BTreeMap<&'static str, Map>> {
    let mut maps = BTreeMap::new();
    for name in names::ALL {
        let m = ebpf
            .take_map(name)
            .ok_or_else(|| other(format!("map {name} missing from the object")))?;
        maps.insert(name, m);
    }
    Ok(maps)
}

pub(super) fn attach(prog: &mut Xdp, iface: &str, opts: &LoadOptions) -> Result<()> {
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

impl XdpDataPlane {
    /// The XDP action the packet path this process loaded (and attached)
    /// gives one frame, run by BPF_PROG_TEST_RUN over the live maps: what
    /// the attached program does with the state as it stands, e.g. right
    /// after an upgrade. `None` when the attached program was reused, not
    /// loaded here. Counters move as they would for a real packet.
    pub fn attached_verdict(&mut self, frame: &[u8]) -> Result<Option<u32>> {
        use aya::programs::{TestRun, TestRunOptions};
        let Some(ebpf) = self._ebpf.as_mut() else {
            return Ok(None);
        };
        let prog: &mut Xdp = program(ebpf, PROGRAM_NAME)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        Ok(Some(prog.test_run(opts).map_err(other)?.return_value))
    }
}
