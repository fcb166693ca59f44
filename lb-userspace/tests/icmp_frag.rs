//! ICMP errors about VIP flows and fragments to VIPs, packet by packet
//! through BPF_PROG_TEST_RUN: where each goes (exact output bytes: only the
//! MACs rewritten), what it is counted as, and what it leaves in the maps.
//!
//! Needs root (loading BPF programs). Each test loads its own private copy
//! of the object.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_EMPTY, BackendInfo, FlowKey, FlowValue, KIND_CA,
    KIND_COMPILER, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason, VipInfo, VipKey, addr_bytes,
    hash::{flow_hash, table_slot},
    maglev::{self, Entry},
};
use lb_testkit::{
    harness::{RunOutput, TestDataPlane},
    packet::{CLIENT_MAC, Frame, L4, LB_MAC, cut_after_l3, flags, l3_offset},
};
use voxlb::dataplane::DataPlane;

use lb_common::reason::action::{XDP_DROP, XDP_PASS, XDP_TX};
// The fixture world's table size and addresses; ROUTER4 and router6 are
// the router on the compilers' return path that sends the ICMP errors.
use lb_testkit::fuzz::{ROUTER4, TABLE, VIP4, VIP4_CA, VIP4_EMPTY, VIP4_UDP, router6, vip6};

const AGENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The LB host's own address (not a VIP).
const HOST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn agent6() -> Ipv6Addr {
    "2001:db8::10".parse().unwrap()
}

const S_V4: u32 = 0;
const S_V6: u32 = 1;
const S_CA: u32 = 2;
const S_EMPTY: u32 = 3;
const S_UDP: u32 = 4;
const CA_PRIMARY: u32 = 30;

fn mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, (id >> 8) as u8, id as u8]
}

fn backend_addr(id: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, id as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8))
    }
}

macro_rules! need_root {
    () => {
        lb_testkit::require_root!("loading BPF programs");
    };
}

struct Fixture {
    dp: TestDataPlane,
}

impl Fixture {
    fn new() -> Self {
        let mut dp = TestDataPlane::load(4096).expect("load the XDP object");
        for (addr, port, proto, service_id, kind) in [
            (IpAddr::from(VIP4), 8140, PROTO_TCP, S_V4, KIND_COMPILER),
            (vip6().into(), 8140, PROTO_TCP, S_V6, KIND_COMPILER),
            (VIP4_CA.into(), 8140, PROTO_TCP, S_CA, KIND_CA),
            (VIP4_EMPTY.into(), 8140, PROTO_TCP, S_EMPTY, KIND_COMPILER),
            (VIP4_UDP.into(), 5353, PROTO_UDP, S_UDP, KIND_COMPILER),
        ] {
            dp.upsert_vip(VipKey::new(addr, port, proto), VipInfo { service_id, kind })
                .unwrap();
        }
        let mut f = Fixture { dp };
        for (service, ids, v6) in [
            (S_V4, [0u32, 1, 2], false),
            (S_V6, [10, 11, 12], true),
            (S_UDP, [20, 21, 22], false),
        ] {
            for id in ids {
                f.set_backend(id, service, BACKEND_ACTIVE, 0, v6);
            }
            let entries: Vec<Entry> = ids
                .iter()
                .map(|&id| Entry::from_addr(backend_addr(id, v6), 1, id))
                .collect();
            f.dp.install_table(service, &maglev::build(&entries, TABLE).unwrap())
                .unwrap();
        }
        f.dp.install_table(S_EMPTY, &vec![NO_BACKEND; TABLE as usize])
            .unwrap();
        f.set_backend(CA_PRIMARY, S_CA, BACKEND_ACTIVE, 0, false);
        f.dp.set_ca_target(S_CA, CA_PRIMARY).unwrap();
        f
    }

