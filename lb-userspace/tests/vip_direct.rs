//! The direct VIP array (`vx_vip_direct_v2`), in the real kernel via
//! BPF_PROG_TEST_RUN: an IPv4 VIP alone in its pre-filter slot is read with
//! one array load instead of a VIP map lookup (what took the CA path from
//! 2.7x to 1.8x the reflector in `cargo xtask bench dataplane`). The entry
//! is a cache of the VIP map, so these tests hold it to three rules:
//! - it is exact: another address, port or protocol in the same slot is
//!   not taken for the VIP;
//! - a slot shared by two VIPs has no entry, and both are served through
//!   the map;
//! - it follows the map: a removed VIP has no entry, and the slot's entry
//!   comes back when the slot is a single VIP's again.
//!
//! Needs root (loading BPF programs).

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    BACKEND_ACTIVE, BackendInfo, KIND_CA, KIND_COMPILER, PROTO_TCP, PROTO_UDP, Reason, VipInfo,
    VipKey, addr_bytes,
    hash::{fold_v4, vip_slot},
    maglev::{self, Entry},
    reason::action::{XDP_PASS, XDP_TX},
};
use lb_testkit::{
    harness::TestDataPlane,
    packet::{Frame, flags},
};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const CA_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
const PORT: u16 = 8140;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, id as u8]
}

/// A compiler service `sid` with one backend `id` (or a CA service).
fn service(dp: &mut TestDataPlane, sid: u32, vip: Ipv4Addr, kind: u32, id: u32) {
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8 + 1));
    let (a, family) = addr_bytes(addr);
    dp.set_backend(
        id,
        BackendInfo {
            mac: mac(id),
            state: BACKEND_ACTIVE,
            service_id: sid,
            addr: a,
            family,
            ..Default::default()
        },
    )
    .unwrap();
    if kind == KIND_CA {
        dp.set_ca_target(sid, id).unwrap();
    } else {
        let table = maglev::build(&[Entry::from_addr(addr, 1, id)], 251).unwrap();
        dp.install_table(sid, &table).unwrap();
    }
    dp.upsert_vip(
        VipKey::new(vip.into(), PORT, PROTO_TCP),
        VipInfo {
            service_id: sid,
            kind,
        },
    )
    .unwrap();
}

fn setup() -> TestDataPlane {
    let mut dp = TestDataPlane::load(1024).expect("load the data plane");
    service(&mut dp, 0, VIP, KIND_COMPILER, 0);
    service(&mut dp, 1, CA_VIP, KIND_CA, 1);
    dp
}

fn slot(a: Ipv4Addr, port: u16) -> u32 {
    vip_slot(fold_v4(&a.octets()), port.to_be())
}

/// An address of 10.200/16 whose (address, `PORT`) filter slot is `VIP`'s.
fn colliding_address() -> Ipv4Addr {
    let want = slot(VIP, PORT);
    (0..=u16::MAX)
        .map(|i| Ipv4Addr::new(10, 200, (i >> 8) as u8, i as u8))
        .chain((0..=u16::MAX).map(|i| Ipv4Addr::new(10, 201, (i >> 8) as u8, i as u8)))
        .find(|&a| slot(a, PORT) == want)
        .expect("some address of 10.200/15 shares VIP's filter slot")
}

/// Where a SYN from `CLIENT` to (dst, `PORT`) goes: the action, the
/// destination MAC it leaves with, and the `pass_not_vip` count after it.
fn syn(dp: &mut TestDataPlane, dst: Ipv4Addr, sport: u16) -> (u32, [u8; 6], u64) {
    let f = Frame::tcp(CLIENT.into(), sport, dst.into(), PORT, flags::SYN).build();
    let out = dp.test_run(PROGRAM_NAME, &f, 1).expect("test_run");
    let not_vip = dp
        .reason_stats()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == Reason::PassNotVip)
        .map(|(_, c)| c.packets)
        .unwrap();
    (out.action, out.frame[..6].try_into().unwrap(), not_vip)
}

#[test]
fn a_lone_ipv4_vip_has_an_exact_direct_entry() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = setup();
    assert_eq!(
        dp.direct_vip(VIP.into(), PORT, PROTO_TCP),
        Some(VipInfo {
            service_id: 0,
            kind: KIND_COMPILER
        })
    );
    assert_eq!(
        dp.direct_vip(CA_VIP.into(), PORT, PROTO_TCP),
        Some(VipInfo {
            service_id: 1,
            kind: KIND_CA
        })
    );
    // The same slot read for another protocol is no match.
    assert_eq!(dp.direct_vip(VIP.into(), PORT, PROTO_UDP), None);
    // And the packets go where the entries say.
    let (action, to, _) = syn(&mut dp, VIP, 40000);
    assert_eq!((action, to), (XDP_TX, mac(0)));
    let (action, to, _) = syn(&mut dp, CA_VIP, 40001);
    assert_eq!((action, to), (XDP_TX, mac(1)));
}

#[test]
fn another_destination_in_the_slot_of_a_vip_is_not_taken_for_it() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = setup();
    let other = colliding_address();
    assert!(dp.direct_vip(VIP.into(), PORT, PROTO_TCP).is_some());
    let (_, _, before) = syn(&mut dp, VIP, 40000);
    let (action, _, after) = syn(&mut dp, other, 40002);
    assert_eq!(action, XDP_PASS, "{other} is no VIP but shares VIP's slot");
    assert_eq!(after, before + 1, "counted as pass_not_vip");
    // A UDP datagram to the VIP's own address and port: no such VIP either.
    let f = Frame::udp(CLIENT.into(), 40003, VIP.into(), PORT).build();
    assert_eq!(dp.test_run(PROGRAM_NAME, &f, 1).unwrap().action, XDP_PASS);
}

#[test]
fn vips_sharing_a_slot_are_served_through_the_vip_map() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = setup();
    let other = colliding_address();
    service(&mut dp, 2, other, KIND_COMPILER, 2);
    assert_eq!(dp.direct_vip(VIP.into(), PORT, PROTO_TCP), None);
    assert_eq!(dp.direct_vip(other.into(), PORT, PROTO_TCP), None);
    let (action, to, _) = syn(&mut dp, VIP, 40004);
    assert_eq!((action, to), (XDP_TX, mac(0)));
    let (action, to, _) = syn(&mut dp, other, 40005);
    assert_eq!((action, to), (XDP_TX, mac(2)));
    // The slot is VIP's alone again: its entry comes back.
    dp.remove_vip(&VipKey::new(other.into(), PORT, PROTO_TCP))
        .unwrap();
    assert_eq!(
        dp.direct_vip(VIP.into(), PORT, PROTO_TCP),
        Some(VipInfo {
            service_id: 0,
            kind: KIND_COMPILER
        })
    );
    let (action, _, _) = syn(&mut dp, other, 40006);
    assert_eq!(action, XDP_PASS);
}

#[test]
fn a_removed_vip_loses_its_direct_entry() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = setup();
    dp.remove_vip(&VipKey::new(CA_VIP.into(), PORT, PROTO_TCP))
        .unwrap();
    assert_eq!(dp.direct_vip(CA_VIP.into(), PORT, PROTO_TCP), None);
    let (_, _, before) = syn(&mut dp, VIP, 40007);
    let (action, _, after) = syn(&mut dp, CA_VIP, 40008);
    assert_eq!(action, XDP_PASS);
    assert_eq!(after, before + 1);
}
