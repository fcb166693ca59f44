//! Announcing the VIPs over BGP through BIRD 2, so that several voxlb hosts
//! can sit behind a router's ECMP (see README, "Several LB hosts").
//!
//! voxlb speaks no routing protocol itself: it decides *which* VIP addresses
//! this host should attract ([`decide`], pure policy) and hands the answer
//! to BIRD ([`bird`]), the engine operators already run:
//!
//! - `mode = "managed"`: voxlb writes a complete BIRD config and runs
//!   `bird -f` as a supervised child (restarted if it dies);
//! - `mode = "include"`: voxlb writes a file of `protocol` blocks for the
//!   site's own BIRD (whose `bird.conf` includes it) and reloads that BIRD
//!   through its control socket.
//!
//! A VIP address is announced (as a /32 or /128) only while the daemon runs,
//! its program is attached, the host is not drained (`voxlb host drain`) and
//! every service on that address has at least `min_healthy` usable backends.
//! Why *every* service: a host that announces an address attracts all its
//! ports; announcing while one of them has nothing to send to would
//! blackhole that service's agents on this host while a healthier host could
//! take them. Give services their own addresses if they must fail apart.

pub mod bird;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{ConfigError, Vip},
    control::ServiceView,
};

/// Default control socket of the managed BIRD.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/voxlb/bird.ctl";
/// Default path of the generated BIRD config (managed) or protocol file
/// (include).
pub const DEFAULT_BIRD_CONFIG: &str = "/run/voxlb/bird.conf";

/// How voxlb drives BIRD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpMode {
    /// voxlb runs and configures its own BIRD.
    Managed,
    /// voxlb writes a protocol file for the site's BIRD and reloads it.
    Include,
}

/// The validated `[bgp]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub mode: BgpMode,
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<Neighbor>,
    /// Usable backends a service needs for its VIP to be announced.
    pub min_healthy: u32,
    /// Keep announcing after the daemon stops (the pinned program keeps
    /// forwarding). Off by default: a stopped daemon is an unsupervised one.
    pub keep_announcing_on_stop: bool,
    /// BFD timers, used by neighbours with `bfd = true`.
    pub bfd_interval_ms: u32,
    pub bfd_multiplier: u32,
    pub bird_binary: PathBuf,
    pub birdc_binary: PathBuf,
    pub bird_socket: PathBuf,
    pub bird_config: PathBuf,
    /// Per-address attributes (communities, MED, min_healthy override).
    pub vips: BTreeMap<IpAddr, VipAttrs>,
}

/// One BGP neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<String>,
    /// Seconds (BGP negotiates whole seconds).
    pub hold_time: u32,
    pub keepalive_time: u32,
    pub bfd: bool,
}

/// Attributes of one announced address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipAttrs {
    /// Standard communities `(asn, value)`.
    pub communities: Vec<(u16, u16)>,
    pub med: Option<u32>,
    pub min_healthy: Option<u32>,
}

/// `[bgp]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgp {
    mode: Option<String>,
    local_as: Option<i64>,
    router_id: Option<String>,
    #[serde(default)]
    neighbors: Vec<RawNeighbor>,
    min_healthy: Option<i64>,
    keep_announcing_on_stop: Option<bool>,
    bfd_interval_ms: Option<i64>,
    bfd_multiplier: Option<i64>,
    bird_binary: Option<PathBuf>,
    birdc_binary: Option<PathBuf>,
    bird_socket: Option<PathBuf>,
    bird_config: Option<PathBuf>,
    #[serde(default)]
    vips: Vec<RawVipAttrs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbor {
    address: String,
    #[serde(rename = "as")]
    asn: i64,
    password: Option<String>,
    hold_time: Option<i64>,
    keepalive_time: Option<i64>,
    #[serde(default)]
    bfd: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipAttrs {
    address: String,
    #[serde(default)]
    communities: Vec<String>,
    med: Option<i64>,
    min_healthy: Option<i64>,
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn asn(key: &str, v: i64) -> Result<u32, ConfigError> {
    if (1..=u32::MAX as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(invalid(
            key,
            format!("{v} is not an AS number (1..=4294967295)"),
        ))
    }
}

fn in_range(key: &str, v: i64, lo: i64, hi: i64) -> Result<u32, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v as u32)
    } else {
        Err(invalid(key, format!("{v} is out of range {lo}..={hi}")))
    }
}