    fn set_backend(&mut self, id: u32, service_id: u32, state: u32, generation: u32, v6: bool) {
        let (addr, family) = addr_bytes(backend_addr(id, v6));
        self.dp
            .set_backend(
                id,
                BackendInfo {
                    mac: mac(id),
                    state,
                    generation,
                    service_id,
                    addr,
                    family,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn reasons(&self) -> Vec<u64> {
        self.dp
            .reason_stats()
            .unwrap()
            .into_iter()
            .map(|(_, c)| c.packets)
            .collect()
    }

    /// Run one frame; return the output and the one reason counter that
    /// moved (panics unless exactly one moved, by one).
    fn run(&mut self, frame: &[u8]) -> (RunOutput, Reason) {
        let before = self.reasons();
        let out = self
            .dp
            .test_run(voxlb::object::PROGRAM_NAME, frame, 1)
            .expect("test_run");
        let moved: Vec<(usize, u64)> = self
            .reasons()
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .enumerate()
            .filter(|(_, d)| *d != 0)
            .collect();
        let [(code, 1)] = moved[..] else {
            panic!("not exactly one counter moved by one: {moved:?}");
        };
        (out, Reason::from_code(code as u32).unwrap())
    }

    /// The backend the active table of `service` gives `key`.
    fn pick(&self, service: u32, key: &FlowKey) -> u32 {
        let t = self.dp.active_table(service).unwrap().unwrap();
        t[table_slot(flow_hash(key), t.len() as u32) as usize]
    }

    /// Assert `frame` is forwarded to `backend`, counted as `reason`, and
    /// changed in nothing but its MACs.
    fn expect_tx(&mut self, what: &str, frame: &[u8], reason: Reason, backend: u32) {
        let (out, r) = self.run(frame);
        assert_eq!(out.action, XDP_TX, "{what}: action ({r:?})");
        assert_eq!(r, reason, "{what}: counted as");
        assert_eq!(out.frame, rewritten(frame, backend), "{what}: output bytes");
    }

    /// Assert `frame` gets `action`, counted as `reason`, untouched.
    fn expect_untouched(&mut self, what: &str, frame: &[u8], action: u32, reason: Reason) {
        let (out, r) = self.run(frame);
        assert_eq!((out.action, r), (action, reason), "{what}");
        assert_eq!(
            out.frame, frame,
            "{what}: a frame not forwarded is untouched"
        );
    }
}

/// The frame as DSR leaves it: backend MAC, our MAC, the rest untouched.
fn rewritten(frame: &[u8], backend_id: u32) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&mac(backend_id));
    out[6..12].copy_from_slice(&LB_MAC);
    assert_ne!(CLIENT_MAC, LB_MAC);
    out
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

/// What a compiler sends back in DSR: VIP:port -> agent:aport, with data.
fn reply(vip: IpAddr, port: u16, agent: IpAddr, aport: u16, proto: u8) -> Frame {
    let f = if proto == PROTO_UDP {
        Frame::udp(vip, port, agent, aport)
    } else {
        Frame::tcp(vip, port, agent, aport, flags::ACK | flags::PSH)
    };
    f.with_payload(&[0x42; 1400])
}

/// ICMP "fragmentation needed" (MTU 1400) from the router to `to`,
/// quoting `quote`.
fn frag_needed(to: IpAddr, quote: &[u8]) -> Vec<u8> {
    Frame::icmp_msg(ROUTER4.into(), to, 3, 4, 1400, quote).build()
}

/// ICMPv6 "packet too big" (MTU 1280) from the router to `to`.
fn too_big(to: IpAddr, quote: &[u8]) -> Vec<u8> {
    Frame::icmp_msg(router6().into(), to, 2, 0, 1280, quote).build()
}

/// As much of an IP packet as an ICMPv4 error quotes here (RFC 1812: as
/// much as fits in 576 bytes; at least the header and 8 bytes).
const QUOTE4: usize = 548;
/// ICMPv6 quotes as much as fits in the minimum MTU.
const QUOTE6: usize = 1232;

#[test]
fn icmp_frag_needed_goes_to_the_flow_table_backend_or_else_the_maglev_pick() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(AGENT4), IpAddr::from(VIP4));
    // Flow A has an entry naming a backend the table would not pick (as
    // after a table change): the error must follow the entry.
    let ka = key_of(agent, 40000, vip, 8140, PROTO_TCP);
    let pick_a = f.pick(S_V4, &ka);
    let planted = (pick_a + 1) % 3;
    f.dp.insert_flow(
        &ka,
        FlowValue {
            backend_id: planted,
            ..Default::default()
        },
    )
    .unwrap();
    let icmp = frag_needed(
        vip,
        &reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE4),
    );
    f.expect_tx(
        "error about a flow in the table",
        &icmp,
        Reason::TxCompiler,
        planted,
    );
    // Flow B has no entry: the Maglev pick, and no entry is created.
    let kb = key_of(agent, 40001, vip, 8140, PROTO_TCP);
    let icmp = frag_needed(
        vip,
        &reply(vip, 8140, agent, 40001, PROTO_TCP).quote(QUOTE4),
    );
    f.expect_tx(
        "error about a flow not in the table",
        &icmp,
        Reason::TxCompiler,
        f.pick(S_V4, &kb),
    );
    assert_eq!(f.dp.flow(&kb), None, "ICMP must not create a flow entry");
    // UDP, which would create an entry for a datagram: not for an error.
    let (udp_vip, ku) = (
        IpAddr::from(VIP4_UDP),
        key_of(agent, 40002, VIP4_UDP.into(), 5353, PROTO_UDP),
    );
    let icmp = frag_needed(
        udp_vip,
        &reply(udp_vip, 5353, agent, 40002, PROTO_UDP).quote(QUOTE4),
    );
    f.expect_tx(
        "error about a UDP flow",
        &icmp,
        Reason::TxCompiler,
        f.pick(S_UDP, &ku),
    );
    assert_eq!(f.dp.flow(&ku), None, "ICMP must not create a UDP entry");
    // An entry whose backend no longer keeps flows is ignored: the pick.
    f.set_backend(planted, S_V4, BACKEND_EMPTY, 0, false);
    let icmp = frag_needed(
        vip,
        &reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE4),
    );
    f.expect_tx(
        "entry of a removed backend",
        &icmp,
        Reason::TxCompiler,
        pick_a,
    );
    // Other destination-unreachable codes are steered too.
    let mut icmp = frag_needed(
        vip,
        &reply(vip, 8140, agent, 40001, PROTO_TCP).quote(QUOTE4),
    );
    let at = l3_offset(&icmp) + 20;
    icmp[at + 1] = 1; // host unreachable (checksum not read by voxlb)
    f.expect_tx(
        "host unreachable",
        &icmp,
        Reason::TxCompiler,
        f.pick(S_V4, &kb),
    );
    // A CA VIP's flow: the active CA.
    let ca = IpAddr::from(VIP4_CA);
    let icmp = frag_needed(ca, &reply(ca, 8140, agent, 40003, PROTO_TCP).quote(QUOTE4));
    f.expect_tx("error about a CA flow", &icmp, Reason::TxCa, CA_PRIMARY);
}

