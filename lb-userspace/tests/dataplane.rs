//! The XDP program, packet by packet, in the real kernel via
//! BPF_PROG_TEST_RUN: a table of frames with the verdict, the output bytes
//! and the counter each must produce, then stateful scenarios (flows,
//! drain, removal, table flips, CA steering, two hosts agreeing).
//!
//! Needs root (loading BPF programs). Each test loads its own private copy of
//! the object (no pins, nothing attached), so tests are independent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_EMPTY, BACKEND_RETIRING, BackendInfo,
    FlowKey, FlowValue, KIND_CA, KIND_COMPILER, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason, VipInfo,
    VipKey, addr_bytes,
    hash::{flow_hash, table_slot},
    maglev::{self, Entry},
};
use lb_testkit::{
    harness::{RunOutput, TestDataPlane},
    packet::{CLIENT_MAC, Frame, LB_MAC, arp_request, cut_after_l3, flags, l3_offset},
};
use voxlb::dataplane::DataPlane;

use lb_common::reason::action::{XDP_DROP, XDP_PASS, XDP_TX};

// The fixture world's table size (a small prime keeps setup fast; the
// size does not change the logic) and VIP addresses.
use lb_testkit::fuzz::{
    TABLE, VIP4, VIP4_CA, VIP4_CA_NONE, VIP4_EMPTY, VIP4_UDP, VIP4_UNINSTALLED, vip6,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn client6() -> Ipv6Addr {
    "2001:db8::10".parse().unwrap()
}

fn mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, (id >> 8) as u8, id as u8]
}

/// Service ids of the fixture.
const S_V4: u32 = 0;
const S_V6: u32 = 1;
const S_CA: u32 = 2;
const S_EMPTY: u32 = 3;
const S_UDP: u32 = 4;
const S_UNINSTALLED: u32 = 5;
const S_CA_NONE: u32 = 6;

/// Backend ids: compilers of the v4 service are 0..3, v6 10..13, UDP 20..23;
/// the CAs are 30 (primary) and 31 (standby).
const CA_PRIMARY: u32 = 30;
const CA_STANDBY: u32 = 31;

struct Fixture {
    dp: TestDataPlane,
}

macro_rules! need_root {
    () => {
        lb_testkit::require_root!("loading BPF programs");
    };
}

fn backend_addr(id: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, id as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8))
    }
}

fn entry(id: u32, v6: bool, weight: u32) -> Entry {
    Entry::from_addr(backend_addr(id, v6), weight, id)
}

impl Fixture {
    fn new() -> Self {
        let mut dp = TestDataPlane::load(4096).expect("load the XDP object");
        let vips = [
            (
                VipKey::new(VIP4.into(), 8140, PROTO_TCP),
                S_V4,
                KIND_COMPILER,
            ),
            (
                VipKey::new(vip6().into(), 8140, PROTO_TCP),
                S_V6,
                KIND_COMPILER,
            ),
            (VipKey::new(VIP4_CA.into(), 8140, PROTO_TCP), S_CA, KIND_CA),
            (
                VipKey::new(VIP4_EMPTY.into(), 8140, PROTO_TCP),
                S_EMPTY,
                KIND_COMPILER,
            ),
            (
                VipKey::new(VIP4_UDP.into(), 5353, PROTO_UDP),
                S_UDP,
                KIND_COMPILER,
            ),
            (
                VipKey::new(VIP4_UNINSTALLED.into(), 8140, PROTO_TCP),
                S_UNINSTALLED,
                KIND_COMPILER,
            ),
            (
                VipKey::new(VIP4_CA_NONE.into(), 8140, PROTO_TCP),
                S_CA_NONE,
                KIND_CA,
            ),
        ];
        for (k, service_id, kind) in vips {
            dp.upsert_vip(k, VipInfo { service_id, kind }).unwrap();
        }
        let mut f = Fixture { dp };
        f.set_pool(S_V4, &[0, 1, 2], false);
        f.set_pool(S_V6, &[10, 11, 12], true);
        f.set_pool(S_UDP, &[20, 21, 22], false);
        f.dp.install_table(S_EMPTY, &vec![NO_BACKEND; TABLE as usize])
            .unwrap();
        for (id, ip) in [(CA_PRIMARY, 200), (CA_STANDBY, 201)] {
            f.set_backend(
                id,
                S_CA,
                BACKEND_ACTIVE,
                0,
                IpAddr::V4(Ipv4Addr::new(10, 0, 2, ip)),
            );
        }
        f.dp.set_ca_target(S_CA, CA_PRIMARY).unwrap();
        f.dp.set_ca_target(S_CA_NONE, NO_BACKEND).unwrap();
        f
    }

