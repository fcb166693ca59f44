//! A test-only encapsulating hop: stands in for the load balancer's
//! `ipip`/`gue` forwarding (not in the XDP program yet) so that the
//! compiler side (`voxlb decap`) can be proven with real TCP/TLS traffic.
//!
//! In the LB namespace it creates a TUN device and routes the VIPs into it;
//! the LB namespace forwards the clients' packets there. A thread reads each
//! inner packet, wraps it in an outer IPv4 or IPv6 header (IPIP, or UDP +
//! GUE version 1 "direct IP") addressed to a compiler, and sends it with a
//! raw socket, so the kernel routes it to the router like any packet the LB
//! sends. Replies never come back here (DSR).
//!
//! The outer headers follow what the LB will send: DSCP copied from the
//! inner header, DF set on IPv4, TTL/hop limit 64, the GUE source port
//! derived from a hash of the inner flow, UDP checksum 0 over IPv4 and
//! computed over IPv6. The compiler is picked by that hash among the
//! configured ones (a stand-in for Maglev; the tests use it with one
//! compiler per family or check only that downloads complete).

use std::{
    fs::File,
    io::Read,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::netns;

/// The encapsulation the hop applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    Ipip,
    /// GUE v1 (direct IP) to this UDP port.
    Gue(u16),
}

/// What the hop does.
#[derive(Clone, Debug)]
pub struct HopSpec {
    /// The LB namespace.
    pub ns: String,
    /// VIPs routed into the hop.
    pub vips: Vec<IpAddr>,
    /// Outer source (an address of the LB namespace), per family.
    pub src4: IpAddr,
    pub src6: IpAddr,
    /// Outer destinations (compilers); all of one family.
    pub compilers: Vec<IpAddr>,
    pub encap: Encap,
    /// ICMP errors to a VIP (a router on the compilers' return path
    /// telling the VIP "fragmentation needed" / "packet too big"): `true`
    /// forwards each to the compiler of the flow it quotes, as the LB must;
    /// `false` drops them, as an LB that passes them to its own kernel
    /// effectively does.
    pub steer_icmp: bool,
}

/// A running hop; stops and removes its device on drop.
pub struct EncapHop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Packets wrapped and sent.
    pub sent: Arc<AtomicU64>,
    /// Packets that could not be sent (a send error).
    pub errors: Arc<AtomicU64>,
    /// ICMP errors to a VIP seen (steered or not).
    pub icmp: Arc<AtomicU64>,
    ns: String,
    dev: String,
}

const TUN_DEV: &str = "vxhop0";
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IPV6_HDRINCL: libc::c_int = 36;

fn open_tun(name: &str) -> anyhow::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
    // SAFETY: a tun fd and an ifreq for TUNSETIFF.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        bail!("TUNSETIFF: {}", std::io::Error::last_os_error());
    }
    Ok(f)
}

fn raw_socket(v6: bool) -> anyhow::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if v6 {
        let one: libc::c_int = 1;
        // SAFETY: a valid option value of its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                IPV6_HDRINCL,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            bail!("IPV6_HDRINCL: {}", std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// FNV-1a over the inner addresses, protocol and ports (the first 4 bytes
/// after the IP header; good enough for a test hop).
fn flow_hash(inner: &[u8]) -> u32 {
    let (addrs, proto, l4) = match inner[0] >> 4 {
        4 if inner.len() >= 20 => {
            let ihl = ((inner[0] & 0xf) as usize) * 4;
            (&inner[12..20], inner[9], inner.get(ihl..ihl + 4))
        }
        6 if inner.len() >= 40 => (&inner[8..40], inner[6], inner.get(40..44)),
        _ => (&inner[..0], 0, None),
    };
    let mut h: u32 = 0x811c_9dc5;
    for b in addrs.iter().chain([proto].iter()).chain(l4.unwrap_or(&[])) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// For an ICMP "fragmentation needed" / ICMPv6 "packet too big", the
/// quoted packet's header reversed (source and destination addresses and
/// ports swapped), in the form [`flow_hash`] reads.
fn quoted_flow(pkt: &[u8]) -> Option<Vec<u8>> {
    match pkt[0] >> 4 {
        4 => {
            let ihl = ((pkt[0] & 0xf) as usize) * 4;
            // ICMP type 3 code 4, the quoted IPv4 header 8 bytes later.
            if pkt[9] != 1 || pkt.get(ihl) != Some(&3) || pkt.get(ihl + 1) != Some(&4) {
                return None;
            }
            let q = pkt.get(ihl + 8..)?;
            let qihl = ((q.first()? & 0xf) as usize) * 4;
            let mut r = q.get(..qihl + 4)?.to_vec();
            r[..20].copy_from_slice(&q[..20]);
            r[12..16].copy_from_slice(&q[16..20]);
            r[16..20].copy_from_slice(&q[12..16]);
            r[qihl..qihl + 2].copy_from_slice(&q[qihl + 2..qihl + 4]);
            r[qihl + 2..qihl + 4].copy_from_slice(&q[qihl..qihl + 2]);
            Some(r)
        }
        6 => {
            // ICMPv6 type 2 (packet too big), the quoted header 8 bytes later.
            if pkt[6] != 58 || pkt.get(40) != Some(&2) {
                return None;
            }
            let q = pkt.get(48..)?;
            let mut r = q.get(..44)?.to_vec();
            r[8..24].copy_from_slice(&q[24..40]);
            r[24..40].copy_from_slice(&q[8..24]);
            r[40..42].copy_from_slice(&q[42..44]);
            r[42..44].copy_from_slice(&q[40..42]);
            Some(r)
        }
        _ => None,
    }
}

/// The outer packet (IP header onwards) around `inner`.
pub fn encapsulate(inner: &[u8], src: IpAddr, dst: IpAddr, encap: Encap) -> Vec<u8> {
    let inner_v4 = inner[0] >> 4 == 4;
    let dscp = if inner_v4 {
        inner[1] & 0xfc
    } else {
        ((u16::from_be_bytes([inner[0], inner[1]]) >> 4) as u8) & 0xfc
    };
    let hash = flow_hash(inner);
    let (proto, payload) = match encap {
        Encap::Ipip => (if inner_v4 { 4u8 } else { 41 }, inner.to_vec()),
        Encap::Gue(port) => {
            let len = 8 + inner.len();
            // Ephemeral range, from the flow hash: ECMP spreads flows.
            let sport = 0xc000 | (hash as u16 & 0x3fff);
            let mut u = Vec::with_capacity(len);
            u.extend_from_slice(&sport.to_be_bytes());
            u.extend_from_slice(&port.to_be_bytes());
            u.extend_from_slice(&(len as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(inner);
            if let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) {
                let mut pseudo = Vec::with_capacity(40);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
                let mut c = fold(sum16(&pseudo) + sum16(&u));
                if c == 0 {
                    c = 0xffff;
                }
                u[6..8].copy_from_slice(&c.to_be_bytes());
            }
            (17, u)
        }
    };
    let mut out = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x45, dscp]);
            out.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let c = fold(sum16(&out));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let vtf: u32 = (6 << 28) | ((dscp as u32) << 20);
            out.extend_from_slice(&vtf.to_be_bytes());
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => panic!("outer source and destination of different families"),
    }
    out.extend_from_slice(&payload);
    out
}

