//! The routed topology: compilers in another subnet behind a router, the
//! way OpenVox sites put compilers in other racks or sites. Used by the
//! routed-forwarding (ipip/gue) end-to-end tests.
//!
//! ```text
//!      ┌──────────── ret link (return path, optional small MTU) ───────┐
//!   {p}-cl ──┐                                ┌── {p}-c1 .. {p}-cN
//!   client   │   br0 (front)      br1 (back)  │   compilers, voxlb decap,
//!   {p}-lb ──┼── 10.78.0.0/24 ── {p}-rt ── 10.78.2.0/24   VIPs on lo
//!   LB       │   fd78::/64       router     fd78:2::/64
//!                                 (both bridges live in {p}-br)
//! ```
//!
//! - Front segment: client .100 / ::100, LB .2 / ::2, router .1 / ::1.
//!   Back segment: router .1 / ::1, compiler i .(10+i) / ::(10+i).
//! - Clients route the VIPs ([`VIP4`], [`VIP6`]) via the LB. The LB routes
//!   the back subnet via the router. Compilers' default route is the router,
//!   so their replies (source: the VIP, DSR) go compiler → router → client
//!   and never through the LB. The router routes the VIPs via the LB, so an
//!   ICMP error it sends about a reply (to the VIP) reaches the LB.
//! - The return path has a link of its own: the router reaches the client's
//!   front address over a direct veth (`ret` 10.78.3.1 / fd78:3::1 <->
//!   client `ret0` .100 / ::100), so compiler → router → client never
//!   shares a link with LB → router → compiler. `return_mtu` lowers that
//!   link's MTU (both ends): the narrow link of path-MTU tests, crossed only
//!   by replies, while the forward path (encapsulated packets, and the
//!   ICMP errors the LB forwards to compilers) keeps 1500.
//! - The clients' VIP routes carry `mtu client_vip_mtu`: until the LB can
//!   answer "too big" for encapsulated traffic, the client must not send
//!   segments that do not fit after encapsulation (1500 - 48 worst case).
//! - Every veth has tx checksum and VLAN offload off (docs/e2e.md);
//!   compilers have arp_ignore=1, arp_announce=2, and run `voxlb-testd`.
//!
//! Everything is removed on drop, as for [`crate::topology::Topology`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Context;
use rustls::ClientConfig;

use crate::{
    client,
    netns::{self, NsRuntime},
    pki::{HostSpec, Pki},
    topology::{
        IFACE, Node, PORT, SERVICE_NAME, add_bridge, add_namespace, bridge_netfilter_off,
        hold_vips_on_lo, offloads_off, plug, read_mac, remove_made, spawn_testd,
    },
};

/// Compiler VIP (IPv4) of the routed topology.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 10);
/// Compiler VIP (IPv6): fd78:1::10.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd78, 1, 0, 0, 0, 0, 0, 0x10);

/// What to build.
#[derive(Clone, Debug)]
pub struct RoutedSpec {
    /// Name prefix kind (stale objects are swept per kind).
    pub kind: &'static str,
    /// Compilers behind the router (1..=9).
    pub compilers: usize,
    /// MTU of the return link (router -> client), if lowered.
    pub return_mtu: Option<u32>,
    /// MTU on the clients' routes to the VIPs.
    pub client_vip_mtu: u32,
    /// The `voxlb-testd` binary.
    pub testd: PathBuf,
}

/// A built routed topology. Drop removes it.
pub struct RoutedTopology {
    pub prefix: String,
    pub bridge_ns: String,
    pub client: Node,
    pub lb: Node,
    /// The router's front side (its back side: [`Self::router_back`]).
    pub router: Node,
    pub router_back: (Ipv4Addr, Ipv6Addr),
    pub compilers: Vec<Node>,
    /// `/sys/fs/bpf/PREFIX`: every pin of this topology lives under it.
    pub pin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub pki: Pki,
    pub tls: Arc<ClientConfig>,
    /// A runtime in the client namespace.
    pub rt: NsRuntime,
    testd: PathBuf,
    guard: Guard,
}

/// Removes what it names on drop; filled in as the build goes, so a failed
/// build cleans up too.
#[derive(Default)]
struct Guard {
    children: Vec<(String, Child)>,
    namespaces: Vec<String>,
    pin_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_made(&mut self.namespaces, &mut self.pin_dir, &mut self.work_dir);
    }
}