    fn set_backend(&mut self, id: u32, service_id: u32, state: u32, generation: u32, addr: IpAddr) {
        let (a, family) = addr_bytes(addr);
        self.dp
            .set_backend(
                id,
                BackendInfo {
                    mac: mac(id),
                    state,
                    generation,
                    service_id,
                    addr: a,
                    family,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    /// Make `ids` the active backends of a service and install its table.
    fn set_pool(&mut self, service_id: u32, ids: &[u32], v6: bool) {
        for &id in ids {
            self.set_backend(id, service_id, BACKEND_ACTIVE, 0, backend_addr(id, v6));
        }
        self.install(service_id, ids, v6);
    }

    fn install(&mut self, service_id: u32, ids: &[u32], v6: bool) -> Vec<u32> {
        let entries: Vec<Entry> = ids.iter().map(|&id| entry(id, v6, 1)).collect();
        let table = maglev::build(&entries, TABLE).unwrap();
        self.dp.install_table(service_id, &table).unwrap();
        table
    }

    fn run(&mut self, frame: &[u8]) -> RunOutput {
        self.dp
            .test_run(voxlb::object::PROGRAM_NAME, frame, 1)
            .expect("test_run")
    }

    fn reasons(&self) -> Vec<u64> {
        self.dp
            .reason_stats()
            .unwrap()
            .into_iter()
            .map(|(_, c)| c.packets)
            .collect()
    }
}

/// The backend the active table of `service` gives a flow.
fn expected_backend(table: &[u32], key: &FlowKey) -> u32 {
    table[table_slot(flow_hash(key), table.len() as u32) as usize]
}

fn key_of(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    let (s, family) = addr_bytes(src);
    let (d, _) = addr_bytes(dst);
    FlowKey {
        src: s,
        dst: d,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        family,
        _pad: [0; 2],
    }
}

enum Expect {
    Pass(Reason),
    Drop(Reason),
    /// Forwarded with this reason to this backend id.
    Tx(Reason, u32),
    /// Forwarded with this reason to whatever the v4 compiler table says.
    TxTable(Reason, FlowKey, u32),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// A SYN to the LB host's own address (SSH), no VIP's.
fn host_syn4() -> Vec<u8> {
    Frame::tcp(
        v4(CLIENT4),
        40000,
        v4(Ipv4Addr::new(10, 0, 0, 1)),
        22,
        flags::SYN,
    )
    .build()
}

/// The same from IPv6, to an address of the LB host's subnet.
fn host_syn6() -> Vec<u8> {
    Frame::tcp(
        v6(client6()),
        40000,
        v6("fd00::1".parse().unwrap()),
        22,
        flags::SYN,
    )
    .build()
}

fn syn4(sport: u16) -> Frame {
    Frame::tcp(v4(CLIENT4), sport, v4(VIP4), 8140, flags::SYN)
}
fn syn6(sport: u16) -> Frame {
    Frame::tcp(v6(client6()), sport, v6(vip6()), 8140, flags::SYN)
}
fn k4(sport: u16) -> FlowKey {
    key_of(v4(CLIENT4), sport, v4(VIP4), 8140, PROTO_TCP)
}
fn k6(sport: u16) -> FlowKey {
    key_of(v6(client6()), sport, v6(vip6()), 8140, PROTO_TCP)
}

/// Apply `f` to a copy of `frame` (for corrupting built frames).
fn poke(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

/// Every frame of the table: passed, dropped, forwarded.
fn cases() -> Vec<Case> {
    let mut c = passed_cases();
    c.extend(dropped_cases());
    c.extend(forwarded_cases());
    c
}

/// Frames that are not ours: passed untouched, each under its reason.
fn passed_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        // --- not ours: passed untouched ---
        Case {
            name: "ARP request",
            frame: arp_request(),
            expect: Pass(Reason::PassNotIp),
        },
        Case {
            name: "IPv4 TCP to a non-VIP address (SSH to the LB itself)",
            frame: Frame::tcp(
                v4(CLIENT4),
                40000,
                v4(Ipv4Addr::new(10, 0, 0, 1)),
                22,
                flags::SYN,
            )
            .build(),
            expect: Pass(Reason::PassNotVip),
        },
        // The address bitmap passes the host's own traffic before L3 is
        // judged further or L4 read: malformed or fragmented, it is the
        // kernel's to judge (the same frames to a VIP are dropped or
        // followed: see `dropped_cases` and the fragment tests).
        Case {
            name: "IPv4 IHL 4 to a non-VIP address",
            frame: poke(host_syn4(), |f| {
                let o = l3_offset(f);
                f[o] = 0x44
            }),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv4 TCP header cut short to a non-VIP address",
            frame: cut_after_l3(&host_syn4(), 20, 10),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv4 later fragment to a non-VIP address",
            frame: poke(host_syn4(), |f| {
                let o = l3_offset(f);
                f[o + 6..o + 8].copy_from_slice(&0x0010u16.to_be_bytes());
            }),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv6 TCP header cut short to a non-VIP address",
            frame: cut_after_l3(&host_syn6(), 40, 10),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv4 TCP to the VIP address, other port",
            frame: Frame::tcp(v4(CLIENT4), 40000, v4(VIP4), 22, flags::SYN).build(),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv4 UDP to a TCP VIP's port",
            frame: Frame::udp(v4(CLIENT4), 40000, v4(VIP4), 8140).build(),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "IPv6 TCP to a non-VIP address",
            frame: host_syn6(),
            expect: Pass(Reason::PassNotVip),
        },
        Case {
            name: "ICMP echo to the VIP",
            frame: Frame::icmp(v4(CLIENT4), v4(VIP4)).build(),
            expect: Pass(Reason::PassNotL4),
        },
        Case {
            name: "ICMPv6 echo to the VIP",
            frame: Frame::icmp(v6(client6()), v6(vip6())).build(),
            expect: Pass(Reason::PassNotL4),
        },
        // First fragments are balanced (and tracked: tests/icmp_frag.rs).
        Case {
            name: "IPv4 non-first fragment to the VIP, its first not seen",
            frame: syn4(40001).with_frag(0x0010).build(),
            expect: Pass(Reason::PassFragment),
        },
        Case {
            name: "IPv6 non-first fragment to the VIP, its first not seen",
            frame: syn6(40001).with_ext(44, 8).with_frag(0x2010).build(),
            expect: Pass(Reason::PassFragment),
        },
        Case {
            name: "IPv6 non-first fragment after a hop-by-hop header",
            frame: syn6(40001)
                .with_ext(0, 8)
                .with_ext(44, 8)
                .with_frag(0x0003)
                .build(),
            expect: Pass(Reason::PassFragment),
        },
        Case {
            name: "IPv6 with five extension headers (over the walk limit)",
            frame: (0..5).fold(syn6(40002), |f, _| f.with_ext(60, 8)).build(),
            expect: Pass(Reason::PassIpv6ExtLimit),
        },
        Case {
            name: "IPv6 no-next-header",
            frame: Frame {
                l4: lb_testkit::packet::L4::Other(59),
                ..syn6(40003)
            }
            .build(),
            expect: Pass(Reason::PassNotL4),
        },
        Case {
            name: "three VLAN tags",
            frame: syn4(40004)
                .with_vlan(0x88a8, 1)
                .with_vlan(0x8100, 2)
                .with_vlan(0x8100, 3)
                .build(),
            expect: Pass(Reason::PassVlanDepth),
        },
        Case {
            name: "VIP packet sent to the broadcast MAC",
            frame: syn4(40005).with_dst_mac([0xff; 6]).build(),
            expect: Pass(Reason::PassNotUnicast),
        },
    ]
}

/// Malformed frames: dropped, each under its reason.
fn dropped_cases() -> Vec<Case> {
    use Expect::*;
    let l3 = |f: &[u8]| l3_offset(f);
    vec![
        // --- malformed: dropped ---
        // (BPF_PROG_TEST_RUN refuses frames under 14 bytes, as drivers never
        // hand XDP a frame shorter than its Ethernet header.)
        Case {
            name: "bare Ethernet header announcing a QinQ tag",
            frame: poke(syn4(1).build(), |f| {
                f.truncate(14);
                f[12] = 0x88;
                f[13] = 0xa8
            }),
            expect: Drop(Reason::DropTruncatedL2),
        },
        Case {
            name: "bare Ethernet header announcing IPv4",
            frame: poke(syn4(1).build(), |f| f.truncate(14)),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "VLAN tag cut short",
            frame: poke(syn4(1).with_vlan(0x8100, 5).build(), |f| f.truncate(16)),
            expect: Drop(Reason::DropTruncatedL2),
        },
        Case {
            name: "IPv4 header cut at 10 bytes",
            frame: poke(syn4(1).build(), |f| f.truncate(24)),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "IPv4 IHL 4 (below the minimum)",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f[o] = 0x44
            }),
            expect: Drop(Reason::DropBadL3),
        },
        Case {
            name: "IPv4 ethertype carrying version 6",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f[o] = 0x65
            }),
            expect: Drop(Reason::DropBadL3),
        },
        Case {
            name: "IPv4 total length below the header length",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f[o + 2] = 0;
                f[o + 3] = 12
            }),
            expect: Drop(Reason::DropBadL3),
        },
        Case {
            name: "IPv4 total length beyond the frame",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f[o + 2] = 0x05;
                f[o + 3] = 0xdc
            }),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "IPv4 IHL 15 with the options cut off",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f[o] = 0x4f;
                f.truncate(o + 40);
                let l = 40u16.to_be_bytes();
                f[o + 2] = l[0];
                f[o + 3] = l[1];
            }),
            expect: Drop(Reason::DropBadL3),
        },
        Case {
            name: "IPv6 header cut at 30 bytes",
            frame: poke(syn6(1).build(), |f| f.truncate(44)),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "IPv6 payload length beyond the frame",
            frame: poke(syn6(1).build(), |f| {
                let o = l3(f);
                f[o + 4] = 0x05;
                f[o + 5] = 0xdc
            }),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "IPv6 extension header longer than the payload",
            frame: poke(syn6(1).with_ext(60, 8).build(), |f| {
                let o = l3(f);
                f[o + 41] = 40
            }),
            expect: Drop(Reason::DropTruncatedL3),
        },
        Case {
            name: "IPv4 version nibble 6 inside an IPv6 ethertype",
            frame: poke(syn6(1).build(), |f| {
                let o = l3(f);
                f[o] = 0x45
            }),
            expect: Drop(Reason::DropBadL3),
        },
        Case {
            name: "TCP header cut to 10 bytes",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f.truncate(o + 30);
                f[o + 2] = 0;
                f[o + 3] = 30
            }),
            expect: Drop(Reason::DropTruncatedL4),
        },
        Case {
            name: "zero-length TCP (IP payload empty)",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f);
                f.truncate(o + 20);
                f[o + 2] = 0;
                f[o + 3] = 20
            }),
            expect: Drop(Reason::DropTruncatedL4),
        },
        Case {
            name: "TCP data offset 4 (below the minimum)",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f) + 20;
                f[o + 12] = 0x40
            }),
            expect: Drop(Reason::DropBadL4),
        },
        Case {
            name: "TCP data offset 15 beyond the segment",
            frame: poke(syn4(1).build(), |f| {
                let o = l3(f) + 20;
                f[o + 12] = 0xf0
            }),
            expect: Drop(Reason::DropBadL4),
        },
        Case {
            name: "UDP header cut to 4 bytes",
            frame: poke(
                Frame::udp(v4(CLIENT4), 5000, v4(VIP4_UDP), 5353).build(),
                |f| {
                    let o = l3(f);
                    f.truncate(o + 24);
                    f[o + 2] = 0;
                    f[o + 3] = 24
                },
            ),
            expect: Drop(Reason::DropTruncatedL4),
        },
        Case {
            name: "compiler VIP whose pool is empty",
            frame: Frame::tcp(v4(CLIENT4), 40010, v4(VIP4_EMPTY), 8140, flags::SYN).build(),
            expect: Drop(Reason::DropNoBackend),
        },
        Case {
            name: "compiler VIP whose table was never installed",
            frame: Frame::tcp(v4(CLIENT4), 40011, v4(VIP4_UNINSTALLED), 8140, flags::SYN).build(),
            expect: Drop(Reason::DropNoBackend),
        },
        Case {
            name: "CA VIP with no CA up",
            frame: Frame::tcp(v4(CLIENT4), 40012, v4(VIP4_CA_NONE), 8140, flags::SYN).build(),
            expect: Drop(Reason::DropNoCa),
        },
    ]
}