#[test]
fn icmpv6_packet_too_big_goes_to_the_flow_table_backend_or_else_the_maglev_pick() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(agent6()), IpAddr::from(vip6()));
    let ka = key_of(agent, 40000, vip, 8140, PROTO_TCP);
    let planted = 10 + (f.pick(S_V6, &ka) - 10 + 1) % 3;
    f.dp.insert_flow(
        &ka,
        FlowValue {
            backend_id: planted,
            ..Default::default()
        },
    )
    .unwrap();
    let icmp = too_big(
        vip,
        &reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE6),
    );
    f.expect_tx(
        "too big about a flow in the table",
        &icmp,
        Reason::TxCompiler,
        planted,
    );
    let kb = key_of(agent, 40001, vip, 8140, PROTO_TCP);
    let icmp = too_big(
        vip,
        &reply(vip, 8140, agent, 40001, PROTO_TCP).quote(QUOTE6),
    );
    f.expect_tx(
        "too big about a flow not in the table",
        &icmp,
        Reason::TxCompiler,
        f.pick(S_V6, &kb),
    );
    assert_eq!(f.dp.flow(&kb), None, "ICMPv6 must not create a flow entry");
    // Destination unreachable (type 1) is steered too; behind a
    // destination-options header as well.
    let icmp = Frame::icmp_msg(
        router6().into(),
        vip,
        1,
        3,
        0,
        &reply(vip, 8140, agent, 40001, PROTO_TCP).quote(QUOTE6),
    )
    .with_ext(60, 8)
    .build();
    f.expect_tx(
        "ICMPv6 destination unreachable",
        &icmp,
        Reason::TxCompiler,
        f.pick(S_V6, &kb),
    );
}

