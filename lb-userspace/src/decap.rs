//! `voxlb decap`: the compiler side of routed forwarding (see the README,
//! "Routed compilers").
//!
//! Attaches the decapsulator XDP object ([`DECAP_OBJECT`]) to a compiler's
//! interfaces and fills its maps: the VIPs (inner destinations to accept),
//! this host's addresses (outer destinations to accept) and the GUE port.
//! Everything lives in pins under `--pin-dir`, so the program keeps running
//! after the command exits; re-running it reuses the maps (counters kept),
//! replaces the VIP and address sets, and swaps the program of this binary
//! into the existing links. `--stats` reads the pinned counters,
//! `--detach` removes links and pins, `--check` inspects the host.
//!
//! The host-address set is taken when the command runs: every address of
//! every interface except the VIPs, loopback (127/8, ::1) and IPv6
//! link-local ones. Re-run after renumbering a compiler.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use lb_common::{
    Counter,
    decap::{self as names, DecapAddr, DecapConfig, DecapReason},
};
use tracing::{info, warn};

use crate::object::{DECAP_OBJECT, DECAP_PROGRAM_NAME};

/// Where the decapsulator pins its maps and links by default.
pub const DEFAULT_DECAP_PIN_DIR: &str = "/sys/fs/bpf/voxlb-decap";

/// Errors of `voxlb decap`. Messages name the flag or the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("{flag}: {problem}")]
    Usage { flag: &'static str, problem: String },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, DecapError>;

fn other<E: Into<Box<dyn std::error::Error>>>(e: E) -> DecapError {
    DecapError::Other(crate::dataplane::flatten_error(e))
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DecapError {
    move |source| DecapError::Map { map, source }
}

/// An address as the decap maps key it.
pub fn decap_addr(a: IpAddr) -> DecapAddr {
    match a {
        IpAddr::V4(v4) => DecapAddr::v4(v4.octets()),
        IpAddr::V6(v6) => DecapAddr::v6(v6.octets()),
    }
}

fn from_decap_addr(a: &DecapAddr) -> Option<IpAddr> {
    match a.family {
        names::DECAP_V4 => Some(IpAddr::from([a.addr[0], a.addr[1], a.addr[2], a.addr[3]])),
        names::DECAP_V6 => Some(IpAddr::from(a.addr)),
        _ => None,
    }
}

/// The decapsulator's maps, from a loaded object or from the pins.
pub struct DecapMaps {
    vips: HashMap<MapData, DecapAddr, u32>,
    locals: HashMap<MapData, DecapAddr, u32>,
    config: Array<MapData, DecapConfig>,
    stats: PerCpuArray<MapData, Counter>,
}

impl DecapMaps {
    /// Take the maps out of a loaded decap object (pinned or not).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| other(format!("map {name} missing from the decap object")))
        };
        Ok(DecapMaps {
            vips: take(names::VIPS)?
                .try_into()
                .map_err(map_err(names::VIPS))?,
            locals: take(names::LOCALS)?
                .try_into()
                .map_err(map_err(names::LOCALS))?,
            config: take(names::CONFIG)?
                .try_into()
                .map_err(map_err(names::CONFIG))?,
            stats: take(names::STATS)?
                .try_into()
                .map_err(map_err(names::STATS))?,
        })
    }

    /// Open the maps pinned under `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<Map> {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(DecapError::Usage {
                    flag: "--pin-dir",
                    problem: format!(
                        "no decapsulator pinned under {} (missing {name}): attach with \
                         `voxlb decap --interface IF --vip ADDR` first",
                        pin_dir.display()
                    ),
                });
            }
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        Ok(DecapMaps {
            vips: open(names::VIPS)?
                .try_into()
                .map_err(map_err(names::VIPS))?,
            locals: open(names::LOCALS)?
                .try_into()
                .map_err(map_err(names::LOCALS))?,
            config: open(names::CONFIG)?
                .try_into()
                .map_err(map_err(names::CONFIG))?,
            stats: open(names::STATS)?
                .try_into()
                .map_err(map_err(names::STATS))?,
        })
    }

    fn replace_set(
        map: &mut HashMap<MapData, DecapAddr, u32>,
        name: &'static str,
        want: &BTreeSet<IpAddr>,
    ) -> Result<()> {
        let want_keys: Vec<DecapAddr> = want.iter().map(|a| decap_addr(*a)).collect();
        // Add first, then remove what is no longer wanted: an address that
        // stays is never missing in between.
        for k in &want_keys {
            map.insert(k, 1, 0).map_err(map_err(name))?;
        }
        let stale: Vec<DecapAddr> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_keys.contains(k))
            .collect();
        for k in stale {
            map.remove(&k).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Make the VIP set exactly `vips`.
    pub fn set_vips(&mut self, vips: &BTreeSet<IpAddr>) -> Result<()> {
        Self::replace_set(&mut self.vips, names::VIPS, vips)
    }

    /// Make the host-address set exactly `locals`.
    pub fn set_locals(&mut self, locals: &BTreeSet<IpAddr>) -> Result<()> {
        Self::replace_set(&mut self.locals, names::LOCALS, locals)
    }

    /// Set the GUE port (0 = GUE off).
    pub fn set_gue_port(&mut self, port: u16) -> Result<()> {
        let cfg = DecapConfig {
            gue_port_be: port.to_be(),
            ..Default::default()
        };
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    pub fn gue_port(&self) -> Result<u16> {
        let c = self.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        Ok(u16::from_be(c.gue_port_be))
    }

    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.vips
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| from_decap_addr(&k))
            .collect()
    }

    pub fn locals(&self) -> BTreeSet<IpAddr> {
        self.locals
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| from_decap_addr(&k))
            .collect()
    }

    /// Every reason with its counter, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(DecapReason, Counter)>> {
        let mut out = Vec::new();
        for r in DecapReason::ALL {
            let per_cpu = self
                .stats
                .get(&(*r as u32), 0)
                .map_err(map_err(names::STATS))?;
            let mut total = Counter::default();
            for c in per_cpu.iter() {
                total.packets += c.packets;
                total.bytes += c.bytes;
            }
            out.push((*r, total));
        }
        Ok(out)
    }
}