/// Frames for a VIP: forwarded to the expected backend.
fn forwarded_cases() -> Vec<Case> {
    use Expect::*;
    let mut c = vec![
        // --- ours: forwarded ---
        Case {
            name: "CA VIP SYN goes to the primary CA",
            frame: Frame::tcp(v4(CLIENT4), 40013, v4(VIP4_CA), 8140, flags::SYN).build(),
            expect: Tx(Reason::TxCa, CA_PRIMARY),
        },
        Case {
            name: "CA VIP data segment goes to the primary CA",
            frame: Frame::tcp(
                v4(CLIENT4),
                40014,
                v4(VIP4_CA),
                8140,
                flags::ACK | flags::PSH,
            )
            .with_payload(b"GET /puppet-ca/v1/certificate/ca")
            .build(),
            expect: Tx(Reason::TxCa, CA_PRIMARY),
        },
    ];
    let tx = |name, frame: Vec<u8>, key: FlowKey, service| Case {
        name,
        frame,
        expect: TxTable(Reason::TxCompiler, key, service),
    };
    c.push(tx(
        "IPv4 SYN to the compiler VIP",
        syn4(41000).build(),
        k4(41000),
        S_V4,
    ));
    c.push(tx(
        "IPv4 SYN with IP options (IHL 8)",
        syn4(41001)
            .with_ip_options(&[0x94, 4, 0, 0, 1, 1, 1, 0, 0x44, 4, 5, 0])
            .build(),
        k4(41001),
        S_V4,
    ));
    c.push(tx(
        "IPv4 SYN in one 802.1Q tag",
        syn4(41002).with_vlan(0x8100, 42).build(),
        k4(41002),
        S_V4,
    ));
    c.push(tx(
        "IPv4 SYN in QinQ (802.1ad + 802.1Q)",
        syn4(41003)
            .with_vlan(0x88a8, 7)
            .with_vlan(0x8100, 42)
            .build(),
        k4(41003),
        S_V4,
    ));
    c.push(tx(
        "IPv4 SYN with TCP options (MSS, SACK, timestamps)",
        Frame {
            l4: lb_testkit::packet::L4::Tcp {
                sport: 41004,
                dport: 8140,
                flags: flags::SYN,
                options: vec![
                    2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
                ],
            },
            ..syn4(41004)
        }
        .build(),
        k4(41004),
        S_V4,
    ));
    c.push(tx(
        "IPv4 ACK without a flow entry follows the table",
        Frame::tcp(v4(CLIENT4), 41005, v4(VIP4), 8140, flags::ACK)
            .with_payload(b"x")
            .build(),
        k4(41005),
        S_V4,
    ));
    c.push(tx(
        "IPv4 SYN with Ethernet padding past the IP length",
        poke(syn4(41006).build(), |f| f.extend_from_slice(&[0; 6])),
        k4(41006),
        S_V4,
    ));
    c.push(tx(
        "IPv6 SYN to the compiler VIP",
        syn6(41007).build(),
        k6(41007),
        S_V6,
    ));
    c.push(tx(
        "IPv6 SYN behind hop-by-hop and destination options",
        syn6(41008).with_ext(0, 8).with_ext(60, 16).build(),
        k6(41008),
        S_V6,
    ));
    c.push(tx(
        "IPv6 SYN behind an AH header",
        syn6(41009).with_ext(51, 24).build(),
        k6(41009),
        S_V6,
    ));
    c.push(tx(
        "IPv6 SYN behind a routing header",
        syn6(41010).with_ext(43, 24).build(),
        k6(41010),
        S_V6,
    ));
    c.push(tx(
        "IPv4 first fragment (MF, offset 0) to the VIP",
        syn4(41013).with_payload(&[7; 64]).with_frag(0x2000).build(),
        k4(41013),
        S_V4,
    ));
    c.push(tx(
        "IPv6 atomic fragment (offset 0, no M) is a whole packet",
        syn6(41014).with_ext(44, 8).build(),
        k6(41014),
        S_V6,
    ));
    c.push(tx(
        "IPv6 first fragment after a hop-by-hop header",
        syn6(41015)
            .with_ext(0, 8)
            .with_ext(44, 8)
            .with_frag(0x2000)
            .build(),
        k6(41015),
        S_V6,
    ));
    c.push(tx(
        "IPv6 SYN in an 802.1Q tag",
        syn6(41011).with_vlan(0x8100, 9).build(),
        k6(41011),
        S_V6,
    ));
    c.push(tx(
        "UDP datagram to the UDP VIP",
        Frame::udp(v4(CLIENT4), 41012, v4(VIP4_UDP), 5353)
            .with_payload(b"q")
            .build(),
        key_of(v4(CLIENT4), 41012, v4(VIP4_UDP), 5353, PROTO_UDP),
        S_UDP,
    ));
    c
}

