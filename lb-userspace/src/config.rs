//! The daemon's configuration file (TOML), and its validation into typed
//! structs.
//!
//! Parsing is two steps: serde reads the file into `Raw*` structs that mirror
//! it key for key (`deny_unknown_fields`, so a typo is an error that toml
//! reports with its key and line); [`validate`] then checks every value and
//! builds a [`Config`], naming the key path of the first problem it finds,
//! e.g. `compiler_services[1].backends[0].address: "10.0.0.x" is not an IP
//! address`. A config that does not validate never reaches the data plane.
//!
//! The reference for every key is `README.md, "Configuration reference"`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    PROTO_TCP, PROTO_UDP, VipKey, maglev,
    maps::{
        DEFAULT_FLOW_CAPACITY, DEFAULT_TABLE_SIZE, MAGLEV_CAPACITY, MAX_BACKENDS, MAX_SERVICES,
    },
};
use serde::Deserialize;

/// The forwarding keys of a raw service section (compiler or CA: the same
/// keys, in two structs because serde's `flatten` cannot be combined with
/// `deny_unknown_fields`).
macro_rules! raw_forwarding {
    ($s:expr) => {
        crate::forwarding::RawForwarding {
            forwarding: $s.forwarding,
            gue_port: $s.gue_port,
            encap_source_v4: $s.encap_source_v4,
            encap_source_v6: $s.encap_source_v6,
            encap_ttl: $s.encap_ttl,
            mtu: $s.mtu,
        }
    };
}

use crate::{
    health::{CheckKind, HealthCheck, HttpCheck, TlsCheck},
    load::{Balance, ControllerConfig},
};

/// Default directory of the pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/voxlb";
/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/voxlb/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/voxlb";
/// Weight of a backend that does not say.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest accepted weight. Maglev slot shares follow weights, so a ratio of
/// 1000:1 is already more than a pool of compilers needs.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest accepted flow-table capacity (entries).
pub const MAX_FLOW_CAPACITY: u32 = 64 * 1024 * 1024;
/// Default flood-mode threshold, new-flow inserts per second per CPU. An
/// OpenVox fleet opens a few connections per agent run: even 100 000 agents
/// on 30-minute runs open under 1 000 a second in all, so 20 000 per CPU is
/// never reached by agents, while a spoofed SYN flood (millions a second)
/// is, well before it has churned a 1 Mi-entry table.
pub const DEFAULT_FLOOD_THRESHOLD: u32 = 20_000;
/// Highest priority tier (tier 0 is preferred; a handful of sites is what
/// SRV-priority-style failover needs).
pub const MAX_TIER: u32 = 15;
/// Default time between load polls of a `balance = "load"` service.
pub const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why a config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown or mistyped key (toml's
    /// message names the key and line).
    #[error("{0}")]
    Parse(String),
    /// A value is wrong; `key` is its path in the file.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// The file is writable by others: anyone could redirect traffic.
    #[error("{path}: refusing a world-writable config file (chmod o-w)")]
    WorldWritable { path: PathBuf },
}

/// A service's `forwarding` and related keys.
fn parse_forwarding(
    key: &str,
    vip: Vip,
    raw: crate::forwarding::RawForwarding,
) -> Result<crate::forwarding::Forwarding, ConfigError> {
    crate::forwarding::parse(&raw, vip.addr.is_ipv6())
        .map_err(|(k, p)| invalid(format!("{key}.{k}"), p))
}

/// A routed backend's MAC is its next hop's, found by routing.
fn check_routed_mac(
    bkey: &str,
    f: &crate::forwarding::Forwarding,
    b: &Backend,
) -> Result<(), ConfigError> {
    if f.routed() && b.mac.is_some() {
        return Err(invalid(
            format!("{bkey}.mac"),
            format!(
                "a routed compiler (forwarding = \"{}\") is reached through its route's next hop, whose MAC voxlb resolves: remove mac",
                f.mode.as_str()
            ),
        ));
    }
    Ok(())
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode; fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
    /// Native, falling back to generic with a warning.
    #[default]
    Auto,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub flow_capacity: u32,
    /// New-flow inserts per second per CPU above which SYNs are forwarded
    /// without a flow entry (flood mode); 0 = never.
    pub flood_threshold: u32,
    /// Steer ICMP errors about VIP flows (path-MTU discovery) to the flow's
    /// compiler; `false` passes them to the kernel, as before voxlb did.
    pub icmp_steering: bool,
    pub compiler_services: Vec<CompilerService>,
    pub ca_services: Vec<CaService>,
    /// `[bgp]`: announce the VIPs through BIRD (see [`crate::announce`]).
    pub bgp: Option<crate::announce::BgpConfig>,
}

