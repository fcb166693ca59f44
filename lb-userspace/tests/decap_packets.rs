//! The compiler-side decapsulator, frame by frame, in the real kernel via
//! BPF_PROG_TEST_RUN: a table of accepted and refused frames, each with the
//! verdict (always XDP_PASS: the program never drops), the exact output
//! bytes and the one reason counter it must bump; then every truncation of
//! every accepted frame, and the maps changing under the program.
//!
//! The outer headers are built here, independently of the program and of
//! lb-testkit's frame builder (which builds only the inner packets): lengths
//! and checksums are computed by this file.

use lb_common::reason::action::XDP_PASS;
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::decap::{DecapReason, DecapVerdict};
use lb_testkit::{
    decap::DecapTestRun,
    packet::{CLIENT_MAC, Frame, LB_MAC, arp_request, flags},
    require_root,
};

const GUE_PORT: u16 = 6080;

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The load balancer (outer source) and this compiler (outer destination).
const LB4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const HOST4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 11);
const NOT_HOST4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 12);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn vip6() -> Ipv6Addr {
    v6("fd00::100")
}
fn client6() -> Ipv6Addr {
    v6("2001:db8::10")
}
fn lb6() -> Ipv6Addr {
    v6("fd01::2")
}
fn host6() -> Ipv6Addr {
    v6("fd02::11")
}

// ---- outer headers, built by this test ----------------------------------

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn csum(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 header (with `options`, a multiple of 4) carrying `len` bytes of
/// `proto`, checksum computed; `frag` is the flags+offset field.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize, options: &[u8], frag: u16) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4));
    let ihl = 20 + options.len();
    let mut h = vec![0x40 | (ihl / 4) as u8, 0];
    h.extend_from_slice(&((ihl + len) as u16).to_be_bytes());
    h.extend_from_slice(&[0xab, 0xcd]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let c = csum(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// UDP from the flow-hash port to `dport`; checksum over the pseudo-header
/// of `(src, dst)` when `with_csum`, else 0 (allowed over IPv4, and over
/// IPv6 for tunnels per RFC 6935/6936).
fn udp(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8], with_csum: bool) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if with_csum {
        let mut pseudo = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
            }
            _ => unreachable!(),
        }
        let mut c = csum(sum16(&pseudo) + sum16(&u));
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut e = LB_MAC.to_vec();
    e.extend_from_slice(&CLIENT_MAC);
    e.extend_from_slice(&ethertype.to_be_bytes());
    e
}

/// The inner packet (IP header onwards) of a client SYN to `dst`.
fn inner_syn(dst: IpAddr) -> Vec<u8> {
    let src: IpAddr = match dst {
        IpAddr::V4(_) => CLIENT4.into(),
        IpAddr::V6(_) => client6().into(),
    };
    Frame::tcp(src, 51000, dst, 8140, flags::SYN)
        .with_payload(b"catalog please")
        .build()[14..]
        .to_vec()
}

fn ethertype_of(inner: &[u8]) -> u16 {
    if inner[0] >> 4 == 4 { 0x0800 } else { 0x86dd }
}

fn proto_of(inner: &[u8]) -> u8 {
    if inner[0] >> 4 == 4 { 4 } else { 41 }
}

/// Outer header spec.
#[derive(Clone, Copy)]
enum Outer {
    V4 { dst: Ipv4Addr },
    V6 { dst: Ipv6Addr },
}

fn ipip(outer: Outer, inner: &[u8]) -> Vec<u8> {
    ipip_with(outer, inner, &[], 0)
}

fn ipip_with(outer: Outer, inner: &[u8], options: &[u8], frag: u16) -> Vec<u8> {
    ipip_proto(outer, proto_of(inner), inner, options, frag)
}

