//! The truncation sweep that starts every run: one rich frame per path of
//! the data plane, cut at every length, raw and with its IP length fields
//! made to agree with the cut.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    Case, Class, PORT, ROUTER4, UDP_PORT, VIP4, VIP4_CA, VIP4_UDP, model::be16, mutate::set_u16,
    router6, vip6, vip6_ca,
};
use crate::packet::{Frame, L4, arp_request, flags, l3_offset};

/// The base frames and the number of cases cut from them.
pub(super) struct Sweep {
    bases: Vec<(Vec<u8>, &'static str)>,
    cases: u64,
}

impl Sweep {
    pub(super) fn new() -> Sweep {
        let bases = sweep_bases();
        let cases = bases.iter().map(|(f, _)| 2 * (f.len() - 13) as u64).sum();
        Sweep { bases, cases }
    }

    /// Number of cases in the sweep.
    pub(super) fn cases(&self) -> u64 {
        self.cases
    }

    /// Sweep case number `index` (below [`Sweep::cases`]).
    pub(super) fn case(&self, mut index: u64) -> Case {
        for (base, name) in &self.bases {
            let n = 2 * (base.len() - 13) as u64;
            if index >= n {
                index -= n;
                continue;
            }
            let cut = 14 + (index / 2) as usize;
            let mut frame = base[..cut].to_vec();
            let fixed = index % 2 == 1;
            if fixed {
                fix_lengths(&mut frame);
            }
            return Case {
                class: Class::Sweep,
                frame,
                desc: format!(
                    "sweep: {name} cut at {cut}{}",
                    if fixed { ", IP length fixed" } else { "" }
                ),
            };
        }
        unreachable!("sweep index in range")
    }
}

/// Rewrite a cut frame's IP length fields to match its length, so the cut
/// lands in the L4 parser instead of always being an L3 truncation.
fn fix_lengths(f: &mut [u8]) {
    let l3 = l3_offset(f);
    if l3 < 2 || l3 > f.len() {
        return;
    }
    let ethertype = be16(f, l3 - 2);
    if ethertype == 0x0800 {
        let n = f.len() - l3;
        set_u16(f, l3 + 2, n as u16);
    } else if ethertype == 0x86dd {
        let n = f.len().saturating_sub(l3 + 40);
        set_u16(f, l3 + 4, n as u16);
    }
}

/// Frames truncated at every byte in the sweep: one rich frame per path.
fn sweep_bases() -> Vec<(Vec<u8>, &'static str)> {
    let c4: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
    let c6: IpAddr = "2001:db8::10".parse().expect("address");
    let syn = |src: IpAddr, dst: IpAddr| Frame::tcp(src, 40000, dst, PORT, flags::SYN);
    vec![
        (syn(c4, VIP4.into()).build(), "IPv4 SYN"),
        (syn(c6, vip6().into()).build(), "IPv6 SYN"),
        (
            syn(c4, VIP4.into())
                .with_ip_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
                .with_vlan(0x88a8, 7)
                .with_vlan(0x8100, 42)
                .build(),
            "IPv4 SYN, QinQ, IP options",
        ),
        (
            syn(c6, vip6().into())
                .with_vlan(0x8100, 9)
                .with_ext(0, 8)
                .with_ext(60, 16)
                .with_ext(51, 24)
                .build(),
            "IPv6 SYN, VLAN, hop-by-hop + dst options + AH",
        ),
        (
            Frame::tcp(c4, 40001, VIP4_CA.into(), PORT, flags::ACK | flags::PSH)
                .with_payload(b"GET /puppet-ca/v1/certificate/ca")
                .build(),
            "IPv4 CA data segment",
        ),
        (syn(c6, vip6_ca().into()).build(), "IPv6 CA SYN"),
        (
            Frame::udp(c4, 40002, VIP4_UDP.into(), UDP_PORT)
                .with_payload(b"q")
                .build(),
            "UDP datagram",
        ),
        (
            Frame {
                l4: L4::Tcp {
                    sport: 40003,
                    dport: PORT,
                    flags: flags::SYN,
                    options: vec![2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
                },
                ..syn(c4, VIP4.into())
            }
            .build(),
            "IPv4 SYN with TCP options",
        ),
        (
            Frame::tcp(c4, 40004, Ipv4Addr::new(10, 0, 0, 1).into(), 22, flags::ACK).build(),
            "IPv4 non-VIP",
        ),
        (
            syn(c6, vip6().into())
                .with_ext(0, 8)
                .with_ext(44, 8)
                .build(),
            "IPv6 fragment header",
        ),
        (arp_request(), "ARP"),
        (
            Frame::icmp_msg(
                ROUTER4.into(),
                VIP4.into(),
                3,
                4,
                1400,
                &Frame::tcp(VIP4.into(), PORT, c4, 40005, flags::ACK)
                    .with_payload(&[0x5a; 24])
                    .quote(1500),
            )
            .build(),
            "ICMP fragmentation needed about a VIP reply",
        ),
        (
            Frame::icmp_msg(
                router6().into(),
                vip6().into(),
                2,
                0,
                1280,
                &Frame::tcp(vip6().into(), PORT, c6, 40006, flags::ACK)
                    .with_payload(&[0x5a; 16])
                    .quote(1500),
            )
            .build(),
            "ICMPv6 packet too big about a VIP reply",
        ),
        (
            Frame::udp(c4, 40007, VIP4_UDP.into(), UDP_PORT)
                .with_payload(&[0x11; 32])
                .with_frag(0x2000)
                .with_ip_id(77)
                .build(),
            "IPv4 first fragment",
        ),
        (
            syn(c6, vip6().into())
                .with_ext(44, 8)
                .with_frag(0x2000)
                .with_ip_id(78)
                .build(),
            "IPv6 first fragment",
        ),
    ]
}
