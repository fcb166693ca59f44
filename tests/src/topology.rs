//! The end-to-end topology: network namespaces around one Linux bridge, the
//! way an OpenVox site's agents, load balancer, compilers and CA servers sit
//! on one L2 segment. Used by the e2e tests, the demo and the benchmarks.
//!
//! ```text
//!                         {prefix}-br  (bridge br0)
//!      p-cl      p-lb       p-c1 .. p-cN        p-ca1     p-ca2
//!       |         |  (XDP_PASS on p-lb)  |         |         |
//!   {prefix}-cl {prefix}-lb  {prefix}-c1..cN  {prefix}-ca1 {prefix}-ca2
//!    clients     voxlb       compilers        CA primary  CA standby
//! ```
//!
//! - Segment 10.77.0.0/24 and fd77::/64; the LB is .2 / ::2, compiler i is
//!   .(10+i), the CAs .31 and .32, the client addresses .100 onward.
//! - VIPs in 10.77.1.0/24 and fd77:1::/64: [`COMPILER_VIP4`] and friends.
//!   Clients route them via the LB; compilers and CAs hold them on `lo`
//!   (arp_ignore=1, arp_announce=2, so they never answer ARP for them) and
//!   answer clients directly (DSR).
//! - Every backend runs `voxlb-testd` on port 8140 (HTTPS, dual-stack) with a
//!   certificate naming its own addresses, the VIPs and [`SERVICE_NAME`]; its
//!   plain control routes are on port 9140.
//! - Every veth has tx checksum and VLAN offload off, and the bridge side of
//!   the LB's veth runs an XDP_PASS program: see `docs/e2e.md` for why.
//!
//! Every name carries a unique prefix `KIND-PID-N` and everything is removed
//! when the [`Topology`] is dropped (processes killed, namespaces deleted,
//! pins and the work directory removed), also on a failed build; leftovers of
//! runs that died are swept on the next build.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use rustls::ClientConfig;

use crate::{
    backend::Stats,
    client,
    netns::{self, NsRuntime},
    pki::{HostSpec, Pki},
};

/// Compiler VIP (IPv4).
pub const COMPILER_VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
/// CA VIP (IPv4).
pub const CA_VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 11);
/// Compiler VIP (IPv6): fd77:1::10.
pub const COMPILER_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x10);
/// CA VIP (IPv6): fd77:1::11.
pub const CA_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x11);
/// The agents' port.
pub const PORT: u16 = 8140;
/// The backends' plain-HTTP control port.
pub const CONTROL_PORT: u16 = 9140;
/// DNS name in every backend certificate (what health checks verify).
pub const SERVICE_NAME: &str = "puppet.vxe.test";
/// The interface name inside every node namespace.
pub const IFACE: &str = "eth0";
/// The veth peer of the LB, on the bridge side.
pub const LB_PEER: &str = "p-lb";

/// Upper bound for any single wait of the fixture; never reached when
/// things work.
const PATIENCE: Duration = Duration::from_secs(20);

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Name prefix kind: `vxe` for tests, `vxd` for the demo. Stale objects
    /// are swept per kind.
    pub kind: &'static str,
    /// Number of compiler namespaces (≥ 1).
    pub compilers: usize,
    /// Source addresses in the client namespace, per family.
    pub client_addrs: usize,
    /// The `voxlb-testd` binary.
    pub testd: PathBuf,
}

/// One namespace on the segment.
#[derive(Clone, Debug)]
pub struct Node {
    /// Short name (`lb`, `cl`, `c1`, `ca1`, ...), also the certificate name.
    pub name: String,
    /// Namespace name.
    pub ns: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// MAC of its `eth0`, read from the namespace.
    pub mac: [u8; 6],
}