#[test]
fn packet_table() {
    need_root!();
    let mut f = Fixture::new();
    let cases = cases();
    assert!(
        cases.len() >= 45,
        "the table must stay at 45+ cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let before = f.reasons();
        let out = f.run(&case.frame);
        let after = f.reasons();
        let (want_action, want_reason, want_frame) = match &case.expect {
            Expect::Pass(r) => (XDP_PASS, *r, case.frame.clone()),
            Expect::Drop(r) => (XDP_DROP, *r, case.frame.clone()),
            Expect::Tx(r, id) => (XDP_TX, *r, rewritten(&case.frame, *id)),
            Expect::TxTable(r, key, service) => {
                let table = f.dp.active_table(*service).unwrap().unwrap();
                (
                    XDP_TX,
                    *r,
                    rewritten(&case.frame, expected_backend(&table, key)),
                )
            }
        };
        let mut problems = Vec::new();
        if out.action != want_action {
            problems.push(format!("action {} want {want_action}", out.action));
        }
        if out.frame != want_frame {
            problems.push(format!(
                "output frame differs: got {:02x?} want {:02x?}",
                &out.frame[..out.frame.len().min(14)],
                &want_frame[..want_frame.len().min(14)]
            ));
        }
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let want = u64::from(i as u32 == want_reason as u32);
            if a - b != want {
                problems.push(format!(
                    "counter {} moved by {} (want {want})",
                    Reason::from_code(i as u32).unwrap().label(),
                    a - b
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The frame as DSR must leave it: backend MAC, our MAC, the rest untouched.
fn rewritten(frame: &[u8], backend_id: u32) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&mac(backend_id));
    out[6..12].copy_from_slice(&LB_MAC);
    assert_ne!(CLIENT_MAC, LB_MAC);
    out
}

fn dst_backend(out: &RunOutput) -> Option<u32> {
    if out.action != XDP_TX {
        return None;
    }
    assert_eq!(&out.frame[6..12], &LB_MAC, "source MAC must be ours");
    Some(((out.frame[4] as u32) << 8) | out.frame[5] as u32)
}

#[test]
fn syn_creates_a_flow_and_later_segments_follow_it() {
    need_root!();
    let mut f = Fixture::new();
    let out = f.run(&syn4(42000).build());
    let b = dst_backend(&out).expect("forwarded");
    let flow = f.dp.flow(&k4(42000)).expect("SYN records the flow");
    assert_eq!(flow.backend_id, b);
    assert!(flow.created_ns > 0);
    let ack = Frame::tcp(v4(CLIENT4), 42000, v4(VIP4), 8140, flags::ACK).build();
    assert_eq!(dst_backend(&f.run(&ack)), Some(b));
    let stats = f.dp.service_stats(S_V4).unwrap();
    assert_eq!((stats.packets, stats.new_flows), (2, 1));
    let bs = f.dp.backend_stats(b).unwrap();
    assert_eq!(bs.packets, 2);
    assert_eq!(bs.new_flows, 1);
    assert_eq!(bs.bytes, (syn4(42000).build().len() + ack.len()) as u64);
}

#[test]
fn non_syn_miss_does_not_create_a_flow() {
    need_root!();
    let mut f = Fixture::new();
    let ack = Frame::tcp(v4(CLIENT4), 42001, v4(VIP4), 8140, flags::ACK).build();
    assert!(dst_backend(&f.run(&ack)).is_some());
    assert!(
        f.dp.flow(&k4(42001)).is_none(),
        "a random ACK must not take a flow entry"
    );
    let rst = Frame::tcp(v4(CLIENT4), 42002, v4(VIP4), 8140, flags::RST).build();
    f.run(&rst);
    assert!(f.dp.flow(&k4(42002)).is_none());
    // SYN+ACK is not a connection opening either.
    let synack = Frame::tcp(v4(CLIENT4), 42003, v4(VIP4), 8140, flags::SYN | flags::ACK).build();
    f.run(&synack);
    assert!(f.dp.flow(&k4(42003)).is_none());
}

/// Flows whose table slot the change moves (so the flow table is what keeps them).
fn moved_flows(before: &[u32], after: &[u32], n: usize) -> Vec<u16> {
    (30000..60000u16)
        .filter(|p| expected_backend(before, &k4(*p)) != expected_backend(after, &k4(*p)))
        .take(n)
        .collect()
}

#[test]
fn established_flows_survive_a_backend_being_added() {
    need_root!();
    let mut f = Fixture::new();
    let before = f.dp.active_table(S_V4).unwrap().unwrap();
    let after = {
        let e: Vec<Entry> = [0, 1, 2, 3].iter().map(|&i| entry(i, false, 1)).collect();
        maglev::build(&e, TABLE).unwrap()
    };
    let ports = moved_flows(&before, &after, 20);
    assert_eq!(ports.len(), 20);
    let mut first = Vec::new();
    for &p in &ports {
        first.push(dst_backend(&f.run(&syn4(p).build())).unwrap());
    }
    f.set_backend(3, S_V4, BACKEND_ACTIVE, 0, backend_addr(3, false));
    f.install(S_V4, &[0, 1, 2, 3], false);
    for (i, &p) in ports.iter().enumerate() {
        let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
        assert_eq!(dst_backend(&f.run(&ack)), Some(first[i]), "flow {p} moved");
    }
    // A new flow on a moved slot follows the new table.
    let fresh = moved_flows(&before, &after, 40)[39];
    let _ = fresh;
    let new_port = (61000..65000u16)
        .find(|p| expected_backend(&after, &k4(*p)) == 3)
        .unwrap();
    assert_eq!(dst_backend(&f.run(&syn4(new_port).build())), Some(3));
}

#[test]
fn drained_backend_keeps_its_flows_but_gets_no_new_ones() {
    need_root!();
    let mut f = Fixture::new();
    let table = f.dp.active_table(S_V4).unwrap().unwrap();
    let on_1: Vec<u16> = (30000..40000u16)
        .filter(|p| expected_backend(&table, &k4(*p)) == 1)
        .take(10)
        .collect();
    for &p in &on_1 {
        assert_eq!(dst_backend(&f.run(&syn4(p).build())), Some(1));
    }
    // Drain 1: out of the table, state DRAINING.
    f.set_backend(1, S_V4, BACKEND_DRAINING, 0, backend_addr(1, false));
    f.install(S_V4, &[0, 2], false);
    for &p in &on_1 {
        let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
        assert_eq!(
            dst_backend(&f.run(&ack)),
            Some(1),
            "drained backend lost flow {p}"
        );
    }
    for p in 50000..50500u16 {
        assert_ne!(
            dst_backend(&f.run(&syn4(p).build())),
            Some(1),
            "new flow {p} reached a drained backend"
        );
    }
    // A new SYN reusing a drained flow's 5-tuple is a new connection.
    let again = dst_backend(&f.run(&syn4(on_1[0]).build())).unwrap();
    assert_ne!(again, 1);
    assert_eq!(f.dp.flow(&k4(on_1[0])).unwrap().backend_id, again);
}

#[test]
fn removed_or_down_backend_flows_are_repicked() {
    need_root!();
    for state in [BACKEND_EMPTY, BACKEND_DOWN] {
        let mut f = Fixture::new();
        let table = f.dp.active_table(S_V4).unwrap().unwrap();
        let on_2: Vec<u16> = (30000..40000u16)
            .filter(|p| expected_backend(&table, &k4(*p)) == 2)
            .take(10)
            .collect();
        for &p in &on_2 {
            assert_eq!(dst_backend(&f.run(&syn4(p).build())), Some(2));
        }
        f.set_backend(2, S_V4, state, 0, backend_addr(2, false));
        let after = f.install(S_V4, &[0, 1], false);
        for &p in &on_2 {
            let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
            let got = dst_backend(&f.run(&ack)).unwrap();
            assert_eq!(
                got,
                expected_backend(&after, &k4(p)),
                "state {state}: flow {p}"
            );
            assert_ne!(got, 2);
            assert_eq!(f.dp.flow(&k4(p)).unwrap().backend_id, got, "entry updated");
        }
    }
}

#[test]
fn a_reused_backend_id_does_not_inherit_old_flows() {
    need_root!();
    let mut f = Fixture::new();
    let table = f.dp.active_table(S_V4).unwrap().unwrap();
    let p = (30000..40000u16)
        .find(|p| expected_backend(&table, &k4(*p)) == 0)
        .unwrap();
    assert_eq!(dst_backend(&f.run(&syn4(p).build())), Some(0));
    // Id 0 now belongs to another backend (generation 1) that is not in the
    // table yet; the old flow must be re-picked, not sent to the newcomer.
    f.set_backend(
        0,
        S_V4,
        BACKEND_ACTIVE,
        1,
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, 99)),
    );
    let after = f.install(S_V4, &[1, 2], false);
    let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
    let got = dst_backend(&f.run(&ack)).unwrap();
    assert_eq!(got, expected_backend(&after, &k4(p)));
    assert_ne!(got, 0);
}

#[test]
fn table_flip_is_atomic_staged_copy_is_invisible_until_flipped() {
    need_root!();
    let mut f = Fixture::new();
    let old = f.dp.active_table(S_V4).unwrap().unwrap();
    // Stage a table that sends everything to backend 2, without flipping.
    let all_2 = vec![2u32; TABLE as usize];
    let copy = f.dp.stage_table(S_V4, &all_2).unwrap();
    let ports: Vec<u16> = (30000..40000u16)
        .filter(|p| expected_backend(&old, &k4(*p)) != 2)
        .take(50)
        .collect();
    for &p in &ports {
        // Non-SYN so no flow entries interfere with what the table says.
        let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
        assert_eq!(
            dst_backend(&f.run(&ack)),
            Some(expected_backend(&old, &k4(p))),
            "staged table leaked"
        );
    }
    f.dp.flip(S_V4, copy).unwrap();
    for &p in &ports {
        let ack = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::ACK).build();
        assert_eq!(dst_backend(&f.run(&ack)), Some(2), "flip not visible");
    }
    assert_eq!(f.dp.active_table(S_V4).unwrap().unwrap(), all_2);
    // Installing again writes the other copy and flips back.
    f.install(S_V4, &[0, 1, 2], false);
    assert_eq!(f.dp.active_table(S_V4).unwrap().unwrap(), old);
}