/// The nodes, before anything is built.
struct Plan {
    bridge_ns: String,
    client: Node,
    lb: Node,
    router: Node,
    router_back: (Ipv4Addr, Ipv6Addr),
    compilers: Vec<Node>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl RoutedTopology {
    pub fn build(spec: &RoutedSpec) -> anyhow::Result<RoutedTopology> {
        anyhow::ensure!(netns::is_root(), "building a topology needs root");
        anyhow::ensure!((1..=9).contains(&spec.compilers), "1 to 9 compilers");
        netns::ensure_bpffs()?;
        netns::sweep_stale(spec.kind);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}-{}-{n}", spec.kind, std::process::id());
        let pin_dir = Path::new(netns::BPFFS).join(&prefix);
        let work_dir = std::env::temp_dir().join(&prefix);
        let ns_of = |name: &str| format!("{prefix}-{name}");
        let node = |name: &str, ip4: Ipv4Addr, ip6: Ipv6Addr| Node {
            name: name.into(),
            ns: ns_of(name),
            ip4,
            ip6,
            mac: [0; 6],
        };
        let v6 = |net: u16, last: u16| Ipv6Addr::new(0xfd78, net, 0, 0, 0, 0, 0, last);
        let mut plan = Plan {
            bridge_ns: ns_of("br"),
            client: node("cl", Ipv4Addr::new(10, 78, 0, 100), v6(0, 0x100)),
            lb: node("lb", Ipv4Addr::new(10, 78, 0, 2), v6(0, 2)),
            router: node("rt", Ipv4Addr::new(10, 78, 0, 1), v6(0, 1)),
            router_back: (Ipv4Addr::new(10, 78, 2, 1), v6(2, 1)),
            compilers: (1..=spec.compilers)
                .map(|i| {
                    node(
                        &format!("c{i}"),
                        Ipv4Addr::new(10, 78, 2, 10 + i as u8),
                        v6(2, 0x10 + i as u16),
                    )
                })
                .collect(),
        };
        let mut guard = Guard::default();
        guard.pin_dir = Some(pin_dir.clone());
        guard.work_dir = Some(work_dir.clone());
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        std::fs::create_dir_all(&work_dir)?;
        wire(&mut plan, &mut guard, spec)?;
        // XDP_TX out of the LB's veth (the real data plane encapsulating)
        // needs an XDP program on its peer, the bridge port.
        let peer_pin = pin_dir.join("veth_peer_p-lb");
        netns::run_in(&plan.bridge_ns, || {
            lb_testkit::veth::attach_veth_peer("p-lb", &peer_pin)
        })??;
        let hosts: Vec<HostSpec> = plan
            .compilers
            .iter()
            .map(|n| HostSpec::new(&n.name, &[n.ip4.into(), n.ip6.into()]))
            .collect();
        let extra = [VIP4.to_string(), VIP6.to_string(), SERVICE_NAME.to_owned()];
        let pki = crate::pki::generate(&work_dir.join("pki"), "voxlb routed CA", &hosts, &extra)?;
        let tls = client::tls_config(pki.ca_pem.as_bytes())?;
        let rt = NsRuntime::new(&plan.client.ns, 2)?;
        for c in &plan.compilers {
            let child = spawn_testd(&spec.testd, &work_dir, c)?;
            guard.children.push((c.name.clone(), child));
        }
        Ok(RoutedTopology {
            prefix,
            bridge_ns: plan.bridge_ns,
            client: plan.client,
            lb: plan.lb,
            router: plan.router,
            router_back: plan.router_back,
            compilers: plan.compilers,
            pin_dir,
            work_dir,
            pki,
            tls,
            rt,
            testd: spec.testd.clone(),
            guard,
        })
    }

    /// The VIP socket address of a family.
    pub fn vip(&self, v6: bool) -> SocketAddr {
        let ip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        SocketAddr::new(ip, PORT)
    }