impl Node {
    /// The backend control endpoint (reachable from the client namespace).
    pub fn control(&self) -> SocketAddr {
        SocketAddr::new(self.ip4.into(), CONTROL_PORT)
    }

    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Removes what it names on drop; filled in as the build goes, so that a
/// failed build cleans up too.
#[derive(Default)]
struct Guard {
    namespaces: Vec<String>,
    pin_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    children: Vec<Child>,
    keep: bool,
}

impl Guard {
    fn cleanup(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        remove_made(&mut self.namespaces, &mut self.pin_dir, &mut self.work_dir);
    }
}

/// What a topology made, removed once its own children are gone: whatever
/// else runs in its namespaces (a daemon a test started and lost track of
/// was started by us too), its pin directory, the namespaces, its work
/// directory.
pub(crate) fn remove_made(
    namespaces: &mut Vec<String>,
    pin_dir: &mut Option<PathBuf>,
    work_dir: &mut Option<PathBuf>,
) {
    for ns in namespaces.iter() {
        netns::kill_all_in(ns);
    }
    if let Some(p) = pin_dir.take() {
        netns::remove_tree(&p);
    }
    for ns in namespaces.drain(..) {
        netns::delete_ns(&ns);
    }
    if let Some(w) = work_dir.take() {
        netns::remove_tree(&w);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.keep {
            self.cleanup();
        }
    }
}

/// A built topology. Drop removes it.
pub struct Topology {
    /// `KIND-PID-N`.
    pub prefix: String,
    pub bridge_ns: String,
    pub lb: Node,
    pub client: Node,
    pub compilers: Vec<Node>,
    pub ca: Node,
    pub ca_standby: Node,
    /// Client source addresses (IPv4), first is `client.ip4`.
    pub client_addrs4: Vec<Ipv4Addr>,
    /// Client source addresses (IPv6), first is `client.ip6`.
    pub client_addrs6: Vec<Ipv6Addr>,
    /// `/sys/fs/bpf/PREFIX`: every pin of this topology lives under it.
    pub pin_dir: PathBuf,
    /// `$TMPDIR/PREFIX`: PKI, logs, configs.
    pub work_dir: PathBuf,
    pub pki: Pki,
    /// Client TLS configuration trusting the topology's CA.
    pub tls: Arc<ClientConfig>,
    /// A runtime in the client namespace, for traffic and backend control.
    pub rt: NsRuntime,
    testd: PathBuf,
    guard: Guard,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Namespaces as `(short name, ip4, ip6)`.
fn plan(spec: &Spec) -> Vec<(String, Ipv4Addr, Ipv6Addr)> {
    let v6 = |last: u16| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, last);
    let mut nodes = vec![
        ("lb".to_owned(), Ipv4Addr::new(10, 77, 0, 2), v6(2)),
        ("cl".to_owned(), Ipv4Addr::new(10, 77, 0, 100), v6(0x100)),
    ];
    for i in 1..=spec.compilers {
        nodes.push((
            format!("c{i}"),
            Ipv4Addr::new(10, 77, 0, 10 + i as u8),
            v6(0x10 + i as u16),
        ));
    }
    nodes.push(("ca1".to_owned(), Ipv4Addr::new(10, 77, 0, 31), v6(0x31)));
    nodes.push(("ca2".to_owned(), Ipv4Addr::new(10, 77, 0, 32), v6(0x32)));
    nodes
}

impl Topology {
    /// Builds the whole topology and starts the backends. Needs root.
    pub fn build(spec: &Spec) -> anyhow::Result<Topology> {
        anyhow::ensure!(netns::is_root(), "building a topology needs root");
        anyhow::ensure!(
            (1..=9).contains(&spec.compilers),
            "1 to 9 compilers (addresses .11 to .19)"
        );
        anyhow::ensure!(
            (1..=100).contains(&spec.client_addrs),
            "1 to 100 client addresses"
        );
        netns::ensure_bpffs()?;
        netns::sweep_stale(spec.kind);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}-{}-{n}", spec.kind, std::process::id());
        Self::build_named(spec, prefix)
    }

