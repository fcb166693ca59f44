//! `cargo xtask bench dataplane`: the kernel's own ns/packet for each path of
//! the XDP program (BPF_PROG_TEST_RUN), side by side with a bare reference
//! program that only swaps MACs and returns XDP_TX, from the same run.
//!
//! The floor rows are what a path cannot go below on this kernel: the
//! reflector plus a pre-filter read and one per-CPU counter record (every
//! packet voxlb handles pays both), the reflector plus one hit in an IPv4
//! flow table (the established path must do one), and the reflector plus a
//! miss and an insert in one (a recorded SYN must do both), in a table as
//! full as the production one.
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
    object::{
        BENCH_CA, BENCH_CA_PARSE, BENCH_COUNT, BENCH_FLOOD, BENCH_INSERT, BENCH_LOOKUP,
        BENCH_REFLECTOR,
    },
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

/// The command line: `[--quick] [--flow-capacity N] [--profile ROW SECS]`.
struct Args {
    rounds: usize,
    repeat: u32,
    syns: u32,
    /// The daemon's default flow-table size unless `--flow-capacity N`: the
    /// SYN path's cost is mostly cache and TLB misses in that table.
    capacity: u32,
    /// `--profile ROW SECONDS`: run one row alone for that long, for a
    /// sampling profiler (`perf record -e cpu-clock -a`, which needs no
    /// PMU) to see where its time goes; prints nothing else.
    profile: Option<(String, u64)>,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let args: Vec<String> = std::env::args().collect();
        let after = |flag: &str, k: usize| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + k))
        };
        let quick = args.iter().any(|a| a == "--quick");
        let (rounds, repeat, syns) = if quick {
            (3, 20_000, 500)
        } else {
            (7, 200_000, 4000)
        };
        let capacity = after("--flow-capacity", 1)
            .map(|v| v.parse::<u32>())
            .transpose()?
            .unwrap_or(lb_common::maps::DEFAULT_FLOW_CAPACITY);
        let profile = match after("--profile", 1) {
            None => None,
            Some(row) => {
                let secs = after("--profile", 2).map(|s| s.parse()).transpose()?;
                Some((row.clone(), secs.unwrap_or(5)))
            }
        };
        Ok(Args {
            rounds,
            repeat,
            syns,
            capacity,
            profile,
        })
    }
}

/// A distinct client for each `i` below 2^17 (198.18.0.0/15).
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        198,
        18 + ((i >> 16) & 1) as u8,
        (i >> 8) as u8,
        i as u8,
    ))
}

fn syn(i: u32, port: u16, vip: Ipv4Addr) -> Vec<u8> {
    Frame::tcp(client(i), port, vip.into(), 8140, flags::SYN).build()
}

fn segment(i: u32, port: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    Frame::tcp(client(i), port, dst.into(), dport, flags::ACK)
        .with_payload(&[0; 32])
        .build()
}

/// The steady-state frames the rows time.
struct Frames {
    not_vip: Vec<u8>,
    ca: Vec<u8>,
    /// A segment of an established compiler flow.
    est: Vec<u8>,
    /// A non-SYN segment of an unknown flow: flow miss, VIP lookup, Maglev
    /// pick, no insert: the SYN path's work minus the insert.
    miss: Vec<u8>,
    /// Segments of established routed flows, IPIP then GUE.
    routed_est: [Vec<u8>; 2],
    /// A SYN the flood-mode row repeats.
    flood_syn: Vec<u8>,
}

/// The floor's flow-table key of a frame: the 16 bytes at offset 26 that
/// the test object's floor programs read.
fn floor_key(f: &[u8]) -> anyhow::Result<FlowKeyV4> {
    Ok(FlowKeyV4 {
        src: f[26..30].try_into()?,
        dst: f[30..34].try_into()?,
        sport_be: u16::from_ne_bytes([f[34], f[35]]),
        dport_be: u16::from_ne_bytes([f[36], f[37]]),
        proto: f[38],
        _pad: f[39],
        _pad2: u16::from_ne_bytes([f[40], f[41]]),
    })
}

/// Build the frames, and open the flows the established rows time (their
/// SYNs go first; the floor's own table gets the same key).
fn prepare(dp: &mut TestDataPlane) -> anyhow::Result<Frames> {
    // The flood floor's table is the size of service 0's (its array holds
    // two 65537-slot copies).
    dp.set_bench_regions(0, 65537)?;
    dp.test_run(PROGRAM_NAME, &syn(1, 40002, VIP), 1)?;
    let est = segment(1, 40002, VIP, 8140);
    dp.insert_bench_flow4(&floor_key(&est)?)?;
    let mut routed_est: [Vec<u8>; 2] = Default::default();
    for (k, vip) in [IPIP_VIP, GUE_VIP].into_iter().enumerate() {
        anyhow::ensure!(
            dp.test_run(PROGRAM_NAME, &syn(1, 40010, vip), 1)?.action == 3,
            "routed SYN not sent"
        );
        routed_est[k] = segment(1, 40010, vip, 8140);
    }
    Ok(Frames {
        not_vip: segment(1, 40000, Ipv4Addr::new(10, 0, 0, 1), 22),
        ca: segment(1, 40001, CA_VIP, 8140),
        est,
        miss: segment(2, 40003, VIP, 8140),
        routed_est,
        flood_syn: syn(3, 40004, VIP),
    })
}

