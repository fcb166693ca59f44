//! How a service's packets reach its backends: `forwarding = "l2"` (direct
//! server return on the LB's own segment, the default), `"ipip"` or
//! `"gue"` (encapsulated to compilers in other subnets; the data plane's
//! `encap` module). This room holds the service's settings, their
//! validation, and the turn of a resolved route into the data plane's
//! tunnel entry.
//!
//! Decisions, with their reasons:
//! - The outer source is `encap_source_v4` / `encap_source_v6` when set,
//!   else the address the kernel would use towards that compiler (the
//!   route's preferred source, normally the egress interface's primary
//!   address). A compiler with neither is unresolved.
//! - `mtu` is the largest *outer* IP packet the path to the compilers
//!   carries (default 1500). The data plane answers a client packet that
//!   would exceed it after encapsulation with "fragmentation needed" /
//!   "packet too big" carrying `mtu` minus the overhead; an IPv4 packet
//!   without DF is dropped and counted (`drop_too_big_no_df`): XDP cannot
//!   fragment, and the compiler-side decap could not reassemble. An IPv6
//!   VIP needs `mtu` of at least 1280 + the worst overhead (48 for GUE over
//!   IPv6, 40 for IPIP), since IPv6 clients cannot go below 1280.
//! - A routed compiler's next hop must leave through an interface voxlb is
//!   attached to (the ingress one is `XDP_TX`, another attached one is
//!   `XDP_REDIRECT`): XDP cannot hand a frame to a VLAN or tunnel device.
//!   Any other egress leaves the compiler unresolved, with the reason.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    FAMILY_V4, FAMILY_V6, FORWARD_GUE, FORWARD_IPIP, FORWARD_L2, TunnelInfo,
    decap::DEFAULT_GUE_PORT,
};

crate::control::named! {
    /// The forwarding mode of a service (`forwarding = "l2" | "ipip" | "gue"`).
    Mode {
        /// Direct server return on the LB's own segment (the default).
        L2 = "l2",
        /// IP in IP to compilers in other subnets.
        Ipip = "ipip",
        /// GUE (UDP) to compilers in other subnets.
        Gue = "gue",
    }
}

// By hand: `named!` derives no `Default`.
#[allow(clippy::derivable_impls)]
impl Default for Mode {
    fn default() -> Self {
        Mode::L2
    }
}

impl Mode {
    /// The data plane's `FORWARD_*` code.
    pub fn code(self) -> u8 {
        match self {
            Mode::L2 => FORWARD_L2,
            Mode::Ipip => FORWARD_IPIP,
            Mode::Gue => FORWARD_GUE,
        }
    }

    /// Encapsulating (routed backends).
    pub fn routed(self) -> bool {
        self != Mode::L2
    }

    /// Bytes the outer headers add for a compiler of this family.
    pub fn overhead(self, compiler_v6: bool) -> u16 {
        let ip = if compiler_v6 { 40 } else { 20 };
        match self {
            Mode::L2 => 0,
            Mode::Ipip => ip,
            Mode::Gue => ip + 8,
        }
    }
}

/// Default outer TTL / hop limit.
pub const DEFAULT_TTL: u8 = 64;
/// Default path MTU towards routed compilers.
pub const DEFAULT_MTU: u16 = 1500;

/// A service's forwarding settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarding {
    pub mode: Mode,
    /// GUE destination port (the compilers' `voxlb decap --gue-port`).
    pub gue_port: u16,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
    pub ttl: u8,
    pub mtu: u16,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            mode: Mode::L2,
            gue_port: DEFAULT_GUE_PORT,
            source_v4: None,
            source_v6: None,
            ttl: DEFAULT_TTL,
            mtu: DEFAULT_MTU,
        }
    }
}

impl Forwarding {
    /// Encapsulating (routed backends).
    pub fn routed(&self) -> bool {
        self.mode.routed()
    }
}

/// The keys of a service section, as written.
#[derive(Debug, Default)]
pub struct RawForwarding {
    pub forwarding: Option<String>,
    pub gue_port: Option<i64>,
    pub encap_source_v4: Option<String>,
    pub encap_source_v6: Option<String>,
    pub encap_ttl: Option<i64>,
    pub mtu: Option<i64>,
}

