//! The fuzzer's inputs: a valid frame of each input class (compiler, CA and
//! UDP VIPs over IPv4/IPv6, non-VIP traffic, non-IP, ICMP errors about VIP
//! replies, first and later fragments), then mutated ([`super::mutate`]);
//! the frames of a few recurring flows; and the [`Generator`] that numbers
//! the cases of a run, the truncation sweep ([`super::sweep`]) first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{PROTO_TCP, PROTO_UDP};

use super::{
    PORT, Rng, UDP_PORT, VIP4, VIP4_CA, VIP4_CA_NONE, VIP4_EMPTY, VIP4_UDP, VIP4_UNINSTALLED,
    mutate::mutate, sweep::Sweep, vip6, vip6_ca,
};
use crate::packet::{CLIENT_MAC, Frame, L4, LB_MAC, arp_request, flags};

/// Input classes: what a frame is before it is mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    CompilerV4,
    CompilerV6,
    CaV4,
    CaV6,
    UdpV4,
    EmptyPool,
    NoCa,
    Uninstalled,
    NonVipV4,
    NonVipV6,
    NonIp,
    /// ICMP errors (and other ICMP) about VIP replies, quotes cut or not.
    IcmpV4,
    IcmpV6,
    /// First and later fragments of a few datagrams per VIP.
    FragV4,
    FragV6,
    /// A sweep case (a base frame cut short).
    Sweep,
}

/// (class, weight): most cases aim at the paths that forward.
const CLASSES: [(Class, usize); 15] = [
    (Class::CompilerV4, 20),
    (Class::CompilerV6, 15),
    (Class::CaV4, 10),
    (Class::CaV6, 6),
    (Class::UdpV4, 8),
    (Class::EmptyPool, 3),
    (Class::NoCa, 3),
    (Class::Uninstalled, 2),
    (Class::NonVipV4, 12),
    (Class::NonVipV6, 8),
    (Class::NonIp, 5),
    (Class::IcmpV4, 6),
    (Class::IcmpV6, 4),
    (Class::FragV4, 6),
    (Class::FragV6, 4),
];

impl Class {
    /// Every class, for reports.
    pub fn all() -> impl Iterator<Item = Class> {
        CLASSES.iter().map(|(c, _)| *c)
    }
}

/// One generated input.
#[derive(Clone, Debug)]
pub struct Case {
    pub class: Class,
    pub frame: Vec<u8>,
    /// What was done to it, for reports and saved regressions.
    pub desc: String,
}

/// A valid packet of one of a small set of compiler flows (16 clients × 4
/// ports per compiler VIP, over IPv4, IPv6 and UDP), so that flows recur
/// across world changes: a SYN, an ACK or FIN of an established
/// connection, a datagram, now and then to a group address.
pub fn flow_case(r: &mut Rng) -> Case {
    let (class, dst, dport): (Class, IpAddr, u16) = match r.below(3) {
        0 => (Class::CompilerV4, VIP4.into(), PORT),
        1 => (Class::CompilerV6, vip6().into(), PORT),
        _ => (Class::UdpV4, VIP4_UDP.into(), UDP_PORT),
    };
    let n = r.below(16) as u8;
    let src: IpAddr = if class == Class::CompilerV6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n) + 1).into()
    } else {
        Ipv4Addr::new(192, 0, 2, n + 1).into()
    };
    let sport = 40000 + r.below(4) as u16;
    let proto = if class == Class::UdpV4 {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    if r.chance(10) {
        // A router's ICMP error about the compiler's reply on this flow.
        let f = icmp_about(r, dst, dport, proto, src, sport);
        return Case {
            class: by_family(dst, Class::IcmpV4, Class::IcmpV6),
            frame: f.build(),
            desc: format!("flow {src}:{sport} -> {dst}:{dport}: ICMP {:?}", f.l4),
        };
    }
    if r.chance(10) {
        // A fragment of one of four datagrams of this flow.
        let id = 7 + r.below(4) as u32;
        let (f, what) = fragment_of(r, src, sport, dst, dport, proto, id);
        return Case {
            class: by_family(dst, Class::FragV4, Class::FragV6),
            frame: f.build(),
            desc: format!("flow {src}:{sport} -> {dst}:{dport}: {what} id {id}"),
        };
    }
    let (mut frame, what) = if class == Class::UdpV4 {
        (Frame::udp(src, sport, dst, dport), "datagram")
    } else {
        let (bits, what) = r.pick(&[
            (flags::SYN, "SYN"),
            (flags::ACK, "ACK"),
            (flags::ACK, "ACK"),
            (flags::ACK | flags::PSH, "data"),
            (flags::FIN | flags::ACK, "FIN"),
            (flags::RST, "RST"),
            (flags::SYN | flags::ACK, "SYN-ACK"),
        ]);
        (Frame::tcp(src, sport, dst, dport, bits), what)
    };
    let group = r.chance(5);
    if group {
        frame = frame.with_dst_mac([0x01, 0x00, 0x5e, 0, 0, 1]);
    }
    Case {
        class,
        frame: frame.build(),
        desc: format!(
            "flow {src}:{sport} -> {dst}:{dport} {what}{}",
            if group { " to a group address" } else { "" }
        ),
    }
}

