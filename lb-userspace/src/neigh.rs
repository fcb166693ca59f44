//! Backend MAC resolution from the kernel's neighbour table.
//!
//! L2 DSR rewrites only the destination MAC, so every backend must be a
//! neighbour on an interface the program is attached to (XDP_TX sends out of
//! the interface the packet came in on). The table is read with one
//! `RTM_GETNEIGH` dump over a netlink socket; a backend that is not in it is
//! solicited by sending an empty UDP datagram to its discard port (9), which
//! makes the kernel resolve it (ARP or ND), and looked up again on the next
//! round.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
};

/// Errors of a neighbour-table read.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: malformed reply")]
    Malformed,
}

/// Where MACs come from (netlink in the daemon, a map in tests).
pub trait MacResolver: Send {
    /// Every usable (address, MAC) pair known now.
    fn table(&mut self) -> Result<HashMap<IpAddr, [u8; 6]>, NeighError>;
    /// Make the kernel resolve `addr` (best effort).
    fn solicit(&mut self, addr: IpAddr);
}

/// A fixed table, for tests and for setups where every MAC is configured.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    pub macs: HashMap<IpAddr, [u8; 6]>,
    /// Addresses solicited so far.
    pub solicited: Vec<IpAddr>,
}

impl MacResolver for StaticResolver {
    fn table(&mut self) -> Result<HashMap<IpAddr, [u8; 6]>, NeighError> {
        Ok(self.macs.clone())
    }
    fn solicit(&mut self, addr: IpAddr) {
        self.solicited.push(addr);
    }
}

/// The kernel's neighbour table, restricted to the given interfaces.
#[derive(Debug)]
pub struct NetlinkResolver {
    ifindexes: HashSet<u32>,
    seq: u32,
}

impl NetlinkResolver {
    /// Resolve over the neighbours of these interfaces (all, if none of the
    /// names exists: the program cannot be attached then anyway).
    pub fn new(interfaces: &[String]) -> NetlinkResolver {
        let ifindexes = interfaces
            .iter()
            .filter_map(|n| std::ffi::CString::new(n.as_str()).ok())
            // SAFETY: a valid NUL-terminated string; the call only reads it.
            .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
            .filter(|i| *i != 0)
            .collect();
        NetlinkResolver { ifindexes, seq: 1 }
    }
}

// Netlink and rtnetlink constants (linux/netlink.h, linux/neighbour.h).
const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80; // reachable, stale, delay, probe, noarp, permanent

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Owned file descriptor, closed on drop.
struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

impl MacResolver for NetlinkResolver {
    fn table(&mut self) -> Result<HashMap<IpAddr, [u8; 6]>, NeighError> {
        let mut out = HashMap::new();
        self.dump(|this, body| {
            if let Some((_, addr, mac)) = this.parse_neigh(body) {
                out.insert(addr, mac);
            }
        })?;
        Ok(out)
    }

    fn solicit(&mut self, addr: IpAddr) {
        let local: SocketAddr = match addr {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        if let Ok(s) = UdpSocket::bind(local) {
            let _ = s.set_nonblocking(true);
            // Discard port: harmless if it arrives, and the send makes the
            // kernel resolve the neighbour first.
            let _ = s.send_to(&[], (addr, 9));
        }
    }
}

impl NetlinkResolver {
    /// Every usable neighbour keyed by (ifindex, address): one address can
    /// be a neighbour on two interfaces with two MACs, and next-hop
    /// resolution ([`crate::route`]) needs the one on the egress interface.
    pub fn table_by_ifindex(&mut self) -> Result<HashMap<(u32, IpAddr), [u8; 6]>, NeighError> {
        let mut out = HashMap::new();
        self.dump(|this, body| {
            if let Some((ifindex, addr, mac)) = this.parse_neigh(body) {
                out.insert((ifindex, addr), mac);
            }
        })?;
        Ok(out)
    }

    /// One RTM_GETNEIGH dump; `each` gets the body of every RTM_NEWNEIGH.
    fn dump(&mut self, mut each: impl FnMut(&Self, &[u8])) -> Result<(), NeighError> {
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
        let fd = Fd(fd);
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; NLMSG_HDRLEN + NDMSG_LEN];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&libc::RTM_GETNEIGH.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // ndmsg: family AF_UNSPEC (both families), the rest zero.
        // SAFETY: sockaddr_nl is plain data; zero = the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd.0,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(NeighError::Malformed);
                }
                match ty as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        let errno = msgs
                            .get(16..20)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(std::io::Error::from_raw_os_error(-errno).into());
                        }
                    }
                    _ if ty == libc::RTM_NEWNEIGH => {
                        each(self, &msgs[NLMSG_HDRLEN..len]);
                    }
                    _ => {}
                }
                msgs = &msgs[align4(len).min(msgs.len())..];
            }
        }
    }

    /// (ifindex, address, MAC) of a usable neighbour message.
    fn parse_neigh(&self, body: &[u8]) -> Option<(u32, IpAddr, [u8; 6])> {
        if body.len() < NDMSG_LEN {
            return None;
        }
        let ifindex = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
        let state = u16::from_ne_bytes(body[8..10].try_into().ok()?);
        if state & NUD_USABLE == 0 {
            return None;
        }
        if !self.ifindexes.is_empty() && !self.ifindexes.contains(&ifindex) {
            return None;
        }
        let (mut dst, mut mac) = (None, None);
        let mut attrs = &body[NDMSG_LEN..];
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
            let ty = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
            if len < 4 || len > attrs.len() {
                return None;
            }
            let val = &attrs[4..len];
            match (ty, val.len()) {
                (NDA_DST, 4) => dst = Some(IpAddr::from(<[u8; 4]>::try_from(val).ok()?)),
                (NDA_DST, 16) => dst = Some(IpAddr::from(<[u8; 16]>::try_from(val).ok()?)),
                (NDA_LLADDR, 6) => mac = Some(<[u8; 6]>::try_from(val).ok()?),
                _ => {}
            }
            attrs = &attrs[align4(len).min(attrs.len())..];
        }
        let mac = mac.filter(|m| *m != [0; 6])?;
        Some((ifindex, dst?, mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_neighbour_message() {
        let r = NetlinkResolver {
            ifindexes: [2].into(),
            seq: 0,
        };
        let mut m = vec![0u8; NDMSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[4..8].copy_from_slice(&2i32.to_ne_bytes());
        m[8..10].copy_from_slice(&0x02u16.to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NDA_DST.to_ne_bytes());
        m.extend_from_slice(&[10, 0, 0, 1]);
        m.extend_from_slice(&10u16.to_ne_bytes());
        m.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            r.parse_neigh(&m),
            Some((2, "10.0.0.1".parse().unwrap(), [2, 0, 0, 0, 0, 1]))
        );
        // Incomplete entries and other interfaces are not usable.
        let mut inc = m.clone();
        inc[8..10].copy_from_slice(&0x01u16.to_ne_bytes());
        assert_eq!(r.parse_neigh(&inc), None);
        let mut other = m.clone();
        other[4..8].copy_from_slice(&3i32.to_ne_bytes());
        assert_eq!(r.parse_neigh(&other), None);
    }
}