/// A VIP: address, port and L4 protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: SocketAddr,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
}

impl Vip {
    /// The key of this VIP in the VIP map.
    pub fn key(&self) -> VipKey {
        VipKey::new(self.addr.ip(), self.addr.port(), self.proto)
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        write!(f, "{}/{}", self.addr, proto)
    }
}

/// A pool of catalog compilers behind one VIP, balanced with Maglev.
#[derive(Clone, Debug, PartialEq)]
pub struct CompilerService {
    pub name: String,
    pub vip: Vip,
    /// Maglev table size (prime).
    pub table_size: u32,
    pub health: HealthCheck,
    pub backends: Vec<Backend>,
    /// How weights for new flows are chosen (balance, tiers, slow start).
    pub balancing: Balancing,
    /// How long a removed backend keeps its established flows at most
    /// (see README, *Remove, drain, down*).
    pub retire_grace: Duration,
    /// L2 direct server return, or encapsulation to routed compilers.
    pub forwarding: crate::forwarding::Forwarding,
}

/// The load-feedback settings of a compiler service. The defaults are the
/// behaviour without them: static weights, one tier, no slow start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balancing {
    pub controller: ControllerConfig,
    /// Time between reads of each compiler's status (`balance = "load"`);
    /// also the timeout of one read, so a compiler too busy to answer in
    /// time is polled at most once at a time.
    pub load_interval: Duration,
}

impl Default for Balancing {
    fn default() -> Self {
        Balancing {
            controller: ControllerConfig::default(),
            load_interval: DEFAULT_LOAD_INTERVAL,
        }
    }
}

/// Default `retire_grace`: a slow catalog compile (minutes on a loaded
/// compiler) plus the file-content downloads that follow it on the same
/// kept-alive connection.
pub const DEFAULT_RETIRE_GRACE: Duration = Duration::from_secs(600);
/// Longest `retire_grace` accepted.
pub const MAX_RETIRE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The certificate authority behind one VIP: every flow goes to the primary
/// while it is healthy, else to the standby.
#[derive(Clone, Debug, PartialEq)]
pub struct CaService {
    pub name: String,
    pub vip: Vip,
    pub health: HealthCheck,
    pub primary: Backend,
    pub standby: Option<Backend>,
    /// L2 direct server return, or encapsulation to a routed CA.
    pub forwarding: crate::forwarding::Forwarding,
}

/// One backend server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub name: Option<String>,
    /// Relative Maglev weight (1..=[`MAX_WEIGHT`]); unused for CA backends.
    pub weight: u32,
    /// Destination MAC; resolved from the neighbour table when `None`.
    pub mac: Option<[u8; 6]>,
    /// Priority tier (0 = preferred; compiler services only).
    pub tier: u32,
}

