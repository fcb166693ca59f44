//! What the daemon shows: status, stats, flows, telemetry, and the open
//! connections per backend read from the flow table (batched scans).

use super::*;

impl Daemon {
    /// The current view of every service.
    pub fn services(&self) -> &[ServiceView] {
        &self.views
    }

    /// Fill in the open connections of every backend from the last scan
    /// (`None` until the first scan, or for a backend added since).
    pub(super) fn patch_open_flows(&self, views: &mut [ServiceView]) {
        for s in views {
            for b in &mut s.backends {
                b.open_flows = self
                    .open_counts
                    .get(&(s.name.clone(), b.address))
                    .map(|c| c.open);
            }
        }
    }

    /// The open and closing connections of one backend of a service (zero
    /// if it holds no id).
    pub(super) fn count_open(
        &self,
        service: &str,
        addr: IpAddr,
    ) -> Result<FlowCount, DataPlaneError> {
        let Some((id, slot)) = self
            .state
            .backend_slots
            .iter()
            .find(|(_, s)| s.service == service && s.address == addr && s.in_use)
        else {
            return Ok(FlowCount::default());
        };
        let ids = BTreeMap::from([(*id, slot.generation)]);
        let counts = retire::count_flows(self.dp.as_ref(), &ids, retire::monotonic_ns())?;
        Ok(counts.get(id).copied().unwrap_or_default())
    }

    /// Count the open connections of every backend holding an id, in one
    /// walk of the flow table, into [`Self::open_counts`].
    pub(super) fn scan_open(&mut self) -> Result<(), DataPlaneError> {
        let ids: BTreeMap<u32, u32> = self
            .state
            .backend_slots
            .iter()
            .filter(|(_, s)| s.in_use)
            .map(|(id, s)| (*id, s.generation))
            .collect();
        let counts = retire::count_flows(self.dp.as_ref(), &ids, retire::monotonic_ns())?;
        self.last_scan = Some(Instant::now());
        self.open_counts = self
            .state
            .backend_slots
            .iter()
            .filter(|(_, s)| s.in_use)
            .map(|(id, s)| {
                (
                    (s.service.clone(), s.address),
                    counts.get(id).copied().unwrap_or_default(),
                )
            })
            .collect();
        Ok(())
    }

    /// The status view.
    pub fn status(&self) -> StatusView {
        StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            interfaces: self.config.interfaces.clone(),
            services: self.views.clone(),
            unresolved: self.unresolved_all(),
            last_reload_error: self.last_reload_error.clone(),
            attached: self.attached(),
            drained: self.drained,
            announce: self.announcer.as_ref().map(|a| Box::new(a.view())),
        }
    }

    /// Count the flow table (on a timer: see [`crate::telemetry`]).
    pub fn census(&mut self) {
        match self.dp.flow_census() {
            Ok(c) => self.telemetry.set_census(c),
            Err(e) => warn!("flow-table census: {e}"),
        }
    }

    /// Census, rebuilds, health events and latency.
    pub fn telemetry(&self) -> crate::telemetry::TelemetryView {
        let live: Vec<(String, IpAddr)> = self.checkers.keys().cloned().collect();
        self.telemetry.view(&live)
    }

    /// Counters from the data plane.
    pub fn stats(&self) -> Result<StatsView, DataPlaneError> {
        let reasons = self
            .dp
            .reason_stats()?
            .into_iter()
            .map(|(r, c)| ReasonStat {
                reason: r.label().into(),
                verdict: match r.verdict() {
                    Verdict::Tx => "tx",
                    Verdict::Pass => "pass",
                    Verdict::Drop => "drop",
                }
                .into(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let mut services = Vec::new();
        for s in &self.views {
            let st = self.dp.service_stats(s.service_id)?;
            let mut backends = Vec::new();
            for b in &s.backends {
                let bs = self.dp.backend_stats(b.id)?;
                backends.push(BackendStat {
                    address: b.address,
                    name: b.name.clone(),
                    id: b.id,
                    state: b.state,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    new_flows: bs.new_flows,
                });
            }
            services.push(ServiceStat {
                name: s.name.clone(),
                kind: s.kind,
                packets: st.packets,
                bytes: st.bytes,
                new_flows: st.new_flows,
                no_backend: st.no_backend,
                backends,
            });
        }
        Ok(StatsView {
            reasons,
            services,
            flood: self.dp.flood_status()?,
        })
    }

    /// Up to `limit` flows, with the backend each one maps to now.
    pub fn flows(&self, limit: usize) -> Result<Vec<FlowView>, DataPlaneError> {
        let by_sid: BTreeMap<u32, &str> = self
            .state
            .service_ids
            .iter()
            .map(|(n, id)| (*id, n.as_str()))
            .collect();
        let mut out = Vec::new();
        // One backend read per backend, not per flow.
        let mut backends: BTreeMap<u32, lb_common::BackendInfo> = BTreeMap::new();
        for (k, v) in self.dp.flows(limit)? {
            let info = *backends
                .entry(v.backend_id)
                .or_insert_with(|| self.dp.backend(v.backend_id).unwrap_or_default());
            let stale = info.state == BACKEND_EMPTY || info.generation != v.generation;
            let sock = |a: &[u8; 16], port_be: u16| match addr_from_bytes(a, k.family) {
                Some(ip) => std::net::SocketAddr::new(ip, u16::from_be(port_be)).to_string(),
                None => "?".into(),
            };
            out.push(FlowView {
                client: sock(&k.src, k.sport_be),
                vip: sock(&k.dst, k.dport_be),
                proto: if k.proto == PROTO_UDP { "udp" } else { "tcp" }.into(),
                backend_id: v.backend_id,
                generation: v.generation,
                backend: (!stale)
                    .then(|| addr_from_bytes(&info.addr, info.family))
                    .flatten(),
                service: (!stale)
                    .then(|| by_sid.get(&info.service_id).map(|s| s.to_string()))
                    .flatten(),
                stale,
            });
        }
        Ok(out)
    }
}