    /// Kill the `voxlb-testd` of compiler `name` (a dead backend).
    pub fn kill_backend(&mut self, name: &str) {
        for (n, c) in &mut self.guard.children {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Start `voxlb-testd` again on compiler `name`.
    pub fn start_backend(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self
            .compilers
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .context("no such compiler")?;
        let child = spawn_testd(&self.testd, &self.work_dir, &node)?;
        self.guard.children.push((name.to_owned(), child));
        Ok(())
    }

    /// A TLS GET of `path` through `vip` from the client, answered with
    /// `bytes` pattern bytes (checked byte for byte) within `limit`; the
    /// serving compiler's name.
    pub fn download(
        &self,
        vip: SocketAddr,
        path: String,
        bytes: u64,
        limit: std::time::Duration,
    ) -> anyhow::Result<String> {
        let tls = self.tls.clone();
        self.rt.run(async move {
            tokio::time::timeout(limit, async {
                let mut c = client::connect_tls(vip, &vip.ip().to_string(), tls).await?;
                let r = c.get(&path).await?;
                anyhow::ensure!(r.status() == 200, "status {}", r.status());
                anyhow::ensure!(
                    r.body.len() as u64 == bytes,
                    "{} of {bytes} bytes",
                    r.body.len()
                );
                if let Some(at) = crate::pattern::first_mismatch(0, &r.body) {
                    anyhow::bail!("body differs at byte {at}");
                }
                Ok(r.header("X-Backend").unwrap_or("?").to_owned())
            })
            .await
            .context("timed out")?
        })?
    }

    /// A compiler's pin directory for `voxlb decap`.
    pub fn decap_pin_dir(&self, compiler: &Node) -> PathBuf {
        self.pin_dir.join(format!("decap-{}", compiler.name))
    }
}

/// Namespaces, links, addresses, routes and sysctls of the plan.
fn wire(p: &mut Plan, guard: &mut Guard, spec: &RoutedSpec) -> anyhow::Result<()> {
    add_namespaces(p, guard)?;
    add_bridges(&p.bridge_ns)?;
    plug_into_bridges(p)?;
    add_return_link(p, spec)?;
    read_macs(p)?;
    route_router(p)?;
    route_lb(p)?;
    route_client(p, spec)?;
    for c in &p.compilers {
        set_up_compiler(c, p.router_back)?;
    }
    Ok(())
}

fn add_namespaces(p: &Plan, guard: &mut Guard) -> anyhow::Result<()> {
    let names: Vec<String> = [&p.bridge_ns, &p.client.ns, &p.lb.ns, &p.router.ns]
        .into_iter()
        .cloned()
        .chain(p.compilers.iter().map(|c| c.ns.clone()))
        .collect();
    for ns in &names {
        add_namespace(ns, &mut guard.namespaces)?;
    }
    Ok(())
}

/// The front segment `br0` (client, LB, router) and the back one `br1`
/// (router, compilers), in the bridge namespace `br`.
fn add_bridges(br: &str) -> anyhow::Result<()> {
    for bridge in ["br0", "br1"] {
        add_bridge(br, bridge)?;
    }
    bridge_netfilter_off(br);
    Ok(())
}

/// Every node's interface, a veth whose peer is a port of its segment's
/// bridge, with its addresses.
fn plug_into_bridges(p: &Plan) -> anyhow::Result<()> {
    let br = &p.bridge_ns;
    // (namespace, its interface, bridge port, bridge, v4/len, v6/len)
    let (rb4, rb6) = p.router_back;
    let mut links: Vec<(String, &str, String, &str, String, String)> = vec![
        (
            p.client.ns.clone(),
            IFACE,
            "p-cl".into(),
            "br0",
            format!("{}/24", p.client.ip4),
            format!("{}/64", p.client.ip6),
        ),
        (
            p.lb.ns.clone(),
            IFACE,
            "p-lb".into(),
            "br0",
            format!("{}/24", p.lb.ip4),
            format!("{}/64", p.lb.ip6),
        ),
        (
            p.router.ns.clone(),
            "front",
            "p-rt".into(),
            "br0",
            format!("{}/24", p.router.ip4),
            format!("{}/64", p.router.ip6),
        ),
        (
            p.router.ns.clone(),
            "back",
            "p-rtb".into(),
            "br1",
            format!("{rb4}/24"),
            format!("{rb6}/64"),
        ),
    ];
    for c in &p.compilers {
        links.push((
            c.ns.clone(),
            IFACE,
            format!("p-{}", c.name),
            "br1",
            format!("{}/24", c.ip4),
            format!("{}/64", c.ip6),
        ));
    }
    for (ns, dev, port, bridge, a4, a6) in &links {
        plug(br, bridge, port, ns, dev, a4, a6)?;
    }
    Ok(())
}

/// The return link: router `ret` <-> client `ret0`, a direct veth. The
/// router sends the replies to the client's front address over it, so
/// only the return direction crosses it.
fn add_return_link(p: &Plan, spec: &RoutedSpec) -> anyhow::Result<()> {
    netns::ip(
        &p.router.ns,
        &[
            "link",
            "add",
            "ret",
            "type",
            "veth",
            "peer",
            "name",
            "ret0",
            "netns",
            &p.client.ns,
        ],
    )?;
    for (ns, dev, a4, a6) in [
        (&p.router.ns, "ret", "10.78.3.1/24", "fd78:3::1/64"),
        (&p.client.ns, "ret0", "10.78.3.100/24", "fd78:3::100/64"),
    ] {
        offloads_off(ns, dev)?;
        netns::ip(ns, &["addr", "add", a4, "dev", dev])?;
        netns::ip(ns, &["-6", "addr", "add", a6, "dev", dev, "nodad"])?;
        if let Some(mtu) = spec.return_mtu {
            netns::ip(ns, &["link", "set", dev, "mtu", &mtu.to_string()])?;
        }
        netns::ip(ns, &["link", "set", dev, "up"])?;
    }
    netns::ip(
        &p.router.ns,
        &[
            "route",
            "add",
            &format!("{}/32", p.client.ip4),
            "via",
            "10.78.3.100",
        ],
    )?;
    netns::ip(
        &p.router.ns,
        &[
            "-6",
            "route",
            "add",
            &format!("{}/128", p.client.ip6),
            "via",
            "fd78:3::100",
        ],
    )?;
    // Replies to the client's front address arrive on ret0.
    for k in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        netns::exec(&p.client.ns, "sysctl", &["-qw", k])?;
    }
    Ok(())
}

fn read_macs(p: &mut Plan) -> anyhow::Result<()> {
    p.client.mac = read_mac(&p.client.ns, IFACE)?;
    p.lb.mac = read_mac(&p.lb.ns, IFACE)?;
    p.router.mac = read_mac(&p.router.ns, "front")?;
    for c in &mut p.compilers {
        c.mac = read_mac(&c.ns, IFACE)?;
    }
    Ok(())
}

/// Router: forwards, no reverse-path filter (replies come in from the back
/// with the VIP as source), routes the VIPs to the LB.
fn route_router(p: &Plan) -> anyhow::Result<()> {
    let rt = &p.router.ns;
    for k in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        netns::exec(rt, "sysctl", &["-qw", k])?;
    }
    netns::ip(
        rt,
        &[
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &p.lb.ip4.to_string(),
        ],
    )?;
    netns::ip(
        rt,
        &[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &p.lb.ip6.to_string(),
        ],
    )?;
    Ok(())
}

