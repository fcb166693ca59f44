//! Routed forwarding (`forwarding = "ipip" | "gue"`) packet by packet in the
//! real kernel (BPF_PROG_TEST_RUN): the data plane is programmed the way
//! the daemon does it (config -> plan with resolved routes -> apply), every
//! family combination is encapsulated, the outer headers are checked field
//! by field with checksums computed here, independently of the program,
//! and the result is handed to the compiler-side decap program, which must
//! give back the client's packet byte for byte. Then the "too big" answers
//! and the egress choice.
//!
//! Needs root (loading BPF programs).

use lb_common::reason::action::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP, Reason, addr_bytes, hash::flow_hash,
    maps::MAX_BACKENDS,
};
use lb_testkit::{
    decap::DecapTestRun,
    harness::{RunOutput, TestDataPlane},
    packet::{CLIENT_MAC, Frame, LB_MAC, flags},
};
use voxlb::{
    config::Config,
    dataplane::DataPlane,
    forwarding::{Egress, RouteMap},
    reconcile::{self, HealthMap, MacMap},
    state::State,
};

const NEXT_HOP: [u8; 6] = [0x02, 0x4e, 0, 0, 0, 0x01];
const EGRESS_MAC: [u8; 6] = [0x02, 0x4e, 0, 0, 0, 0xee];
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const GUE_PORT: u16 = 6080;
const MTU: u16 = 1400;
/// An interface index no device has: the egress of the "other interface"
/// cases (see `egress_*`).
const OTHER_IFINDEX: u32 = 4242;
const LO: u32 = 1;

fn src6() -> Ipv6Addr {
    "fd00::2".parse().unwrap()
}
fn client6() -> Ipv6Addr {
    "2001:db8::10".parse().unwrap()
}

/// One routed service of the fixture.
#[derive(Clone, Copy, Debug)]
struct Combo {
    vip_v6: bool,
    compiler_v6: bool,
    gue: bool,
}

impl Combo {
    fn all() -> Vec<Combo> {
        let mut v = Vec::new();
        for vip_v6 in [false, true] {
            for compiler_v6 in [false, true] {
                for gue in [false, true] {
                    v.push(Combo {
                        vip_v6,
                        compiler_v6,
                        gue,
                    });
                }
            }
        }
        v
    }
    fn index(&self) -> u8 {
        (self.vip_v6 as u8) << 2 | (self.compiler_v6 as u8) << 1 | self.gue as u8
    }
    fn name(&self) -> String {
        format!(
            "{}-in-{}-{}",
            if self.vip_v6 { "v6" } else { "v4" },
            if self.compiler_v6 { "v6" } else { "v4" },
            if self.gue { "gue" } else { "ipip" }
        )
    }
    fn vip(&self) -> IpAddr {
        let i = self.index();
        if self.vip_v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100 + i))
        }
    }
    fn compiler(&self) -> IpAddr {
        let i = self.index();
        if self.compiler_v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd02, 0, 0, 0, 0, 0, 0, 0x11 + i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 2, 0, 11 + i))
        }
    }
    fn client(&self) -> IpAddr {
        if self.vip_v6 {
            client6().into()
        } else {
            CLIENT4.into()
        }
    }
    fn overhead(&self) -> usize {
        (if self.compiler_v6 { 40 } else { 20 }) + if self.gue { 8 } else { 0 }
    }
}

struct Fixture {
    dp: TestDataPlane,
}

fn config_text() -> String {
    let mut t = String::from("interfaces = [\"lo\"]\n");
    for c in Combo::all() {
        let vip = match c.vip() {
            IpAddr::V4(a) => format!("{a}:8140"),
            IpAddr::V6(a) => format!("[{a}]:8140"),
        };
        t.push_str(&format!(
            "[[compiler_services]]\nname = \"{}\"\nvip = \"{vip}\"\nforwarding = \"{}\"\n\
             mtu = {MTU}\nencap_ttl = 33\ntable_size = 251\nhealth_check = {{ type = \"tcp\" }}\n\
             backends = [{{ address = \"{}\" }}]\n",
            c.name(),
            if c.gue { "gue" } else { "ipip" },
            c.compiler(),
        ));
        if c.gue {
            t.push_str(&format!("gue_port = {GUE_PORT}\n"));
        }
    }
    // A UDP service over GUE to an IPv6 compiler: the zero-checksum case.
    t.push_str(&format!(
        "[[compiler_services]]\nname = \"udp\"\nvip = \"10.0.0.99:5353\"\nprotocol = \"udp\"\n\
         forwarding = \"gue\"\nmtu = {MTU}\ntable_size = 251\nhealth_check = {{ type = \"tcp\" }}\n\
         backends = [{{ address = \"fd02::99\" }}]\n"
    ));
    t
}