/// XDP attach mode of the decapsulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DecapXdpMode {
    /// Native, falling back to generic.
    #[default]
    Auto,
    Native,
    Generic,
}

/// What `voxlb decap` (attach) does.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub interfaces: Vec<String>,
    pub vips: BTreeSet<IpAddr>,
    pub gue_port: u16,
    pub pin_dir: PathBuf,
    pub mode: DecapXdpMode,
}

/// What an attach did.
#[derive(Clone, Debug)]
pub struct AttachReport {
    pub vips: BTreeSet<IpAddr>,
    pub locals: BTreeSet<IpAddr>,
    /// Interfaces whose existing link got this binary's program.
    pub replaced: Vec<String>,
    /// Interfaces attached anew.
    pub attached: Vec<String>,
}

/// `pin_dir/link_<ifname>`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Every (interface, address) of this host (getifaddrs).
pub fn host_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null; its family says which struct it is.
        let addr = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes())
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sa.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        out.push((name, addr));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The outer destinations to accept: this host's addresses minus the VIPs,
/// loopback and IPv6 link-local addresses.
pub fn local_addresses(vips: &BTreeSet<IpAddr>) -> std::io::Result<BTreeSet<IpAddr>> {
    Ok(host_addresses()?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| !vips.contains(a) && !a.is_loopback())
        .filter(|a| match a {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect())
}

/// Parse `--vip` values; errors name the flag and the value.
pub fn parse_vips(raw: &[String]) -> Result<BTreeSet<IpAddr>> {
    raw.iter()
        .map(|s| {
            s.parse::<IpAddr>().map_err(|_| DecapError::Usage {
                flag: "--vip",
                problem: format!("{s:?} is not an IPv4 or IPv6 address"),
            })
        })
        .collect()
}

/// Load (reusing pinned maps), fill the maps, attach or swap into the links.
pub fn attach(opts: &AttachOptions) -> Result<AttachReport> {
    if opts.interfaces.is_empty() {
        return Err(DecapError::Usage {
            flag: "--interface",
            problem: "required: the interface(s) the encapsulated traffic arrives on".into(),
        });
    }
    if opts.vips.is_empty() {
        return Err(DecapError::Usage {
            flag: "--vip",
            problem: "required: at least one VIP to accept as inner destination".into(),
        });
    }
    for iface in &opts.interfaces {
        if ifindex(iface).is_none() {
            return Err(DecapError::Usage {
                flag: "--interface",
                problem: format!("no interface named {iface:?} here"),
            });
        }
    }
    let locals = local_addresses(&opts.vips).map_err(|e| other(format!("getifaddrs: {e}")))?;
    let fresh_dir = !opts.pin_dir.exists();
    std::fs::create_dir_all(&opts.pin_dir)
        .map_err(|e| other(format!("creating {}: {e}", opts.pin_dir.display())))?;
    crate::xdp::check_bpffs(&opts.pin_dir).map_err(|e| other(e.to_string()))?;
    let pins: Vec<PathBuf> = names::ALL.iter().map(|n| opts.pin_dir.join(n)).collect();
    let existed: Vec<bool> = pins.iter().map(|p| p.exists()).collect();
    let result = load_and_attach(opts, &locals);
    if result.is_err() {
        // Leave no half-made decapsulator: remove only what this attempt
        // created, never an earlier run's maps.
        for (p, existed) in pins.iter().zip(existed) {
            if !existed {
                let _ = std::fs::remove_file(p);
            }
        }
        if fresh_dir {
            let _ = std::fs::remove_dir(&opts.pin_dir);
        }
    }
    result
}

fn load_and_attach(opts: &AttachOptions, locals: &BTreeSet<IpAddr>) -> Result<AttachReport> {
    let mut loader = EbpfLoader::new();
    for n in names::ALL {
        loader.map_pin_path(n, opts.pin_dir.join(n));
    }
    let mut ebpf = loader.load(DECAP_OBJECT).map_err(other)?;
    // The maps are filled before the program sees a packet on a new link.
    let mut maps = DecapMaps::from_ebpf(&mut ebpf)?;
    maps.set_gue_port(opts.gue_port)?;
    maps.set_vips(&opts.vips)?;
    maps.set_locals(locals)?;
    let prog: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM_NAME)
        .ok_or_else(|| other(format!("program {DECAP_PROGRAM_NAME} missing")))?
        .try_into()
        .map_err(other)?;
    prog.load().map_err(other)?;
    let mut report = AttachReport {
        vips: opts.vips.clone(),
        locals: locals.clone(),
        replaced: Vec::new(),
        attached: Vec::new(),
    };
    for iface in &opts.interfaces {
        let pin = link_pin(&opts.pin_dir, iface);
        if pin.exists() {
            let pinned = PinnedLink::from_pin(&pin).map_err(other)?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(other)?;
            prog.attach_to_link(link).map_err(other)?;
            info!(iface, "decap: replaced the program in the pinned link");
            report.replaced.push(iface.clone());
            continue;
        }
        let id = match opts.mode {
            DecapXdpMode::Native => prog.attach(iface, AyaXdpMode::Driver).map_err(other)?,
            DecapXdpMode::Generic => prog.attach(iface, AyaXdpMode::Skb).map_err(other)?,
            DecapXdpMode::Auto => match prog.attach(iface, AyaXdpMode::Driver) {
                Ok(id) => id,
                Err(e) => {
                    warn!(iface, error = %e, "decap: native XDP unavailable; using generic mode");
                    prog.attach(iface, AyaXdpMode::Skb).map_err(other)?
                }
            },
        };
        let link = prog.take_link(id).map_err(other)?;
        FdLink::try_from(link)
            .map_err(other)?
            .pin(&pin)
            .map_err(other)?;
        info!(iface, pin = %pin.display(), "decap: attached");
        report.attached.push(iface.clone());
    }
    Ok(report)
}