/// LB: the back subnet via the router.
fn route_lb(p: &Plan) -> anyhow::Result<()> {
    netns::ip(
        &p.lb.ns,
        &[
            "route",
            "add",
            "10.78.2.0/24",
            "via",
            &p.router.ip4.to_string(),
        ],
    )?;
    netns::ip(
        &p.lb.ns,
        &[
            "-6",
            "route",
            "add",
            "fd78:2::/64",
            "via",
            &p.router.ip6.to_string(),
        ],
    )?;
    Ok(())
}

/// Client: the VIPs via the LB.
fn route_client(p: &Plan, spec: &RoutedSpec) -> anyhow::Result<()> {
    let mtu = spec.client_vip_mtu.to_string();
    netns::ip(
        &p.client.ns,
        &[
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &p.lb.ip4.to_string(),
            "mtu",
            &mtu,
        ],
    )?;
    netns::ip(
        &p.client.ns,
        &[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &p.lb.ip6.to_string(),
            "mtu",
            &mtu,
        ],
    )?;
    Ok(())
}

/// A compiler: default via the router's back address `(rb4, rb6)`, the
/// VIPs on lo, quiet about them.
fn set_up_compiler(c: &Node, (rb4, rb6): (Ipv4Addr, Ipv6Addr)) -> anyhow::Result<()> {
    netns::ip(&c.ns, &["route", "add", "default", "via", &rb4.to_string()])?;
    netns::ip(
        &c.ns,
        &["-6", "route", "add", "default", "via", &rb6.to_string()],
    )?;
    hold_vips_on_lo(&c.ns, &[VIP4], &[VIP6])
}