fn send_to(fd: &OwnedFd, pkt: &[u8], dst: IpAddr) -> std::io::Result<()> {
    let rc = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: valid buffer and address for their lengths.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: valid buffer and address for their lengths.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl EncapHop {
    /// Create the device, route the VIPs into it and start wrapping.
    pub fn start(spec: &HopSpec) -> anyhow::Result<EncapHop> {
        anyhow::ensure!(!spec.compilers.is_empty(), "no compiler to send to");
        let v6 = spec.compilers[0].is_ipv6();
        anyhow::ensure!(
            spec.compilers.iter().all(|c| c.is_ipv6() == v6),
            "compilers of one family"
        );
        let src = if v6 { spec.src6 } else { spec.src4 };
        let (tun, raw) = netns::run_in(&spec.ns, || -> anyhow::Result<_> {
            Ok((open_tun(TUN_DEV)?, raw_socket(v6)?))
        })??;
        let mut hop = EncapHop {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            sent: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            icmp: Arc::new(AtomicU64::new(0)),
            ns: spec.ns.clone(),
            dev: TUN_DEV.into(),
        };
        for k in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            netns::exec(&spec.ns, "sysctl", &["-qw", k])?;
        }
        netns::ip(&spec.ns, &["link", "set", TUN_DEV, "up"])?;
        for vip in &spec.vips {
            let (fam, plen) = if vip.is_ipv6() {
                ("-6", 128)
            } else {
                ("-4", 32)
            };
            netns::ip(
                &spec.ns,
                &[
                    fam,
                    "route",
                    "replace",
                    &format!("{vip}/{plen}"),
                    "dev",
                    TUN_DEV,
                ],
            )?;
        }
        let (stop, sent, errors) = (hop.stop.clone(), hop.sent.clone(), hop.errors.clone());
        let (icmp, steer_icmp) = (hop.icmp.clone(), spec.steer_icmp);
        let compilers = spec.compilers.clone();
        let encap = spec.encap;
        hop.thread = Some(std::thread::spawn(move || {
            let mut tun = tun;
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: tun.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; bounded wait so `stop` is seen.
                if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                    continue;
                }
                let Ok(n) = tun.read(&mut buf) else { break };
                let inner = &buf[..n];
                if n < 20 || !matches!(inner[0] >> 4, 4 | 6) {
                    continue;
                }
                let hash = match quoted_flow(inner) {
                    Some(quoted) => {
                        icmp.fetch_add(1, Ordering::Relaxed);
                        if !steer_icmp {
                            continue;
                        }
                        // The quoted packet went compiler -> client: its
                        // reverse is the client's flow, hashed the same way.
                        flow_hash(&quoted)
                    }
                    None => flow_hash(inner),
                };
                let dst = compilers[hash as usize % compilers.len()];
                let pkt = encapsulate(inner, src, dst, encap);
                match send_to(&raw, &pkt, dst) {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
        Ok(hop)
    }
}

impl Drop for EncapHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The device goes with the last descriptor (the thread's); make sure.
        let _ = netns::ip(&self.ns, &["link", "del", &self.dev]);
        std::thread::sleep(Duration::from_millis(10));
    }
}