#[test]
fn icmp_that_is_not_a_steered_error_to_a_vip_is_passed_untouched() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(AGENT4), IpAddr::from(VIP4));
    let q4 = reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE4);
    let q6 = reply(vip6().into(), 8140, agent6().into(), 40000, PROTO_TCP).quote(QUOTE6);
    let host6: IpAddr = "fd00::1".parse().unwrap();
    // To an address no VIP uses, the address bitmap passes the packet
    // before its protocol is read: `pass_not_vip`, not `pass_not_l4`.
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "frag needed to the LB host's own address",
            frag_needed(HOST4.into(), &q4),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        (
            "packet too big to the LB host's own address",
            too_big(host6, &q6),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        (
            "echo request to the VIP",
            Frame::icmp(ROUTER4.into(), vip).build(),
            XDP_PASS,
            Reason::PassNotL4,
        ),
        (
            "time exceeded to the VIP",
            Frame::icmp_msg(ROUTER4.into(), vip, 11, 0, 0, &q4).build(),
            XDP_PASS,
            Reason::PassNotL4,
        ),
        (
            "parameter problem to the VIP",
            Frame::icmp_msg(ROUTER4.into(), vip, 12, 0, 0, &q4).build(),
            XDP_PASS,
            Reason::PassNotL4,
        ),
        (
            "ICMPv6 time exceeded to the VIP",
            Frame::icmp_msg(router6().into(), vip6().into(), 3, 0, 0, &q6).build(),
            XDP_PASS,
            Reason::PassNotL4,
        ),
        (
            "ICMPv6 neighbour solicitation to the VIP",
            Frame::icmp_msg(router6().into(), vip6().into(), 135, 0, 0, &[0; 16]).build(),
            XDP_PASS,
            Reason::PassNotL4,
        ),
        (
            "quote of a reply from another address",
            frag_needed(
                vip,
                &reply(HOST4.into(), 8140, agent, 40000, PROTO_TCP).quote(QUOTE4),
            ),
            XDP_PASS,
            Reason::PassIcmpUnmatched,
        ),
        (
            "quote of a reply from a port that is no VIP",
            frag_needed(vip, &reply(vip, 22, agent, 40000, PROTO_TCP).quote(QUOTE4)),
            XDP_PASS,
            Reason::PassIcmpUnmatched,
        ),
        (
            "quote of an ICMP message",
            frag_needed(vip, &Frame::icmp(vip, agent).quote(QUOTE4)),
            XDP_PASS,
            Reason::PassIcmpUnmatched,
        ),
        (
            "quote of a later fragment (no ports)",
            frag_needed(
                vip,
                &reply(vip, 8140, agent, 40000, PROTO_TCP)
                    .with_frag(0x00b9)
                    .quote(QUOTE4),
            ),
            XDP_PASS,
            Reason::PassIcmpUnmatched,
        ),
        (
            "error about a flow of a VIP without backends",
            frag_needed(
                VIP4_EMPTY.into(),
                &reply(VIP4_EMPTY.into(), 8140, agent, 40000, PROTO_TCP).quote(QUOTE4),
            ),
            XDP_PASS,
            Reason::PassIcmpUnmatched,
        ),
        (
            "quote with a version that is not 4",
            frag_needed(vip, &{
                let mut q = q4.clone();
                q[0] = 0x65;
                q
            }),
            XDP_PASS,
            Reason::PassIcmpMalformed,
        ),
        (
            "quote with IHL 4",
            frag_needed(vip, &{
                let mut q = q4.clone();
                q[0] = 0x44;
                q
            }),
            XDP_PASS,
            Reason::PassIcmpMalformed,
        ),
        (
            "error from a VIP address (spoofed)",
            Frame::icmp_msg(VIP4_CA.into(), vip, 3, 4, 1400, &q4).build(),
            XDP_DROP,
            Reason::DropSpoofedSource,
        ),
        (
            "a fragmented error (first fragment)",
            Frame::icmp_msg(ROUTER4.into(), vip, 3, 4, 1400, &q4)
                .with_frag(0x2000)
                .build(),
            XDP_PASS,
            Reason::PassFragment,
        ),
    ];
    for (what, frame, action, reason) in cases {
        f.expect_untouched(what, &frame, action, reason);
    }
}