#[test]
fn ca_steering_fails_over_and_never_touches_compiler_tables() {
    need_root!();
    let mut f = Fixture::new();
    let ca_syn = |p| Frame::tcp(v4(CLIENT4), p, v4(VIP4_CA), 8140, flags::SYN).build();
    for p in 43000..43100 {
        assert_eq!(dst_backend(&f.run(&ca_syn(p))), Some(CA_PRIMARY));
    }
    f.dp.set_ca_target(S_CA, CA_STANDBY).unwrap();
    for p in 43100..43200 {
        assert_eq!(dst_backend(&f.run(&ca_syn(p))), Some(CA_STANDBY));
    }
    // CA flows are not in the flow table: the steering map alone decides.
    assert!(
        f.dp.flow(&key_of(v4(CLIENT4), 43000, v4(VIP4_CA), 8140, PROTO_TCP))
            .is_none()
    );
    // Compiler traffic never reaches a CA, whatever the tables hold.
    for p in 44000..44500u16 {
        let b = dst_backend(&f.run(&syn4(p).build())).unwrap();
        assert!(b < 3, "compiler flow went to backend {b}");
    }
    // A compiler table naming a CA backend id is refused by the data plane.
    let poisoned = vec![CA_PRIMARY; TABLE as usize];
    f.dp.install_table(S_V4, &poisoned).unwrap();
    let out = f.run(&syn4(44600).build());
    assert_eq!(
        out.action, XDP_DROP,
        "a backend of another service must not be used"
    );
    // And a steering map pointing at a compiler is refused too.
    f.dp.set_ca_target(S_CA, 0).unwrap();
    assert_eq!(f.run(&ca_syn(43300)).action, XDP_DROP);
    let ca = f.dp.service_stats(S_CA).unwrap();
    assert_eq!(ca.packets, 200);
    assert_eq!(ca.no_backend, 1);
}

#[test]
fn two_separately_loaded_copies_agree_on_every_flow() {
    need_root!();
    // Two "LB hosts": same backends, programmed in a different order and
    // with different backend ids; the choice must be the same backend.
    let mut a = Fixture::new();
    let mut b = Fixture::new();
    let addrs: Vec<IpAddr> = (1..=5)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 9, i)))
        .collect();
    let program = |f: &mut Fixture, ids: &[u32], order: &[usize]| {
        let mut entries = Vec::new();
        for &i in order {
            let id = ids[i];
            f.set_backend(id, S_V4, BACKEND_ACTIVE, 0, addrs[i]);
            entries.push(Entry::from_addr(addrs[i], 1, id));
        }
        let t = maglev::build(&entries, 65537).unwrap();
        f.dp.install_table(S_V4, &t).unwrap();
    };
    program(&mut a, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4]);
    program(&mut b, &[100, 101, 102, 103, 104], &[4, 2, 0, 3, 1]);
    let mut seen = std::collections::BTreeSet::new();
    for p in 0..2000u16 {
        let src = Ipv4Addr::new(198, 51, 100, (p % 250) as u8);
        let frame = Frame::tcp(v4(src), 20000 + p, v4(VIP4), 8140, flags::SYN).build();
        let ia = dst_backend(&a.run(&frame)).unwrap();
        let ib = dst_backend(&b.run(&frame)).unwrap();
        assert_eq!(ia + 100, ib, "hosts disagree on flow {p}");
        seen.insert(ia);
    }
    assert_eq!(seen.len(), 5, "every backend should get flows");
}

