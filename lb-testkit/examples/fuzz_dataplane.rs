//! `cargo xtask fuzz`: structure-aware fuzzing of the XDP program through
//! BPF_PROG_TEST_RUN, against the real object (see `lb_testkit::fuzz`).
//!
//! ```text
//! fuzz_dataplane [--cases N] [--seed S | --random-seed] [--only I] [--no-save]
//! ```
//! Every case is checked against the reference model and the data plane's
//! rules; reason counters are read per batch of cases and, when a batch does
//! not add up, per case. Failing inputs are appended to
//! `tests/fuzz_regressions.txt`, which `tests/fuzz_regressions.rs` replays.
//! Exit status 1 when any invariant broke.

use std::{
    collections::BTreeMap,
    io::Write,
    process::ExitCode,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use lb_common::Reason;
use lb_testkit::fuzz::{Case, Generator, Regression, Violation, World, check_counters};
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME, xdp::XdpDataPlane};

/// Default seed: fixed, so CI runs the same cases every time.
const DEFAULT_SEED: u64 = 0x766f_786c_0007;
const BATCH: u64 = 64;
/// Violations printed and saved per run (the rest are only counted).
const KEEP: usize = 20;
/// Small enough that random SYNs keep the LRU evicting.
const FLOW_CAPACITY: u32 = 4096;

struct Args {
    cases: u64,
    seed: u64,
    only: Option<u64>,
    save: bool,
}

fn parse_u64(s: &str) -> Result<u64> {
    let s = s.replace('_', "");
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .with_context(|| format!("not a number: {s:?}"))
}

