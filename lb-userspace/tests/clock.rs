//! The data plane's clock, in the real kernel via BPF_PROG_TEST_RUN: flow
//! entries are stamped from jiffies on the line `calibrate_clock` draws
//! (`vx_clock_v2`), which must read as CLOCK_MONOTONIC, the clock userspace
//! ages, drains and reports flows by. A wrong line (a wrong tick, a base
//! off by some ticks) puts the stamps seconds or hours away from it.
//!
//! Needs root (loading BPF programs).

use std::time::Duration;

use lb_common::{FlowKey, PROTO_TCP, addr_bytes, reason::action::XDP_TX};
use lb_testkit::{
    fuzz::{PORT, VIP4, World},
    packet::{Frame, flags},
};
use voxlb::{object::PROGRAM_NAME, retire::monotonic_ns};

/// How far a stamp may trail CLOCK_MONOTONIC: the line runs up to two
/// ticks behind it (see `ClockBase::from_readings`), 20 ms at HZ = 100,
/// the coarsest; and a tick more for the read around it.
const SLACK_NS: u64 = 30_000_000;

fn key(port: u16) -> FlowKey {
    let (src, family) = addr_bytes([198, 51, 100, 7].into());
    let (dst, _) = addr_bytes(VIP4.into());
    FlowKey {
        src,
        dst,
        sport_be: port.to_be(),
        dport_be: PORT.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

#[test]
fn flows_are_stamped_on_clock_monotonic() {
    lb_testkit::require_root!("loading BPF programs");
    let mut dp = World::standard().load(4096).expect("load the world");
    let line = dp.clock().expect("read the clock line");
    assert!(
        [10_000_000, 4_000_000, 3_333_333, 1_000_000].contains(&line.ns_per_jiffy),
        "a standard tick: {line:?}"
    );
    // Stamps over a second and a half, each within a tick or two of
    // CLOCK_MONOTONIC read around it.
    for (i, port) in (41000u16..41004).enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let before = monotonic_ns();
        let syn = Frame::tcp(
            [198, 51, 100, 7].into(),
            port,
            VIP4.into(),
            PORT,
            flags::SYN,
        )
        .build();
        assert_eq!(dp.test_run(PROGRAM_NAME, &syn, 1).unwrap().action, XDP_TX);
        let after = monotonic_ns();
        let v = dp.flow(&key(port)).expect("the SYN made an entry");
        assert!(
            v.created_ns + SLACK_NS >= before && v.created_ns <= after,
            "stamp {} not within [{before} - slack, {after}]",
            v.created_ns
        );
        assert_eq!(v.last_seen_ns, v.created_ns);
    }
}