#[test]
fn a_group_addressed_syn_is_passed_and_remembers_nothing() {
    need_root!();
    let mut f = Fixture::new();
    let out = f.run(&syn4(42100).with_dst_mac([0xff; 6]).build());
    assert_eq!(out.action, XDP_PASS);
    assert!(
        f.dp.flow(&k4(42100)).is_none(),
        "a broadcast SYN must not take a flow entry"
    );
    let multicast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
    f.run(&syn4(42101).with_dst_mac(multicast).build());
    assert!(f.dp.flow(&k4(42101)).is_none());
    // The same SYN to our MAC does.
    assert_eq!(f.run(&syn4(42100).build()).action, XDP_TX);
    assert!(f.dp.flow(&k4(42100)).is_some());
}

fn ack4(sport: u16) -> Vec<u8> {
    Frame::tcp(v4(CLIENT4), sport, v4(VIP4), 8140, flags::ACK).build()
}

#[test]
fn retiring_backend_keeps_established_flows_and_its_generation_until_freed() {
    need_root!();
    let mut f = Fixture::new();
    let table = f.dp.active_table(S_V4).unwrap().unwrap();
    let on_1: Vec<u16> = (30000..40000u16)
        .filter(|p| expected_backend(&table, &k4(*p)) == 1)
        .take(10)
        .collect();
    for &p in &on_1 {
        assert_eq!(dst_backend(&f.run(&syn4(p).build())), Some(1));
    }
    // Retire 1: out of the table, state RETIRING, generation unchanged.
    f.set_backend(1, S_V4, BACKEND_RETIRING, 0, backend_addr(1, false));
    let after = f.install(S_V4, &[0, 2], false);
    for &p in &on_1 {
        assert_eq!(
            dst_backend(&f.run(&ack4(p))),
            Some(1),
            "retiring backend lost established flow {p}"
        );
        let v = f.dp.flow(&k4(p)).unwrap();
        assert_eq!((v.backend_id, v.generation), (1, 0), "entry rewritten");
    }
    for p in 50000..50500u16 {
        assert_ne!(
            dst_backend(&f.run(&syn4(p).build())),
            Some(1),
            "new flow {p} reached a retiring backend"
        );
    }
    // A SYN reusing a retiring flow's 5-tuple is a new connection: re-picked.
    let again = dst_backend(&f.run(&syn4(on_1[0]).build())).unwrap();
    assert_eq!(again, expected_backend(&after, &k4(on_1[0])));
    assert_eq!(f.dp.flow(&k4(on_1[0])).unwrap().backend_id, again);
    // The slot freed (EMPTY, generation kept): what is left is re-picked.
    f.set_backend(1, S_V4, BACKEND_EMPTY, 0, backend_addr(1, false));
    for &p in &on_1[1..] {
        let got = dst_backend(&f.run(&ack4(p))).unwrap();
        assert_eq!(got, expected_backend(&after, &k4(p)), "flow {p}");
        assert_eq!(f.dp.flow(&k4(p)).unwrap().backend_id, got);
    }
}

#[test]
fn fin_or_rst_marks_the_flow_closed_once_and_the_flow_keeps_its_backend() {
    need_root!();
    for (i, close) in [flags::FIN | flags::ACK, flags::RST, flags::RST | flags::ACK]
        .into_iter()
        .enumerate()
    {
        let mut f = Fixture::new();
        let p = 42300 + i as u16;
        let b = dst_backend(&f.run(&syn4(p).build())).unwrap();
        let opened = f.dp.flow(&k4(p)).unwrap();
        assert_eq!(opened.closed_ns, 0, "a new flow is open");
        assert!(opened.last_seen_ns >= opened.created_ns && opened.created_ns > 0);
        assert!(opened.is_open(PROTO_TCP, opened.created_ns));
        // Plain data does not close it.
        assert_eq!(dst_backend(&f.run(&ack4(p))), Some(b));
        assert_eq!(f.dp.flow(&k4(p)).unwrap().closed_ns, 0);

        let fin = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, close).build();
        assert_eq!(dst_backend(&f.run(&fin)), Some(b), "flags {close:#x}");
        let closed = f.dp.flow(&k4(p)).unwrap();
        assert!(closed.closed_ns >= opened.created_ns, "flags {close:#x}");
        assert!(!closed.is_open(PROTO_TCP, closed.closed_ns));
        assert!(closed.is_closing(closed.closed_ns));
        assert_eq!((closed.backend_id, closed.generation), (b, 0));
        // The final ACKs of the close, and a repeated FIN, still go to the
        // compiler that holds the connection; the mark is written once.
        assert_eq!(dst_backend(&f.run(&ack4(p))), Some(b));
        assert_eq!(dst_backend(&f.run(&fin)), Some(b));
        assert_eq!(f.dp.flow(&k4(p)).unwrap().closed_ns, closed.closed_ns);
    }
}

#[test]
fn a_syn_on_a_closed_entry_is_a_new_connection_and_is_repicked() {
    need_root!();
    let mut f = Fixture::new();
    let table = f.dp.active_table(S_V4).unwrap().unwrap();
    let p = (30000..40000u16)
        .find(|p| expected_backend(&table, &k4(*p)) == 0)
        .unwrap();
    let q = (p + 1..40000u16)
        .find(|p| expected_backend(&table, &k4(*p)) == 0)
        .unwrap();
    for port in [p, q] {
        assert_eq!(dst_backend(&f.run(&syn4(port).build())), Some(0));
    }
    // Backend 0 leaves the table but stays ACTIVE in its slot (a new table
    // is installed before its state changes): flows keep it.
    let after = f.install(S_V4, &[1, 2], false);
    let fin = Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, flags::FIN | flags::ACK).build();
    assert_eq!(dst_backend(&f.run(&fin)), Some(0));
    let closed = f.dp.flow(&k4(p)).unwrap();
    // A SYN on the open entry (a retransmission) keeps its backend...
    assert_eq!(dst_backend(&f.run(&syn4(q).build())), Some(0));
    // ...a SYN on the closed entry is a new connection from the table.
    let got = dst_backend(&f.run(&syn4(p).build())).unwrap();
    assert_eq!(got, expected_backend(&after, &k4(p)));
    assert_ne!(got, 0);
    let fresh = f.dp.flow(&k4(p)).unwrap();
    assert_eq!(fresh.backend_id, got);
    assert_eq!(fresh.closed_ns, 0, "the new connection is open");
    assert!(fresh.created_ns >= closed.closed_ns);
    // The new connection's packets follow it.
    assert_eq!(dst_backend(&f.run(&ack4(p))), Some(got));
}

#[test]
fn flow_value_v2_layout() {
    use std::mem::{offset_of, size_of};
    assert_eq!(size_of::<FlowValue>(), 32);
    assert_eq!(offset_of!(FlowValue, backend_id), 0);
    assert_eq!(offset_of!(FlowValue, generation), 4);
    assert_eq!(offset_of!(FlowValue, created_ns), 8);
    assert_eq!(offset_of!(FlowValue, closed_ns), 16);
    assert_eq!(offset_of!(FlowValue, last_seen_ns), 24);
    assert_eq!(lb_common::maps::MAP_VERSION, 2);
    for name in lb_common::maps::ALL {
        assert!(name.ends_with("_v2"), "{name}");
    }
}

