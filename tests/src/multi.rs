//! Several LB hosts in one [`Topology`]: what a site runs when one LB host
//! must not be a single point of failure.
//!
//! ```text
//!                               {prefix}-br (bridge)
//!   cl (agents)   rt (router)    lb, lb2, lb3 (voxlb)    c1..cN, ca1, ca2
//!   10.77.0.100   10.77.0.1      .2, .3, .4               .11.., .31, .32
//! ```
//!
//! - [`Upstream::Bgp`]: the agents route the VIPs via the router `rt`, which
//!   runs BIRD with ECMP (`merge paths`) and L4 hashing on the 5-tuple
//!   (`fib_multipath_hash_policy = 3`, see [`Multi::build`]) and peers with every LB host's
//!   voxlb-managed BIRD (eBGP, hold 3 s, BFD 100 ms × 3). A VIP reaches an LB
//!   host only while that host announces it.
//! - [`Upstream::Vrrp`]: no router; the agents route the VIPs via
//!   [`VRRP_ADDR`], which keepalived moves between `lb` and `lb2` (VRRPv3,
//!   100 ms adverts) with `voxlb check --fit` as its track script.
//!
//! The compilers answer the agents directly (DSR), as in the single-LB
//! topology. The router does not send ICMP redirects (the agents would
//! otherwise learn to bypass it: agents, router and LB hosts share the one
//! segment here, unlike a real site where the agents sit behind the router).
//! Everything is removed with the topology (namespaces, processes, pins).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use voxlb::control::{Response, StatusView};

use crate::{
    daemon::{self, Daemon, Options},
    netns,
    topology::{IFACE, Node, Spec, Topology},
};

/// AS of the router.
pub const ROUTER_AS: u32 = 65000;
/// AS of every LB host (one AS: their routes compare equal, so the router
/// merges them into one multipath route).
pub const LB_AS: u32 = 65001;
/// The router on the segment.
pub const ROUTER_IP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The address keepalived moves between the two LB hosts (VRRP layout).
pub const VRRP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);
/// VRRP advert interval (VRRPv3 allows centiseconds): the standby takes
/// over about 3 adverts after the last one.
pub const VRRP_ADVERT: &str = "0.1";

/// How the agents reach the LB hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    Bgp,
    Vrrp,
}

/// The topology with several LB hosts.
pub struct Multi {
    pub topo: Topology,
    pub upstream: Upstream,
    /// The router (BGP layout).
    pub router: Option<Node>,
    /// `lbs[0]` is the topology's `lb`; then `lb2`, `lb3`.
    pub lbs: Vec<Node>,
    /// The daemon of each LB host, once started.
    pub daemons: Vec<Option<Daemon>>,
    pub opts: Options,
    /// `keep_announcing_on_stop` in the LB hosts' `[bgp]`.
    pub keep_announcing: bool,
}