impl Config {
    /// Read, check the permissions of, and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if is_world_writable(&meta) {
            return Err(ConfigError::WorldWritable {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Config::parse(&text)
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        validate(raw)
    }

    /// A compiler service by name.
    pub fn compiler(&self, name: &str) -> Option<&CompilerService> {
        self.compiler_services.iter().find(|s| s.name == name)
    }

    /// A CA service by name.
    pub fn ca(&self, name: &str) -> Option<&CaService> {
        self.ca_services.iter().find(|s| s.name == name)
    }
}

/// Whether a file or directory may be written by anyone.
pub fn is_world_writable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o002 != 0
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Vec<String>,
    #[serde(default)]
    xdp_mode: XdpMode,
    pin_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    metrics_listen: Option<String>,
    flow_capacity: Option<u32>,
    flood_threshold: Option<u32>,
    icmp_steering: Option<bool>,
    #[serde(default)]
    compiler_services: Vec<RawCompilerService>,
    #[serde(default)]
    ca_services: Vec<RawCaService>,
    bgp: Option<crate::announce::RawBgp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompilerService {
    name: String,
    vip: String,
    protocol: Option<String>,
    table_size: Option<u32>,
    health_check: Option<RawHealthCheck>,
    retire_grace: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    balance: Option<String>,
    min_weight_percent: Option<i64>,
    min_healthy: Option<i64>,
    slow_start: Option<String>,
    load_interval: Option<String>,
    load_smoothing_percent: Option<i64>,
    load_hysteresis_percent: Option<i64>,
    max_rewrites_per_minute: Option<i64>,
    forwarding: Option<String>,
    gue_port: Option<i64>,
    encap_source_v4: Option<String>,
    encap_source_v6: Option<String>,
    encap_ttl: Option<i64>,
    mtu: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaService {
    name: String,
    vip: String,
    protocol: Option<String>,
    health_check: Option<RawHealthCheck>,
    primary: RawCaBackend,
    standby: Option<RawCaBackend>,
    forwarding: Option<String>,
    gue_port: Option<i64>,
    encap_source_v4: Option<String>,
    encap_source_v6: Option<String>,
    encap_ttl: Option<i64>,
    mtu: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    name: Option<String>,
    weight: Option<i64>,
    mac: Option<String>,
    tier: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaBackend {
    address: String,
    name: Option<String>,
    mac: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<u16>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    path: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    host: Option<String>,
    ca_file: Option<PathBuf>,
    insecure: Option<bool>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Validation.

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    check_interfaces(&raw.interfaces)?;
    let metrics_listen = parse_metrics_listen(raw.metrics_listen.as_deref())?;
    let flood_threshold = raw.flood_threshold.unwrap_or(DEFAULT_FLOOD_THRESHOLD);
    let flow_capacity = check_flow_capacity(raw.flow_capacity)?;
    check_absolute_paths(&raw)?;

    let mut claims = Claims::default();
    let mut compiler_services = Vec::new();
    let mut total_slots: u64 = 0;
    let mut total_backends = 0usize;
    for (i, s) in raw.compiler_services.into_iter().enumerate() {
        let key = format!("compiler_services[{i}]");
        let service = compiler_service(&key, s, &mut claims, &mut total_slots)?;
        total_backends += service.backends.len();
        compiler_services.push(service);
    }
    let mut ca_services = Vec::new();
    for (i, s) in raw.ca_services.into_iter().enumerate() {
        let key = format!("ca_services[{i}]");
        let service = ca_service(&key, s, &mut claims)?;
        total_backends += 1 + service.standby.is_some() as usize;
        ca_services.push(service);
    }
    check_data_plane_room(compiler_services.len() + ca_services.len(), total_backends)?;

    let all_vips: Vec<Vip> = compiler_services
        .iter()
        .map(|s| s.vip)
        .chain(ca_services.iter().map(|s| s.vip))
        .collect();
    let bgp = raw
        .bgp
        .map(|b| crate::announce::validate(b, &all_vips))
        .transpose()?;

    Ok(Config {
        interfaces: raw.interfaces,
        xdp_mode: raw.xdp_mode,
        pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        control_socket: raw
            .control_socket
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
        state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        metrics_listen,
        flow_capacity,
        flood_threshold,
        icmp_steering: raw.icmp_steering.unwrap_or(true),
        compiler_services,
        ca_services,
        bgp,
    })
}

fn check_interfaces(interfaces: &[String]) -> Result<(), ConfigError> {
    if interfaces.is_empty() {
        return Err(invalid("interfaces", "at least one interface is needed"));
    }
    for (i, name) in interfaces.iter().enumerate() {
        check_ifname(name).map_err(|p| invalid(format!("interfaces[{i}]"), p))?;
        if interfaces[..i].contains(name) {
            return Err(invalid(
                format!("interfaces[{i}]"),
                format!("{name:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn parse_metrics_listen(s: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(s) = s else {
        return Ok(None);
    };
    let addr = s.parse::<SocketAddr>().map_err(|_| {
        invalid(
            "metrics_listen",
            format!("{s:?} is not an address:port (IPv6 as [addr]:port)"),
        )
    })?;
    Ok(Some(addr))
}

fn check_flow_capacity(raw: Option<u32>) -> Result<u32, ConfigError> {
    let flow_capacity = raw.unwrap_or(DEFAULT_FLOW_CAPACITY);
    if flow_capacity == 0 || flow_capacity > MAX_FLOW_CAPACITY {
        return Err(invalid(
            "flow_capacity",
            format!("{flow_capacity} is out of range 1..={MAX_FLOW_CAPACITY}"),
        ));
    }
    Ok(flow_capacity)
}

fn check_absolute_paths(raw: &RawConfig) -> Result<(), ConfigError> {
    for (key, p) in [
        ("pin_dir", &raw.pin_dir),
        ("control_socket", &raw.control_socket),
        ("state_dir", &raw.state_dir),
    ] {
        if let Some(p) = p
            && !p.is_absolute()
        {
            return Err(invalid(
                key,
                format!("{} is not an absolute path", p.display()),
            ));
        }
    }
    Ok(())
}

/// What the services seen so far hold, so that no two of them share a name
/// or a VIP, and the same server is not described two ways.
#[derive(Default)]
struct Claims {
    /// Service name -> the key of the service that has it.
    names: HashMap<String, String>,
    /// VIP -> the key of the service that has it.
    vips: HashMap<Vip, String>,
    /// Backend address -> the first key it was seen under, and how.
    backends: BTreeMap<IpAddr, (String, Backend)>,
}

impl Claims {
    fn name(&mut self, key: &str, name: &str) -> Result<(), ConfigError> {
        check_name(name).map_err(|p| invalid(format!("{key}.name"), p))?;
        if let Some(other) = self.names.insert(name.to_owned(), key.to_owned()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("service name {name:?} is already used by {other}"),
            ));
        }
        Ok(())
    }

    fn vip(&mut self, key: &str, vip: Vip) -> Result<(), ConfigError> {
        if let Some(other) = self.vips.insert(vip, key.to_owned()) {
            return Err(invalid(
                format!("{key}.vip"),
                format!("VIP {vip} is already used by {other}"),
            ));
        }
        Ok(())
    }

    fn backend(&mut self, key: &str, b: &Backend) -> Result<(), ConfigError> {
        if let Some((other, prev)) = self.backends.get(&b.address) {
            if prev.mac != b.mac || prev.name != b.name {
                return Err(invalid(
                    key.to_owned(),
                    format!(
                        "backend {} is also in {other} with a different {}",
                        b.address,
                        if prev.mac != b.mac { "mac" } else { "name" }
                    ),
                ));
            }
        } else {
            self.backends.insert(b.address, (key.to_owned(), b.clone()));
        }
        Ok(())
    }
}

/// A compiler service; `total_slots` counts the Maglev slots of the
/// services so far, this one included.
fn compiler_service(
    key: &str,
    s: RawCompilerService,
    claims: &mut Claims,
    total_slots: &mut u64,
) -> Result<CompilerService, ConfigError> {
    claims.name(key, &s.name)?;
    let vip = parse_vip(key, &s.vip, s.protocol.as_deref())?;
    claims.vip(key, vip)?;
    let forwarding = parse_forwarding(key, vip, raw_forwarding!(s))?;
    let mut backends: Vec<Backend> = Vec::new();
    for (j, b) in s.backends.into_iter().enumerate() {
        let bkey = format!("{key}.backends[{j}]");
        let backend = compiler_backend(&bkey, b)?;
        if backends.iter().any(|o| o.address == backend.address) {
            return Err(invalid(
                format!("{bkey}.address"),
                format!(
                    "backend {} is listed twice in this service",
                    backend.address
                ),
            ));
        }
        check_routed_mac(&bkey, &forwarding, &backend)?;
        claims.backend(&bkey, &backend)?;
        backends.push(backend);
    }
    let table_size = s.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
    check_table_size(key, table_size, backends.len(), total_slots)?;
    let health = parse_health(&format!("{key}.health_check"), s.health_check, vip)?;
    let raw_balancing = RawBalancing {
        balance: s.balance,
        min_weight_percent: s.min_weight_percent,
        min_healthy: s.min_healthy,
        slow_start: s.slow_start,
        load_interval: s.load_interval,
        load_smoothing_percent: s.load_smoothing_percent,
        load_hysteresis_percent: s.load_hysteresis_percent,
        max_rewrites_per_minute: s.max_rewrites_per_minute,
    };
    let balancing = parse_balancing(key, &raw_balancing, &health)?;
    let retire_grace = parse_retire_grace(key, s.retire_grace.as_deref())?;
    Ok(CompilerService {
        name: s.name,
        vip,
        table_size,
        health,
        backends,
        balancing,
        retire_grace,
        forwarding,
    })
}

fn compiler_backend(bkey: &str, b: RawBackend) -> Result<Backend, ConfigError> {
    let weight = match b.weight {
        None => DEFAULT_WEIGHT,
        Some(w) => check_weight(w).map_err(|p| invalid(format!("{bkey}.weight"), p))?,
    };
    let tier = match b.tier {
        None => 0,
        Some(t) => int_in(&format!("{bkey}.tier"), t, 0, MAX_TIER)?,
    };
    Ok(Backend {
        address: parse_backend_addr(&format!("{bkey}.address"), &b.address)?,
        name: check_opt_name(bkey, b.name)?,
        weight,
        mac: parse_opt_mac(bkey, b.mac.as_deref())?,
        tier,
    })
}

/// A service's table size against its backends, and the tables of all
/// services so far (`total_slots`, to which this one's are added) against
/// the data plane's table array.
fn check_table_size(
    key: &str,
    table_size: u32,
    backends: usize,
    total_slots: &mut u64,
) -> Result<(), ConfigError> {
    maglev::validate_size(table_size, backends)
        .map_err(|e| invalid(format!("{key}.table_size"), e.to_string()))?;
    // Two copies per service (the one packets read, the one being written).
    *total_slots += 2 * table_size as u64;
    if *total_slots > MAGLEV_CAPACITY as u64 {
        return Err(invalid(
            format!("{key}.table_size"),
            format!(
                "the Maglev tables of all services need {total_slots} slots \
                 (two copies each), more than the {MAGLEV_CAPACITY} the data plane has"
            ),
        ));
    }
    Ok(())
}

fn parse_retire_grace(key: &str, raw: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(g) = raw else {
        return Ok(DEFAULT_RETIRE_GRACE);
    };
    let d = parse_duration(g).map_err(|p| invalid(format!("{key}.retire_grace"), p))?;
    if d > MAX_RETIRE_GRACE {
        return Err(invalid(
            format!("{key}.retire_grace"),
            format!("{g:?} is longer than the maximum of 24h (1440m)"),
        ));
    }
    Ok(d)
}

fn ca_service(key: &str, s: RawCaService, claims: &mut Claims) -> Result<CaService, ConfigError> {
    claims.name(key, &s.name)?;
    let vip = parse_vip(key, &s.vip, s.protocol.as_deref())?;
    claims.vip(key, vip)?;
    let forwarding = parse_forwarding(key, vip, raw_forwarding!(s))?;
    let primary = ca_backend(&format!("{key}.primary"), s.primary, &forwarding)?;
    claims.backend(&format!("{key}.primary"), &primary)?;
    let standby = match s.standby {
        None => None,
        Some(b) => {
            let b = ca_backend(&format!("{key}.standby"), b, &forwarding)?;
            if b.address == primary.address {
                return Err(invalid(
                    format!("{key}.standby.address"),
                    format!("{} is also the primary", b.address),
                ));
            }
            claims.backend(&format!("{key}.standby"), &b)?;
            Some(b)
        }
    };
    let health = parse_health(&format!("{key}.health_check"), s.health_check, vip)?;
    Ok(CaService {
        name: s.name,
        vip,
        health,
        primary,
        standby,
        forwarding,
    })
}

fn ca_backend(
    bkey: &str,
    b: RawCaBackend,
    forwarding: &crate::forwarding::Forwarding,
) -> Result<Backend, ConfigError> {
    let b = Backend {
        address: parse_backend_addr(&format!("{bkey}.address"), &b.address)?,
        name: check_opt_name(bkey, b.name)?,
        weight: 1,
        mac: parse_opt_mac(bkey, b.mac.as_deref())?,
        tier: 0,
    };
    check_routed_mac(bkey, forwarding, &b)?;
    Ok(b)
}

/// The services and backends of the whole config against what the data
/// plane's maps hold.
fn check_data_plane_room(services: usize, backends: usize) -> Result<(), ConfigError> {
    if services > MAX_SERVICES as usize {
        return Err(invalid(
            "compiler_services",
            format!("{services} services, the data plane holds at most {MAX_SERVICES}"),
        ));
    }
    if backends > MAX_BACKENDS as usize {
        return Err(invalid(
            "compiler_services",
            format!("{backends} backends, the data plane holds at most {MAX_BACKENDS}"),
        ));
    }
    Ok(())
}

/// The balancing keys of a compiler service, apart from the rest.
struct RawBalancing {
    balance: Option<String>,
    min_weight_percent: Option<i64>,
    min_healthy: Option<i64>,
    slow_start: Option<String>,
    load_interval: Option<String>,
    load_smoothing_percent: Option<i64>,
    load_hysteresis_percent: Option<i64>,
    max_rewrites_per_minute: Option<i64>,
}

/// An integer key within `lo..=hi`.
fn int_in(key: &str, v: i64, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    if (lo as i64..=hi as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(invalid(key, format!("{v} is out of range {lo}..={hi}")))
    }
}

fn parse_balancing(
    key: &str,
    raw: &RawBalancing,
    health: &HealthCheck,
) -> Result<Balancing, ConfigError> {
    let def = ControllerConfig::default();
    let balance = parse_balance(key, raw, health)?;
    let controller = ControllerConfig {
        balance,
        min_weight_percent: opt_int_in(
            key,
            "min_weight_percent",
            raw.min_weight_percent,
            (1, 100),
            def.min_weight_percent,
        )?,
        min_healthy: opt_int_in(
            key,
            "min_healthy",
            raw.min_healthy,
            (1, 1000),
            def.min_healthy,
        )?,
        slow_start: opt_duration_in(
            key,
            "slow_start",
            &raw.slow_start,
            (Duration::ZERO, Duration::from_secs(3600)),
            def.slow_start,
        )?,
        smoothing_percent: opt_int_in(
            key,
            "load_smoothing_percent",
            raw.load_smoothing_percent,
            (1, 100),
            def.smoothing_percent,
        )?,
        hysteresis_percent: opt_int_in(
            key,
            "load_hysteresis_percent",
            raw.load_hysteresis_percent,
            (0, 50),
            def.hysteresis_percent,
        )?,
        max_rewrites_per_minute: opt_int_in(
            key,
            "max_rewrites_per_minute",
            raw.max_rewrites_per_minute,
            (1, 600),
            def.max_rewrites_per_minute,
        )?,
    };
    let load_interval = opt_duration_in(
        key,
        "load_interval",
        &raw.load_interval,
        (Duration::from_secs(1), Duration::from_secs(600)),
        DEFAULT_LOAD_INTERVAL,
    )?;
    Ok(Balancing {
        controller,
        load_interval,
    })
}

/// `balance`, and the keys that go with it: the load keys only with
/// `load`, which reads the status API with the health check's settings.
fn parse_balance(
    key: &str,
    raw: &RawBalancing,
    health: &HealthCheck,
) -> Result<Balance, ConfigError> {
    let balance = match raw.balance.as_deref().unwrap_or("static") {
        "static" => Balance::Static,
        "load" => Balance::Load,
        other => {
            return Err(invalid(
                format!("{key}.balance"),
                format!("{other:?} is not \"static\" or \"load\""),
            ));
        }
    };
    if balance == Balance::Static {
        let load_only = [
            ("min_weight_percent", raw.min_weight_percent.is_some()),
            ("load_interval", raw.load_interval.is_some()),
            (
                "load_smoothing_percent",
                raw.load_smoothing_percent.is_some(),
            ),
            (
                "load_hysteresis_percent",
                raw.load_hysteresis_percent.is_some(),
            ),
        ];
        if let Some((k, _)) = load_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("{key}.{k}"),
                "only used with balance = \"load\"",
            ));
        }
    } else if matches!(health.kind, CheckKind::Tcp) {
        return Err(invalid(
            format!("{key}.balance"),
            "balance = \"load\" reads the compilers' status API with the health check's \
             settings, so health_check.type must be \"http\" or \"https\"",
        ));
    }
    Ok(balance)
}

/// Integer `key.k` in `lo..=hi`, `def` when absent.
fn opt_int_in(
    key: &str,
    k: &str,
    v: Option<i64>,
    (lo, hi): (u32, u32),
    def: u32,
) -> Result<u32, ConfigError> {
    match v {
        None => Ok(def),
        Some(v) => int_in(&format!("{key}.{k}"), v, lo, hi),
    }
}

/// Duration `key.k` in `lo..=hi`, `def` when absent.
fn opt_duration_in(
    key: &str,
    k: &str,
    v: &Option<String>,
    (lo, hi): (Duration, Duration),
    def: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = v else { return Ok(def) };
    let d = parse_duration(text).map_err(|p| invalid(format!("{key}.{k}"), p))?;
    if d < lo || d > hi {
        return Err(invalid(
            format!("{key}.{k}"),
            format!("{text:?} is out of range {lo:?}..={hi:?}"),
        ));
    }
    Ok(d)
}

fn check_ifname(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 with the NUL.
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?} is not 1 to 15 characters long"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

/// Service and backend names: they show up in logs, metrics labels and CLI
/// tables, so keep them to a plain set of characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?} is not 1 to 64 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn check_opt_name(key: &str, name: Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(n) = &name {
        check_name(n).map_err(|p| invalid(format!("{key}.name"), p))?;
    }
    Ok(name)
}