    /// [`Topology::build`] with a given prefix (the demo uses a fixed one, so
    /// that `--cleanup` finds it).
    pub fn build_named(spec: &Spec, prefix: String) -> anyhow::Result<Topology> {
        let pin_dir = Path::new(netns::BPFFS).join(&prefix);
        let work_dir = std::env::temp_dir().join(&prefix);
        let mut guard = Guard::default();
        guard.pin_dir = Some(pin_dir.clone());
        guard.work_dir = Some(work_dir.clone());
        create_dir(&pin_dir)?;
        create_dir(&work_dir)?;

        let bridge_ns = format!("{prefix}-br");
        let ns_of = |name: &str| format!("{prefix}-{name}");
        let nodes = plan(spec);
        for name in std::iter::once(bridge_ns.clone()).chain(nodes.iter().map(|n| ns_of(&n.0))) {
            add_namespace(&name, &mut guard.namespaces)?;
        }
        // The segment.
        add_bridge(&bridge_ns, "br0")?;
        bridge_netfilter_off(&bridge_ns);
        let mut built = Vec::new();
        for (name, ip4, ip6) in &nodes {
            built.push(plug_node(&bridge_ns, name, ns_of(name), *ip4, *ip6)?);
        }
        let take = |name: &str| built.iter().find(|n| n.name == name).cloned();
        let lb = take("lb").context("lb node")?;
        let client = take("cl").context("client node")?;
        let ca = take("ca1").context("ca node")?;
        let ca_standby = take("ca2").context("ca standby node")?;
        let compilers: Vec<Node> = (1..=spec.compilers)
            .filter_map(|i| take(&format!("c{i}")))
            .collect();

        // Backends: the VIPs on lo, never announced.
        for node in compilers.iter().chain([&ca, &ca_standby]) {
            hold_vips_on_lo(
                &node.ns,
                &[COMPILER_VIP4, CA_VIP4],
                &[COMPILER_VIP6, CA_VIP6],
            )?;
        }
        let (client_addrs4, client_addrs6) = add_client_addrs(&client, spec.client_addrs)?;
        route_vips_via_lb(&client.ns, &lb)?;
        // XDP_TX out of the LB's veth needs an XDP program on its peer.
        let peer_pin = pin_dir.join(format!("veth_peer_{LB_PEER}"));
        netns::run_in(&bridge_ns, || {
            lb_testkit::veth::attach_veth_peer(LB_PEER, &peer_pin)
        })??;
        let pki = certificates(&work_dir, compilers.iter().chain([&ca, &ca_standby]))?;
        let tls = client::tls_config(pki.ca_pem.as_bytes())?;
        let rt = NsRuntime::new(&client.ns, 2)?;

        let mut topo = Topology {
            prefix,
            bridge_ns,
            lb,
            client,
            compilers,
            ca,
            ca_standby,
            client_addrs4,
            client_addrs6,
            pin_dir,
            work_dir,
            pki,
            tls,
            rt,
            testd: spec.testd.clone(),
            guard,
        };
        let backends: Vec<Node> = topo.backends().cloned().collect();
        for node in &backends {
            topo.start_backend(node)?;
        }
        Ok(topo)
    }

    /// Compilers, then the CA primary and standby.
    pub fn backends(&self) -> impl Iterator<Item = &Node> {
        self.compilers.iter().chain([&self.ca, &self.ca_standby])
    }