/// Validate a service's forwarding keys; `Err((key, problem))` names the
/// key under the service (`forwarding`, `gue_port`, ...).
pub fn parse(raw: &RawForwarding, vip_v6: bool) -> Result<Forwarding, (&'static str, String)> {
    let mode = match raw.forwarding.as_deref() {
        None => Mode::L2,
        Some(text) => text.parse().map_err(|_| {
            (
                "forwarding",
                format!("{text:?} is not a forwarding mode: use \"l2\", \"ipip\" or \"gue\""),
            )
        })?,
    };
    let mut f = Forwarding {
        mode,
        ..Forwarding::default()
    };
    if mode == Mode::L2 {
        let set = [
            ("gue_port", raw.gue_port.is_some()),
            ("encap_source_v4", raw.encap_source_v4.is_some()),
            ("encap_source_v6", raw.encap_source_v6.is_some()),
            ("encap_ttl", raw.encap_ttl.is_some()),
            ("mtu", raw.mtu.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
            return Err((
                key,
                "only applies to routed compilers: set forwarding = \"ipip\" or \"gue\"".into(),
            ));
        }
        return Ok(f);
    }
    if let Some(p) = raw.gue_port {
        if mode != Mode::Gue {
            return Err(("gue_port", "only applies to forwarding = \"gue\"".into()));
        }
        f.gue_port = u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(("gue_port", format!("{p} is not a UDP port (1..=65535)")))?;
    }
    if let Some(s) = &raw.encap_source_v4 {
        f.source_v4 = Some(
            s.parse()
                .map_err(|_| ("encap_source_v4", format!("{s:?} is not an IPv4 address")))?,
        );
    }
    if let Some(s) = &raw.encap_source_v6 {
        f.source_v6 = Some(
            s.parse()
                .map_err(|_| ("encap_source_v6", format!("{s:?} is not an IPv6 address")))?,
        );
    }
    if let Some(t) = raw.encap_ttl {
        f.ttl = u8::try_from(t)
            .ok()
            .filter(|t| *t != 0)
            .ok_or(("encap_ttl", format!("{t} is not a TTL (1..=255)")))?;
    }
    if let Some(m) = raw.mtu {
        // Worst case: the compiler may be of either family.
        let floor = if vip_v6 {
            1280 + mode.overhead(true) as i64
        } else {
            576 + mode.overhead(true) as i64
        };
        if !(floor..=65535).contains(&m) {
            return Err((
                "mtu",
                format!(
                    "{m} is out of range {floor}..=65535 (an {} VIP needs {} bytes after the \
                     outer headers)",
                    if vip_v6 { "IPv6" } else { "IPv4" },
                    if vip_v6 { 1280 } else { 576 },
                ),
            ));
        }
        f.mtu = m as u16;
    }
    Ok(f)
}

/// Where a routed compiler's packets leave, as the daemon resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    /// MAC of the next hop (the gateway, or the compiler on a connected
    /// subnet).
    pub mac: [u8; 6],
    pub ifindex: u32,
    pub ifname: String,
    /// MAC of the egress interface.
    pub src_mac: [u8; 6],
    /// The kernel's source address for the compiler.
    pub src: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

/// Resolution of every routed compiler address: the egress, or why none.
pub type RouteMap = HashMap<IpAddr, Result<Egress, String>>;

/// The tunnel entry of a routed compiler, or why it has none.
pub fn tunnel(f: &Forwarding, compiler: IpAddr, e: &Egress) -> Result<TunnelInfo, String> {
    let mut t = TunnelInfo {
        src_mac: e.src_mac,
        gue_port_be: f.gue_port.to_be(),
        ifindex: e.ifindex,
        mtu: f.mtu,
        ttl: f.ttl,
        ..TunnelInfo::default()
    };
    let src = match compiler {
        IpAddr::V4(_) => f.source_v4.map(IpAddr::V4),
        IpAddr::V6(_) => f.source_v6.map(IpAddr::V6),
    }
    .or(e.src)
    .filter(|s| s.is_ipv4() == compiler.is_ipv4())
    .ok_or_else(|| {
        format!(
            "no outer source address for {compiler}: set encap_source_{} or give {} one",
            if compiler.is_ipv4() { "v4" } else { "v6" },
            e.ifname
        )
    })?;
    match (compiler, src) {
        (IpAddr::V4(d), IpAddr::V4(s)) => {
            t.family = FAMILY_V4;
            t.dst[..4].copy_from_slice(&d.octets());
            t.src[..4].copy_from_slice(&s.octets());
        }
        (IpAddr::V6(d), IpAddr::V6(s)) => {
            t.family = FAMILY_V6;
            t.dst = d.octets();
            t.src = s.octets();
        }
        _ => unreachable!("filtered to the compiler's family above"),
    }
    Ok(t)
}

/// Every backend address of a routed service, in the config or added or
/// retiring through the CLI: what [`resolve`] must resolve.
pub fn routed_targets(config: &crate::config::Config, state: &crate::state::State) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for svc in config
        .compiler_services
        .iter()
        .filter(|s| s.forwarding.routed())
    {
        let overlay = state.overlays.get(&svc.name);
        v.extend(
            crate::reconcile::effective_backends(svc, overlay)
                .iter()
                .map(|e| e.backend.address),
        );
        if let Some(o) = overlay {
            v.extend(o.retiring.keys().copied());
        }
    }
    for svc in config.ca_services.iter().filter(|s| s.forwarding.routed()) {
        v.push(svc.primary.address);
        v.extend(svc.standby.as_ref().map(|b| b.address));
    }
    v.sort();
    v.dedup();
    v
}

/// The MAC of interface `name` (from sysfs).
fn interface_mac(name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    crate::config::parse_mac(text.trim()).ok()
}

