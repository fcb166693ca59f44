//! `cargo xtask bench dataplane`: the kernel's own ns/packet for each path of
//! the XDP program (BPF_PROG_TEST_RUN), side by side with a bare reference
//! program that only swaps MACs and returns XDP_TX, from the same run.
//!
//! Steady-state paths are timed with `repeat` (the kernel's average over the
//! repeats). The SYN path cannot be: after the first repeat its flow exists,
//! so it is timed as many distinct SYNs at repeat = 1, against the reflector
//! at repeat = 1 (both then include the same per-run timer overhead).

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    BACKEND_ACTIVE, BackendInfo, KIND_CA, KIND_COMPILER, PROTO_TCP, VipInfo, VipKey, addr_bytes,
    maglev::{self, Entry},
};
use lb_testkit::{
    harness::TestDataPlane,
    object::BENCH_REFLECTOR,
    packet::{Frame, flags},
};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const CA_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, repeat, syns) = if quick {
        (3, 20_000, 500)
    } else {
        (7, 200_000, 4000)
    };
    // The daemon's default flow-table size unless `--flow-capacity N`: the
    // SYN path's cost is mostly cache and TLB misses in that table.
    let args: Vec<String> = std::env::args().collect();
    let capacity = args
        .iter()
        .position(|a| a == "--flow-capacity")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<u32>())
        .transpose()?
        .unwrap_or(lb_common::maps::DEFAULT_FLOW_CAPACITY);
    let mut dp = TestDataPlane::load(capacity)?;
    dp.upsert_vip(
        VipKey::new(VIP.into(), 8140, PROTO_TCP),
        VipInfo {
            service_id: 0,
            kind: KIND_COMPILER,
        },
    )?;
    dp.upsert_vip(
        VipKey::new(CA_VIP.into(), 8140, PROTO_TCP),
        VipInfo {
            service_id: 1,
            kind: KIND_CA,
        },
    )?;
    let mut entries = Vec::new();
    for id in 0..10u32 {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8 + 1));
        let (a, family) = addr_bytes(addr);
        dp.set_backend(
            id,
            BackendInfo {
                mac: [2, 0xbe, 0, 0, 0, id as u8],
                state: BACKEND_ACTIVE,
                service_id: 0,
                addr: a,
                family,
                ..Default::default()
            },
        )?;
        entries.push(Entry::from_addr(addr, 1, id));
    }
    dp.install_table(
        0,
        &maglev::build(&entries, 65537).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    dp.set_backend(
        100,
        BackendInfo {
            mac: [2, 0xca, 0, 0, 0, 1],
            state: BACKEND_ACTIVE,
            service_id: 1,
            ..Default::default()
        },
    )?;
    dp.set_ca_target(1, 100)?;

    let client = |i: u32| IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8));
    let not_vip = Frame::tcp(
        client(1),
        40000,
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        22,
        flags::ACK,
    )
    .with_payload(&[0; 32])
    .build();
    let ca = Frame::tcp(client(1), 40001, CA_VIP.into(), 8140, flags::ACK)
        .with_payload(&[0; 32])
        .build();
    let est_syn = Frame::tcp(client(1), 40002, VIP.into(), 8140, flags::SYN).build();
    dp.test_run(PROGRAM_NAME, &est_syn, 1)?;
    let est = Frame::tcp(client(1), 40002, VIP.into(), 8140, flags::ACK)
        .with_payload(&[0; 32])
        .build();

    // A non-SYN segment of an unknown flow: flow miss, VIP lookup, Maglev
    // pick, no insert: the SYN path's work minus the insert, steady state.
    let miss = Frame::tcp(client(2), 40003, VIP.into(), 8140, flags::ACK)
        .with_payload(&[0; 32])
        .build();

    let ns = |dp: &mut TestDataPlane, prog: &str, f: &[u8], rep: u32| -> anyhow::Result<f64> {
        Ok(dp.test_run(prog, f, rep)?.duration.as_nanos() as f64)
    };
    let (mut refl, mut pass, mut cav, mut estv, mut missv, mut refl1, mut synv) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut next_client = 0u32;
    for _ in 0..rounds {
        refl.push(ns(&mut dp, BENCH_REFLECTOR, &est, repeat)?);
        pass.push(ns(&mut dp, PROGRAM_NAME, &not_vip, repeat)?);
        cav.push(ns(&mut dp, PROGRAM_NAME, &ca, repeat)?);
        estv.push(ns(&mut dp, PROGRAM_NAME, &est, repeat)?);
        missv.push(ns(&mut dp, PROGRAM_NAME, &miss, repeat)?);
        let (mut r1, mut s1) = (0.0, 0.0);
        for _ in 0..syns {
            next_client += 1;
            let syn = Frame::tcp(client(next_client), 50000, VIP.into(), 8140, flags::SYN).build();
            r1 += ns(&mut dp, BENCH_REFLECTOR, &syn, 1)?;
            s1 += ns(&mut dp, PROGRAM_NAME, &syn, 1)?;
        }
        refl1.push(r1 / syns as f64);
        synv.push(s1 / syns as f64);
    }
    let (refl, refl1) = (median(refl), median(refl1));
    println!(
        "voxlb data plane, BPF_PROG_TEST_RUN, median of {rounds} rounds (repeat {repeat}; SYN: {syns} distinct flows at repeat 1)"
    );
    println!("flow table: {capacity} entries");
    println!(
        "{:<44} {:>10} {:>12} {:>8}",
        "path", "ns/packet", "x reflector", "target"
    );
    println!(
        "{:<44} {:>10.1} {:>12} {:>8}",
        "bare reflector (swap MACs, XDP_TX)", refl, "1.00", ""
    );
    for (name, v, target) in [
        ("non-VIP pass (SSH to the LB)", median(pass), "<= 1.0"),
        ("CA VIP (steering map)", median(cav), ""),
        (
            "compiler, established (flow-table hit)",
            median(estv),
            "<= 1.5",
        ),
        ("compiler, unknown non-SYN (Maglev pick)", median(missv), ""),
    ] {
        println!("{name:<44} {v:>10.1} {:>12.2} {target:>8}", v / refl);
    }
    println!(
        "{:<44} {:>10.1} {:>12} {:>8}",
        "bare reflector, repeat 1", refl1, "1.00", ""
    );
    let syn = median(synv);
    println!(
        "{:<44} {syn:>10.1} {:>12.2} {:>8}",
        "compiler SYN (Maglev pick + flow insert), repeat 1",
        syn / refl1,
        "<= 3.0"
    );
    Ok(())
}