/// IPIP with the outer protocol given (for inner packets cut short).
fn ipip_proto(outer: Outer, p: u8, inner: &[u8], options: &[u8], frag: u16) -> Vec<u8> {
    let mut f = match outer {
        Outer::V4 { dst } => {
            let mut f = eth(0x0800);
            f.extend(ipv4(LB4, dst, p, inner.len(), options, frag));
            f
        }
        Outer::V6 { dst } => {
            let mut f = eth(0x86dd);
            f.extend(ipv6(lb6(), dst, p, inner.len()));
            f
        }
    };
    f.extend_from_slice(inner);
    f
}

/// GUE: `gue_hdr` empty for version 1 (direct IP), else the GUE v0 header.
fn gue(outer: Outer, gue_hdr: &[u8], inner: &[u8], with_csum: bool, dport: u16) -> Vec<u8> {
    let mut payload = gue_hdr.to_vec();
    payload.extend_from_slice(inner);
    match outer {
        Outer::V4 { dst } => {
            let u = udp(LB4.into(), dst.into(), dport, &payload, with_csum);
            let mut f = eth(0x0800);
            f.extend(ipv4(LB4, dst, 17, u.len(), &[], 0x4000));
            f.extend(u);
            f
        }
        Outer::V6 { dst } => {
            let u = udp(lb6().into(), dst.into(), dport, &payload, with_csum);
            let mut f = eth(0x86dd);
            f.extend(ipv6(lb6(), dst, 17, u.len()));
            f.extend(u);
            f
        }
    }
}

fn gue_v0(inner: &[u8]) -> [u8; 4] {
    [0x00, proto_of(inner), 0, 0]
}

/// What the program must leave for an accepted frame: the same Ethernet
/// addresses, the inner ethertype, the inner packet.
fn decapsulated(inner: &[u8]) -> Vec<u8> {
    let mut f = eth(ethertype_of(inner));
    f.extend_from_slice(inner);
    f
}

fn h4() -> Outer {
    Outer::V4 { dst: HOST4 }
}
fn h6() -> Outer {
    Outer::V6 { dst: host6() }
}

// ---- the fixture ----------------------------------------------------------

fn load() -> DecapTestRun {
    let mut d = DecapTestRun::load().expect("loading the decap object");
    let vips: BTreeSet<IpAddr> = [IpAddr::V4(VIP4), IpAddr::V6(vip6())].into();
    let locals: BTreeSet<IpAddr> = [IpAddr::V4(HOST4), IpAddr::V6(host6())].into();
    d.maps.set_vips(&vips).unwrap();
    d.maps.set_locals(&locals).unwrap();
    d.maps.set_gue_port(GUE_PORT).unwrap();
    d
}

fn counters(d: &DecapTestRun) -> Vec<u64> {
    d.maps
        .stats()
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.packets)
        .collect()
}

/// Run one frame; check the verdict, the output bytes and that exactly
/// `reason`'s counter moved, by one.
fn check(d: &mut DecapTestRun, what: &str, frame: &[u8], want: Option<&[u8]>, reason: DecapReason) {
    let before = counters(d);
    let out = d
        .run(frame)
        .unwrap_or_else(|e| panic!("{what}: test run: {e}"));
    let after = counters(d);
    assert_eq!(out.action, XDP_PASS, "{what}: verdict");
    let want = want.unwrap_or(frame);
    assert_eq!(out.frame, want, "{what}: output bytes");
    for r in DecapReason::ALL {
        let i = *r as usize;
        let delta = after[i] - before[i];
        let expect = u64::from(*r == reason);
        assert_eq!(
            delta,
            expect,
            "{what}: counter {} moved by {delta}, expected {expect} (wanted reason {})",
            r.label(),
            reason.label()
        );
    }
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    /// `None`: untouched.
    out: Option<Vec<u8>>,
    reason: DecapReason,
}

