//! Next-hop resolution for routed compilers: for a compiler's address, the
//! egress interface, the gateway (if any), the next hop's MAC and the
//! source address the kernel would use, all asked of the kernel over
//! rtnetlink: `RTM_GETROUTE` for that destination (the route the kernel
//! itself would pick, ECMP and policy rules included), then the neighbour
//! table (`RTM_GETNEIGH`, via [`crate::neigh`]) for the next hop on the
//! egress interface.
//!
//! A compiler that cannot be resolved (no route, a blackhole/unreachable
//! route, a local address, the next hop not in the neighbour table yet) is
//! [`Unresolved`], with the reason, so the daemon can keep it out of the
//! forwarding tables and say why in `voxlb status`. A missing neighbour is
//! solicited, so the next [`NextHops::refresh`] normally finds it.
//!
//! Re-resolution is event-driven with a bounded backstop: [`RouteWatcher`]
//! listens on the rtnetlink multicast groups for routes (v4, v6), neighbours,
//! links and addresses, and [`RouteWatcher::wait`] returns early on any of
//! them; the caller also refreshes when it times out (the daemon's period,
//! e.g. 5 s), which covers a lost notification (socket overrun, ENOBUFS)
//! and a neighbour that silently went stale. Refreshing is cheap: one
//! route query per compiler and one neighbour dump.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use crate::neigh::{MacResolver, NetlinkResolver};

/// Errors talking to the kernel (not a verdict about one destination).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: malformed reply")]
    Malformed,
}

/// A compiler's resolved next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The compiler's address.
    pub dst: IpAddr,
    /// Egress interface.
    pub ifindex: u32,
    pub ifname: String,
    /// The gateway, `None` when the compiler is on a connected subnet.
    pub gateway: Option<IpAddr>,
    /// MAC of the next hop (the gateway, else the compiler).
    pub mac: [u8; 6],
    /// The source address the kernel picks for this destination.
    pub src: Option<IpAddr>,
}

/// Why a compiler has no usable next hop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("no route to {dst}: {reason}")]
    NoRoute { dst: IpAddr, reason: String },
    #[error("{dst} is an address of this host")]
    Local { dst: IpAddr },
    #[error("route to {dst} of type {kind} (unreachable, blackhole, prohibit, ...)")]
    NotUnicast { dst: IpAddr, kind: u8 },
    #[error("route to {dst} has a next hop of another family (RTA_VIA): not supported")]
    ViaOtherFamily { dst: IpAddr },
    #[error("next hop {next_hop} of {dst} on {ifname} is not in the neighbour table (yet)")]
    NoNeighbour {
        dst: IpAddr,
        next_hop: IpAddr,
        ifname: String,
    },
    #[error("resolving {dst}: {reason}")]
    Error { dst: IpAddr, reason: String },
}

/// The kernel's route for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kind: u8,
    pub ifindex: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub via_other_family: bool,
}

const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_VIA: u16 = 18;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
// Multicast groups (linux/rtnetlink.h, RTMGRP_*).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn netlink_socket(groups: u32) -> Result<OwnedFd, RouteError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if groups != 0 {
        // SAFETY: sockaddr_nl is plain data.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: a valid socket and address of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(fd)
}

fn addr_from(val: &[u8]) -> Option<IpAddr> {
    match val.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(val).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(val).ok()?)),
        _ => None,
    }
}