    /// The backend node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.backends()
            .chain([&self.lb, &self.client])
            .find(|n| n.name == name)
    }

    /// Where the LB's maps and links are pinned (under [`Topology::pin_dir`]).
    pub fn lb_pin_dir(&self) -> PathBuf {
        self.pin_dir.join("lb")
    }

    /// Compiler VIP socket address (`v6` picks the family).
    pub fn compiler_vip(&self, v6: bool) -> SocketAddr {
        if v6 {
            SocketAddr::new(COMPILER_VIP6.into(), PORT)
        } else {
            SocketAddr::new(COMPILER_VIP4.into(), PORT)
        }
    }

    /// CA VIP socket address.
    pub fn ca_vip(&self, v6: bool) -> SocketAddr {
        if v6 {
            SocketAddr::new(CA_VIP6.into(), PORT)
        } else {
            SocketAddr::new(CA_VIP4.into(), PORT)
        }
    }

    /// Client source addresses of a family.
    pub fn sources(&self, v6: bool) -> Vec<IpAddr> {
        if v6 {
            self.client_addrs6.iter().map(|a| (*a).into()).collect()
        } else {
            self.client_addrs4.iter().map(|a| (*a).into()).collect()
        }
    }

    /// Starts `voxlb-testd` on `node` (HTTPS on `[::]:8140`, control on
    /// `[::]:9140`) and waits for its ready line.
    pub fn start_backend(&mut self, node: &Node) -> anyhow::Result<()> {
        let child = spawn_testd(&self.testd, &self.work_dir, node)?;
        self.guard.children.push(child);
        Ok(())
    }

    /// Kills (SIGKILL) the backend process of `node`: it stops answering,
    /// health checks included.
    pub fn kill_backend(&mut self, node: &Node) {
        netns::kill_all_in(&node.ns);
    }

    /// Keeps everything on drop (the demo's `--keep`): processes keep running,
    /// namespaces and pins stay.
    pub fn keep(&mut self) {
        self.guard.keep = true;
        // Forget the child handles without killing or reaping them.
        for c in self.guard.children.drain(..) {
            std::mem::forget(c);
        }
    }

    /// A control call to a backend (plain HTTP from the client namespace).
    pub fn control(&self, node: &Node, method: &str, path: &str) -> anyhow::Result<String> {
        let addr = node.control();
        let (m, p) = (method.to_owned(), path.to_owned());
        let r = self.rt.run(async move {
            tokio::time::timeout(PATIENCE, async {
                let mut c = client::connect_plain(addr).await?;
                c.request(&m, &p).await
            })
            .await
            .context("control call timed out")?
        })??;
        anyhow::ensure!(r.status() == 200, "{method} {path}: status {}", r.status());
        Ok(r.text())
    }

    /// A backend's counters.
    pub fn backend_stats(&self, node: &Node) -> anyhow::Result<Stats> {
        let text = self.control(node, "GET", "/control/stats")?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Stats {
            connections: n("connections"),
            active_connections: n("active_connections"),
            requests: n("requests"),
            failing: v["failing"].as_bool().unwrap_or(false),
        })
    }

    /// Opens `count` TLS connections to `vip`, round-robin over the client
    /// source addresses of the VIP's family, `concurrency` at a time; each
    /// asks `/whoami` and closes. Returns the number of answers per backend
    /// name; any failed connection is an error.
    pub fn whoami_spread(
        &self,
        vip: SocketAddr,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let sources = self.sources(vip.is_ipv6());
        let tls = self.tls.clone();
        self.rt.run(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..count {
                let permit = sem.clone().acquire_owned().await?;
                let src = sources[i % sources.len()];
                let tls = tls.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    whoami(src, vip, tls).await
                });
            }
            let mut counts = BTreeMap::new();
            while let Some(r) = tasks.join_next().await {
                *counts.entry(r??).or_insert(0) += 1;
            }
            anyhow::Ok(counts)
        })?
    }

    /// Starts `count` long downloads (`/large`, `bytes` in `chunk`s every
    /// `delay_ms`) through `vip`, one TLS connection each, round-robin over
    /// the client addresses. Returns once every response head is in (so the
    /// backend of each is known); the bodies stream on in the background.
    pub fn start_transfers(
        &self,
        vip: SocketAddr,
        count: usize,
        load: Load,
    ) -> anyhow::Result<Vec<Transfer>> {
        let sources = self.sources(vip.is_ipv6());
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let src = sources[i % sources.len()];
            let tls = self.tls.clone();
            let (backend, task) = self.rt.run(async move {
                let stream = client::connect_from(src, vip).await?;
                let mut c = client::tls_over(stream, &vip.ip().to_string(), tls).await?;
                let path = format!(
                    "/large?bytes={}&chunk={}&delay_ms={}",
                    load.bytes, load.chunk, load.delay_ms
                );
                let head = tokio::time::timeout(PATIENCE, c.send("GET", &path, &[]))
                    .await
                    .context("response head timed out")??;
                anyhow::ensure!(head.status == 200, "status {}", head.status);
                let backend = head.header("X-Backend").unwrap_or("?").to_owned();
                let task = tokio::spawn(finish_transfer(c, head, backend.clone()));
                anyhow::Ok((backend, task))
            })??;
            out.push(Transfer { backend, src, task });
        }
        Ok(out)
    }

    /// Waits for every transfer and returns, per transfer, its backend and
    /// the outcome (see [`Transfer`]).
    pub fn finish_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Vec<(String, anyhow::Result<TransferEnd>)> {
        transfers
            .into_iter()
            .map(|t| {
                let r = self.rt.wait(t.task).and_then(|r| r);
                (
                    t.backend,
                    r.with_context(|| format!("transfer from {}", t.src)),
                )
            })
            .collect()
    }

    /// Adds one more namespace `PREFIX-NAME` on the segment (veth `p-NAME`
    /// on the bridge, `eth0` inside, offloads off, the addresses given),
    /// removed with the topology. For topologies with several LB hosts and
    /// a router (`crate::multi`).
    pub fn add_node(&mut self, name: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> anyhow::Result<Node> {
        let ns = format!("{}-{name}", self.prefix);
        add_namespace(&ns, &mut self.guard.namespaces)?;
        plug_node(&self.bridge_ns, name, ns, ip4, ip6)
    }

    /// Kills and reaps `child` with the topology.
    pub fn adopt_child(&mut self, child: Child) {
        self.guard.children.push(child);
    }

    /// Shell commands that remove the topology by hand.
    pub fn teardown_commands(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .guard
            .namespaces
            .iter()
            .map(|ns| format!("ip netns del {ns}"))
            .collect();
        v.push(format!("rm -rf {}", self.pin_dir.display()));
        v
    }
}