/// Text that goes into a quoted BIRD string: no quotes, backslashes or
/// control characters (they would end the string or the config).
fn bird_safe(key: &str, s: &str) -> Result<(), ConfigError> {
    if s.is_empty() || s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(invalid(
            key,
            "must be non-empty, without quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

/// Validate `[bgp]` against the VIPs of the config.
pub fn validate(raw: RawBgp, vips: &[Vip]) -> Result<BgpConfig, ConfigError> {
    let mode = parse_mode(raw.mode.as_deref())?;
    let local_as = asn(
        "bgp.local_as",
        raw.local_as
            .ok_or_else(|| invalid("bgp.local_as", "missing"))?,
    )?;
    let router_id = parse_router_id(raw.router_id)?;
    let neighbors = parse_neighbors(raw.neighbors)?;
    let min_healthy = in_range(
        "bgp.min_healthy",
        raw.min_healthy.unwrap_or(1),
        1,
        crate::config::MAX_WEIGHT as i64,
    )?;
    let attrs = parse_vip_attrs(raw.vips, vips)?;
    let bfd_interval_ms = in_range(
        "bgp.bfd_interval_ms",
        raw.bfd_interval_ms.unwrap_or(100),
        10,
        10_000,
    )?;
    let bfd_multiplier = in_range(
        "bgp.bfd_multiplier",
        raw.bfd_multiplier.unwrap_or(3),
        1,
        255,
    )?;
    let bird_socket = bird_path("bird_socket", raw.bird_socket, DEFAULT_BIRD_SOCKET)?;
    let bird_config = bird_path("bird_config", raw.bird_config, DEFAULT_BIRD_CONFIG)?;
    if bird_socket == bird_config {
        return Err(invalid(
            "bgp.bird_config",
            "is the same path as bgp.bird_socket",
        ));
    }
    if mode == BgpMode::Include && raw.bird_binary.is_some() {
        return Err(invalid(
            "bgp.bird_binary",
            "only used with mode = \"managed\" (the site runs its own BIRD)",
        ));
    }
    Ok(BgpConfig {
        mode,
        local_as,
        router_id,
        neighbors,
        min_healthy,
        keep_announcing_on_stop: raw.keep_announcing_on_stop.unwrap_or(false),
        bfd_interval_ms,
        bfd_multiplier,
        bird_binary: raw.bird_binary.unwrap_or_else(|| "bird".into()),
        birdc_binary: raw.birdc_binary.unwrap_or_else(|| "birdc".into()),
        bird_socket,
        bird_config,
        vips: attrs,
    })
}

fn parse_mode(mode: Option<&str>) -> Result<BgpMode, ConfigError> {
    match mode {
        None => Err(invalid("bgp.mode", "missing: \"managed\" or \"include\"")),
        Some("managed") => Ok(BgpMode::Managed),
        Some("include") => Ok(BgpMode::Include),
        Some(o) => Err(invalid(
            "bgp.mode",
            format!("{o:?} is not \"managed\" or \"include\""),
        )),
    }
}

fn parse_router_id(raw: Option<String>) -> Result<Ipv4Addr, ConfigError> {
    let rid = raw.ok_or_else(|| invalid("bgp.router_id", "missing (an IPv4 address)"))?;
    let router_id: Ipv4Addr = rid
        .parse()
        .map_err(|_| invalid("bgp.router_id", format!("{rid:?} is not an IPv4 address")))?;
    if router_id.is_unspecified() {
        return Err(invalid("bgp.router_id", "0.0.0.0 is not a router id"));
    }
    Ok(router_id)
}

fn parse_neighbors(raw: Vec<RawNeighbor>) -> Result<Vec<Neighbor>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("bgp.neighbors", "at least one neighbour is needed"));
    }
    let mut neighbors: Vec<Neighbor> = Vec::new();
    for (i, n) in raw.into_iter().enumerate() {
        let neighbor = parse_neighbor(&format!("bgp.neighbors[{i}]"), n, &neighbors)?;
        neighbors.push(neighbor);
    }
    Ok(neighbors)
}