/// `v4` or `v6`, by the family of `addr`.
fn by_family(addr: IpAddr, v4: Class, v6: Class) -> Class {
    if addr.is_ipv6() { v6 } else { v4 }
}

/// The router on the compilers' return path that sends ICMP errors.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// See [`ROUTER4`].
pub fn router6() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)
}

/// An ICMP message from a router about a reply `vip:port -> agent:aport`
/// (what a compiler sends in DSR): mostly an error voxlb steers, with a
/// quote of any length; now and then another type, another destination, a
/// quote of another source or of a later fragment.
fn icmp_about(r: &mut Rng, vip: IpAddr, port: u16, proto: u8, agent: IpAddr, aport: u16) -> Frame {
    let v6 = vip.is_ipv6();
    let mut reply = if proto == PROTO_UDP {
        Frame::udp(vip, port, agent, aport)
    } else {
        Frame::tcp(vip, port, agent, aport, flags::ACK | flags::PSH)
    };
    let n = r.below(64);
    reply = reply.with_payload(&r.bytes(n));
    if r.chance(4) {
        // A reply some other host sent: not ours to steer.
        reply.src = if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x200))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 200))
        };
    }
    if !v6 && r.chance(4) {
        reply.frag = r.pick(&[0x2000u16, 0x2005, 0x0010]);
    }
    let full = if v6 { 48 } else { 28 };
    let len = match r.below(10) {
        0 | 1 => r.below(full + 8),
        2 => full,
        _ => 1500,
    };
    let quote = reply.quote(len);
    let (ty, code, rest) = if v6 {
        match r.below(10) {
            0..=4 => (2, 0, r.pick(&[1280u32, 1400, 1480])),
            5 | 6 => (1, r.below(7) as u8, 0),
            7 => (3, 0, 0),
            8 => (4, r.below(3) as u8, r.below(48) as u32),
            _ => (r.pick(&[128u8, 129, 135, 136]), 0, 0),
        }
    } else {
        match r.below(10) {
            0..=4 => (3, 4, r.pick(&[1280u32, 1400, 1480, 576])),
            5 | 6 => (3, r.below(16) as u8, 0),
            7 => (11, r.below(2) as u8, 0),
            8 => (12, 0, r.below(20) as u32 * 0x0100_0000),
            _ => (r.pick(&[0u8, 8, 5]), 0, 0),
        }
    };
    let from = if r.chance(3) {
        vip
    } else if v6 {
        router6().into()
    } else {
        ROUTER4.into()
    };
    let to = if r.chance(8) {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        }
    } else {
        vip
    };
    Frame::icmp_msg(from, to, ty, code, rest, &quote)
}