/// A weight as given by the user (config or CLI).
pub fn check_weight(w: i64) -> Result<u32, String> {
    if (1..=MAX_WEIGHT as i64).contains(&w) {
        Ok(w as u32)
    } else {
        Err(format!(
            "weight {w} is out of range 1..={MAX_WEIGHT} (use drain to stop new flows)"
        ))
    }
}

/// Checks a priority tier given at run time (`voxlb backend add --tier`).
pub fn check_tier(t: i64) -> Result<u32, String> {
    if (0..=MAX_TIER as i64).contains(&t) {
        Ok(t as u32)
    } else {
        Err(format!("tier {t} is out of range 0..={MAX_TIER}"))
    }
}

fn parse_vip(key: &str, vip: &str, protocol: Option<&str>) -> Result<Vip, ConfigError> {
    let addr: SocketAddr = vip.parse().map_err(|_| {
        invalid(
            format!("{key}.vip"),
            format!("{vip:?} is not an address:port (IPv6 as [addr]:port)"),
        )
    })?;
    if addr.port() == 0 {
        return Err(invalid(
            format!("{key}.vip"),
            "port 0 is not a service port",
        ));
    }
    check_unicast(addr.ip()).map_err(|p| invalid(format!("{key}.vip"), p))?;
    let proto = match protocol.unwrap_or("tcp") {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        other => {
            return Err(invalid(
                format!("{key}.protocol"),
                format!("{other:?} is not \"tcp\" or \"udp\""),
            ));
        }
    };
    Ok(Vip { addr, proto })
}

