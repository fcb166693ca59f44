//! `cargo xtask bench dataplane`: the kernel's own ns/packet for each path of
//! the XDP program (BPF_PROG_TEST_RUN), side by side with a bare reference
//! program that only swaps MACs and returns XDP_TX, from the same run.
//!
//! The floor row is the reflector plus one hit in the IPv4 flow table: what
//! a single kernel hash lookup costs here, next to which the established
//! path (which must do one) is read.
//!
//! Steady-state paths are timed with `repeat` (the kernel's average over the
//! repeats). The SYN path cannot be: after the first repeat its flow exists,
//! so it is timed as many distinct SYNs at repeat = 1, against the reflector
//! at repeat = 1 (both then include the same per-run timer overhead). The
//! routed (IPIP, GUE) paths are timed at repeat = 1 too: the kernel runs the
//! repeats on the same buffer, which encapsulation grows each time.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    BACKEND_ACTIVE, BackendInfo, FAMILY_V4, FORWARD_GUE, FORWARD_IPIP, FlowKeyV4, KIND_CA,
    KIND_COMPILER, PROTO_TCP, TunnelInfo, VipInfo, VipKey, addr_bytes,
    maglev::{self, Entry},
};
use lb_testkit::{
    harness::TestDataPlane,
    object::{BENCH_LOOKUP, BENCH_REFLECTOR},
    packet::{Frame, flags},
};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const CA_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
/// Routed services: IPIP (service 2) and GUE (service 3), IPv4 outer.
const IPIP_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
const GUE_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 103);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The data plane the rows run against: a compiler service of ten
/// backends (service 0), a CA service (1), and two routed services of ten
/// compilers each, IPIP (2) and GUE (3), leaving through the test run's
/// ingress interface.
fn setup(capacity: u32) -> anyhow::Result<TestDataPlane> {
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
    // Routed compilers, leaving through the test run's ingress interface
    // (lo): XDP_TX after encapsulation, as in production on one interface.
    for (sid, vip, mode) in [(2u32, IPIP_VIP, FORWARD_IPIP), (3, GUE_VIP, FORWARD_GUE)] {
        dp.upsert_vip(
            VipKey::new(vip.into(), 8140, PROTO_TCP),
            VipInfo {
                service_id: sid,
                kind: KIND_COMPILER,
            },
        )?;
        let mut routed = Vec::new();
        for i in 0..10u32 {
            let id = sid * 100 + i;
            let addr = IpAddr::V4(Ipv4Addr::new(10, 2, sid as u8, i as u8 + 1));
            let (a, family) = addr_bytes(addr);
            let mut t = TunnelInfo {
                src_mac: [2, 0, 0, 0, 0, 0xee],
                gue_port_be: 6080u16.to_be(),
                ifindex: 1,
                mtu: 1500,
                family: FAMILY_V4,
                ttl: 64,
                ..Default::default()
            };
            t.src[..4].copy_from_slice(&[10, 0, 0, 2]);
            t.dst = a;
            dp.set_tunnel(id, t)?;
            dp.set_backend(
                id,
                BackendInfo {
                    mac: [2, 0x4e, 0, 0, 0, 1],
                    forwarding: mode,
                    state: BACKEND_ACTIVE,
                    service_id: sid,
                    addr: a,
                    family,
                    ..Default::default()
                },
            )?;
            routed.push(Entry::from_addr(addr, 1, id));
        }
        dp.install_table(
            sid,
            &maglev::build(&routed, 65537).map_err(|e| anyhow::anyhow!("{e}"))?,
        )?;
    }

    Ok(dp)
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
    let mut dp = setup(capacity)?;
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

    // The floor: the reflector plus one hit in the IPv4 flow table, keyed
    // by the 16 bytes at offset 26 of the frame (what `vx_bench_lookup`
    // reads), in a table as full as the established path's.
    // The floor's table is the test object's own (see `vx_bench_lookup`):
    // every flow the production table gains (the SYN rows below) is also
    // put in it, so both stay equally full.
    let floor_key = |f: &[u8]| -> anyhow::Result<FlowKeyV4> {
        Ok(FlowKeyV4 {
            src: f[26..30].try_into()?,
            dst: f[30..34].try_into()?,
            sport_be: u16::from_ne_bytes([f[34], f[35]]),
            dport_be: u16::from_ne_bytes([f[36], f[37]]),
            proto: f[38],
            _pad: f[39],
            _pad2: u16::from_ne_bytes([f[40], f[41]]),
        })
    };
    dp.insert_bench_flow4(&floor_key(&est)?)?;

    let ns = |dp: &mut TestDataPlane, prog: &str, f: &[u8], rep: u32| -> anyhow::Result<f64> {
        Ok(dp.test_run(prog, f, rep)?.duration.as_nanos() as f64)
    };
    // Established routed flows (their SYNs went first).
    let mut routed_est = Vec::new();
    for vip in [IPIP_VIP, GUE_VIP] {
        let syn = Frame::tcp(client(1), 40010, vip.into(), 8140, flags::SYN).build();
        anyhow::ensure!(
            dp.test_run(PROGRAM_NAME, &syn, 1)?.action == 3,
            "routed SYN not sent"
        );
        routed_est.push(
            Frame::tcp(client(1), 40010, vip.into(), 8140, flags::ACK)
                .with_payload(&[0; 32])
                .build(),
        );
    }
    // `--profile ROW SECONDS`: run one steady-state row alone for that long,
    // for a sampling profiler (`perf record -e cpu-clock -a`, which needs no
    // PMU) to see where its time goes; prints nothing else.
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let row = args.get(i + 1).map(String::as_str).unwrap_or("");
        let secs: u64 = args.get(i + 2).map(|s| s.parse()).transpose()?.unwrap_or(5);
        if row == "syn" || row == "flood" {
            // Distinct SYNs at repeat 1, as in the table below.
            dp.set_flood_threshold(u32::from(row == "flood"))?;
            let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let (mut runs, mut total, mut i) = (0u64, 0.0, 0u32);
            while std::time::Instant::now() < until {
                i = i.wrapping_add(1);
                let syn = Frame::tcp(client(i), 50000, VIP.into(), 8140, flags::SYN).build();
                total += ns(&mut dp, PROGRAM_NAME, &syn, 1)?;
                runs += 1;
            }
            println!(
                "{row}: {:.1} ns/packet over {runs} runs",
                total / runs as f64
            );
            return Ok(());
        }
        let (prog, frame) = match row {
            "reflector" => (BENCH_REFLECTOR, &est),
            "floor" => (BENCH_LOOKUP, &est),
            "pass" => (PROGRAM_NAME, &not_vip),
            "ca" => (PROGRAM_NAME, &ca),
            "established" => (PROGRAM_NAME, &est),
            "miss" => (PROGRAM_NAME, &miss),
            _ => anyhow::bail!(
                "--profile: unknown row {row:?} (reflector, floor, pass, ca, established, miss, syn, flood)"
            ),
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut runs = 0u64;
        let mut total = 0.0;
        while std::time::Instant::now() < until {
            total += ns(&mut dp, prog, frame, repeat)?;
            runs += 1;
        }
        println!(
            "{row}: {:.1} ns/packet over {runs} runs",
            total / runs as f64
        );
        return Ok(());
    }
    let mut v: [Vec<f64>; 13] = Default::default();
    let mut next_client = 0u32;
    for _ in 0..rounds {
        v[0].push(ns(&mut dp, BENCH_REFLECTOR, &est, repeat)?);
        v[1].push(ns(&mut dp, BENCH_LOOKUP, &est, repeat)?);
        v[2].push(ns(&mut dp, PROGRAM_NAME, &not_vip, repeat)?);
        v[3].push(ns(&mut dp, PROGRAM_NAME, &ca, repeat)?);
        v[4].push(ns(&mut dp, PROGRAM_NAME, &est, repeat)?);
        v[5].push(ns(&mut dp, PROGRAM_NAME, &miss, repeat)?);
        let (mut r1, mut s1, mut f1) = (0.0, 0.0, 0.0);
        for _ in 0..syns {
            next_client += 1;
            let syn = Frame::tcp(client(next_client), 50000, VIP.into(), 8140, flags::SYN).build();
            r1 += ns(&mut dp, BENCH_REFLECTOR, &syn, 1)?;
            s1 += ns(&mut dp, PROGRAM_NAME, &syn, 1)?;
            dp.insert_bench_flow4(&floor_key(&syn)?)?;
        }
        // Flood mode: threshold 1, so all but the first SYN of each second
        // are forwarded by the Maglev table without an insert.
        dp.set_flood_threshold(1)?;
        for _ in 0..syns {
            next_client += 1;
            let syn = Frame::tcp(client(next_client), 50001, VIP.into(), 8140, flags::SYN).build();
            f1 += ns(&mut dp, PROGRAM_NAME, &syn, 1)?;
        }
        dp.set_flood_threshold(0)?;
        v[6].push(r1 / syns as f64);
        v[7].push(s1 / syns as f64);
        v[8].push(f1 / syns as f64);
        // Routed: established and SYN, IPIP then GUE, at repeat 1.
        for (k, vip) in [IPIP_VIP, GUE_VIP].into_iter().enumerate() {
            let (mut e1, mut s1) = (0.0, 0.0);
            for _ in 0..syns {
                e1 += ns(&mut dp, PROGRAM_NAME, &routed_est[k], 1)?;
                next_client += 1;
                let syn =
                    Frame::tcp(client(next_client), 50002, vip.into(), 8140, flags::SYN).build();
                s1 += ns(&mut dp, PROGRAM_NAME, &syn, 1)?;
            }
            v[9 + 2 * k].push(e1 / syns as f64);
            v[10 + 2 * k].push(s1 / syns as f64);
        }
    }
    let flood = dp.flood_status()?;
    let [
        refl,
        floor,
        pass,
        cav,
        estv,
        missv,
        refl1,
        synv,
        floodv,
        ipip_est,
        ipip_syn,
        gue_est,
        gue_syn,
    ] = v.map(median);
    println!(
        "voxlb data plane, BPF_PROG_TEST_RUN, median of {rounds} rounds (repeat {repeat}; SYN: {syns} distinct flows at repeat 1)"
    );
    println!(
        "flow tables: {capacity} entries per family; flood-mode rows: {} SYNs forwarded without an entry",
        flood.flood_syns
    );
    println!(
        "{:<52} {:>10} {:>12} {:>8}",
        "path", "ns/packet", "x reflector", "target"
    );
    println!(
        "{:<52} {:>10.1} {:>12} {:>8}",
        "bare reflector (swap MACs, XDP_TX)", refl, "1.00", ""
    );
    for (name, v, target) in [
        ("floor: reflector + one IPv4 flow-table hit", floor, ""),
        ("non-VIP pass (SSH to the LB)", pass, "<= 1.1"),
        ("CA VIP (filter, VIP lookup, steering)", cav, "<= 2.0"),
        ("compiler, established (flow-table hit)", estv, "<= 2.0"),
        ("compiler, unknown non-SYN (Maglev pick)", missv, ""),
    ] {
        println!("{name:<52} {v:>10.1} {:>12.2} {target:>8}", v / refl);
    }
    println!(
        "{:<52} {:>10.1} {:>12} {:>8}",
        "bare reflector, repeat 1", refl1, "1.00", ""
    );
    for (name, v, target) in [
        (
            "compiler SYN (Maglev pick + flow insert), repeat 1",
            synv,
            "<= 4.0",
        ),
        (
            "compiler SYN in flood mode (no insert), repeat 1",
            floodv,
            "<= 2.5",
        ),
        (
            "routed IPIP, established (+ tail call, encap)",
            ipip_est,
            "",
        ),
        ("routed IPIP, SYN", ipip_syn, ""),
        ("routed GUE, established (+ tail call, encap)", gue_est, ""),
        ("routed GUE, SYN", gue_syn, ""),
    ] {
        println!("{name:<52} {v:>10.1} {:>12.2} {target:>8}", v / refl1);
    }
    Ok(())
}