fn egress(ifindex: u32) -> Egress {
    Egress {
        mac: NEXT_HOP,
        ifindex,
        ifname: "lo".into(),
        src_mac: EGRESS_MAC,
        src: None,
        gateway: Some("10.0.0.1".parse().unwrap()),
    }
}

fn routes(ifindex: u32) -> RouteMap {
    let mut r = RouteMap::new();
    for c in Combo::all() {
        let mut e = egress(ifindex);
        e.src = Some(if c.compiler_v6 {
            src6().into()
        } else {
            SRC4.into()
        });
        r.insert(c.compiler(), Ok(e));
    }
    let mut e = egress(ifindex);
    e.src = Some(src6().into());
    r.insert("fd02::99".parse().unwrap(), Ok(e));
    r
}

impl Fixture {
    /// Program the data plane as the daemon does, every routed compiler
    /// leaving through `ifindex`.
    fn new(ifindex: u32) -> Fixture {
        let mut dp = TestDataPlane::load(4096).expect("load the XDP object");
        let cfg = Config::parse(&config_text()).expect("config");
        let mut state = State::default();
        let plan = reconcile::plan_weighted(
            &cfg,
            &mut state,
            &HealthMap::new(),
            &MacMap::new(),
            &routes(ifindex),
            &Default::default(),
        )
        .expect("plan");
        reconcile::apply(&plan.desired, None, &mut *dp).expect("apply");
        for s in &plan.services {
            assert_eq!(s.active, 1, "{}: {:?}", s.name, s.backends);
        }
        Fixture { dp }
    }

    fn run(&mut self, frame: &[u8]) -> RunOutput {
        self.dp
            .test_run(voxlb::object::PROGRAM_NAME, frame, 1)
            .expect("test_run")
    }

    fn reason(&self, r: Reason) -> u64 {
        self.dp
            .reason_stats()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == r)
            .map(|(_, c)| c.packets)
            .unwrap()
    }
}

macro_rules! need_root {
    () => {
        lb_testkit::require_root!("loading BPF programs");
    };
}