fn args() -> Result<Args> {
    let mut a = Args {
        cases: 1_000_000,
        seed: DEFAULT_SEED,
        only: None,
        save: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--cases" => a.cases = parse_u64(&value()?)?,
            "--seed" => a.seed = parse_u64(&value()?)?,
            "--random-seed" => {
                let t = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                a.seed = (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
            }
            "--only" => a.only = Some(parse_u64(&value()?)?),
            "--no-save" => a.save = false,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn counters(dp: &XdpDataPlane) -> Result<Vec<u64>> {
    Ok(dp
        .reason_stats()?
        .into_iter()
        .map(|(_, c)| c.packets)
        .collect())
}

struct Found {
    index: u64,
    case: Case,
    want: Reason,
    problems: Vec<Violation>,
}

/// Violations seen: all counted, the first [`KEEP`] kept whole.
#[derive(Default)]
struct Tally {
    violations: u64,
    by_kind: BTreeMap<&'static str, u64>,
    found: Vec<Found>,
}

impl Tally {
    fn record(&mut self, index: u64, case: &Case, want: Reason, problems: Vec<Violation>) {
        self.violations += 1;
        for p in &problems {
            *self.by_kind.entry(p.kind).or_default() += 1;
        }
        if self.found.len() < KEEP {
            self.found.push(Found {
                index,
                case: case.clone(),
                want,
                problems,
            });
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let a = args()?;
    let world = World::standard();
    let mut dp = world
        .load(FLOW_CAPACITY)
        .context("loading the XDP object (needs root)")?;
    let generator = Generator::new(a.seed);
    println!(
        "fuzz: seed {:#x} (reproduce: cargo xtask fuzz --cases {} --seed {:#x})",
        a.seed, a.cases, a.seed
    );

    if let Some(i) = a.only {
        let case = generator.case(i);
        let before = counters(&dp)?;
        let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
        let delta: Vec<u64> = counters(&dp)?
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let (exp, mut v) = world.check(&case.frame, &out);
        v.extend(check_counters(&exp, out.action, &delta));
        println!("case {i}: {}\n  frame {}", case.desc, hex(&case.frame));
        println!(
            "  action {} model {:?}; {} violation(s)",
            out.action,
            exp,
            v.len()
        );
        for x in &v {
            println!("  {}: {}", x.kind, x.detail);
        }
        return Ok(v.is_empty());
    }

    let started = Instant::now();
    let mut t = Tally::default();
    let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_reason = vec![0u64; Reason::ALL.len()];
    let mut next_report = Instant::now();
    let mut start = 0;
    while start < a.cases {
        let end = (start + BATCH).min(a.cases);
        let before = counters(&dp)?;
        let mut predicted = vec![0u64; Reason::ALL.len()];
        let mut batch = Vec::with_capacity(BATCH as usize);
        for i in start..end {
            let case = generator.case(i);
            let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
            let (exp, v) = world.check(&case.frame, &out);
            predicted[exp.reason as usize] += 1;
            *by_class.entry(format!("{:?}", case.class)).or_default() += 1;
            if !v.is_empty() {
                t.record(i, &case, exp.reason, v);
            }
            batch.push(case);
        }
        let after = counters(&dp)?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        for (t, d) in by_reason.iter_mut().zip(&delta) {
            *t += d;
        }
        if delta != predicted {
            // Find the cases whose counting differs, one at a time. The world
            // is static, so a re-run takes the same path.
            let mut pinned = false;
            for (case, i) in batch.iter().zip(start..end) {
                let b = counters(&dp)?;
                let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
                let d: Vec<u64> = counters(&dp)?.iter().zip(&b).map(|(a, b)| a - b).collect();
                let exp = world.expect(&case.frame);
                let v = check_counters(&exp, out.action, &d);
                if !v.is_empty() {
                    pinned = true;
                    t.record(i, case, exp.reason, v);
                }
            }
            if !pinned {
                t.record(
                    start,
                    &batch[0],
                    world.expect(&batch[0].frame).reason,
                    vec![Violation {
                        kind: "counters",
                        detail: format!(
                            "batch {start}..{end}: counters {delta:?}, model {predicted:?}"
                        ),
                    }],
                );
            }
        }
        start = end;
        if next_report.elapsed().as_secs() >= 10 {
            next_report = Instant::now();
            eprintln!(
                "fuzz: {start} cases, {} violations, {:.0} cases/s",
                t.violations,
                start as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();

    println!(
        "fuzz: {} sweep cases (every base frame cut at every byte), then random mutations",
        generator.sweep_len().min(a.cases)
    );
    println!(
        "fuzz: {:.1} s, {:.0} cases/s",
        secs,
        a.cases as f64 / secs.max(1e-9)
    );
    println!("fuzz: cases per input class:");
    for (c, n) in &by_class {
        println!("  {c:<12} {n:>9}");
    }
    println!("fuzz: outcomes (kernel reason counters):");
    for r in Reason::ALL {
        println!("  {:<20} {:>9}", r.label(), by_reason[*r as usize]);
    }
    for f in &t.found {
        println!(
            "VIOLATION case {} ({}): model {} ({})\n  frame {}",
            f.index,
            f.case.desc,
            f.want.label(),
            f.want.verdict_name(),
            hex(&f.case.frame)
        );
        for p in &f.problems {
            println!("  {}: {}", p.kind, p.detail);
        }
    }
    if !t.by_kind.is_empty() {
        println!("fuzz: violations by kind: {:?}", t.by_kind);
    }
    if a.save && !t.found.is_empty() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions.txt");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        for f in &t.found {
            let r = Regression {
                reason: f.want,
                frame: f.case.frame.clone(),
                desc: format!("seed {:#x} case {}: {}", a.seed, f.index, f.case.desc),
            };
            writeln!(file, "{}", r.to_line())?;
        }
        println!("fuzz: {} failing input(s) saved to {path}", t.found.len());
    }
    println!(
        "fuzz: {} cases, {} invariant violations",
        a.cases, t.violations
    );
    Ok(t.violations == 0)
}

trait VerdictName {
    fn verdict_name(&self) -> &'static str;
}

impl VerdictName for Reason {
    fn verdict_name(&self) -> &'static str {
        lb_testkit::fuzz::action_name(lb_testkit::fuzz::action_of(*self))
    }
}