/// Resolve `targets` (see [`crate::route::NextHops`]) into a [`RouteMap`].
/// `None` when the kernel could not be asked at all (the caller keeps what
/// it had).
pub fn resolve(
    hops: &mut crate::route::NextHops,
    targets: Vec<IpAddr>,
    interfaces: &[String],
) -> Option<RouteMap> {
    hops.set_targets(targets);
    if let Err(e) = hops.refresh() {
        tracing::warn!("resolving routed backends: {e}");
        return None;
    }
    let map = hops
        .iter()
        .map(|(a, r)| {
            let r = match r {
                Err(u) => Err(u.to_string()),
                Ok(h) if !interfaces.contains(&h.ifname) => Err(format!(
                    "the route to {a} leaves through {}, not an interface voxlb is attached to \
                     ({}): XDP can only send through those",
                    h.ifname,
                    interfaces.join(", ")
                )),
                Ok(h) => match interface_mac(&h.ifname) {
                    None => Err(format!("cannot read the MAC of {}", h.ifname)),
                    Some(src_mac) => Ok(Egress {
                        mac: h.mac,
                        ifindex: h.ifindex,
                        ifname: h.ifname.clone(),
                        src_mac,
                        src: h.src,
                        gateway: h.gateway,
                    }),
                },
            };
            (*a, r)
        })
        .collect();
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(mode: &str) -> RawForwarding {
        RawForwarding {
            forwarding: Some(mode.into()),
            ..RawForwarding::default()
        }
    }

    #[test]
    fn modes_and_defaults() {
        assert_eq!(
            parse(&RawForwarding::default(), false).unwrap().mode,
            Mode::L2
        );
        let g = parse(&raw("gue"), false).unwrap();
        assert_eq!(
            (g.mode, g.gue_port, g.ttl, g.mtu),
            (Mode::Gue, 6080, 64, 1500)
        );
        assert_eq!(parse(&raw("ipip"), true).unwrap().mode, Mode::Ipip);
        let e = parse(&raw("vxlan"), false).unwrap_err();
        assert_eq!(e.0, "forwarding");
        assert!(e.1.contains("\"vxlan\""), "{}", e.1);
    }

    #[test]
    fn every_bad_key_is_named() {
        let cases: Vec<(RawForwarding, bool, &str)> = vec![
            (
                RawForwarding {
                    mtu: Some(1400),
                    ..RawForwarding::default()
                },
                false,
                "mtu",
            ),
            (
                RawForwarding {
                    gue_port: Some(6080),
                    ..raw("ipip")
                },
                false,
                "gue_port",
            ),
            (
                RawForwarding {
                    gue_port: Some(0),
                    ..raw("gue")
                },
                false,
                "gue_port",
            ),
            (
                RawForwarding {
                    encap_source_v4: Some("fd00::1".into()),
                    ..raw("gue")
                },
                false,
                "encap_source_v4",
            ),
            (
                RawForwarding {
                    encap_source_v6: Some("10.0.0.1".into()),
                    ..raw("gue")
                },
                false,
                "encap_source_v6",
            ),
            (
                RawForwarding {
                    encap_ttl: Some(0),
                    ..raw("ipip")
                },
                false,
                "encap_ttl",
            ),
            (
                RawForwarding {
                    encap_ttl: Some(256),
                    ..raw("ipip")
                },
                false,
                "encap_ttl",
            ),
            // An IPv6 VIP over GUE needs 1280 + 48.
            (
                RawForwarding {
                    mtu: Some(1300),
                    ..raw("gue")
                },
                true,
                "mtu",
            ),
        ];
        for (r, v6, key) in cases {
            let e = parse(&r, v6).unwrap_err();
            assert_eq!(e.0, key, "{r:?}: {}", e.1);
        }
        let ok = RawForwarding {
            mtu: Some(1328),
            ..raw("gue")
        };
        assert_eq!(parse(&ok, true).unwrap().mtu, 1328);
    }

    #[test]
    fn tunnel_entries_take_the_configured_source_else_the_routes() {
        let e = Egress {
            mac: [2, 0, 0, 0, 0, 1],
            ifindex: 7,
            ifname: "eth0".into(),
            src_mac: [2, 0, 0, 0, 0, 2],
            src: Some("10.0.0.2".parse().unwrap()),
            gateway: None,
        };
        let mut f = parse(&raw("gue"), false).unwrap();
        let t = tunnel(&f, "10.2.0.11".parse().unwrap(), &e).unwrap();
        assert_eq!(t.family, FAMILY_V4);
        assert_eq!(&t.src[..4], &[10, 0, 0, 2]);
        assert_eq!(&t.dst[..4], &[10, 2, 0, 11]);
        assert_eq!((t.ifindex, t.mtu, t.ttl), (7, 1500, 64));
        assert_eq!(u16::from_be(t.gue_port_be), 6080);
        f.source_v4 = Some("10.9.9.9".parse().unwrap());
        let t = tunnel(&f, "10.2.0.11".parse().unwrap(), &e).unwrap();
        assert_eq!(&t.src[..4], &[10, 9, 9, 9]);
        // An IPv6 compiler with only an IPv4 source: unresolved, and why.
        let err = tunnel(&f, "fd00::11".parse().unwrap(), &e).unwrap_err();
        assert!(err.contains("encap_source_v6"), "{err}");
    }
}