/// A fragment of one of a few datagrams from a few agents: the first (with
/// the L4 header) or a later one (offset in 8-byte units, no L4 header).
fn fragment_of(
    r: &mut Rng,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
    id: u32,
) -> (Frame, &'static str) {
    let n = 8 * r.range(1, 8);
    let first = r.chance(50);
    let mut f = if !first {
        Frame {
            l4: L4::Other(proto),
            ..Frame::udp(src, sport, dst, dport)
        }
    } else if proto == PROTO_UDP {
        Frame::udp(src, sport, dst, dport)
    } else {
        Frame::tcp(src, sport, dst, dport, r.pick(&[flags::SYN, flags::ACK]))
    };
    f = f.with_payload(&r.bytes(n)).with_ip_id(id);
    f.frag = if first {
        0x2000
    } else {
        r.pick(&[0x2000u16, 0]) | r.range(1, 200) as u16
    };
    if dst.is_ipv6() {
        f = f.with_ext(44, 8);
    }
    (
        f,
        if first {
            "first fragment"
        } else {
            "later fragment"
        },
    )
}

/// A client address; now and then a VIP address instead (a land attack or
/// a spoofed source, which the data plane must drop, never forward).
fn client4(r: &mut Rng) -> IpAddr {
    if r.chance(2) {
        return IpAddr::V4(r.pick(&[VIP4, VIP4_CA]));
    }
    IpAddr::V4(Ipv4Addr::from(r.next_u64() as u32))
}
fn client6(r: &mut Rng) -> IpAddr {
    if r.chance(2) {
        return IpAddr::V6(vip6());
    }
    let lo = r.next_u64() as u128;
    IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | lo))
}

fn tcp_flags(r: &mut Rng) -> u8 {
    match r.below(10) {
        0..=3 => flags::SYN,
        4..=6 => flags::ACK,
        7 => flags::ACK | flags::PSH,
        _ => r.byte(),
    }
}

/// A valid frame of `class` (before mutation).
fn base(r: &mut Rng, class: Class) -> Result<Frame, Vec<u8>> {
    let sport = r.below(65536) as u16;
    let tcp = |src: IpAddr, dst: IpAddr, port: u16, r: &mut Rng| {
        let len = if r.chance(80) { r.below(48) } else { 0 };
        Frame::tcp(src, sport, dst, port, tcp_flags(r)).with_payload(&r.bytes(len))
    };
    Ok(match class {
        // (Sweep cases are cut from fixed frames and never come here.)
        Class::CompilerV4 | Class::Sweep => tcp(client4(r), VIP4.into(), PORT, r),
        Class::CompilerV6 => tcp(client6(r), vip6().into(), PORT, r),
        Class::CaV4 => tcp(client4(r), VIP4_CA.into(), PORT, r),
        Class::CaV6 => tcp(client6(r), vip6_ca().into(), PORT, r),
        Class::EmptyPool => tcp(client4(r), VIP4_EMPTY.into(), PORT, r),
        Class::NoCa => tcp(client4(r), VIP4_CA_NONE.into(), PORT, r),
        Class::Uninstalled => tcp(client4(r), VIP4_UNINSTALLED.into(), PORT, r),
        Class::UdpV4 => {
            let len = r.below(64);
            Frame::udp(client4(r), sport, VIP4_UDP.into(), UDP_PORT).with_payload(&r.bytes(len))
        }
        Class::NonVipV4 => {
            let src = client4(r);
            match r.below(4) {
                // The LB host's own traffic, e.g. SSH.
                0 => tcp(src, Ipv4Addr::new(10, 0, 0, 1).into(), 22, r),
                // A VIP address, another port.
                1 => tcp(src, VIP4.into(), r.pick(&[22, 443, 8141, 0]), r),
                // A VIP address and port, the other protocol.
                2 => Frame::udp(src, sport, VIP4.into(), PORT),
                _ => tcp(src, client4(r), r.below(65536) as u16, r),
            }
        }
        Class::NonVipV6 => {
            let src = client6(r);
            match r.below(3) {
                0 => tcp(src, vip6().into(), r.pick(&[22, 8141]), r),
                1 => Frame::udp(src, sport, vip6_ca().into(), PORT),
                _ => tcp(src, client6(r), 8140, r),
            }
        }
        Class::IcmpV4 | Class::IcmpV6 => {
            let v6 = class == Class::IcmpV6;
            let (vip, port, proto): (IpAddr, u16, u8) = if v6 {
                r.pick(&[
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6_ca().into(), PORT, PROTO_TCP),
                    (vip6().into(), 22, PROTO_TCP),
                    (vip6().into(), PORT, PROTO_UDP),
                ])
            } else {
                r.pick(&[
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4_CA.into(), PORT, PROTO_TCP),
                    (VIP4_UDP.into(), UDP_PORT, PROTO_UDP),
                    (VIP4_EMPTY.into(), PORT, PROTO_TCP),
                    (VIP4_UNINSTALLED.into(), PORT, PROTO_TCP),
                    (VIP4_CA_NONE.into(), PORT, PROTO_TCP),
                    (VIP4.into(), 22, PROTO_TCP),
                ])
            };
            let agent = if v6 { client6(r) } else { client4(r) };
            icmp_about(r, vip, port, proto, agent, sport)
        }
        Class::FragV4 | Class::FragV6 => {
            let v6 = class == Class::FragV6;
            let (dst, port, proto): (IpAddr, u16, u8) = if v6 {
                r.pick(&[
                    (vip6().into(), PORT, PROTO_TCP),
                    (vip6_ca().into(), PORT, PROTO_TCP),
                    (
                        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
                        22,
                        PROTO_TCP,
                    ),
                ])
            } else {
                r.pick(&[
                    (VIP4_UDP.into(), UDP_PORT, PROTO_UDP),
                    (VIP4.into(), PORT, PROTO_TCP),
                    (VIP4_CA.into(), PORT, PROTO_TCP),
                    (VIP4_EMPTY.into(), PORT, PROTO_TCP),
                    (Ipv4Addr::new(10, 0, 0, 1).into(), 22, PROTO_TCP),
                ])
            };
            // A few agents and IDs, so later fragments meet their first.
            let n = r.below(4) as u16 + 1;
            let src: IpAddr = if v6 {
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, n).into()
            } else {
                Ipv4Addr::new(192, 0, 2, 100 + n as u8).into()
            };
            let id = r.pick(&[1u32, 2, 0xfffe, 0x8001_0000]);
            fragment_of(r, src, 40000 + n, dst, port, proto, id).0
        }
        Class::NonIp => {
            return Err(if r.chance(40) {
                arp_request()
            } else {
                let mut f = LB_MAC.to_vec();
                f.extend_from_slice(&CLIENT_MAC);
                let t: u16 = r.pick(&[0x0806, 0x88cc, 0x8847, 0x0842, 0x9100, 0x86dc, 0x0801]);
                let t = if r.chance(20) { r.next_u64() as u16 } else { t };
                f.extend_from_slice(&t.to_be_bytes());
                let n = r.range(28, 100);
                f.extend_from_slice(&r.bytes(n));
                f
            });
        }
    })
}