/// Neighbour `key`, not one of the `earlier` ones.
fn parse_neighbor(
    key: &str,
    n: RawNeighbor,
    earlier: &[Neighbor],
) -> Result<Neighbor, ConfigError> {
    let address: IpAddr = n.address.parse().map_err(|_| {
        invalid(
            format!("{key}.address"),
            format!("{:?} is not an IP address", n.address),
        )
    })?;
    if earlier.iter().any(|o| o.address == address) {
        return Err(invalid(
            format!("{key}.address"),
            format!("{address} is listed twice"),
        ));
    }
    if let Some(p) = &n.password {
        bird_safe(&format!("{key}.password"), p)?;
    }
    let hold_time = in_range(
        &format!("{key}.hold_time"),
        n.hold_time.unwrap_or(9),
        3,
        65535,
    )?;
    let keepalive_time = in_range(
        &format!("{key}.keepalive_time"),
        n.keepalive_time.unwrap_or(hold_time as i64 / 3),
        1,
        65535,
    )?;
    if keepalive_time * 3 > hold_time {
        return Err(invalid(
            format!("{key}.keepalive_time"),
            format!(
                "{keepalive_time} s is more than a third of the hold time ({hold_time} s): \
                 one lost keepalive would drop the session"
            ),
        ));
    }
    Ok(Neighbor {
        address,
        asn: asn(&format!("{key}.as"), n.asn)?,
        password: n.password,
        hold_time,
        keepalive_time,
        bfd: n.bfd,
    })
}

/// The per-VIP attributes, each for the address of one of the config's
/// `vips`.
fn parse_vip_attrs(
    raw: Vec<RawVipAttrs>,
    vips: &[Vip],
) -> Result<BTreeMap<IpAddr, VipAttrs>, ConfigError> {
    let addrs: Vec<IpAddr> = vips.iter().map(|v| v.addr.ip()).collect();
    let mut attrs = BTreeMap::new();
    for (i, v) in raw.into_iter().enumerate() {
        let key = format!("bgp.vips[{i}]");
        let address: IpAddr = v.address.parse().map_err(|_| {
            invalid(
                format!("{key}.address"),
                format!("{:?} is not an IP address", v.address),
            )
        })?;
        if !addrs.contains(&address) {
            return Err(invalid(
                format!("{key}.address"),
                format!("{address} is not the address of any service's VIP"),
            ));
        }
        let communities = parse_communities(&key, &v.communities)?;
        let med = v
            .med
            .map(|m| in_range(&format!("{key}.med"), m, 0, u32::MAX as i64))
            .transpose()?;
        let min = v
            .min_healthy
            .map(|m| in_range(&format!("{key}.min_healthy"), m, 1, 1000))
            .transpose()?;
        if attrs
            .insert(
                address,
                VipAttrs {
                    communities,
                    med,
                    min_healthy: min,
                },
            )
            .is_some()
        {
            return Err(invalid(
                format!("{key}.address"),
                format!("{address} is listed twice"),
            ));
        }
    }
    Ok(attrs)
}

/// Standard communities `ASN:VALUE`, 16 bits each.
fn parse_communities(key: &str, raw: &[String]) -> Result<Vec<(u16, u16)>, ConfigError> {
    let mut communities = Vec::new();
    for (j, c) in raw.iter().enumerate() {
        let parsed = c
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)));
        match parsed {
            Some(p) => communities.push(p),
            None => {
                return Err(invalid(
                    format!("{key}.communities[{j}]"),
                    format!("{c:?} is not a standard community \"ASN:VALUE\" (16 bits each)"),
                ));
            }
        }
    }
    Ok(communities)
}