fn accepted() -> Vec<Row> {
    let i4 = inner_syn(VIP4.into());
    let i6 = inner_syn(vip6().into());
    let ok = |what, frame, inner: &Vec<u8>, reason| Row {
        what,
        frame,
        out: Some(decapsulated(inner)),
        reason,
    };
    // Record-route-like option padded with NOPs and an end-of-list: 8 bytes.
    let opts = [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00];
    let mut trailing = ipip(h4(), &i4);
    trailing.extend_from_slice(&[0xee; 6]);
    let mut trailing_out = decapsulated(&i4);
    trailing_out.extend_from_slice(&[0xee; 6]);
    vec![
        ok(
            "ipip v4 in v4",
            ipip(h4(), &i4),
            &i4,
            DecapReason::DecapIpip4,
        ),
        ok(
            "ipip v6 in v4",
            ipip(h4(), &i6),
            &i6,
            DecapReason::DecapIpip4,
        ),
        ok(
            "ipip v4 in v6",
            ipip(h6(), &i4),
            &i4,
            DecapReason::DecapIpip6,
        ),
        ok(
            "ipip v6 in v6",
            ipip(h6(), &i6),
            &i6,
            DecapReason::DecapIpip6,
        ),
        ok(
            "ipip v4 in v4, outer IPv4 options",
            ipip_with(h4(), &i4, &opts, 0x4000),
            &i4,
            DecapReason::DecapIpip4,
        ),
        Row {
            what: "ipip v4 in v4, bytes after the outer total length (kept: the kernel trims by the inner length)",
            frame: trailing,
            out: Some(trailing_out),
            reason: DecapReason::DecapIpip4,
        },
        ok(
            "gue v1 v4 in v4, no UDP checksum",
            gue(h4(), &[], &i4, false, GUE_PORT),
            &i4,
            DecapReason::DecapGue4,
        ),
        ok(
            "gue v1 v4 in v4, UDP checksum",
            gue(h4(), &[], &i4, true, GUE_PORT),
            &i4,
            DecapReason::DecapGue4,
        ),
        ok(
            "gue v1 v6 in v4, UDP checksum",
            gue(h4(), &[], &i6, true, GUE_PORT),
            &i6,
            DecapReason::DecapGue4,
        ),
        ok(
            "gue v1 v4 in v6, zero UDP checksum",
            gue(h6(), &[], &i4, false, GUE_PORT),
            &i4,
            DecapReason::DecapGue6,
        ),
        ok(
            "gue v1 v4 in v6, UDP checksum",
            gue(h6(), &[], &i4, true, GUE_PORT),
            &i4,
            DecapReason::DecapGue6,
        ),
        ok(
            "gue v1 v6 in v6, UDP checksum",
            gue(h6(), &[], &i6, true, GUE_PORT),
            &i6,
            DecapReason::DecapGue6,
        ),
        ok(
            "gue v1 v6 in v6, zero UDP checksum",
            gue(h6(), &[], &i6, false, GUE_PORT),
            &i6,
            DecapReason::DecapGue6,
        ),
        ok(
            "gue v0 v4 in v4",
            gue(h4(), &gue_v0(&i4), &i4, true, GUE_PORT),
            &i4,
            DecapReason::DecapGue4,
        ),
        ok(
            "gue v0 v6 in v6",
            gue(h6(), &gue_v0(&i6), &i6, true, GUE_PORT),
            &i6,
            DecapReason::DecapGue6,
        ),
        ok(
            "gue v0 v4 in v6",
            gue(h6(), &gue_v0(&i4), &i4, false, GUE_PORT),
            &i4,
            DecapReason::DecapGue6,
        ),
    ]
}