#[test]
fn icmp_cut_short_at_every_byte_is_a_counted_pass_until_the_ports_are_in() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(AGENT4), IpAddr::from(VIP4));
    // IPv4: the ICMP header (8), then the quoted header (with options:
    // IHL 6) and 8 bytes of it.
    let r4 = reply(vip, 8140, agent, 40000, PROTO_TCP).with_ip_options(&[1, 1, 1, 1]);
    let owner4 = f.pick(S_V4, &key_of(agent, 40000, vip, 8140, PROTO_TCP));
    let full4 = frag_needed(vip, &r4.quote(QUOTE4));
    let need4 = 8 + 24 + 8;
    for n in 0..=need4 + 4 {
        let frame = cut_after_l3(&full4, 20, n);
        let what = format!("IPv4 ICMP cut to {n} bytes");
        if n < need4 {
            f.expect_untouched(&what, &frame, XDP_PASS, Reason::PassIcmpMalformed);
        } else {
            f.expect_tx(&what, &frame, Reason::TxCompiler, owner4);
        }
    }
    // The same cuts without fixing the IP length are frame truncations.
    for n in 0..need4 {
        let l3 = l3_offset(&full4);
        let frame = full4[..l3 + 20 + n].to_vec();
        f.expect_untouched("IPv4 frame cut", &frame, XDP_DROP, Reason::DropTruncatedL3);
    }
    // IPv6: the ICMPv6 header, the quoted fixed header and 8 bytes; behind
    // a hop-by-hop header.
    let (agent, vip) = (IpAddr::from(agent6()), IpAddr::from(vip6()));
    let owner6 = f.pick(S_V6, &key_of(agent, 40000, vip, 8140, PROTO_TCP));
    let full6 = Frame::icmp_msg(
        router6().into(),
        vip,
        2,
        0,
        1280,
        &reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE6),
    )
    .with_ext(0, 8)
    .build();
    let need6 = 8 + 40 + 8;
    for n in 0..=need6 + 4 {
        let frame = cut_after_l3(&full6, 48, n);
        let what = format!("ICMPv6 cut to {n} bytes");
        if n < need6 {
            f.expect_untouched(&what, &frame, XDP_PASS, Reason::PassIcmpMalformed);
        } else {
            f.expect_tx(&what, &frame, Reason::TxCompiler, owner6);
        }
    }
}

/// A fragment of a UDP datagram `agent:sport -> VIP4_UDP:5353` with IP ID
/// `id`: the first (offset 0, MF, with the UDP header; its length field
/// covers the whole datagram, more than this fragment) or a later one at
/// `offset` (8-byte units), with MF as `more` says.
fn udp_fragment(sport: u16, id: u16, offset: u16, more: bool) -> Vec<u8> {
    let (agent, vip) = (IpAddr::from(AGENT4), IpAddr::from(VIP4_UDP));
    let frag = offset | if more { 0x2000 } else { 0 };
    if offset == 0 {
        let mut f = Frame::udp(agent, sport, vip, 5353)
            .with_payload(&[0x33; 1472])
            .with_ip_id(u32::from(id))
            .with_frag(frag)
            .build();
        // The datagram is 3000 bytes of UDP; this fragment carries 1480.
        let udp = l3_offset(&f) + 20;
        f[udp + 4..udp + 6].copy_from_slice(&3000u16.to_be_bytes());
        f
    } else {
        Frame {
            l4: L4::Other(PROTO_UDP),
            ..Frame::udp(agent, sport, vip, 5353)
        }
        .with_payload(&[0x44; 760])
        .with_ip_id(u32::from(id))
        .with_frag(frag)
        .build()
    }
}