/// A path BIRD is given: absolute, and safe in a quoted BIRD string.
fn bird_path(key: &str, p: Option<PathBuf>, def: &str) -> Result<PathBuf, ConfigError> {
    let p = p.unwrap_or_else(|| def.into());
    if !p.is_absolute() {
        return Err(invalid(
            format!("bgp.{key}"),
            format!("{} is not an absolute path", p.display()),
        ));
    }
    bird_safe(&format!("bgp.{key}"), &p.to_string_lossy())?;
    Ok(p)
}

/// What the announcement decision depends on besides the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostState {
    /// The XDP program is attached on every interface.
    pub attached: bool,
    /// `voxlb host drain` is in effect.
    pub drained: bool,
}

/// One VIP address and whether this host announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub address: IpAddr,
    pub announced: bool,
    /// Why not (empty when announced).
    pub reason: String,
}

/// Which VIP addresses to announce: see the module docs for the rule.
/// `min_healthy` per address comes from `bgp.vips`, else the global one.
pub fn decide(bgp: &BgpConfig, services: &[ServiceView], host: HostState) -> Vec<VipAnnouncement> {
    let mut by_addr: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
    for s in services {
        if let Ok(sa) = s
            .vip
            .rsplit_once('/')
            .map_or(s.vip.as_str(), |v| v.0)
            .parse::<std::net::SocketAddr>()
        {
            by_addr.entry(sa.ip()).or_default().push(s);
        }
    }
    by_addr
        .into_iter()
        .map(|(address, svcs)| {
            let min = bgp
                .vips
                .get(&address)
                .and_then(|a| a.min_healthy)
                .unwrap_or(bgp.min_healthy);
            let reason = if !host.attached {
                "program not attached".to_string()
            } else if host.drained {
                "host drained".to_string()
            } else if let Some((s, have, need)) = svcs
                .iter()
                .map(|s| (s, healthy_usable(s), needed(s, min)))
                .find(|(_, have, need)| have < need)
            {
                format!(
                    "service {} has {have} healthy backend(s), needs {need}",
                    s.name
                )
            } else {
                String::new()
            };
            VipAnnouncement {
                address,
                announced: reason.is_empty(),
                reason,
            }
        })
        .collect()
}

/// Backends of a service that take flows *and* passed their health check.
/// A backend not checked yet counts as up for forwarding (a restart must
/// not take healthy backends out), but not for announcing: a host that just
/// started must not attract traffic before it knows where to send it.
pub fn healthy_usable(s: &ServiceView) -> usize {
    s.backends
        .iter()
        .filter(|b| b.state == crate::control::BackendState::Active && b.healthy == Some(true))
        .filter(|b| s.kind != "ca" || s.ca_target == Some(b.address))
        .count()
}

/// Healthy usable backends a service needs: `min` for a compiler service,
/// one for a CA service (it serves from one at a time).
pub fn needed(s: &ServiceView, min: u32) -> usize {
    if s.kind == crate::control::ServiceKind::Ca {
        1
    } else {
        min as usize
    }
}

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// BIRD protocol name (`voxlb_n0`, ...).
    pub name: String,
    pub neighbor: IpAddr,
    /// BIRD's state column (`up`, `start`, `down`) and info column
    /// (`Established`, `Active`, `Connect`, ...).
    pub state: String,
    pub info: String,
}

/// The announcement part of `voxlb status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceView {
    /// `managed`, `include`, or empty without `[bgp]`.
    pub mode: String,
    pub drained: bool,
    pub vips: Vec<VipAnnouncement>,
    pub sessions: Vec<SessionView>,
    /// The last error talking to BIRD, if the last attempt failed.
    pub bird_error: Option<String>,
}