fn refused() -> Vec<Row> {
    let i4 = inner_syn(VIP4.into());
    let i6 = inner_syn(vip6().into());
    let other4 = inner_syn(OTHER4.into());
    let other6 = inner_syn(v6("fd00::200").into());
    let untouched = |what, frame, reason| Row {
        what,
        frame,
        out: None,
        reason,
    };
    let mut bad_csum = ipip(h4(), &i4);
    bad_csum[14 + 10] ^= 0x01;
    let mut ihl4 = ipip(h4(), &i4);
    ihl4[14] = 0x44;
    let mut long_tot = ipip(h4(), &i4);
    {
        // Total length one past the frame; checksum fixed so only the
        // length is wrong.
        let tot = u16::from_be_bytes([long_tot[16], long_tot[17]]) + 1;
        long_tot[16..18].copy_from_slice(&tot.to_be_bytes());
        long_tot[24..26].copy_from_slice(&[0, 0]);
        let c = csum(sum16(&long_tot[14..34]));
        long_tot[24..26].copy_from_slice(&c.to_be_bytes());
    }
    let mut long_udp = gue(h4(), &[], &i4, false, GUE_PORT);
    {
        let at = 14 + 20 + 4;
        let l = u16::from_be_bytes([long_udp[at], long_udp[at + 1]]) + 1;
        long_udp[at..at + 2].copy_from_slice(&l.to_be_bytes());
    }
    let mut long_v6 = ipip(h6(), &i4);
    {
        let l = u16::from_be_bytes([long_v6[18], long_v6[19]]) + 1;
        long_v6[18..20].copy_from_slice(&l.to_be_bytes());
    }
    let mut vlan = ipip(h4(), &i4);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    // An outer IPv6 header whose next header is hop-by-hop options.
    let mut hbh = eth(0x86dd);
    let mut ext = vec![4u8, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&i4);
    hbh.extend(ipv6(lb6(), host6(), 0, ext.len()));
    hbh.extend(ext);
    let mut version_mismatch = eth(0x0800);
    version_mismatch.extend(ipv4(LB4, HOST4, 4, i6.len(), &[], 0));
    version_mismatch.extend_from_slice(&i6);
    let mut gue_bad_nibble = i4.clone();
    gue_bad_nibble[0] = 0x55;
    let plain_tcp = Frame::tcp(CLIENT4.into(), 51000, VIP4.into(), 8140, flags::SYN).build();
    let other_udp = Frame::udp(LB4.into(), 40000, HOST4.into(), 53).build();
    vec![
        untouched("ARP", arp_request(), DecapReason::PassNotIp),
        untouched("VLAN-tagged IPIP", vlan, DecapReason::PassNotIp),
        untouched("plain TCP to the VIP", plain_tcp, DecapReason::PassNotEncap),
        untouched("UDP to another port", other_udp, DecapReason::PassNotEncap),
        untouched(
            "gue to another UDP port",
            gue(h4(), &[], &i4, false, GUE_PORT + 1),
            DecapReason::PassNotEncap,
        ),
        untouched(
            "ipip v4, outer dst not this host",
            ipip(Outer::V4 { dst: NOT_HOST4 }, &i4),
            DecapReason::PassNotLocal,
        ),
        untouched(
            "ipip v6, outer dst not this host",
            ipip(
                Outer::V6 {
                    dst: v6("fd02::12"),
                },
                &i6,
            ),
            DecapReason::PassNotLocal,
        ),
        untouched(
            "gue v4, outer dst not this host",
            gue(Outer::V4 { dst: NOT_HOST4 }, &[], &i4, false, GUE_PORT),
            DecapReason::PassNotLocal,
        ),
        untouched(
            "ipip v4, inner dst not a VIP",
            ipip(h4(), &other4),
            DecapReason::PassNotVip,
        ),
        untouched(
            "ipip v6, inner dst not a VIP",
            ipip(h6(), &other6),
            DecapReason::PassNotVip,
        ),
        untouched(
            "gue v4, inner dst not a VIP",
            gue(h4(), &[], &other4, true, GUE_PORT),
            DecapReason::PassNotVip,
        ),
        untouched(
            "gue v6, inner dst not a VIP",
            gue(h6(), &[], &other6, true, GUE_PORT),
            DecapReason::PassNotVip,
        ),
        untouched(
            "ipip v4, outer MF set",
            ipip_with(h4(), &i4, &[], 0x2000),
            DecapReason::PassFragment,
        ),
        untouched(
            "ipip v4, outer fragment offset",
            ipip_with(h4(), &i4, &[], 0x0010),
            DecapReason::PassFragment,
        ),
        untouched(
            "outer v6 with a hop-by-hop header",
            hbh,
            DecapReason::PassIpv6Ext,
        ),
        untouched(
            "gue v0 control message",
            gue(h4(), &[0x20, 4, 0, 0], &i4, false, GUE_PORT),
            DecapReason::PassGueUnsupported,
        ),
        untouched(
            "gue v0 with options",
            gue(h4(), &[0x01, 4, 0, 0, 0, 0, 0, 0], &i4, false, GUE_PORT),
            DecapReason::PassGueUnsupported,
        ),
        untouched(
            "gue v0 carrying TCP",
            gue(h4(), &[0x00, 6, 0, 0], &i4, false, GUE_PORT),
            DecapReason::PassGueUnsupported,
        ),
        untouched(
            "gue version 2",
            gue(h4(), &[0x80, 4, 0, 0], &i4, false, GUE_PORT),
            DecapReason::PassGueUnsupported,
        ),
        untouched(
            "gue v1, first nibble 5",
            gue(h4(), &[], &gue_bad_nibble, false, GUE_PORT),
            DecapReason::PassGueUnsupported,
        ),
        untouched(
            "ipip v4, bad outer header checksum",
            bad_csum,
            DecapReason::PassBadOuter,
        ),
        untouched("ipip v4, outer IHL 4", ihl4, DecapReason::PassBadOuter),
        untouched(
            "protocol 4 carrying an IPv6 packet",
            version_mismatch,
            DecapReason::PassBadInner,
        ),
        untouched(
            "outer v4 total length past the frame",
            long_tot,
            DecapReason::PassTruncated,
        ),
        untouched(
            "outer v6 payload length past the frame",
            long_v6,
            DecapReason::PassTruncated,
        ),
        untouched(
            "UDP length past the IP payload",
            long_udp,
            DecapReason::PassTruncated,
        ),
        untouched(
            "Ethernet header alone, IPv4 ethertype",
            eth(0x0800),
            DecapReason::PassTruncated,
        ),
    ]
}