/// Remove every link and map pin under `pin_dir`. Returns the interfaces
/// detached; `Ok(empty)` if nothing was pinned there.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>> {
    if !pin_dir.exists() {
        return Ok(Vec::new());
    }
    let mut detached = Vec::new();
    let entries =
        std::fs::read_dir(pin_dir).map_err(|e| other(format!("{}: {e}", pin_dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix("link_") {
            std::fs::remove_file(e.path())
                .map_err(|err| other(format!("removing {}: {err}", e.path().display())))?;
            detached.push(iface.to_owned());
        }
    }
    for n in names::ALL {
        match std::fs::remove_file(pin_dir.join(n)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(other(format!(
                    "removing {}: {e}",
                    pin_dir.join(n).display()
                )));
            }
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    detached.sort();
    Ok(detached)
}

/// One finding of `voxlb decap --check`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// Stable name of the check.
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Largest encapsulation overhead the load balancer adds: GUE (direct IP,
/// no GUE header) over IPv6 = 40 + 8. IPIP over IPv4 adds 20, over IPv6 40,
/// GUE over IPv4 28.
pub const MAX_ENCAP_OVERHEAD: u32 = 48;
/// IPv6's minimum link MTU: an IPv6 client must be able to send this much.
pub const IPV6_MIN_MTU: u32 = 1280;

/// The MTU of `iface` (SIOCGIFMTU: unlike /sys/class/net, it answers for
/// the caller's network namespace).
pub fn if_mtu(iface: &str) -> Option<u32> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: we own `fd`; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid socket and ifreq for SIOCGIFMTU.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFMTU,
            &mut req,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU filled the ifru_mtu member.
    Some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// What this host lacks to receive encapsulated VIP traffic on `iface`.
/// `vips` empty: the pinned VIP set.
pub fn check(iface: &str, vips: &BTreeSet<IpAddr>, pin_dir: &Path) -> Vec<Finding> {
    let Some(idx) = ifindex(iface) else {
        return vec![finding(
            "interface",
            false,
            format!("no interface named {iface:?} here"),
        )];
    };
    let mut out = vec![
        finding("interface", true, format!("{iface} (ifindex {idx})")),
        check_attached(iface, pin_dir),
    ];
    let vips = if vips.is_empty() {
        DecapMaps::from_pins(pin_dir)
            .map(|m| m.vips())
            .unwrap_or_default()
    } else {
        vips.clone()
    };
    out.extend(check_vips_on_lo(&vips));
    if vips.iter().any(|v| v.is_ipv4()) {
        out.extend(check_arp(iface));
    }
    out.push(check_rp_filter(iface));
    out.push(check_mtu(iface));
    out
}

fn finding(check: &'static str, ok: bool, detail: String) -> Finding {
    Finding { check, ok, detail }
}

fn check_attached(iface: &str, pin_dir: &Path) -> Finding {
    let attached = link_pin(pin_dir, iface).exists();
    finding(
        "attached",
        attached,
        if attached {
            format!(
                "decapsulator pinned at {}",
                link_pin(pin_dir, iface).display()
            )
        } else {
            format!("not attached: voxlb decap --interface {iface} --vip ADDR")
        },
    )
}

/// Each VIP must be on `lo`, for the kernel to take the decapsulated
/// packets as its own.
fn check_vips_on_lo(vips: &BTreeSet<IpAddr>) -> Vec<Finding> {
    let mut out = Vec::new();
    if vips.is_empty() {
        out.push(finding(
            "vip_on_lo",
            false,
            "no VIP given (--vip) and none in a pinned decapsulator".into(),
        ));
    }
    let on_lo: BTreeSet<IpAddr> = host_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|(n, _)| n == "lo")
        .map(|(_, a)| a)
        .collect();
    for v in vips {
        if on_lo.contains(v) {
            out.push(finding("vip_on_lo", true, format!("{v} is on lo")));
        } else {
            let plen = if v.is_ipv4() { 32 } else { 128 };
            out.push(finding(
                "vip_on_lo",
                false,
                format!("{v} is not on lo: ip addr add {v}/{plen} dev lo"),
            ));
        }
    }
    out
}

/// The IPv4 sysctl `key` as the kernel applies it on `iface`: the larger of
/// the `all` and per-interface values.
fn effective_sysctl(iface: &str, key: &str) -> Option<u32> {
    let sysctl = |dev: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/{key}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    sysctl("all").max(sysctl(iface))
}

/// An IPv4 VIP on lo must be neither answered for nor used in ARP.
fn check_arp(iface: &str) -> Vec<Finding> {
    [
        ("arp_ignore", 1, "do not answer ARP for the VIP on lo"),
        ("arp_announce", 2, "never use the VIP as ARP source"),
    ]
    .into_iter()
    .map(|(key, want, why)| match effective_sysctl(iface, key) {
        Some(v) if v >= want => finding(key, true, format!("{v}")),
        v => finding(
            key,
            false,
            format!(
                "{} (want {want}: {why}): sysctl -w net.ipv4.conf.all.{key}={want}",
                v.map_or("unreadable".into(), |v| v.to_string())
            ),
        ),
    })
    .collect()
}

fn check_rp_filter(iface: &str) -> Finding {
    match effective_sysctl(iface, "rp_filter") {
        Some(1) => finding(
            "rp_filter",
            false,
            format!(
                "strict (1) on {iface} or all: decapsulated packets carry client sources and are \
                 dropped unless the route to every client leaves by {iface}; use loose mode: \
                 sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iface}.rp_filter=2"
            ),
        ),
        Some(v) => finding("rp_filter", true, format!("{v}")),
        None => finding("rp_filter", false, "unreadable".into()),
    }
}

fn check_mtu(iface: &str) -> Finding {
    match if_mtu(iface) {
        Some(m) if m >= IPV6_MIN_MTU + MAX_ENCAP_OVERHEAD => finding(
            "mtu",
            true,
            format!(
                "{m}: client packets up to {} bytes arrive whole in every mode",
                m - MAX_ENCAP_OVERHEAD
            ),
        ),
        Some(m) => finding(
            "mtu",
            false,
            format!(
                "{m}: below {} = IPv6 minimum {IPV6_MIN_MTU} + {MAX_ENCAP_OVERHEAD} of \
                 encapsulation; raise it (ip link set {iface} mtu {})",
                IPV6_MIN_MTU + MAX_ENCAP_OVERHEAD,
                1500 + MAX_ENCAP_OVERHEAD
            ),
        ),
        None => finding("mtu", false, "unreadable".into()),
    }
}

/// `voxlb decap ...`: attach (default), or one of `--stats`, `--detach`,
/// `--check`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["stats", "detach", "check"])))]
pub struct DecapArgs {
    /// Interface the encapsulated traffic arrives on (repeatable).
    #[arg(long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// VIP(s) to accept as inner destination; they live on `lo`.
    #[arg(long = "vip", value_name = "ADDR", num_args = 1..)]
    pub vips: Vec<String>,
    /// GUE destination port (0 turns GUE off; IPIP is always on).
    #[arg(long, default_value_t = names::DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// Where the maps and links are pinned (a bpffs directory).
    #[arg(long, default_value = DEFAULT_DECAP_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = DecapXdpMode::Auto)]
    pub xdp_mode: DecapXdpMode,
    /// Print the decapsulator's per-reason counters.
    #[arg(long)]
    pub stats: bool,
    /// Detach from every interface and remove the pins.
    #[arg(long)]
    pub detach: bool,
    /// Tell what this host lacks (exit 1 if anything).
    #[arg(long)]
    pub check: bool,
}

/// Run `voxlb decap`; returns the exit code (0 ok, 1 failed or unfit, 2 usage).
pub fn run_cli(args: &DecapArgs, json: bool) -> u8 {
    use crate::cli::EXIT_OK;
    let vips = match parse_vips(&args.vips) {
        Ok(v) => v,
        Err(e) => return cli_failure(e),
    };
    let done = if args.stats {
        print_stats(&args.pin_dir, json)
    } else if args.detach {
        print_detach(&args.pin_dir)
    } else if args.check {
        return print_check(args, &vips, json);
    } else {
        print_attach(args, vips)
    };
    match done {
        Ok(()) => EXIT_OK,
        Err(e) => cli_failure(e),
    }
}

/// The error on stderr, and its exit code: a usage error or another.
fn cli_failure(e: DecapError) -> u8 {
    use crate::cli::{EXIT_ERROR, EXIT_USAGE};
    eprintln!("voxlb decap: {e}");
    match e {
        DecapError::Usage { .. } => EXIT_USAGE,
        _ => EXIT_ERROR,
    }
}

/// `--stats`: the decapsulator's counters by reason.
fn print_stats(pin_dir: &Path, json: bool) -> Result<()> {
    let stats = DecapMaps::from_pins(pin_dir).and_then(|m| m.stats())?;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = stats
            .iter()
            .map(|(r, c)| {
                (
                    r.label().to_owned(),
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        println!("{:<22} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
        for (r, c) in stats {
            println!("{:<22} {:>12} {:>14}", r.label(), c.packets, c.bytes);
        }
    }
    Ok(())
}

/// `--detach`.
fn print_detach(pin_dir: &Path) -> Result<()> {
    let ifs = detach(pin_dir)?;
    if ifs.is_empty() {
        println!("nothing attached under {}", pin_dir.display());
    } else {
        println!("detached from {}; pins removed", ifs.join(", "));
    }
    Ok(())
}

/// `--check`: its findings, and exit code 0 only if the host is fit.
fn print_check(args: &DecapArgs, vips: &BTreeSet<IpAddr>, json: bool) -> u8 {
    use crate::cli::{EXIT_ERROR, EXIT_OK};
    let [iface] = args.interfaces.as_slice() else {
        return cli_failure(DecapError::Usage {
            flag: "--interface",
            problem: "--check takes exactly one interface".into(),
        });
    };
    let findings = check(iface, vips, &args.pin_dir);
    let fit = findings.iter().all(|f| f.ok);
    if json {
        println!("{}", serde_json::json!({"fit": fit, "findings": findings}));
    } else {
        for f in &findings {
            let mark = if f.ok { "ok  " } else { "FAIL" };
            println!("{mark}  {:<13} {}", f.check, f.detail);
        }
    }
    if fit { EXIT_OK } else { EXIT_ERROR }
}

/// Attach (the default action) and say what was done.
fn print_attach(args: &DecapArgs, vips: BTreeSet<IpAddr>) -> Result<()> {
    let opts = AttachOptions {
        interfaces: args.interfaces.clone(),
        vips,
        gue_port: args.gue_port,
        pin_dir: args.pin_dir.clone(),
        mode: args.xdp_mode,
    };
    let r = attach(&opts)?;
    let list = |s: &BTreeSet<IpAddr>| {
        s.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.attached.is_empty() {
        println!("attached to {}", r.attached.join(", "));
    }
    if !r.replaced.is_empty() {
        println!("updated on {}", r.replaced.join(", "));
    }
    println!("vips: {}", list(&r.vips));
    println!("host addresses: {}", list(&r.locals));
    if args.gue_port == 0 {
        println!("gue: off");
    } else {
        println!("gue port: {}", args.gue_port);
    }
    Ok(())
}