/// Parse the body (after the netlink header) of an RTM_NEWROUTE message.
pub fn parse_route(body: &[u8]) -> Result<Route, RouteError> {
    if body.len() < RTMSG_LEN {
        return Err(RouteError::Malformed);
    }
    let mut r = Route {
        kind: body[7],
        ifindex: None,
        gateway: None,
        prefsrc: None,
        via_other_family: false,
    };
    let mut attrs = &body[RTMSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(RouteError::Malformed);
        }
        let val = &attrs[4..len];
        match ty {
            RTA_OIF if val.len() == 4 => {
                r.ifindex = Some(u32::from_ne_bytes(val.try_into().unwrap()))
            }
            RTA_GATEWAY => r.gateway = addr_from(val),
            RTA_PREFSRC => r.prefsrc = addr_from(val),
            RTA_VIA => r.via_other_family = true,
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(r)
}

/// Ask the kernel for its route to `dst` (like `ip route get DST`).
/// `Ok(Err(errno))` when the kernel has no route (ENETUNREACH, ...).
pub fn route_get(dst: IpAddr) -> Result<Result<Route, std::io::Error>, RouteError> {
    let fd = netlink_socket(0)?;
    let (family, bytes): (u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let attr_len = 4 + bytes.len();
    let total = NLMSG_HDRLEN + RTMSG_LEN + align4(attr_len);
    let mut req = vec![0u8; total];
    req[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let rt = NLMSG_HDRLEN;
    req[rt] = family;
    req[rt + 1] = (bytes.len() * 8) as u8; // dst_len
    let a = rt + RTMSG_LEN;
    req[a..a + 2].copy_from_slice(&(attr_len as u16).to_ne_bytes());
    req[a + 2..a + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
    req[a + 4..a + 4 + bytes.len()].copy_from_slice(&bytes);
    // SAFETY: the buffer is valid for its length; the kernel is the peer.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let msg = &buf[..n as usize];
    if msg.len() < NLMSG_HDRLEN {
        return Err(RouteError::Malformed);
    }
    let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
    let ty = u16::from_ne_bytes(msg[4..6].try_into().unwrap());
    if len < NLMSG_HDRLEN || len > msg.len() {
        return Err(RouteError::Malformed);
    }
    if ty as i32 == libc::NLMSG_ERROR {
        let errno = msg
            .get(16..20)
            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
            .ok_or(RouteError::Malformed)?;
        return Ok(Err(std::io::Error::from_raw_os_error(-errno)));
    }
    if ty != libc::RTM_NEWROUTE {
        return Err(RouteError::Malformed);
    }
    parse_route(&msg[NLMSG_HDRLEN..len]).map(Ok)
}

/// The name of interface `ifindex` (in the caller's network namespace).
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Resolve one destination against a neighbour table `neigh` (from one
/// dump for all destinations). Returns the next hop to solicit when it is
/// missing from the table.
fn resolve_with(
    dst: IpAddr,
    neigh: &HashMap<(u32, IpAddr), [u8; 6]>,
) -> (Result<NextHop, Unresolved>, Option<IpAddr>) {
    let route = match route_get(dst) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return (
                Err(Unresolved::NoRoute {
                    dst,
                    reason: e.to_string(),
                }),
                None,
            );
        }
        Err(e) => {
            return (
                Err(Unresolved::Error {
                    dst,
                    reason: e.to_string(),
                }),
                None,
            );
        }
    };
    if route.kind == RTN_LOCAL {
        return (Err(Unresolved::Local { dst }), None);
    }
    if route.kind != RTN_UNICAST {
        return (
            Err(Unresolved::NotUnicast {
                dst,
                kind: route.kind,
            }),
            None,
        );
    }
    if route.via_other_family {
        return (Err(Unresolved::ViaOtherFamily { dst }), None);
    }
    let Some(ifindex) = route.ifindex else {
        return (
            Err(Unresolved::NoRoute {
                dst,
                reason: "the route names no egress interface".into(),
            }),
            None,
        );
    };
    let name = ifname(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"));
    let next_hop = route.gateway.unwrap_or(dst);
    match neigh.get(&(ifindex, next_hop)) {
        Some(mac) => (
            Ok(NextHop {
                dst,
                ifindex,
                ifname: name,
                gateway: route.gateway,
                mac: *mac,
                src: route.prefsrc,
            }),
            None,
        ),
        None => (
            Err(Unresolved::NoNeighbour {
                dst,
                next_hop,
                ifname: name,
            }),
            Some(next_hop),
        ),
    }
}

/// The usable neighbours of every interface, keyed by (ifindex, address).
fn neighbour_table() -> Result<HashMap<(u32, IpAddr), [u8; 6]>, RouteError> {
    NetlinkResolver::new(&[])
        .table_by_ifindex()
        .map_err(|e| RouteError::Io(std::io::Error::other(e.to_string())))
}

/// Resolution state of a set of compilers.
#[derive(Debug, Default)]
pub struct NextHops {
    entries: BTreeMap<IpAddr, Result<NextHop, Unresolved>>,
}

impl NextHops {
    pub fn new(targets: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut n = NextHops::default();
        n.set_targets(targets);
        n
    }

    /// Track exactly these compilers (new ones start unresolved).
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = IpAddr>) {
        let want: HashSet<IpAddr> = targets.into_iter().collect();
        self.entries.retain(|a, _| want.contains(a));
        for a in want {
            self.entries.entry(a).or_insert(Err(Unresolved::Error {
                dst: a,
                reason: "not resolved yet".into(),
            }));
        }
    }

    /// Resolve every compiler again; returns those whose resolution changed.
    /// Missing neighbours are solicited for the next round.
    pub fn refresh(&mut self) -> Result<Vec<IpAddr>, RouteError> {
        let neigh = neighbour_table()?;
        let mut changed = Vec::new();
        let mut solicit = NetlinkResolver::new(&[]);
        for (dst, cur) in self.entries.iter_mut() {
            let (new, missing) = resolve_with(*dst, &neigh);
            if let Some(hop) = missing {
                solicit.solicit(hop);
            }
            if *cur != new {
                *cur = new;
                changed.push(*dst);
            }
        }
        Ok(changed)
    }

    pub fn get(&self, dst: &IpAddr) -> Option<&Result<NextHop, Unresolved>> {
        self.entries.get(dst)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Result<NextHop, Unresolved>)> {
        self.entries.iter()
    }
}

/// Wakes its owner when routes, neighbours, links or addresses change.
pub struct RouteWatcher {
    fd: OwnedFd,
}

impl RouteWatcher {
    /// Subscribe (in the caller's network namespace).
    pub fn new() -> Result<Self, RouteError> {
        let fd = netlink_socket(
            RTMGRP_LINK
                | RTMGRP_NEIGH
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV6_ROUTE,
        )?;
        Ok(RouteWatcher { fd })
    }

    /// Wait up to `timeout` for a change notification. `true`: something
    /// changed (or notifications were lost): refresh. `false`: timed out
    /// (refresh anyway as the backstop).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, RouteError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(e.into());
        }
        if rc == 0 {
            return Ok(false);
        }
        // Drain every pending notification: one refresh covers them all.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(true),
                    // Overrun: notifications were lost, which is a change.
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut a = ((4 + val.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(val);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    #[test]
    fn parses_a_route_reply() {
        let mut m = vec![0u8; RTMSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[7] = RTN_UNICAST;
        m.extend(attr(RTA_DST, &[10, 2, 0, 11]));
        m.extend(attr(RTA_OIF, &7u32.to_ne_bytes()));
        m.extend(attr(RTA_GATEWAY, &[10, 1, 0, 1]));
        m.extend(attr(RTA_PREFSRC, &[10, 1, 0, 2]));
        let r = parse_route(&m).unwrap();
        assert_eq!(r.kind, RTN_UNICAST);
        assert_eq!(r.ifindex, Some(7));
        assert_eq!(r.gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(r.prefsrc, Some("10.1.0.2".parse().unwrap()));
        assert!(!r.via_other_family);
        // An attribute running past the message is malformed, not skipped.
        let mut bad = m.clone();
        let at = RTMSG_LEN;
        bad[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(parse_route(&bad), Err(RouteError::Malformed)));
        assert!(matches!(parse_route(&m[..5]), Err(RouteError::Malformed)));
    }
}