fn ns(dp: &mut TestDataPlane, prog: &str, f: &[u8], rep: u32) -> anyhow::Result<f64> {
    Ok(dp.test_run(prog, f, rep)?.duration.as_nanos() as f64)
}

/// `--profile ROW SECS`.
fn profile(
    dp: &mut TestDataPlane,
    f: &Frames,
    row: &str,
    secs: u64,
    repeat: u32,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (mut runs, mut total) = (0u64, 0.0);
    if let Some(prog) = match row {
        "syn" | "flood" => Some(PROGRAM_NAME),
        "insert" => Some(BENCH_INSERT),
        _ => None,
    } {
        // Distinct SYNs at repeat 1, as in the table.
        dp.set_flood_threshold(u32::from(row == "flood"))?;
        while std::time::Instant::now() < until {
            total += ns(dp, prog, &syn(runs as u32 + 1, 50000, VIP), 1)?;
            runs += 1;
        }
    } else {
        let (prog, frame) = match row {
            "reflector" => (BENCH_REFLECTOR, &f.est),
            "count" => (BENCH_COUNT, &f.not_vip),
            "cafloor" => (BENCH_CA, &f.ca),
            "caparse" => (BENCH_CA_PARSE, &f.ca),
            "floodfloor" => (BENCH_FLOOD, &f.flood_syn),
            "floodwarm" => (PROGRAM_NAME, &f.flood_syn),
            "floor" => (BENCH_LOOKUP, &f.est),
            "pass" => (PROGRAM_NAME, &f.not_vip),
            "ca" => (PROGRAM_NAME, &f.ca),
            "established" => (PROGRAM_NAME, &f.est),
            "miss" => (PROGRAM_NAME, &f.miss),
            _ => anyhow::bail!(
                "--profile: unknown row {row:?} (reflector, count, cafloor, caparse, floodfloor, floodwarm, floor, pass, ca, established, miss, insert, syn, flood)"
            ),
        };
        let flood = row == "floodwarm";
        dp.set_flood_threshold(u32::from(flood))?;
        let mut prime = 1u32 << 20;
        while std::time::Instant::now() < until {
            if flood {
                // Two distinct SYNs first: past the threshold of 1 in this
                // CPU's window, however long ago the last one opened, so the
                // row's SYN is a flood SYN (else the first of a window would
                // be inserted, and the rest would hit its entry).
                for _ in 0..2 {
                    prime += 1;
                    ns(dp, PROGRAM_NAME, &syn(prime, 50005, VIP), 1)?;
                }
            }
            total += ns(dp, prog, frame, repeat)?;
            runs += 1;
        }
    }
    println!(
        "{row}: {:.1} ns/packet over {runs} runs",
        total / runs as f64
    );
    Ok(())
}

/// Add to row `k` of `r`, for each `(k, prog)`, the mean ns of `prog` over
/// `count` SYNs from new clients to `vip`.
fn syns(
    dp: &mut TestDataPlane,
    r: &mut [f64; ROWS],
    count: u32,
    next: &mut u32,
    progs: &[(usize, &str)],
    port: u16,
    vip: Ipv4Addr,
) -> anyhow::Result<()> {
    for _ in 0..count {
        *next += 1;
        let frame = syn(*next, port, vip);
        for &(k, prog) in progs {
            r[k] += ns(dp, prog, &frame, 1)? / f64::from(count);
        }
    }
    Ok(())
}

/// The rows, in the order they are printed.
const ROWS: usize = 20;

