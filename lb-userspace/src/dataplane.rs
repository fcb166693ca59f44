//! The contract between the daemon and the data plane.
//!
//! The daemon decides *what* the maps should hold (plain Rust, testable
//! without a kernel); a [`DataPlane`] only writes it. [`crate::xdp::XdpDataPlane`]
//! is the real one, over pinned BPF maps; [`FakeDataPlane`] is an in-memory
//! one with the same semantics, for tests of the logic above it.

use std::collections::BTreeMap;

use lb_common::{
    BackendInfo, BackendStats, Counter, FlowKey, FlowValue, NO_BACKEND, Reason, ServiceStats,
    TunnelInfo, VipInfo, VipKey,
    maps::{MAX_BACKENDS, MAX_SERVICES},
};

/// Errors of the data-plane layer.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("service id {0} out of range (max {MAX_SERVICES})")]
    ServiceId(u32),
    #[error("backend id {0} out of range (max {MAX_BACKENDS})")]
    BackendId(u32),
    #[error("Maglev table of {size} slots does not fit: {reason}")]
    TableSpace { size: usize, reason: String },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Other(String),
}

/// Flatten an error and its sources into one line (aya keeps the errno in
/// the source).
pub fn flatten_error<E: Into<Box<dyn std::error::Error>>>(e: E) -> String {
    let boxed: Box<dyn std::error::Error> = e.into();
    let mut msg = boxed.to_string();
    let mut src = boxed.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, DataPlaneError>;

/// Flood-mode state over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FloodStatus {
    /// Configured new-flow inserts per second per CPU (0 = off).
    pub threshold: u32,
    /// CPUs in flood mode now.
    pub cpus_in_flood: u32,
    /// SYNs (and new UDP flows) forwarded by the Maglev table alone,
    /// without a flow entry, ever.
    pub flood_syns: u64,
    /// One-second windows that went into flood mode, over all CPUs, ever.
    pub flood_windows: u64,
}