impl Multi {
    /// Builds the topology (`lbs` LB hosts, 2 or 3) and the upstream.
    pub fn build(spec: &Spec, lbs: usize, upstream: Upstream) -> anyhow::Result<Multi> {
        anyhow::ensure!((2..=3).contains(&lbs), "2 or 3 LB hosts");
        let mut topo = Topology::build(spec)?;
        let mut nodes = vec![topo.lb.clone()];
        for i in 2..=lbs {
            let n = topo.add_node(
                &format!("lb{i}"),
                Ipv4Addr::new(10, 77, 0, 1 + i as u8),
                Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1 + i as u16),
            )?;
            // XDP_TX out of an LB's veth needs an XDP program on its peer.
            let port = format!("p-lb{i}");
            let pin = topo.pin_dir.join(format!("veth_peer_{port}"));
            netns::run_in(&topo.bridge_ns, || {
                lb_testkit::veth::attach_veth_peer(&port, &pin)
            })??;
            nodes.push(n);
        }
        // The agents must take the router's (or the VRRP address's) path,
        // never a redirect to one LB host.
        netns::exec(
            &topo.client.ns,
            "sysctl",
            &["-qw", "net.ipv4.conf.all.accept_redirects=0"],
        )?;
        let mut m = Multi {
            upstream,
            router: None,
            daemons: (0..lbs).map(|_| None).collect(),
            lbs: nodes,
            opts: Options {
                compilers_in_config: spec.compilers,
                health: Default::default(),
            },
            keep_announcing: false,
            topo,
        };
        match upstream {
            Upstream::Bgp => m.start_router()?,
            Upstream::Vrrp => {
                netns::ip(
                    &m.topo.client.ns,
                    &[
                        "route",
                        "replace",
                        "10.77.1.0/24",
                        "via",
                        &VRRP_ADDR.to_string(),
                    ],
                )?;
            }
        }
        Ok(m)
    }

    fn start_router(&mut self) -> anyhow::Result<()> {
        let rt =
            self.topo
                .add_node("rt", ROUTER_IP4, Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1))?;
        for kv in [
            "net.ipv4.ip_forward=1",
            // L4 hashing on the packet's 5-tuple, as a hardware router does:
            // flows of one agent spread over the LB hosts. Not policy 1: it
            // reuses a forwarded skb's L4 hash when it has one, and here the
            // agents' sockets share the router's segment, so their TCP
            // txhash (which Linux changes on every retransmission timeout)
            // would steer the flow, moving it between LB hosts mid-connection.
            // Policy 3 hashes the fields below: src/dst address, protocol,
            // src/dst port.
            "net.ipv4.fib_multipath_hash_policy=3",
            "net.ipv4.fib_multipath_hash_fields=0x0037",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            netns::exec(&rt.ns, "sysctl", &["-qw", kv])?;
        }
        let mut conf = format!(
            "router id {ROUTER_IP4};\nlog stderr all;\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on limit 16;\n}}\n\
             protocol bfd {{\n  interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};\n}}\n"
        );
        for lb in &self.lbs {
            conf.push_str(&format!(
                "protocol bgp {name} {{\n  local as {ROUTER_AS};\n  neighbor {ip} as {LB_AS};\n  \
                 hold time 3;\n  keepalive time 1;\n  connect retry time 1;\n  error wait time 1, 10;\n  bfd on;\n  \
                 ipv4 {{ import all; export none; }};\n}}\n",
                name = lb.name,
                ip = lb.ip4
            ));
        }
        let work = &self.topo.work_dir;
        let path = work.join("router-bird.conf");
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(work.join("router-bird.log"))?;
        let child = netns::command_in(&rt.ns, "bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(self.router_socket())
            .arg("-P")
            .arg(work.join("router-bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the router's bird")?;
        self.topo.adopt_child(child);
        netns::ip(
            &self.topo.client.ns,
            &[
                "route",
                "replace",
                "10.77.1.0/24",
                "via",
                &ROUTER_IP4.to_string(),
            ],
        )?;
        self.router = Some(rt);
        Ok(())
    }

    fn router_socket(&self) -> PathBuf {
        self.topo.work_dir.join("router-bird.ctl")
    }

    /// `birdc` on the router (for diagnostics).
    pub fn router_birdc(&self, args: &[&str]) -> String {
        let Some(rt) = &self.router else {
            return String::new();
        };
        let sock = self.router_socket();
        let mut all = vec!["-s", sock.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        netns::exec(&rt.ns, "birdc", &all).unwrap_or_else(|e| format!("{e:#}"))
    }

    /// The config of LB host `i`: the single-LB config with its own pins,
    /// socket and state, plus `[bgp]` in the BGP layout.
    pub fn lb_config(&self, i: usize) -> String {
        let topo = &self.topo;
        let lb = &self.lbs[i];
        let base = daemon::config_text(topo, &self.opts);
        let mut text = base
            .replace(
                &format!("pin_dir = \"{}\"", topo.lb_pin_dir().display()),
                &format!("pin_dir = \"{}\"", self.pin_dir(i).display()),
            )
            .replace(
                &format!(
                    "control_socket = \"{}\"",
                    daemon::socket_path(topo).display()
                ),
                &format!("control_socket = \"{}\"", self.socket(i).display()),
            )
            .replace(
                &format!("state_dir = \"{}\"", topo.work_dir.join("state").display()),
                &format!(
                    "state_dir = \"{}\"",
                    topo.work_dir.join(format!("state-{}", lb.name)).display()
                ),
            );
        if self.upstream == Upstream::Bgp {
            let w = &topo.work_dir;
            text.push_str(&format!(
                "\n[bgp]\nmode = \"managed\"\nlocal_as = {LB_AS}\nrouter_id = \"{rid}\"\n\
                 bird_socket = \"{sock}\"\nbird_config = \"{conf}\"\n\n\
                 keep_announcing_on_stop = {keep}\n\n\
                 [[bgp.neighbors]]\naddress = \"{ROUTER_IP4}\"\nas = {ROUTER_AS}\nhold_time = 3\nkeepalive_time = 1\nbfd = true\n",
                keep = self.keep_announcing,
                rid = lb.ip4,
                sock = w.join(format!("bird-{}.ctl", lb.name)).display(),
                conf = w.join(format!("bird-{}.conf", lb.name)).display(),
            ));
        }
        text
    }

    /// Pin directory of LB host `i`.
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        if i == 0 {
            self.topo.lb_pin_dir()
        } else {
            self.topo.pin_dir.join(&self.lbs[i].name)
        }
    }

    /// Control socket of LB host `i`.
    pub fn socket(&self, i: usize) -> PathBuf {
        if i == 0 {
            daemon::socket_path(&self.topo)
        } else {
            self.topo
                .work_dir
                .join(format!("run-{}", self.lbs[i].name))
                .join("voxlb.sock")
        }
    }

    /// Config file path of LB host `i`.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.topo
            .work_dir
            .join(format!("voxlb-{}.toml", self.lbs[i].name))
    }

    /// Starts voxlb on LB host `i` and waits until it is ready.
    pub fn start_lb(&mut self, i: usize) -> anyhow::Result<()> {
        let lb = &self.lbs[i];
        let d = Daemon::start_in(
            &lb.ns,
            self.config_path(i),
            &self.lb_config(i),
            self.socket(i),
            self.topo.work_dir.join(format!("voxlb-{}.log", lb.name)),
        )?;
        self.daemons[i] = Some(d);
        Ok(())
    }

    /// The daemon of LB host `i`.
    pub fn daemon(&self, i: usize) -> anyhow::Result<&Daemon> {
        self.daemons[i]
            .as_ref()
            .with_context(|| format!("no daemon on {}", self.lbs[i].name))
    }

    /// `voxlb --json status` of LB host `i`.
    pub fn status(&self, i: usize) -> anyhow::Result<StatusView> {
        match self.daemon(i)?.json(&["status"])? {
            Response::Status(s) => Ok(s),
            other => bail!("status of {}: {other:?}", self.lbs[i].name),
        }
    }

    /// Packets the XDP program of LB host `i` forwarded to compilers.
    pub fn forwarded(&self, i: usize) -> anyhow::Result<u64> {
        match self.daemon(i)?.json(&["stats"])? {
            Response::Stats(s) => Ok(s
                .reasons
                .iter()
                .filter(|r| r.reason == "tx_compiler")
                .map(|r| r.packets)
                .sum()),
            other => bail!("stats of {}: {other:?}", self.lbs[i].name),
        }
    }

    /// Fingerprint of every compiler service on LB host `i`, by name.
    pub fn fingerprints(&self, i: usize) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .status(i)?
            .services
            .into_iter()
            .filter_map(|s| s.fingerprint.map(|f| (s.name, f)))
            .collect())
    }

    /// Gateways of the router's route to `vip` (empty: no route).
    pub fn nexthops(&self, vip: Ipv4Addr) -> Vec<IpAddr> {
        let Some(rt) = &self.router else {
            return Vec::new();
        };
        let Ok(out) = netns::ip(&rt.ns, &["-j", "route", "show", &format!("{vip}/32")]) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut hops = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.extend(g.parse::<IpAddr>().ok());
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = h["gateway"].as_str() {
                    hops.extend(g.parse::<IpAddr>().ok());
                }
            }
        }
        hops.sort();
        hops
    }

    /// Waits until the router's route to `vip` goes through exactly the LB
    /// hosts `want` (indices); how long it took.
    pub fn wait_nexthops(
        &self,
        vip: Ipv4Addr,
        want: &[usize],
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let mut want: Vec<IpAddr> = want.iter().map(|i| self.lbs[*i].ip4.into()).collect();
        want.sort();
        let start = Instant::now();
        let got = netns::wait_for(limit, Duration::from_millis(10), || {
            (self.nexthops(vip) == want).then(|| start.elapsed())
        });
        match got {
            Some(d) => Ok(d),
            None => bail!(
                "router: route to {vip} via {:?}, wanted {want:?} within {limit:?}\n{}",
                self.nexthops(vip),
                self.router_birdc(&["show", "protocols"])
            ),
        }
    }

    /// An LB host dies: its link goes down and every process in it (voxlb,
    /// its BIRD, keepalived) is killed with SIGKILL.
    pub fn kill_lb(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = self.lbs[i].ns.clone();
        netns::ip(&ns, &["link", "set", IFACE, "down"])?;
        if let Some(mut d) = self.daemons[i].take() {
            d.kill9();
        }
        netns::kill_all_in(&ns);
        Ok(())
    }

    /// Waits until every running LB host has the same table fingerprints
    /// (after a change, health checks on two hosts settle at slightly
    /// different times).
    pub fn wait_agree(&self, limit: Duration) -> anyhow::Result<()> {
        let up: Vec<usize> = (0..self.lbs.len())
            .filter(|i| self.daemons[*i].is_some())
            .collect();
        netns::wait_for(limit, Duration::from_millis(100), || {
            let fps: Vec<_> = up.iter().map(|i| self.fingerprints(*i).ok()).collect();
            (fps.iter().all(|f| f.is_some() && *f == fps[0])).then_some(())
        })
        .context("the LB hosts' table fingerprints do not agree")
    }

    /// Brings a dead LB host's link back (its IPv6 address too: the kernel
    /// flushes IPv6 addresses when a link goes down); start its daemon with
    /// [`Self::start_lb`].
    pub fn revive_lb(&mut self, i: usize) -> anyhow::Result<()> {
        let lb = &self.lbs[i];
        netns::ip(&lb.ns, &["link", "set", IFACE, "up"])?;
        netns::ip(
            &lb.ns,
            &[
                "-6",
                "addr",
                "replace",
                &format!("{}/64", lb.ip6),
                "dev",
                IFACE,
                "nodad",
            ],
        )?;
        Ok(())
    }

    /// Starts keepalived on LB host `i` (VRRP layout) with `priority`; its
    /// track script is `voxlb check --fit`.
    pub fn start_keepalived(&mut self, i: usize, priority: u8) -> anyhow::Result<()> {
        let lb = self.lbs[i].clone();
        let w = self.topo.work_dir.clone();
        let bin = daemon::voxlb_bin()?;
        let conf = w.join(format!("keepalived-{}.conf", lb.name));
        let text = format!(
            "global_defs {{\n  router_id {name}\n  script_user root\n  enable_script_security\n}}\n\
             vrrp_script voxlb_fit {{\n  script \"{bin} --socket {sock} check --fit --quiet\"\n  interval 1\n  timeout 3\n  fall 1\n  rise 2\n}}\n\
             vrrp_instance voxlb {{\n  state BACKUP\n  interface {IFACE}\n  virtual_router_id 77\n  version 3\n  \
             priority {priority}\n  advert_int {VRRP_ADVERT}\n  virtual_ipaddress {{\n    {VRRP_ADDR}/24 dev {IFACE}\n  }}\n  \
             track_script {{\n    voxlb_fit\n  }}\n  notify \"{notify} {state}\"\n}}\n",
            name = lb.name,
            bin = bin.display(),
            sock = self.socket(i).display(),
            notify = notify_script().display(),
            state = self.vrrp_state_file(i).display(),
        );
        std::fs::write(&conf, text)?;
        let log = std::fs::File::create(w.join(format!("keepalived-{}.log", lb.name)))?;
        let child = netns::command_in(&lb.ns, "keepalived")
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(w.join(format!("keepalived-{}.pid", lb.name)))
            .arg("--vrrp_pid")
            .arg(w.join(format!("keepalived-vrrp-{}.pid", lb.name)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        self.topo.adopt_child(child);
        Ok(())
    }

    /// Where the notify hook of LB host `i` records its VRRP role.
    pub fn vrrp_state_file(&self, i: usize) -> PathBuf {
        self.topo
            .work_dir
            .join(format!("vrrp-state-{}", self.lbs[i].name))
    }

    /// The LB hosts holding [`VRRP_ADDR`] now.
    pub fn vrrp_holders(&self) -> Vec<usize> {
        (0..self.lbs.len())
            .filter(|i| {
                netns::ip(
                    &self.lbs[*i].ns,
                    &["-4", "-o", "addr", "show", "dev", IFACE],
                )
                .map(|o| o.contains(&format!("{VRRP_ADDR}/")))
                .unwrap_or(false)
            })
            .collect()
    }

    /// Waits until exactly LB host `i` holds the VRRP address.
    pub fn wait_vrrp_master(&self, i: usize, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        netns::wait_for(limit, Duration::from_millis(10), || {
            (self.vrrp_holders() == vec![i]).then(|| start.elapsed())
        })
        .with_context(|| {
            format!(
                "{} did not become the VRRP master within {limit:?} (holders {:?})",
                self.lbs[i].name,
                self.vrrp_holders()
            )
        })
    }
}

/// The keepalived notify hook shipped in `packaging/keepalived/`.
pub fn notify_script() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|w| w.join("packaging/keepalived/voxlb-notify"))
        .unwrap_or_default()
}