#[test]
fn accepted_and_refused_frames() {
    require_root!("BPF_PROG_TEST_RUN");
    let mut d = load();
    let rows: Vec<Row> = accepted().into_iter().chain(refused()).collect();
    // Every reason appears in the table.
    for r in DecapReason::ALL {
        if *r == DecapReason::PassAdjustFailed {
            // Only a kernel refusing to move the head gets it.
            continue;
        }
        assert!(
            rows.iter().any(|row| row.reason == *r),
            "no row for {}",
            r.label()
        );
    }
    for row in &rows {
        assert_eq!(
            row.out.is_some(),
            row.reason.verdict() == DecapVerdict::Decapsulated,
            "{}: a row that changes the frame must count a decap reason",
            row.what
        );
        check(&mut d, row.what, &row.frame, row.out.as_deref(), row.reason);
    }
}

#[test]
fn every_truncation_of_an_accepted_frame_is_passed_untouched() {
    require_root!("BPF_PROG_TEST_RUN");
    let mut d = load();
    for row in accepted() {
        // The trailing-bytes row has bytes past the outer length: cutting
        // those is still a whole packet.
        if row.what.contains("after the outer total length") {
            continue;
        }
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (no NIC delivers one), so cuts start there.
        for cut in 14..row.frame.len() {
            let what = format!("{}, cut to {cut} bytes", row.what);
            check(
                &mut d,
                &what,
                &row.frame[..cut],
                None,
                DecapReason::PassTruncated,
            );
        }
    }
}