// --- Independent checksum arithmetic -------------------------------------

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The one's-complement sum of `parts` is 0xffff: the checksum in them is right.
fn checksum_ok(parts: &[&[u8]]) -> bool {
    fold(parts.iter().map(|p| sum16(p)).sum()) == 0xffff
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Set the IPv4 TOS / IPv6 traffic class of a built frame (fixing the IPv4
/// header checksum; TCP/UDP checksums do not cover it).
fn with_tos(mut f: Vec<u8>, tos: u8) -> Vec<u8> {
    if f[12..14] == [0x08, 0x00] {
        f[15] = tos;
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(&f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    } else {
        f[14] = 0x60 | (tos >> 4);
        f[15] = (tos << 4) | (f[15] & 0x0f);
    }
    f
}

fn key(c: &Combo, sport: u16, proto: u8) -> FlowKey {
    let (src, family) = addr_bytes(c.client());
    let (dst, _) = addr_bytes(c.vip());
    FlowKey {
        src,
        dst,
        sport_be: sport.to_be(),
        dport_be: 8140u16.to_be(),
        proto,
        family,
        _pad: [0; 2],
    }
}

/// Check an encapsulated frame against the client's frame `inner_frame`:
/// Ethernet to the next hop, every outer field, checksums, and the inner
/// packet unchanged. Returns the inner packet.
fn check_encap(c: &Combo, out: &[u8], inner_frame: &[u8], tos: u8, hash: u32) -> Vec<u8> {
    let inner = &inner_frame[14..];
    let what = c.name();
    assert_eq!(&out[0..6], &NEXT_HOP, "{what}: to the next hop");
    assert_eq!(&out[6..12], &EGRESS_MAC, "{what}: from the egress MAC");
    let inner_proto = if c.vip_v6 { 41 } else { 4 };
    let proto = if c.gue { 17 } else { inner_proto };
    let (l4_at, src, dst) = if c.compiler_v6 {
        assert_eq!(&out[12..14], &[0x86, 0xdd], "{what}: ethertype");
        let h = &out[14..54];
        assert_eq!(h[0] >> 4, 6);
        let tc = (h[0] << 4) | (h[1] >> 4);
        assert_eq!(tc, tos, "{what}: traffic class copied");
        let label = (((h[1] & 0x0f) as u32) << 16) | ((h[2] as u32) << 8) | h[3] as u32;
        assert_eq!(
            label,
            hash & 0xf_ffff,
            "{what}: flow label from the flow hash"
        );
        let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
        assert_eq!(
            plen,
            inner.len() + c.overhead() - 40,
            "{what}: payload length"
        );
        assert_eq!(h[6], proto, "{what}: next header");
        assert_eq!(h[7], 33, "{what}: hop limit from encap_ttl");
        (54, h[8..24].to_vec(), h[24..40].to_vec())
    } else {
        assert_eq!(&out[12..14], &[0x08, 0x00], "{what}: ethertype");
        let h = &out[14..34];
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], tos, "{what}: TOS copied");
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        assert_eq!(total, inner.len() + c.overhead(), "{what}: total length");
        assert_eq!(&h[4..6], &[0, 0], "{what}: ID 0");
        assert_eq!(&h[6..8], &[0x40, 0], "{what}: DF, no fragment");
        assert_eq!(h[8], 33, "{what}: TTL from encap_ttl");
        assert_eq!(h[9], proto, "{what}: protocol");
        assert!(checksum_ok(&[h]), "{what}: outer IPv4 header checksum");
        (34, h[12..16].to_vec(), h[16..20].to_vec())
    };
    let want_src = if c.compiler_v6 {
        src6().octets().to_vec()
    } else {
        SRC4.octets().to_vec()
    };
    assert_eq!(src, want_src, "{what}: outer source");
    assert_eq!(dst, ip_bytes(c.compiler()), "{what}: outer destination");
    let payload_at = if c.gue {
        let u = &out[l4_at..l4_at + 8];
        let sport = u16::from_be_bytes([u[0], u[1]]);
        assert!(
            sport >= 0xc000,
            "{what}: GUE source port {sport} in 49152.."
        );
        assert_eq!(
            u16::from_be_bytes([u[2], u[3]]),
            GUE_PORT,
            "{what}: GUE port"
        );
        let ulen = u16::from_be_bytes([u[4], u[5]]) as usize;
        assert_eq!(ulen, inner.len() + 8, "{what}: UDP length");
        let csum = u16::from_be_bytes([u[6], u[7]]);
        if c.compiler_v6 {
            assert_ne!(csum, 0, "{what}: IPv6 UDP carries a checksum");
            let mut pseudo = src.clone();
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&(ulen as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            assert!(
                checksum_ok(&[&pseudo, &out[l4_at..l4_at + ulen]]),
                "{what}: outer UDP checksum over the whole datagram"
            );
        } else {
            assert_eq!(csum, 0, "{what}: no UDP checksum over IPv4");
        }
        l4_at + 8
    } else {
        l4_at
    };
    assert_eq!(
        &out[payload_at..],
        inner,
        "{what}: the client's packet, unchanged"
    );
    out[payload_at..].to_vec()
}

#[test]
fn every_family_and_mode_is_encapsulated_exactly_and_the_decap_gives_the_packet_back() {
    need_root!();
    let mut fx = Fixture::new(LO);
    let mut decap = DecapTestRun::load().expect("load the decap object");
    let vips: BTreeSet<IpAddr> = Combo::all().iter().map(|c| c.vip()).collect();
    let locals: BTreeSet<IpAddr> = Combo::all().iter().map(|c| c.compiler()).collect();
    decap.maps.set_vips(&vips).unwrap();
    decap.maps.set_locals(&locals).unwrap();
    decap.maps.set_gue_port(GUE_PORT).unwrap();
    for c in Combo::all() {
        for (i, tos) in [0u8, 0xb8, 0x2a].into_iter().enumerate() {
            let sport = 40000 + i as u16;
            // The SYN makes the flow, a data segment follows it.
            for (fl, payload) in [
                (flags::SYN, &[][..]),
                (flags::ACK | flags::PSH, &b"GET /puppet/v3/catalog"[..]),
            ] {
                let frame = with_tos(
                    Frame::tcp(c.client(), sport, c.vip(), 8140, fl)
                        .with_payload(payload)
                        .build(),
                    tos,
                );
                let out = fx.run(&frame);
                assert_eq!(out.action, XDP_TX, "{}: {out:?}", c.name());
                let hash = flow_hash(&key(&c, sport, PROTO_TCP));
                let inner = check_encap(&c, &out.frame, &frame, tos, hash);
                // The compiler's decap strips exactly what we added.
                let back = decap.run(&out.frame).expect("decap run");
                assert_eq!(back.action, XDP_PASS, "{}: decap passes it up", c.name());
                assert_eq!(&back.frame[14..], &inner[..], "{}: decapsulated", c.name());
                let et = if c.vip_v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
                assert_eq!(&back.frame[12..14], &et, "{}: inner ethertype", c.name());
            }
        }
    }
    // Every packet went to its one compiler's counters: none were passed.
    assert_eq!(fx.reason(Reason::DropEncap), 0);
    assert_eq!(fx.reason(Reason::PassNotVip), 0);
}

#[test]
fn a_vlan_tagged_packet_leaves_untagged_on_the_route() {
    need_root!();
    let mut fx = Fixture::new(LO);
    for c in Combo::all() {
        let frame = Frame::tcp(c.client(), 41000, c.vip(), 8140, flags::SYN)
            .with_vlan(0x8100, 7)
            .build();
        let out = fx.run(&frame);
        assert_eq!(out.action, XDP_TX, "{}", c.name());
        // The same packet without its tag is what must come out.
        let mut untagged = frame[..12].to_vec();
        untagged.extend_from_slice(&frame[16..]);
        let hash = flow_hash(&key(&c, 41000, PROTO_TCP));
        check_encap(&c, &out.frame, &untagged, 0, hash);
    }
}

#[test]
fn udp_without_an_inner_checksum_gets_a_zero_outer_checksum_over_ipv6() {
    need_root!();
    let mut fx = Fixture::new(LO);
    let mut frame = Frame::udp(CLIENT4.into(), 5000, "10.0.0.99".parse().unwrap(), 5353)
        .with_payload(b"hello")
        .build();
    // IPv4 UDP without a checksum (legal): nothing to derive the outer from.
    frame[40..42].copy_from_slice(&[0, 0]);
    let out = fx.run(&frame);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    assert_eq!(&out.frame[12..14], &[0x86, 0xdd]);
    assert_eq!(out.frame[20], 17, "GUE over IPv6");
    assert_eq!(&out.frame[60..62], &[0, 0], "RFC 6935 zero checksum");
    assert_eq!(&out.frame[62..], &frame[14..]);
    // With a checksum, it is computed (checked in full above, spot here).
    let frame = Frame::udp(CLIENT4.into(), 5001, "10.0.0.99".parse().unwrap(), 5353)
        .with_payload(b"hello")
        .build();
    let out = fx.run(&frame);
    assert_ne!(&out.frame[60..62], &[0, 0]);
    let mut pseudo = src6().octets().to_vec();
    pseudo.extend_from_slice(&"fd02::99".parse::<Ipv6Addr>().unwrap().octets());
    pseudo.extend_from_slice(&((out.frame.len() - 54) as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    assert!(checksum_ok(&[&pseudo, &out.frame[54..]]));
    let _ = PROTO_UDP;
}

/// A client segment of `ip_len` bytes of IP, DF as given.
fn big(c: &Combo, ip_len: usize, df: bool) -> Vec<u8> {
    let hdr = if c.vip_v6 { 40 + 20 } else { 20 + 20 };
    let mut f = Frame::tcp(c.client(), 42000, c.vip(), 8140, flags::ACK)
        .with_payload(&vec![0x5a; ip_len - hdr]);
    if !df {
        f.frag = 0;
    }
    f.build()
}

#[test]
fn a_packet_that_does_not_fit_after_encapsulation_is_answered_too_big() {
    need_root!();
    let mut fx = Fixture::new(LO);
    for c in Combo::all() {
        let usable = MTU as usize - c.overhead();
        // Exactly fitting: forwarded.
        let frame = big(&c, usable, true);
        let out = fx.run(&frame);
        assert_eq!(out.action, XDP_TX, "{}: fits", c.name());
        assert_eq!(out.frame.len(), 14 + MTU as usize, "{}", c.name());
        // One byte more: answered.
        let before = fx.reason(Reason::TxTooBig);
        let frame = big(&c, usable + 1, true);
        let out = fx.run(&frame);
        assert_eq!(out.action, XDP_TX, "{}: answered back", c.name());
        assert_eq!(fx.reason(Reason::TxTooBig), before + 1, "{}", c.name());
        let f = &out.frame;
        assert_eq!(&f[0..6], &CLIENT_MAC, "{}: back to the sender", c.name());
        assert_eq!(&f[6..12], &LB_MAC, "{}: from us", c.name());
        let orig = &frame[14..];
        if c.vip_v6 {
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            let ip = &f[14..54];
            assert_eq!(ip[6], 58, "ICMPv6");
            assert_eq!(&ip[8..24], &ip_bytes(c.vip())[..], "from the VIP");
            assert_eq!(&ip[24..40], &ip_bytes(c.client())[..], "to the client");
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            assert_eq!(f.len(), 54 + plen);
            let icmp = &f[54..];
            assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
            let mtu = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
            assert_eq!(mtu as usize, usable, "{}: the usable MTU", c.name());
            assert_eq!(&icmp[8..], &orig[..icmp.len() - 8], "quotes the packet");
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            assert!(
                checksum_ok(&[&pseudo, icmp]),
                "{}: ICMPv6 checksum",
                c.name()
            );
        } else {
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let ip = &f[14..34];
            assert!(checksum_ok(&[ip]), "{}: IPv4 header checksum", c.name());
            assert_eq!(ip[9], 1, "ICMP");
            assert_eq!(&ip[12..16], &ip_bytes(c.vip())[..], "from the VIP");
            assert_eq!(&ip[16..20], &ip_bytes(c.client())[..], "to the client");
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            assert_eq!(f.len(), 14 + total);
            let icmp = &f[34..];
            assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
            assert_eq!(
                u16::from_be_bytes([icmp[6], icmp[7]]) as usize,
                usable,
                "{}: next-hop MTU",
                c.name()
            );
            assert!(icmp.len() >= 8 + 28, "quotes IP header + 8 bytes");
            assert_eq!(&icmp[8..], &orig[..icmp.len() - 8], "quotes the packet");
            assert!(checksum_ok(&[icmp]), "{}: ICMP checksum", c.name());
        }
        if !c.vip_v6 {
            // Without DF: dropped and counted, never sent too big.
            let before = fx.reason(Reason::DropTooBigNoDf);
            let out = fx.run(&big(&c, usable + 1, false));
            assert_eq!(out.action, XDP_DROP, "{}", c.name());
            assert_eq!(fx.reason(Reason::DropTooBigNoDf), before + 1);
            // ... but a DF-less packet that fits is forwarded.
            let out = fx.run(&big(&c, usable, false));
            assert_eq!(out.action, XDP_TX, "{}", c.name());
        }
    }
}

#[test]
fn another_interface_is_reached_by_redirect_through_the_devmap_only() {
    need_root!();
    // Every compiler's route leaves through an interface other than the
    // one the packet came in on (test runs come in on lo).
    let mut fx = Fixture::new(OTHER_IFINDEX);
    let c = Combo::all()[1];
    let frame = Frame::tcp(c.client(), 43000, c.vip(), 8140, flags::SYN).build();
    // Not in the devmap (voxlb is not attached there): dropped, counted.
    let out = fx.run(&frame);
    assert_eq!(out.action, XDP_DROP, "{out:?}");
    assert_eq!(fx.reason(Reason::DropNoEgress), 1);
    // In the devmap: redirected there, encapsulated.
    fx.dp.set_tx_port(OTHER_IFINDEX, LO).expect("devmap entry");
    let out = fx.run(&frame);
    assert_eq!(out.action, XDP_REDIRECT, "{out:?}");
    let hash = flow_hash(&key(&c, 43000, PROTO_TCP));
    check_encap(&c, &out.frame, &frame, 0, hash);
}

#[test]
fn a_routed_backend_without_a_tunnel_entry_is_dropped_and_counted() {
    need_root!();
    let mut fx = Fixture::new(LO);
    // Break every tunnel entry the way a half-written update would look.
    for id in 0..16u32.min(MAX_BACKENDS) {
        fx.dp.set_tunnel(id, Default::default()).unwrap();
    }
    let c = Combo::all()[0];
    let out = fx.run(&Frame::tcp(c.client(), 44000, c.vip(), 8140, flags::SYN).build());
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropEncap), 1);
    let _ = FAMILY_V4;
}