/// What the daemon needs from the data plane. All writes are idempotent.
pub trait DataPlane: Send {
    /// Add or replace a VIP.
    fn upsert_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()>;
    /// Remove a VIP (no error if absent).
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    /// Every VIP currently in the map.
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>>;
    /// Write one backend slot. `BACKEND_EMPTY` state frees it.
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()>;
    /// Read one backend slot.
    fn backend(&self, id: u32) -> Result<BackendInfo>;
    /// Write the tunnel entry of a routed backend (before its backend entry
    /// says it is routed).
    fn set_tunnel(&mut self, id: u32, info: TunnelInfo) -> Result<()>;
    /// Read a backend's tunnel entry (zeroes when never written).
    fn tunnel(&self, id: u32) -> Result<TunnelInfo>;
    /// Make `table` (backend id per slot, `NO_BACKEND` for none) the
    /// service's active Maglev table: written in full to the copy packets
    /// are not reading, then made visible by one flip of the active index.
    fn install_table(&mut self, service_id: u32, table: &[u32]) -> Result<()>;
    /// The service's active table, if one was installed.
    fn active_table(&self, service_id: u32) -> Result<Option<Vec<u32>>>;
    /// Steer every flow of CA service `service_id` to `backend_id`
    /// (`NO_BACKEND` = drop, counted).
    fn set_ca_target(&mut self, service_id: u32, backend_id: u32) -> Result<()>;
    /// The CA target of a service.
    fn ca_target(&self, service_id: u32) -> Result<u32>;
    /// Per-reason counters summed over CPUs, in code order.
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>>;
    /// One service's counters summed over CPUs.
    fn service_stats(&self, service_id: u32) -> Result<ServiceStats>;
    /// One backend's counters summed over CPUs.
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats>;
    /// Up to `limit` flow-table entries.
    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>>;
    /// Visit every flow-table entry once (an entry created or evicted during
    /// the walk may be missed). The real data plane reads the table in
    /// batches (BPF_MAP_LOOKUP_BATCH), not one syscall per entry.
    fn scan_flows(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<()> {
        for (k, v) in self.flows(usize::MAX)? {
            visit(&k, &v);
        }
        Ok(())
    }
    /// Put back any bpffs pin of the data plane (map or link) that vanished
    /// while this process holds it open, e.g. after an `rm -r` of the pin
    /// directory; without the pins a restarted daemon would start from empty
    /// maps, and a lost link pin detaches the program once this process
    /// exits. `Ok(true)` when something was re-pinned. Data planes without
    /// pins have nothing to do.
    fn ensure_pinned(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// `max_entries` of the flow table, where there is one.
    fn flow_capacity(&self) -> Option<u64> {
        None
    }
    /// Count the flow table (see [`crate::telemetry`]) in one
    /// [`DataPlane::scan_flows`] walk.
    fn flow_census(&self) -> Result<crate::telemetry::FlowCensus> {
        let mut c = crate::telemetry::FlowCensus {
            capacity: self.flow_capacity(),
            ..Default::default()
        };
        self.scan_flows(&mut |_, v| c.add(v))?;
        Ok(c)
    }
    /// Set the flood-mode threshold: new-flow inserts per second per CPU
    /// above which SYNs are forwarded by the Maglev table alone, without a
    /// flow entry, until the second is over (0 = never). Data planes
    /// without a flow table have nothing to do.
    fn set_flood_threshold(&mut self, _per_cpu_per_s: u32) -> Result<()> {
        Ok(())
    }
    /// Steer ICMP errors about VIP flows to the flow's backend (`true`, the
    /// default) or pass them to the kernel (`icmp_steering = false`). Data
    /// planes that steer nothing have nothing to do.
    fn set_icmp_steering(&mut self, _on: bool) -> Result<()> {
        Ok(())
    }
    /// Flood-mode state (see [`FloodStatus`]).
    fn flood_status(&self) -> Result<FloodStatus> {
        Ok(FloodStatus::default())
    }
}

fn check_service(id: u32) -> Result<()> {
    if id < MAX_SERVICES {
        Ok(())
    } else {
        Err(DataPlaneError::ServiceId(id))
    }
}

fn check_backend(id: u32) -> Result<()> {
    if id < MAX_BACKENDS {
        Ok(())
    } else {
        Err(DataPlaneError::BackendId(id))
    }
}

/// In-memory data plane with the same rules as the real one. Tests can read
/// its fields directly and count writes.
#[derive(Debug, Default, Clone)]
pub struct FakeDataPlane {
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub backends: BTreeMap<u32, BackendInfo>,
    pub tunnels: BTreeMap<u32, TunnelInfo>,
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub ca: BTreeMap<u32, u32>,
    pub flows: Vec<(FlowKey, FlowValue)>,
    /// Number of successful `install_table` calls, per service.
    pub table_installs: BTreeMap<u32, u32>,
    /// When set, every write fails with this message (fault injection).
    pub fail_writes: Option<String>,
    /// Capacity the flow census reports (`None`: unknown).
    pub flow_capacity: Option<u64>,
}

impl FakeDataPlane {
    fn write_guard(&self) -> Result<()> {
        match &self.fail_writes {
            Some(m) => Err(DataPlaneError::Other(m.clone())),
            None => Ok(()),
        }
    }
}

impl DataPlane for FakeDataPlane {
    fn upsert_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        self.write_guard()?;
        check_service(info.service_id)?;
        self.vips.insert(key, info);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write_guard()?;
        self.vips.remove(key);
        Ok(())
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        self.write_guard()?;
        check_backend(id)?;
        self.backends.insert(id, info);
        Ok(())
    }
    fn backend(&self, id: u32) -> Result<BackendInfo> {
        check_backend(id)?;
        Ok(self.backends.get(&id).copied().unwrap_or_default())
    }
    fn set_tunnel(&mut self, id: u32, info: TunnelInfo) -> Result<()> {
        self.write_guard()?;
        check_backend(id)?;
        self.tunnels.insert(id, info);
        Ok(())
    }
    fn tunnel(&self, id: u32) -> Result<TunnelInfo> {
        check_backend(id)?;
        Ok(self.tunnels.get(&id).copied().unwrap_or_default())
    }
    fn install_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        self.write_guard()?;
        check_service(service_id)?;
        if let Some(bad) = table
            .iter()
            .find(|&&b| b != NO_BACKEND && b >= MAX_BACKENDS)
        {
            return Err(DataPlaneError::BackendId(*bad));
        }
        self.tables.insert(service_id, table.to_vec());
        *self.table_installs.entry(service_id).or_default() += 1;
        Ok(())
    }
    fn active_table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        check_service(service_id)?;
        Ok(self.tables.get(&service_id).cloned())
    }
    fn set_ca_target(&mut self, service_id: u32, backend_id: u32) -> Result<()> {
        self.write_guard()?;
        check_service(service_id)?;
        if backend_id != NO_BACKEND {
            check_backend(backend_id)?;
        }
        self.ca.insert(service_id, backend_id);
        Ok(())
    }
    fn ca_target(&self, service_id: u32) -> Result<u32> {
        check_service(service_id)?;
        Ok(self.ca.get(&service_id).copied().unwrap_or(NO_BACKEND))
    }
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>> {
        Ok(Reason::ALL
            .iter()
            .map(|r| (*r, Counter::default()))
            .collect())
    }
    fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        check_service(service_id)?;
        Ok(ServiceStats::default())
    }
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        check_backend(backend_id)?;
        Ok(BackendStats::default())
    }
    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>> {
        Ok(self.flows.iter().take(limit).copied().collect())
    }
    fn flow_capacity(&self) -> Option<u64> {
        self.flow_capacity
    }
}