/// Parse a backend address (config or CLI).
pub fn parse_backend_addr(key: &str, s: &str) -> Result<IpAddr, ConfigError> {
    let addr: IpAddr = s
        .parse()
        .map_err(|_| invalid(key, format!("{s:?} is not an IP address")))?;
    check_unicast(addr).map_err(|p| invalid(key, p))?;
    Ok(addr)
}

fn check_unicast(addr: IpAddr) -> Result<(), String> {
    let bad = addr.is_unspecified()
        || addr.is_multicast()
        || addr.is_loopback()
        || matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if bad {
        Err(format!("{addr} is not a unicast address"))
    } else {
        Ok(())
    }
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`); refuses all-zero and multicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(format!("{s:?} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// Format a MAC the usual way.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_opt_mac(key: &str, s: Option<&str>) -> Result<Option<[u8; 6]>, ConfigError> {
    s.map(|s| parse_mac(s).map_err(|p| invalid(format!("{key}.mac"), p)))
        .transpose()
}

/// Parse a duration the way operators write them: `500ms`, `90s`, `1m30s`,
/// `1h`, `2h 30m` (humantime's grammar: integer-unit spans, concatenated).
/// Every duration of the config and the CLI goes through here, so they all
/// accept the same forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration such as \"500ms\", \"90s\", \"1m30s\" or \"1h\" ({e})")
    })
}

fn parse_health(
    key: &str,
    raw: Option<RawHealthCheck>,
    vip: Vip,
) -> Result<HealthCheck, ConfigError> {
    let raw = raw.unwrap_or_default();
    let base = HealthCheck::openvox_default(TlsCheck {
        ca_file: None,
        insecure: false,
        client_cert: None,
        client_key: None,
    });
    let kind = parse_check_kind(key, &raw, &base)?;
    let interval = check_duration(key, "interval", &raw.interval, base.interval)?;
    let timeout = check_duration(key, "timeout", &raw.timeout, base.timeout)?;
    if timeout > interval {
        return Err(invalid(
            format!("{key}.timeout"),
            format!("{timeout:?} is longer than the interval ({interval:?})"),
        ));
    }
    let port = raw.port.unwrap_or(vip.addr.port());
    if port == 0 {
        return Err(invalid(format!("{key}.port"), "port 0 cannot be probed"));
    }
    Ok(HealthCheck {
        kind,
        port,
        interval,
        timeout,
        rise: check_count(key, "rise", raw.rise, base.rise)?,
        fall: check_count(key, "fall", raw.fall, base.fall)?,
    })
}

/// The check's type and the keys that go with it (`base`: the OpenVox
/// default check, whose HTTP settings are the defaults).
fn parse_check_kind(
    key: &str,
    raw: &RawHealthCheck,
    base: &HealthCheck,
) -> Result<CheckKind, ConfigError> {
    let CheckKind::Https(def, _) = &base.kind else {
        unreachable!("the OpenVox default is an https check")
    };
    let only_https = [
        ("ca_file", raw.ca_file.is_some()),
        ("insecure", raw.insecure.is_some()),
        ("client_cert", raw.client_cert.is_some()),
        ("client_key", raw.client_key.is_some()),
    ];
    let only_http = [
        ("path", raw.path.is_some()),
        ("expect_status", raw.expect_status.is_some()),
        ("expect_body", raw.expect_body.is_some()),
        ("host", raw.host.is_some()),
    ];
    Ok(match raw.kind.as_deref().unwrap_or("https") {
        "tcp" => {
            reject_keys(key, &only_http, "only used by http and https checks")?;
            reject_keys(key, &only_https, "only used by https checks")?;
            CheckKind::Tcp
        }
        "http" => {
            reject_keys(key, &only_https, "only used by https checks")?;
            CheckKind::Http(parse_http(key, raw, def)?)
        }
        "https" => {
            let tls = TlsCheck {
                ca_file: raw.ca_file.clone(),
                insecure: raw.insecure.unwrap_or(false),
                client_cert: raw.client_cert.clone(),
                client_key: raw.client_key.clone(),
            };
            // The rules live with the checker (`TlsCheck::check`).
            tls.check()
                .map_err(|rule| invalid(format!("{key}.{}", rule.key()), rule.to_string()))?;
            CheckKind::Https(parse_http(key, raw, def)?, tls)
        }
        other => {
            return Err(invalid(
                format!("{key}.type"),
                format!("{other:?} is not \"tcp\", \"http\" or \"https\""),
            ));
        }
    })
}

/// The first of `keys` that is set, as an error: it is `why`.
fn reject_keys(key: &str, keys: &[(&str, bool)], why: &str) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, set)| *set) {
        Some((k, _)) => Err(invalid(format!("{key}.{k}"), why.to_owned())),
        None => Ok(()),
    }
}

/// The HTTP part of an http or https check (`def`: the defaults).
fn parse_http(key: &str, raw: &RawHealthCheck, def: &HttpCheck) -> Result<HttpCheck, ConfigError> {
    let path = raw.path.clone().unwrap_or_else(|| def.path.clone());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            format!("{key}.path"),
            format!("{path:?} is not an absolute URL path without spaces"),
        ));
    }
    let expect_status = raw.expect_status.unwrap_or(def.expect_status);
    if !(100..=599).contains(&expect_status) {
        return Err(invalid(
            format!("{key}.expect_status"),
            format!("{expect_status} is not an HTTP status"),
        ));
    }
    // The OpenVox body check only makes sense with the OpenVox path.
    let expect_body = match (&raw.expect_body, &raw.path) {
        (Some(b), _) => Some(b.clone()).filter(|b| !b.is_empty()),
        (None, None) => def.expect_body.clone(),
        (None, Some(_)) => None,
    };
    if let Some(h) = &raw.host
        && (h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(invalid(
            format!("{key}.host"),
            format!("{h:?} is not a host name"),
        ));
    }
    Ok(HttpCheck {
        path,
        expect_status,
        expect_body,
        host: raw.host.clone(),
    })
}

/// Duration `key.k` of a check, 10 ms to 1 h.
fn check_duration(
    key: &str,
    k: &str,
    v: &Option<String>,
    def: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(def),
        Some(s) => {
            let d = parse_duration(s).map_err(|p| invalid(format!("{key}.{k}"), p))?;
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(invalid(
                    format!("{key}.{k}"),
                    format!("{s:?} is out of range 10ms..=1h"),
                ));
            }
            Ok(d)
        }
    }
}

/// Count `key.k` of a check (rise, fall), 1 to 100.
fn check_count(key: &str, k: &str, v: Option<u32>, def: u32) -> Result<u32, ConfigError> {
    let v = v.unwrap_or(def);
    if (1..=100).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            format!("{key}.{k}"),
            format!("{v} is out of range 1..=100"),
        ))
    }
}