/// One round of every row; SYN rows average `syns` distinct SYNs, each
/// from a client no earlier round used.
fn round(
    dp: &mut TestDataPlane,
    f: &Frames,
    a: &Args,
    next: &mut u32,
) -> anyhow::Result<[f64; ROWS]> {
    let mut r = [0.0; ROWS];
    for (k, (prog, frame)) in [
        (BENCH_REFLECTOR, &f.est),
        (BENCH_LOOKUP, &f.est),
        (PROGRAM_NAME, &f.not_vip),
        (PROGRAM_NAME, &f.ca),
        (PROGRAM_NAME, &f.est),
        (PROGRAM_NAME, &f.miss),
    ]
    .into_iter()
    .enumerate()
    {
        r[k] = ns(dp, prog, frame, a.repeat)?;
    }
    // The reflector, the insert floor and the SYN path on the same SYNs
    // (the floor's table gains what the production table gains).
    let reflect_insert_syn = [(6, BENCH_REFLECTOR), (7, BENCH_INSERT), (8, PROGRAM_NAME)];
    syns(dp, &mut r, a.syns, next, &reflect_insert_syn, 50000, VIP)?;
    // Flood mode: threshold 1, so all but the first SYN of each second
    // are forwarded by the Maglev table without an insert.
    dp.set_flood_threshold(1)?;
    // Its floor on the same SYNs, each right after the real path's run.
    let flood_and_floor = [(9, PROGRAM_NAME), (19, BENCH_FLOOD)];
    syns(dp, &mut r, a.syns, next, &flood_and_floor, 50001, VIP)?;
    // And one flood-mode SYN repeated: the same work with warm caches, as
    // at line rate, where a repeat-1 run pays cold ones (the test run's
    // own system call evicts them).
    r[14] = ns(dp, PROGRAM_NAME, &f.flood_syn, a.repeat)?;
    r[15] = ns(dp, BENCH_COUNT, &f.not_vip, a.repeat)?;
    r[16] = ns(dp, BENCH_CA, &f.ca, a.repeat)?;
    r[17] = ns(dp, BENCH_FLOOD, &f.flood_syn, a.repeat)?;
    r[18] = ns(dp, BENCH_CA_PARSE, &f.ca, a.repeat)?;
    dp.set_flood_threshold(0)?;
    // Routed: established and SYN, IPIP then GUE, at repeat 1.
    for (k, vip) in [IPIP_VIP, GUE_VIP].into_iter().enumerate() {
        for _ in 0..a.syns {
            r[10 + 2 * k] += ns(dp, PROGRAM_NAME, &f.routed_est[k], 1)? / a.syns as f64;
        }
        syns(
            dp,
            &mut r,
            a.syns,
            next,
            &[(11 + 2 * k, PROGRAM_NAME)],
            50002,
            vip,
        )?;
    }
    Ok(r)
}

fn report(a: &Args, rows: [f64; ROWS], flood_syns: u64) {
    let [
        refl,
        floor,
        pass,
        ca,
        est,
        miss,
        refl1,
        insert,
        syn,
        flood,
        ipip_est,
        ipip_syn,
        gue_est,
        gue_syn,
        flood_warm,
        count,
        ca_floor,
        flood_floor,
        ca_parse_floor,
        flood_floor1,
    ] = rows;
    println!(
        "voxlb data plane, BPF_PROG_TEST_RUN, median of {} rounds (repeat {}; SYN: {} distinct flows at repeat 1)",
        a.rounds, a.repeat, a.syns
    );
    println!(
        "flow tables: {} entries per family; flood-mode rows: {flood_syns} SYNs forwarded without an entry",
        a.capacity
    );
    println!(
        "{:<52} {:>10} {:>12} {:>8}",
        "path", "ns/packet", "x reflector", "target"
    );
    let table = |base: f64, rows: &[(&str, f64, &str)]| {
        println!("{:<52} {base:>10.1} {:>12} {:>8}", rows[0].0, "1.00", "");
        for (name, v, target) in &rows[1..] {
            println!("{name:<52} {v:>10.1} {:>12.2} {target:>8}", v / base);
        }
    };
    table(
        refl,
        &[
            ("bare reflector (swap MACs, XDP_TX)", refl, ""),
            ("floor: reflector + filter read + counter record", count, ""),
            ("non-VIP pass (SSH to the LB)", pass, "<= 1.1"),
            (
                "floor: reflector + CA's 4 table reads + counter",
                ca_floor,
                "",
            ),
            (
                "floor: the same + parse to the port (VLANs, IHL)",
                ca_parse_floor,
                "",
            ),
            ("CA VIP (filter, VIP lookup, steering)", ca, "<= 2.0"),
            ("floor: reflector + one IPv4 flow-table hit", floor, ""),
            ("compiler, established (flow-table hit)", est, "<= 2.0"),
            ("compiler, unknown non-SYN (Maglev pick)", miss, ""),
            (
                "floor: reflector + flood SYN's reads, hash, counter",
                flood_floor,
                "",
            ),
            (
                "compiler SYN in flood mode, one SYN repeated",
                flood_warm,
                "<= 2.5",
            ),
        ],
    );
    table(
        refl1,
        &[
            ("bare reflector, repeat 1", refl1, ""),
            ("floor: reflector + flow-table miss + insert", insert, ""),
            (
                "compiler SYN (Maglev pick + flow insert), repeat 1",
                syn,
                "<= 4.0",
            ),
            (
                "floor: reflector + flood SYN's reads, hash, counter",
                flood_floor1,
                "",
            ),
            (
                "compiler SYN in flood mode (no insert), repeat 1",
                flood,
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
        ],
    );
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse()?;
    let mut dp = setup(a.capacity)?;
    let frames = prepare(&mut dp)?;
    if let Some((row, secs)) = &a.profile {
        return profile(&mut dp, &frames, row, *secs, a.repeat);
    }
    let mut v: [Vec<f64>; ROWS] = Default::default();
    let mut next_client = 0u32;
    for _ in 0..a.rounds {
        for (k, x) in round(&mut dp, &frames, &a, &mut next_client)?
            .into_iter()
            .enumerate()
        {
            v[k].push(x);
        }
    }
    let flood = dp.flood_status()?;
    report(&a, v.map(median), flood.flood_syns);
    Ok(())
}
