//! The flow-table census against the real program and map: entries the
//! data plane created are counted in batches (BPF_MAP_LOOKUP_BATCH), per
//! backend, with the map's capacity — the same numbers an entry-by-entry
//! walk gives. Needs root (loads the XDP object).

use lb_common::reason::action::XDP_TX;
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use lb_common::{
    BACKEND_ACTIVE, BackendInfo, KIND_COMPILER, PROTO_TCP, VipInfo, VipKey, addr_bytes,
    maglev::{self, Entry},
};
use lb_testkit::{
    harness::TestDataPlane,
    packet::{Frame, flags},
};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME};

const CAPACITY: u32 = 65536;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const PORT: u16 = 8140;

fn backend_ip(id: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8 + 1))
}

#[test]
fn batched_census_counts_what_the_data_plane_created() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = TestDataPlane::load(CAPACITY).expect("load the XDP object");
    dp.upsert_vip(
        VipKey::new(VIP.into(), PORT, PROTO_TCP),
        VipInfo {
            service_id: 0,
            kind: KIND_COMPILER,
        },
    )
    .unwrap();
    for id in 0..3u32 {
        let (addr, family) = addr_bytes(backend_ip(id));
        dp.set_backend(
            id,
            BackendInfo {
                mac: [2, 0, 0, 0, 0, id as u8],
                state: BACKEND_ACTIVE,
                service_id: 0,
                addr,
                family,
                generation: 7,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let entries: Vec<Entry> = (0..3)
        .map(|id| Entry::from_addr(backend_ip(id), 1, id))
        .collect();
    dp.install_table(0, &maglev::build(&entries, 1009).unwrap())
        .unwrap();

    // Empty table first. `flow_capacity` sizes each family's table, and
    // the census counts both, so its capacity is the sum of the two.
    let c = dp.flow_census().unwrap();
    assert_eq!((c.entries, c.capacity), (0, Some(2 * CAPACITY as u64)));

    // More SYNs than one batch (4096) holds, each a new flow.
    const FLOWS: u32 = 9000;
    for i in 0..FLOWS {
        let client = Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1);
        let frame = Frame::tcp(
            client.into(),
            1024 + (i / 250) as u16,
            VIP.into(),
            PORT,
            flags::SYN,
        )
        .build();
        let out = dp.test_run(PROGRAM_NAME, &frame, 1).unwrap();
        assert_eq!(out.action, XDP_TX);
    }
    let walked = dp.flows(usize::MAX).unwrap();
    assert_eq!(walked.len(), FLOWS as usize, "every SYN made an entry");
    let mut want: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (_, v) in &walked {
        *want.entry((v.backend_id, v.generation)).or_default() += 1;
    }

    let c = dp.flow_census().unwrap();
    assert_eq!(c.entries, FLOWS as u64);
    assert_eq!(c.capacity, Some(2 * CAPACITY as u64));
    let got: BTreeMap<(u32, u32), u64> = c
        .by_backend
        .iter()
        .map(|b| ((b.id, b.generation), b.entries))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 3, "three backends, generation 7: {got:?}");
    for id in 0..3 {
        assert_eq!(c.of(id, 7), want[&(id, 7)]);
    }
}