/// Two source ports whose flows the UDP table gives to different backends.
fn ports_on_two_backends(f: &Fixture) -> ((u16, u32), (u16, u32)) {
    let agent = IpAddr::from(AGENT4);
    let owner = |p| f.pick(S_UDP, &key_of(agent, p, VIP4_UDP.into(), 5353, PROTO_UDP));
    let a = 41000;
    let b = (41001..42000).find(|p| owner(*p) != owner(a)).unwrap();
    ((a, owner(a)), (b, owner(b)))
}

#[test]
fn later_ipv4_fragments_follow_their_first_and_two_datagrams_go_their_own_ways() {
    need_root!();
    let mut f = Fixture::new();
    let ((pa, ba), (pb, bb)) = ports_on_two_backends(&f);
    // Datagram A (ID 7) and datagram B (ID 8), interleaved.
    f.expect_tx(
        "A first",
        &udp_fragment(pa, 7, 0, true),
        Reason::TxCompiler,
        ba,
    );
    f.expect_tx(
        "B first",
        &udp_fragment(pb, 8, 0, true),
        Reason::TxCompiler,
        bb,
    );
    f.expect_tx(
        "A middle",
        &udp_fragment(pa, 7, 185, true),
        Reason::TxCompiler,
        ba,
    );
    f.expect_tx(
        "B last",
        &udp_fragment(pb, 8, 185, false),
        Reason::TxCompiler,
        bb,
    );
    f.expect_tx(
        "A last",
        &udp_fragment(pa, 7, 370, false),
        Reason::TxCompiler,
        ba,
    );
    // The records: one per datagram, naming its backend and first ports.
    let mut recs = f.dp.fragments().unwrap();
    recs.sort_by_key(|(k, _)| k.id);
    let got: Vec<(u32, u8, u32, u16)> = recs
        .iter()
        .map(|(k, v)| (k.id, k.proto, v.backend_id, u16::from_be(v.sport_be)))
        .collect();
    assert_eq!(got, vec![(7, PROTO_UDP, ba, pa), (8, PROTO_UDP, bb, pb)]);
    // The same ID from another agent, or for another protocol, is another
    // datagram: not followed.
    let mut other = udp_fragment(pa, 7, 185, true);
    let l3 = l3_offset(&other);
    other[l3 + 15] = 11; // source 192.0.2.11 (checksum not read by voxlb)
    f.expect_untouched(
        "same ID, other agent",
        &other,
        XDP_PASS,
        Reason::PassFragment,
    );
    let mut other = udp_fragment(pa, 7, 185, true);
    other[l3 + 9] = PROTO_TCP;
    f.expect_untouched(
        "same ID, other protocol",
        &other,
        XDP_PASS,
        Reason::PassFragment,
    );
}

#[test]
fn a_later_fragment_before_its_first_is_passed_and_the_rest_follow_the_first() {
    need_root!();
    let mut f = Fixture::new();
    let ((pa, ba), _) = ports_on_two_backends(&f);
    let later = udp_fragment(pa, 9, 185, false);
    f.expect_untouched("later before first", &later, XDP_PASS, Reason::PassFragment);
    assert!(f.dp.fragments().unwrap().is_empty(), "nothing recorded");
    f.expect_tx(
        "first",
        &udp_fragment(pa, 9, 0, true),
        Reason::TxCompiler,
        ba,
    );
    f.expect_tx("later again", &later, Reason::TxCompiler, ba);
    // A later fragment to the host's own address: not ours at all.
    let mut own = later.clone();
    let l3 = l3_offset(&own);
    own[l3 + 16..l3 + 20].copy_from_slice(&HOST4.octets());
    f.expect_untouched("to the host", &own, XDP_PASS, Reason::PassNotVip);
    // The backend drains: it keeps its datagrams. It is removed, or its id
    // given to another host: later fragments are passed.
    let service = S_UDP;
    f.set_backend(ba, service, BACKEND_DRAINING, 0, false);
    f.expect_tx("backend draining", &later, Reason::TxCompiler, ba);
    f.set_backend(ba, service, BACKEND_ACTIVE, 1, false);
    f.expect_untouched("id reused", &later, XDP_PASS, Reason::PassFragment);
    f.set_backend(ba, service, BACKEND_EMPTY, 0, false);
    f.expect_untouched("backend removed", &later, XDP_PASS, Reason::PassFragment);
}