#[test]
fn inner_packet_cut_at_each_header_boundary_with_consistent_outer_lengths() {
    require_root!("BPF_PROG_TEST_RUN");
    let mut d = load();
    let i4 = inner_syn(VIP4.into());
    let i6 = inner_syn(vip6().into());
    for (inner, hdr) in [(&i4, 20usize), (&i6, 40)] {
        // Outer lengths say exactly this much inner packet is there.
        for cut in [0, 1, 4, hdr - 1, hdr, hdr + 20] {
            let part = &inner[..cut];
            let whole = cut >= hdr;
            for (what, frame, reason) in [
                (
                    "ipip/v4",
                    ipip_proto(h4(), proto_of(inner), part, &[], 0),
                    DecapReason::DecapIpip4,
                ),
                (
                    "ipip/v6",
                    ipip_proto(h6(), proto_of(inner), part, &[], 0),
                    DecapReason::DecapIpip6,
                ),
                (
                    "gue/v4",
                    gue(h4(), &[], part, true, GUE_PORT),
                    DecapReason::DecapGue4,
                ),
                (
                    "gue/v6",
                    gue(h6(), &[], part, true, GUE_PORT),
                    DecapReason::DecapGue6,
                ),
            ] {
                let what = format!(
                    "{what}, inner IPv{} cut at {cut}",
                    if hdr == 20 { 4 } else { 6 }
                );
                if whole {
                    // A complete inner header: unwrapped; the kernel judges
                    // the rest of the inner packet.
                    let mut out = eth(ethertype_of(inner));
                    out.extend_from_slice(part);
                    check(&mut d, &what, &frame, Some(&out), reason);
                } else {
                    // Too short to hold the inner header (or, for GUE, the
                    // four bytes that tell the variant): untouched.
                    check(&mut d, &what, &frame, None, DecapReason::PassTruncated);
                }
            }
        }
    }
}

#[test]
fn the_maps_steer_the_program_as_they_change() {
    require_root!("BPF_PROG_TEST_RUN");
    let mut d = load();
    let i4 = inner_syn(VIP4.into());
    let g = gue(h4(), &[], &i4, false, GUE_PORT);
    check(
        &mut d,
        "gue on",
        &g,
        Some(&decapsulated(&i4)),
        DecapReason::DecapGue4,
    );
    // GUE off: the same frame is ordinary UDP.
    d.maps.set_gue_port(0).unwrap();
    assert_eq!(d.maps.gue_port().unwrap(), 0);
    check(&mut d, "gue off", &g, None, DecapReason::PassNotEncap);
    // Another port.
    d.maps.set_gue_port(7777).unwrap();
    check(&mut d, "old port", &g, None, DecapReason::PassNotEncap);
    let g2 = gue(h4(), &[], &i4, false, 7777);
    check(
        &mut d,
        "new port",
        &g2,
        Some(&decapsulated(&i4)),
        DecapReason::DecapGue4,
    );
    // The VIP set is replaced, not added to: VIP4 leaves, OTHER4 joins.
    let other: BTreeSet<IpAddr> = [IpAddr::V4(OTHER4)].into();
    d.maps.set_vips(&other).unwrap();
    assert_eq!(d.maps.vips(), other);
    let ip = ipip(h4(), &i4);
    check(&mut d, "removed VIP", &ip, None, DecapReason::PassNotVip);
    let o4 = inner_syn(OTHER4.into());
    check(
        &mut d,
        "added VIP",
        &ipip(h4(), &o4),
        Some(&decapsulated(&o4)),
        DecapReason::DecapIpip4,
    );
    // Host addresses likewise.
    let locals: BTreeSet<IpAddr> = [IpAddr::V4(NOT_HOST4)].into();
    d.maps.set_locals(&locals).unwrap();
    assert_eq!(d.maps.locals(), locals);
    check(
        &mut d,
        "old host address",
        &ipip(h4(), &o4),
        None,
        DecapReason::PassNotLocal,
    );
}