/// Size and pace of a long download.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub bytes: u64,
    pub chunk: u64,
    pub delay_ms: u64,
}

impl Load {
    /// About `secs` seconds of streaming: 2 MiB in 16 KiB chunks.
    pub fn lasting(secs: u64) -> Load {
        let chunks = 128;
        Load {
            bytes: chunks * 16 * 1024,
            chunk: 16 * 1024,
            delay_ms: secs * 1000 / chunks,
        }
    }
}

/// A long download in progress.
pub struct Transfer {
    /// `X-Backend` of the response: who serves it.
    pub backend: String,
    pub src: IpAddr,
    task: tokio::task::JoinHandle<anyhow::Result<TransferEnd>>,
}

/// How a transfer ended (when the whole body came in, intact).
#[derive(Clone, Debug)]
pub struct TransferEnd {
    pub bytes: u64,
    /// `/whoami` asked on the same connection after the body: still the
    /// same backend, or the connection would have been reset.
    pub backend_after: String,
}

async fn finish_transfer(
    mut c: client::TlsClient,
    head: client::ResponseHead,
    backend: String,
) -> anyhow::Result<TransferEnd> {
    use tokio::io::AsyncReadExt;
    let total = head.content_length;
    let read = async {
        let mut body = c.body(&head);
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        while offset < total {
            let n = body.read(&mut buf).await?;
            anyhow::ensure!(
                n > 0,
                "body of {backend} ended at {offset} of {total} bytes"
            );
            if let Some(bad) = crate::pattern::first_mismatch(offset, &buf[..n]) {
                bail!("body of {backend} corrupt at byte {bad}");
            }
            offset += n as u64;
        }
        anyhow::Ok(offset)
    };
    // Generous: transfers last seconds.
    let bytes = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .context("transfer timed out")??;
    let r = tokio::time::timeout(PATIENCE, c.get("/whoami"))
        .await
        .context("whoami after the transfer timed out")??;
    Ok(TransferEnd {
        bytes,
        backend_after: r.text(),
    })
}