/// Generates the cases of a run: first the truncation sweep (every base
/// frame cut at every length, raw and with the IP length fields made to
/// agree with the cut), then random mutated cases.
pub struct Generator {
    seed: u64,
    sweep: Sweep,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            seed,
            sweep: Sweep::new(),
        }
    }

    /// Number of sweep cases at the start of a run.
    pub fn sweep_len(&self) -> u64 {
        self.sweep.cases()
    }

    /// Case number `index` of the run.
    pub fn case(&self, index: u64) -> Case {
        if index < self.sweep.cases() {
            return self.sweep.case(index);
        }
        let mut r = Rng::for_case(self.seed, index);
        let class = pick_class(&mut r);
        let mut desc = format!("{class:?}:");
        let base = base(&mut r, class);
        let frame = mutate(&mut r, base, &mut desc);
        Case { class, frame, desc }
    }
}

/// A class drawn by the weights of [`CLASSES`].
fn pick_class(r: &mut Rng) -> Class {
    let total: usize = CLASSES.iter().map(|(_, w)| w).sum();
    let mut pick = r.below(total);
    CLASSES
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map(|(c, _)| *c)
        .expect("weights cover the range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_covers_every_class() {
        let g = Generator::new(7);
        let n = g.sweep_len() + 5000;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..n {
            let c = g.case(i);
            assert!(c.frame.len() >= 14, "case {i}: {}", c.desc);
            assert_eq!(c.frame, g.case(i).frame);
            seen.insert(format!("{:?}", c.class));
        }
        assert_eq!(seen.len(), Class::all().count() + 1, "{seen:?}");
        assert_ne!(
            Generator::new(8).case(g.sweep_len() + 1).frame,
            g.case(g.sweep_len() + 1).frame
        );
    }
}
