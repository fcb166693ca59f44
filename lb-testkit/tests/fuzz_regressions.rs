//! Replays every frame the fuzzer ever saved (`tests/fuzz_regressions.txt`)
//! through BPF_PROG_TEST_RUN, in the fuzzer's world: each must get the
//! verdict and reason the line names, be counted once, and leave the program
//! as the invariants say (untouched, or only its MACs rewritten).
//!
//! Needs root (loading BPF programs).

use lb_common::Reason;
use lb_testkit::fuzz::{Regression, World, action_name, action_of, check_counters};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME};

const FILE: &str = include_str!("fuzz_regressions.txt");

fn regressions() -> Vec<(usize, Regression)> {
    FILE.lines()
        .enumerate()
        .filter_map(|(n, line)| match Regression::parse(line) {
            Ok(r) => r.map(|r| (n + 1, r)),
            Err(e) => panic!("fuzz_regressions.txt:{}: {e}", n + 1),
        })
        .collect()
}

/// Every reason the fuzzer's world can produce: all but `drop_internal`
/// (a table naming an unusable backend id, which the world never installs)
/// and the routed-only reasons (the world forwards by L2).
fn reachable_reasons() -> Vec<Reason> {
    Reason::ALL
        .iter()
        .copied()
        .filter(|r| *r != Reason::DropInternal && !lb_testkit::fuzz::ROUTED_ONLY.contains(r))
        .collect()
}

#[test]
fn the_regression_file_parses_and_covers_every_reachable_reason() {
    // Runs without root: a malformed line or a lost seed fails here, not
    // only in CI.
    let file = regressions();
    let missing: Vec<&str> = reachable_reasons()
        .into_iter()
        .filter(|want| !file.iter().any(|(_, r)| r.reason == *want))
        .map(|r| r.label())
        .collect();
    assert!(missing.is_empty(), "no saved frame for {missing:?}");
}

#[test]
fn saved_fuzz_failures_stay_fixed() {
    lb_testkit::require_root!("loading BPF programs");
    let world = World::standard();
    let mut dp = world.load(4096).expect("load the XDP object");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (line, r) in regressions() {
        replayed += 1;
        let counts = |dp: &voxlb::xdp::XdpDataPlane| -> Vec<u64> {
            dp.reason_stats()
                .unwrap()
                .into_iter()
                .map(|(_, c)| c.packets)
                .collect()
        };
        let before = counts(&dp);
        let out = dp.test_run(PROGRAM_NAME, &r.frame, 1).expect("test_run");
        let delta: Vec<u64> = counts(&dp)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let (exp, mut problems) = world.check(&r.frame, &out);
        problems.extend(check_counters(&exp, out.action, &delta));
        if exp.reason != r.reason {
            problems.push(lb_testkit::fuzz::Violation {
                kind: "model",
                detail: format!(
                    "the model now says {}, the file {}",
                    exp.reason.label(),
                    r.reason.label()
                ),
            });
        }
        if out.action != action_of(r.reason) {
            problems.push(lb_testkit::fuzz::Violation {
                kind: "verdict",
                detail: format!(
                    "action {} want {}",
                    action_name(out.action),
                    action_name(action_of(r.reason))
                ),
            });
        }
        if !problems.is_empty() {
            let list: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.kind, p.detail))
                .collect();
            failures.push(format!("line {line} ({}): {}", r.desc, list.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        replayed >= reachable_reasons().len(),
        "replayed only {replayed} saved frames"
    );
}

#[test]
fn the_checker_catches_a_sabotaged_data_plane() {
    // The fuzzer reporting 0 violations only means something if its checks
    // can fail: run it against maps that disagree with its model.
    use lb_common::{KIND_CA, PROTO_TCP, VipInfo, VipKey};
    use lb_testkit::fuzz::{Generator, VIP4, VIP4_CA};
    use std::collections::BTreeMap;
    lb_testkit::require_root!("loading BPF programs");
    let world = World::standard();
    let mut dp = world.load(4096).expect("load the XDP object");
    let ca = world.vips[&VipKey::new(VIP4_CA.into(), 8140, PROTO_TCP)].service_id;
    // CA traffic to the standby instead of the primary; port 22 of the
    // compiler VIP's address made a VIP the model does not know.
    dp.set_ca_target(ca, 31).unwrap();
    dp.upsert_vip(
        VipKey::new(VIP4.into(), 22, PROTO_TCP),
        VipInfo {
            service_id: ca,
            kind: KIND_CA,
        },
    )
    .unwrap();
    let g = Generator::new(3);
    let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
    for i in g.sweep_len()..g.sweep_len() + 20_000 {
        let case = g.case(i);
        let out = dp.test_run(PROGRAM_NAME, &case.frame, 1).unwrap();
        for v in world.check(&case.frame, &out).1 {
            *kinds.entry(v.kind).or_default() += 1;
        }
    }
    for k in ["backend", "tx-not-vip", "verdict"] {
        assert!(kinds.contains_key(k), "no {k:?} violation found: {kinds:?}");
    }
}