#[test]
fn last_seen_is_refreshed_at_most_once_per_second() {
    need_root!();
    let mut f = Fixture::new();
    let b = dst_backend(&f.run(&syn4(42400).build())).unwrap();
    let first = f.dp.flow(&k4(42400)).unwrap();
    for _ in 0..20 {
        assert_eq!(dst_backend(&f.run(&ack4(42400))), Some(b));
    }
    assert_eq!(
        f.dp.flow(&k4(42400)).unwrap().last_seen_ns,
        first.last_seen_ns,
        "no write per packet"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.run(&ack4(42400));
    let later = f.dp.flow(&k4(42400)).unwrap();
    assert!(later.last_seen_ns >= first.last_seen_ns + 1_000_000_000);
    assert_eq!(later.created_ns, first.created_ns);
}

// ------------------------------------------------------ data plane v2 (issue 13)

/// Pin this test's thread to one CPU: flood mode is per CPU, and
/// BPF_PROG_TEST_RUN runs the program on the calling thread's CPU.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is the empty set; we set one bit in it and
    // pass its size; 0 = the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|c| libc::CPU_ISSET(*c, &set))
            .expect("a CPU");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

#[test]
fn ipv4_and_ipv6_flows_live_in_their_own_tables() {
    need_root!();
    let mut f = Fixture::new();
    for p in 0..5 {
        assert_eq!(f.run(&syn4(45000 + p).build()).action, XDP_TX);
    }
    for p in 0..3 {
        assert_eq!(f.run(&syn6(45000 + p).build()).action, XDP_TX);
    }
    assert_eq!(f.dp.flow_counts().unwrap(), (5, 3));
    // Each reads back under its family-independent key, with the backend
    // the flow hash gives (the same hash as before the split).
    let t4 = f.dp.active_table(S_V4).unwrap().unwrap();
    let t6 = f.dp.active_table(S_V6).unwrap().unwrap();
    for p in 0..3 {
        let v = f.dp.flow(&k6(45000 + p)).expect("v6 flow");
        assert_eq!(v.backend_id, expected_backend(&t6, &k6(45000 + p)));
        let v = f.dp.flow(&k4(45000 + p)).expect("v4 flow");
        assert_eq!(v.backend_id, expected_backend(&t4, &k4(45000 + p)));
    }
    let mut seen = (0, 0);
    f.dp.scan_flows(&mut |k, _| match k.family {
        lb_common::FAMILY_V4 => seen.0 += 1,
        _ => seen.1 += 1,
    })
    .unwrap();
    assert_eq!(seen, (5, 3));
    assert_eq!(
        f.dp.flows(6).unwrap().len(),
        6,
        "flows() stops at its limit"
    );
}

#[test]
fn ca_traffic_never_reads_nor_creates_flow_entries() {
    need_root!();
    let mut f = Fixture::new();
    let slot = f.dp.filter_slot(v4(VIP4_CA), 8140);
    assert_eq!(
        (slot.compiler, slot.ca),
        (0, 1),
        "the fixture's CA VIP must not share a filter slot with a compiler VIP"
    );
    // Plant an entry for a CA 5-tuple naming a compiler: if a CA packet read
    // the flow table, it would follow it.
    let planted = key_of(v4(CLIENT4), 46000, v4(VIP4_CA), 8140, PROTO_TCP);
    f.dp.insert_flow(
        &planted,
        FlowValue {
            backend_id: 0,
            ..FlowValue::default()
        },
    )
    .unwrap();
    for fl in [flags::SYN, flags::ACK, flags::FIN | flags::ACK] {
        let out = f.run(&Frame::tcp(v4(CLIENT4), 46000, v4(VIP4_CA), 8140, fl).build());
        assert_eq!(dst_backend(&out), Some(CA_PRIMARY));
    }
    for p in 46001..46050 {
        let out = f.run(&Frame::tcp(v4(CLIENT4), p, v4(VIP4_CA), 8140, flags::SYN).build());
        assert_eq!(dst_backend(&out), Some(CA_PRIMARY));
    }
    assert_eq!(
        f.dp.flow_counts().unwrap(),
        (1, 0),
        "CA traffic created no entry"
    );
    let v = f.dp.flow(&planted).unwrap();
    assert_eq!(
        (v.closed_ns, v.last_seen_ns),
        (0, 0),
        "the planted entry was not touched"
    );
    // The CA counts a connection per SYN (it has no flow table).
    assert_eq!(f.dp.backend_stats(CA_PRIMARY).unwrap().new_flows, 50);
}

#[test]
fn new_flows_counts_connections_and_nothing_else() {
    need_root!();
    let mut f = Fixture::new();
    let new_flows = |f: &Fixture| f.dp.service_stats(S_V4).unwrap().new_flows;
    let seg = |p, fl| Frame::tcp(v4(CLIENT4), p, v4(VIP4), 8140, fl).build();
    // A SYN creates an entry: one connection.
    f.run(&syn4(47000).build());
    assert_eq!(new_flows(&f), 1);
    // Its retransmission and the rest of the connection are not new.
    f.run(&syn4(47000).build());
    f.run(&seg(47000, flags::ACK));
    assert_eq!(new_flows(&f), 1);
    // Non-SYN segments of unknown flows are forwarded, never counted.
    for p in 47100..47120 {
        assert_eq!(f.run(&seg(p, flags::ACK)).action, XDP_TX);
    }
    f.run(&seg(47121, flags::RST));
    f.run(&seg(47122, flags::SYN | flags::ACK));
    assert_eq!(new_flows(&f), 1, "non-SYN misses are not connections");
    // The agent closes, then reuses the port (after TIME_WAIT): a new
    // connection, counted, on a re-taken entry.
    f.run(&seg(47000, flags::FIN | flags::ACK));
    f.run(&seg(47000, flags::ACK));
    assert_eq!(new_flows(&f), 1);
    f.run(&syn4(47000).build());
    assert_eq!(new_flows(&f), 2, "a SYN re-taking a closed entry is new");
    assert_eq!(f.dp.flow(&k4(47000)).unwrap().closed_ns, 0);
    // A SYN re-taking the entry of a backend that went down is new too.
    let b = f.dp.flow(&k4(47000)).unwrap().backend_id;
    f.set_backend(b, S_V4, BACKEND_DOWN, 0, backend_addr(b, false));
    let rest: Vec<u32> = [0, 1, 2].into_iter().filter(|x| *x != b).collect();
    f.install(S_V4, &rest, false);
    f.run(&syn4(47000).build());
    assert_eq!(new_flows(&f), 3);
    // A non-SYN on a stale entry re-takes it but is not a connection.
    f.run(&syn4(47001).build());
    assert_eq!(new_flows(&f), 4);
    let b2 = f.dp.flow(&k4(47001)).unwrap().backend_id;
    f.set_backend(b2, S_V4, BACKEND_DOWN, 0, backend_addr(b2, false));
    f.run(&seg(47001, flags::ACK));
    assert_eq!(new_flows(&f), 4);
    // UDP: the datagram that creates the entry is the connection.
    let udp = |p| Frame::udp(v4(CLIENT4), p, v4(VIP4_UDP), 5353).build();
    f.run(&udp(47200));
    f.run(&udp(47200));
    f.run(&udp(47201));
    assert_eq!(f.dp.service_stats(S_UDP).unwrap().new_flows, 2);
    // The derived totals agree with the per-backend records, and the tx
    // reason is derived from them.
    let total: u64 = [0, 1, 2]
        .iter()
        .map(|b| f.dp.backend_stats(*b).unwrap().new_flows)
        .sum();
    assert_eq!(total, new_flows(&f));
    let reasons = f.reasons();
    let tx = reasons[Reason::TxCompiler as usize];
    let sum_packets: u64 = (0..3)
        .chain(20..23)
        .map(|b| f.dp.backend_stats(b).unwrap().packets)
        .sum();
    assert_eq!(tx, sum_packets);
}

#[test]
fn a_source_claiming_to_be_a_vip_is_dropped_and_counted() {
    need_root!();
    let mut f = Fixture::new();
    // Land attack: source = destination = the VIP.
    let land = Frame::tcp(v4(VIP4), 8140, v4(VIP4), 8140, flags::SYN).build();
    let out = f.run(&land);
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(out.frame, land, "a dropped frame is untouched");
    // Another VIP's address, any port, to a compiler VIP and to the CA VIP.
    for (src, dst) in [(VIP4_CA, VIP4), (VIP4_UDP, VIP4), (VIP4, VIP4_CA)] {
        let spoofed = Frame::tcp(v4(src), 51234, v4(dst), 8140, flags::SYN).build();
        assert_eq!(f.run(&spoofed).action, XDP_DROP);
        let ack = Frame::tcp(v4(src), 51234, v4(dst), 8140, flags::ACK).build();
        assert_eq!(f.run(&ack).action, XDP_DROP);
    }
    let land6 = Frame::tcp(v6(vip6()), 1, v6(vip6()), 8140, flags::SYN).build();
    assert_eq!(f.run(&land6).action, XDP_DROP);
    assert_eq!(f.reasons()[Reason::DropSpoofedSource as usize], 8);
    assert_eq!(f.dp.flow_counts().unwrap(), (0, 0), "nothing recorded");
    // An ordinary client is not affected, and a VIP address that is not a
    // source is not a VIP's traffic: passed (not ours).
    assert_eq!(f.run(&syn4(51000).build()).action, XDP_TX);
    let not_vip = Frame::tcp(v4(VIP4), 51000, v4(CLIENT4), 8140, flags::SYN).build();
    assert_eq!(f.run(&not_vip).action, XDP_PASS);
    // The address set follows the VIP map: remove the UDP VIP and its
    // address is an ordinary source again.
    f.dp.remove_vip(&VipKey::new(VIP4_UDP.into(), 5353, PROTO_UDP))
        .unwrap();
    let from_old_vip = Frame::tcp(v4(VIP4_UDP), 51235, v4(VIP4), 8140, flags::SYN).build();
    assert_eq!(f.run(&from_old_vip).action, XDP_TX);
}

#[test]
fn flood_mode_stops_recording_syns_past_the_threshold_keeps_established_flows_and_ends() {
    need_root!();
    pin_to_one_cpu();
    let mut f = Fixture::new();
    const T: u32 = 50;
    f.dp.set_flood_threshold(T).unwrap();
    // 10 connections before the flood, then 100 new SYNs in the same second.
    let t0 = std::time::Instant::now();
    for p in 0..10 {
        f.run(&syn4(48000 + p).build());
    }
    let before: Vec<u32> = (0..10)
        .map(|p| f.dp.flow(&k4(48000 + p)).unwrap().backend_id)
        .collect();
    let table = f.dp.active_table(S_V4).unwrap().unwrap();
    for p in 0..100u16 {
        let out = f.run(&syn4(48100 + p).build());
        assert_eq!(
            dst_backend(&out),
            Some(expected_backend(&table, &k4(48100 + p))),
            "a flood-mode SYN goes where the Maglev table says"
        );
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(900),
        "the test must stay inside one flood window"
    );
    let recorded = (0..100u16)
        .filter(|p| f.dp.flow(&k4(48100 + p)).is_some())
        .count();
    assert_eq!(
        recorded,
        (T - 10) as usize,
        "only the threshold is recorded"
    );
    assert!(f.dp.flow(&k4(48100 + 39)).is_some());
    assert!(f.dp.flow(&k4(48100 + 40)).is_none());
    let st = f.dp.flood_status().unwrap();
    assert_eq!(st.threshold, T);
    assert_eq!(st.cpus_in_flood, 1);
    assert_eq!(st.flood_syns, 60);
    assert_eq!(st.flood_windows, 1);
    assert_eq!(f.dp.service_stats(S_V4).unwrap().new_flows, T as u64);
    // During the flood the table changes: established flows keep their
    // backend (their entries are intact), new SYNs follow the new table.
    let new_table = f.install(S_V4, &[0, 1, 2, 3], false);
    f.set_backend(3, S_V4, BACKEND_ACTIVE, 0, backend_addr(3, false));
    for p in 0..10u16 {
        let ack = Frame::tcp(v4(CLIENT4), 48000 + p, v4(VIP4), 8140, flags::ACK).build();
        assert_eq!(dst_backend(&f.run(&ack)), Some(before[p as usize]));
    }
    // A SYN in flood mode does not read the flow table either (Katran
    // treats every SYN so): a retransmitted SYN of a connection recorded
    // before the flood goes where the table says, and its entry stays.
    let p = (0..10u16)
        .find(|p| expected_backend(&new_table, &k4(48000 + p)) != before[*p as usize])
        .expect("the new table moves one of the ten connections");
    let out = f.run(&syn4(48000 + p).build());
    assert_eq!(
        dst_backend(&out),
        Some(expected_backend(&new_table, &k4(48000 + p)))
    );
    assert_eq!(
        f.dp.flow(&k4(48000 + p)).unwrap().backend_id,
        before[p as usize]
    );
    let moved = (0..2000u16)
        .map(|p| 49000 + p)
        .find(|p| expected_backend(&table, &k4(*p)) != expected_backend(&new_table, &k4(*p)))
        .unwrap();
    let out = f.run(&syn4(moved).build());
    assert_eq!(
        dst_backend(&out),
        Some(expected_backend(&new_table, &k4(moved)))
    );
    assert!(f.dp.flow(&k4(moved)).is_none(), "still in flood mode");
    // The window ends: the next SYN is recorded again, and the CPU is out
    // of flood mode.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(f.dp.flood_status().unwrap().cpus_in_flood, 0);
    f.run(&syn4(moved).build());
    assert!(f.dp.flow(&k4(moved)).is_some(), "flood mode ended");
    assert_eq!(f.dp.flood_status().unwrap().flood_syns, 62);
}

#[test]
fn without_a_threshold_there_is_no_flood_mode() {
    need_root!();
    pin_to_one_cpu();
    let mut f = Fixture::new();
    for p in 0..300u16 {
        f.run(&syn4(50000 + p).build());
    }
    assert_eq!(f.dp.flow_counts().unwrap().0, 300);
    let st = f.dp.flood_status().unwrap();
    assert_eq!((st.threshold, st.cpus_in_flood, st.flood_syns), (0, 0, 0));
    // A threshold above the rate changes nothing either.
    f.dp.set_flood_threshold(1000).unwrap();
    for p in 300..600u16 {
        f.run(&syn4(50000 + p).build());
    }
    assert_eq!(f.dp.flow_counts().unwrap().0, 600);
    assert_eq!(f.dp.flood_status().unwrap().flood_syns, 0);
}