/// One TLS connection from `src` to `vip`: `GET /whoami`, the backend's name.
pub async fn whoami(
    src: IpAddr,
    vip: SocketAddr,
    tls: Arc<ClientConfig>,
) -> anyhow::Result<String> {
    tokio::time::timeout(PATIENCE, async {
        let stream = client::connect_from(src, vip).await?;
        let mut c = client::tls_over(stream, &vip.ip().to_string(), tls).await?;
        let r = c.get("/whoami").await?;
        anyhow::ensure!(r.status() == 200, "whoami: status {}", r.status());
        Ok(r.text())
    })
    .await
    .with_context(|| format!("whoami from {src} to {vip} timed out"))?
}

/// Starts `voxlb-testd` on `node` (HTTPS on `[::]:8140`, control on
/// `[::]:9140`, certificate `work_dir/pki/NAME.pem`) and waits for its
/// ready line. The caller owns (and must kill) the child.
pub fn spawn_testd(testd: &Path, work_dir: &Path, node: &Node) -> anyhow::Result<Child> {
    let pki = work_dir.join("pki");
    let log = std::fs::File::create(work_dir.join(format!("{}.log", node.name)))?;
    let mut child = netns::command_in(&node.ns, testd)
        .args(["--name", &node.name, "--listen"])
        .arg(format!("[::]:{PORT}"))
        .arg("--cert")
        .arg(pki.join(format!("{}.pem", node.name)))
        .arg("--key")
        .arg(pki.join(format!("{}.key", node.name)))
        .arg("--control")
        .arg(format!("[::]:{CONTROL_PORT}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", testd.display()))?;
    let stdout = child.stdout.take().context("testd stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Drain until the process ends.
        for _ in lines {}
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(Some(Ok(line))) if line.contains("\"ready\":true") => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "backend {} did not get ready ({other:?}); see {}",
                node.name,
                work_dir.join(format!("{}.log", node.name)).display()
            )
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A namespace `ns` with `lo` up, noted in `namespaces` (a guard's list, so
/// that it is removed with the topology).
pub(crate) fn add_namespace(ns: &str, namespaces: &mut Vec<String>) -> anyhow::Result<()> {
    netns::run("ip", &["netns", "add", ns])?;
    namespaces.push(ns.to_owned());
    netns::ip(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// A bridge `bridge` in namespace `ns`, up, without multicast snooping.
pub(crate) fn add_bridge(ns: &str, bridge: &str) -> anyhow::Result<()> {
    netns::ip(
        ns,
        &[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    netns::ip(ns, &["link", "set", bridge, "up"])?;
    Ok(())
}

/// Bridged IP must not go through netfilter (absent without br_netfilter,
/// hence no error).
pub(crate) fn bridge_netfilter_off(ns: &str) {
    for family in ["iptables", "ip6tables", "arptables"] {
        let _ = netns::exec(
            ns,
            "sysctl",
            &["-qw", &format!("net.bridge.bridge-nf-call-{family}=0")],
        );
    }
}

/// Plugs interface `dev` of namespace `ns` into `bridge` of `bridge_ns`: a
/// veth whose bridge end is `port`, offloads off at both ends, the
/// addresses `a4` and `a6` (each with its prefix length) on `dev`, up.
pub(crate) fn plug(
    bridge_ns: &str,
    bridge: &str,
    port: &str,
    ns: &str,
    dev: &str,
    a4: &str,
    a6: &str,
) -> anyhow::Result<()> {
    netns::ip(
        bridge_ns,
        &[
            "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns,
        ],
    )?;
    netns::ip(bridge_ns, &["link", "set", port, "master", bridge, "up"])?;
    offloads_off(bridge_ns, port)?;
    offloads_off(ns, dev)?;
    netns::ip(ns, &["addr", "add", a4, "dev", dev])?;
    netns::ip(ns, &["-6", "addr", "add", a6, "dev", dev, "nodad"])?;
    netns::ip(ns, &["link", "set", dev, "up"])?;
    Ok(())
}

/// Node `name` (namespace `ns`) on the segment `br0`: its `eth0` behind
/// the bridge port `p-NAME`, with `ip4`/24 and `ip6`/64.
fn plug_node(
    bridge_ns: &str,
    name: &str,
    ns: String,
    ip4: Ipv4Addr,
    ip6: Ipv6Addr,
) -> anyhow::Result<Node> {
    let port = format!("p-{name}");
    plug(
        bridge_ns,
        "br0",
        &port,
        &ns,
        IFACE,
        &format!("{ip4}/24"),
        &format!("{ip6}/64"),
    )?;
    let mac = read_mac(&ns, IFACE)?;
    Ok(Node {
        name: name.to_owned(),
        ns,
        ip4,
        ip6,
        mac,
    })
}

/// A backend's VIPs on `lo` of namespace `ns`, which never answers ARP for
/// them nor uses them as the source of its own ARP.
pub(crate) fn hold_vips_on_lo(
    ns: &str,
    vips4: &[Ipv4Addr],
    vips6: &[Ipv6Addr],
) -> anyhow::Result<()> {
    for k in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        netns::exec(ns, "sysctl", &["-qw", k])?;
    }
    for vip in vips4 {
        netns::ip(ns, &["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
    }
    for vip in vips6 {
        netns::ip(
            ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{vip}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        )?;
    }
    Ok(())
}

/// The client's source addresses: its own, then `count - 1` more added to
/// its interface.
fn add_client_addrs(client: &Node, count: usize) -> anyhow::Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>)> {
    let mut client_addrs4 = vec![client.ip4];
    let mut client_addrs6 = vec![client.ip6];
    for i in 1..count {
        let a4 = Ipv4Addr::new(10, 77, 0, 100 + i as u8);
        let a6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100 + i as u16);
        netns::ip(
            &client.ns,
            &["addr", "add", &format!("{a4}/24"), "dev", IFACE],
        )?;
        netns::ip(
            &client.ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                IFACE,
                "nodad",
            ],
        )?;
        client_addrs4.push(a4);
        client_addrs6.push(a6);
    }
    Ok((client_addrs4, client_addrs6))
}

/// Namespace `ns` reaches the VIPs' subnets through the LB.
pub fn route_vips_via_lb(ns: &str, lb: &Node) -> anyhow::Result<()> {
    netns::ip(
        ns,
        &["route", "add", "10.77.1.0/24", "via", &lb.ip4.to_string()],
    )?;
    netns::ip(
        ns,
        &[
            "-6",
            "route",
            "add",
            "fd77:1::/64",
            "via",
            &lb.ip6.to_string(),
        ],
    )?;
    Ok(())
}

/// Certificates: each backend's own addresses, the VIPs, the service.
fn certificates<'a>(
    work_dir: &Path,
    backends: impl Iterator<Item = &'a Node>,
) -> anyhow::Result<Pki> {
    let hosts: Vec<HostSpec> = backends
        .map(|n| HostSpec::new(&n.name, &[n.ip4.into(), n.ip6.into()]))
        .collect();
    let extra: Vec<String> = [COMPILER_VIP4.to_string(), CA_VIP4.to_string()]
        .into_iter()
        .chain([COMPILER_VIP6.to_string(), CA_VIP6.to_string()])
        .chain([SERVICE_NAME.to_owned()])
        .collect();
    crate::pki::generate(&work_dir.join("pki"), "voxlb e2e CA", &hosts, &extra)
}

/// `ethtool -K DEV tx off txvlan off` (see docs/e2e.md).
pub fn offloads_off(ns: &str, dev: &str) -> anyhow::Result<()> {
    netns::exec(ns, "ethtool", &["-K", dev, "tx", "off", "txvlan", "off"]).map(|_| ())
}

/// The MAC address of `dev` in `ns`.
pub fn read_mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = netns::ip(ns, &["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {dev} in {ns}"))?;
    parse_mac(text)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    anyhow::ensure!(parts.len() == 6, "bad MAC {text:?}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {text:?}"))?;
    }
    Ok(mac)
}