/// A fragment of a TCP segment `agent6:sport -> [vip6]:8140` whose fragment
/// header has `id`; first (offset 0, M) or later at `offset`.
fn tcp6_fragment(sport: u16, id: u32, offset: u16, more: bool) -> Vec<u8> {
    let (agent, vip) = (IpAddr::from(agent6()), IpAddr::from(vip6()));
    let frag = offset | if more { 0x2000 } else { 0 };
    let f = if offset == 0 {
        Frame::tcp(agent, sport, vip, 8140, flags::ACK | flags::PSH).with_payload(&[0x55; 1200])
    } else {
        Frame {
            l4: L4::Other(PROTO_TCP),
            ..Frame::tcp(agent, sport, vip, 8140, 0)
        }
        .with_payload(&[0x66; 400])
    };
    f.with_ext(0, 8)
        .with_ext(44, 8)
        .with_ip_id(id)
        .with_frag(frag)
        .build()
}

#[test]
fn ipv6_fragments_follow_their_first_in_and_out_of_order() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(agent6()), IpAddr::from(vip6()));
    let owner = |f: &Fixture, p| f.pick(S_V6, &key_of(agent, p, vip, 8140, PROTO_TCP));
    let pa = 42000;
    let pb = (42001..43000)
        .find(|p| owner(&f, *p) != owner(&f, pa))
        .unwrap();
    let (ba, bb) = (owner(&f, pa), owner(&f, pb));
    // 32-bit IDs, one above 16 bits.
    let (ia, ib) = (0x0001_0007, 0x0000_0007);
    let later_b = tcp6_fragment(pb, ib, 153, false);
    f.expect_untouched(
        "B later before its first",
        &later_b,
        XDP_PASS,
        Reason::PassFragment,
    );
    f.expect_tx(
        "A first",
        &tcp6_fragment(pa, ia, 0, true),
        Reason::TxCompiler,
        ba,
    );
    f.expect_tx(
        "B first",
        &tcp6_fragment(pb, ib, 0, true),
        Reason::TxCompiler,
        bb,
    );
    f.expect_tx(
        "A later",
        &tcp6_fragment(pa, ia, 153, false),
        Reason::TxCompiler,
        ba,
    );
    f.expect_tx("B later", &later_b, Reason::TxCompiler, bb);
    let mut ids: Vec<(u32, u8)> =
        f.dp.fragments()
            .unwrap()
            .iter()
            .map(|(k, _)| (k.id, k.proto))
            .collect();
    ids.sort();
    // IPv6 datagrams are keyed without the protocol.
    assert_eq!(ids, vec![(ib, 0), (ia, 0)]);
}

#[test]
fn with_icmp_steering_off_errors_are_passed_as_before() {
    need_root!();
    let mut f = Fixture::new();
    let (agent, vip) = (IpAddr::from(AGENT4), IpAddr::from(VIP4));
    let owner = f.pick(S_V4, &key_of(agent, 40000, vip, 8140, PROTO_TCP));
    let icmp4 = frag_needed(
        vip,
        &reply(vip, 8140, agent, 40000, PROTO_TCP).quote(QUOTE4),
    );
    let (agent6, vip6) = (IpAddr::from(agent6()), IpAddr::from(vip6()));
    let icmp6 = too_big(
        vip6,
        &reply(vip6, 8140, agent6, 40000, PROTO_TCP).quote(QUOTE6),
    );
    f.dp.set_icmp_steering(false).unwrap();
    // The flood threshold shares the config slot: setting it keeps the flag.
    f.dp.set_flood_threshold(1000).unwrap();
    f.expect_untouched("v4, steering off", &icmp4, XDP_PASS, Reason::PassNotL4);
    f.expect_untouched("v6, steering off", &icmp6, XDP_PASS, Reason::PassNotL4);
    f.dp.set_icmp_steering(true).unwrap();
    f.expect_tx("v4, steering on", &icmp4, Reason::TxCompiler, owner);
    assert_eq!(f.dp.flood_status().unwrap().threshold, 1000);
}
