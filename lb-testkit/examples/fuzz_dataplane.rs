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
    ops::Range,
    process::ExitCode,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use lb_common::Reason;
use lb_testkit::fuzz::{
    Case, Generator, ModelFlows, Regression, Rng, Violation, World, check_counters, flow_case,
};
use lb_testkit::harness::TestDataPlane;
use voxlb::{dataplane::DataPlane, object::PROGRAM_NAME, xdp::XdpDataPlane};

/// Default seed: fixed, so CI runs the same cases every time.
const DEFAULT_SEED: u64 = 0x766f_786c_0007;
const BATCH: u64 = 64;
/// Violations printed and saved per run (the rest are only counted).
const KEEP: usize = 20;
/// Small enough that random SYNs keep the LRU evicting.
const FLOW_CAPACITY: u32 = 4096;
/// The changing-world phase's flow table: far more room than its flows
/// need, so the kernel never evicts and the model's copy stays exact.
const CHANGING_FLOW_CAPACITY: u32 = 1 << 17;
/// One case in this many runs in the changing world.
const CHANGING_SHARE: u64 = 10;
/// Cases between two world changes.
const CHANGE_EVERY: u64 = 16;

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
        return run_one(&world, &mut dp, &generator, i);
    }

    let changing = changing_world(&a)?;
    let fixed = fixed_world(&a, &world, &mut dp, &generator)?;
    report(&a, &world, &generator, &fixed);
    if a.save && !fixed.tally.found.is_empty() {
        save_regressions(&a, &fixed.tally.found)?;
    }
    let violations = fixed.tally.violations + changing.violations;
    println!(
        "fuzz: {} cases, {} invariant violations",
        a.cases + changing_cases(&a),
        violations
    );
    Ok(violations == 0)
}

/// `--only I`: case I alone, with what the model and the counters say.
fn run_one(world: &World, dp: &mut TestDataPlane, generator: &Generator, i: u64) -> Result<bool> {
    let case = generator.case(i);
    let before = counters(dp)?;
    let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
    let delta: Vec<u64> = counters(dp)?
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
    Ok(v.is_empty())
}

/// What the run in the fixed world saw.
struct FixedRun {
    tally: Tally,
    by_class: BTreeMap<String, u64>,
    /// Packets per reason, as the kernel counted them.
    by_reason: Vec<u64>,
    secs: f64,
}

/// The generator's cases in the world as it is, in batches whose reason
/// counters are checked against the model's predictions.
fn fixed_world(
    a: &Args,
    world: &World,
    dp: &mut TestDataPlane,
    generator: &Generator,
) -> Result<FixedRun> {
    let started = Instant::now();
    let mut t = Tally::default();
    let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_reason = vec![0u64; Reason::ALL.len()];
    let mut next_report = Instant::now();
    let mut start = 0;
    while start < a.cases {
        let end = (start + BATCH).min(a.cases);
        let before = counters(dp)?;
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
        let after = counters(dp)?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        for (t, d) in by_reason.iter_mut().zip(&delta) {
            *t += d;
        }
        if delta != predicted {
            pin_counter_mismatch(world, dp, &batch, start..end, &delta, &predicted, &mut t)?;
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
    Ok(FixedRun {
        tally: t,
        by_class,
        by_reason,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// A batch whose counters differ from the model's: find the cases whose
/// counting differs, one at a time (the world is fixed, so a re-run takes
/// the same path), or record the batch as a whole.
fn pin_counter_mismatch(
    world: &World,
    dp: &mut TestDataPlane,
    batch: &[Case],
    cases: Range<u64>,
    delta: &[u64],
    predicted: &[u64],
    t: &mut Tally,
) -> Result<()> {
    let (start, end) = (cases.start, cases.end);
    let mut pinned = false;
    for (case, i) in batch.iter().zip(cases) {
        let b = counters(dp)?;
        let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
        let d: Vec<u64> = counters(dp)?.iter().zip(&b).map(|(a, b)| a - b).collect();
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
                detail: format!("batch {start}..{end}: counters {delta:?}, model {predicted:?}"),
            }],
        );
    }
    Ok(())
}

/// What the fixed-world run covered and what it found.
fn report(a: &Args, world: &World, generator: &Generator, run: &FixedRun) {
    let frags_tracked = world.fragments_tracked();
    println!(
        "fuzz: {} sweep cases (every base frame cut at every byte), then random mutations",
        generator.sweep_len().min(a.cases)
    );
    println!(
        "fuzz: {:.1} s, {:.0} cases/s",
        run.secs,
        a.cases as f64 / run.secs.max(1e-9)
    );
    println!(
        "fuzz: {frags_tracked} fragmented datagrams recorded by first fragments (later ones checked against them)"
    );
    println!("fuzz: cases per input class:");
    for (c, n) in &run.by_class {
        println!("  {c:<12} {n:>9}");
    }
    println!("fuzz: outcomes (kernel reason counters):");
    for r in Reason::ALL {
        println!("  {:<20} {:>9}", r.label(), run.by_reason[*r as usize]);
    }
    for f in &run.tally.found {
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
    if !run.tally.by_kind.is_empty() {
        println!("fuzz: violations by kind: {:?}", run.tally.by_kind);
    }
}

/// Appends the failing inputs to `tests/fuzz_regressions.txt`.
fn save_regressions(a: &Args, found: &[Found]) -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions.txt");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    for f in found {
        let r = Regression {
            reason: f.want,
            frame: f.case.frame.clone(),
            desc: format!("seed {:#x} case {}: {}", a.seed, f.index, f.case.desc),
        };
        writeln!(file, "{}", r.to_line())?;
    }
    println!("fuzz: {} failing input(s) saved to {path}", found.len());
    Ok(())
}

fn changing_cases(a: &Args) -> u64 {
    a.cases / CHANGING_SHARE
}

/// The changing world: the standard world on fresh maps, changed every
/// [`CHANGE_EVERY`] cases (drain, down, return, removal, id reuse,
/// re-weighting, each a table flip), with traffic that keeps coming back to
/// the same flows (plus ordinary fuzz cases), each checked against the
/// model's prediction from its own copy of the flow table. Failures are
/// reported with the changes that led to them, not saved: a frame alone does
/// not replay them.
fn changing_world(a: &Args) -> Result<Tally> {
    let cases = changing_cases(a);
    let mut t = Tally::default();
    if cases == 0 || a.only.is_some() {
        return Ok(t);
    }
    let started = Instant::now();
    let mut world = World::standard();
    let mut dp = world
        .load(CHANGING_FLOW_CAPACITY)
        .context("loading the XDP object (needs root)")?;
    let mut flows = ModelFlows::new();
    let mut r = Rng::new(a.seed ^ 0x6368_616e_6765);
    let generator = Generator::new(a.seed ^ 1);
    let mut changes: Vec<String> = Vec::new();
    let mut by_reason = vec![0u64; Reason::ALL.len()];
    // Established-flow decisions whose backend is no longer in the table
    // (drained, or the table moved it): what only a flow table explains.
    let (mut hits, mut kept) = (0u64, 0u64);
    for i in 0..cases {
        if i % CHANGE_EVERY == CHANGE_EVERY - 1 {
            changes.push(world.change(&mut r, &mut *dp)?);
        }
        let case = if r.chance(80) {
            flow_case(&mut r)
        } else {
            generator.case(r.next_u64() % 1_000_000)
        };
        let before = counters(&dp)?;
        let out = dp.test_run(PROGRAM_NAME, &case.frame, 1)?;
        let delta: Vec<u64> = counters(&dp)?
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let exp = world.step(&case.frame, &mut flows);
        if exp.established {
            hits += 1;
            if exp.backend.is_some_and(|b| !world.in_table(b)) {
                kept += 1;
            }
        }
        by_reason[exp.reason as usize] += 1;
        let mut v = world.verify(&case.frame, &out, &exp);
        v.extend(check_counters(&exp, out.action, &delta));
        if !v.is_empty() {
            let recent = changes.len().saturating_sub(4);
            let case = Case {
                desc: format!(
                    "{} (after {} changes, last: {})",
                    case.desc,
                    changes.len(),
                    changes[recent..].join("; ")
                ),
                ..case
            };
            t.record(i, &case, exp.reason, v);
        }
    }
    println!(
        "fuzz: changing world: {cases} cases, {} changes, {} flows tracked, {hits} decided by the flow table ({kept} to a backend the table no longer picks), {:.1} s",
        changes.len(),
        flows.len(),
        started.elapsed().as_secs_f64()
    );
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &changes {
        *kinds.entry(c.split(' ').next().unwrap_or("")).or_default() += 1;
    }
    println!("fuzz: changing world: changes by kind {kinds:?}");
    println!("fuzz: changing world: outcomes (model):");
    for r in Reason::ALL {
        if by_reason[*r as usize] > 0 {
            println!("  {:<20} {:>9}", r.label(), by_reason[*r as usize]);
        }
    }
    for f in &t.found {
        println!(
            "VIOLATION changing-world case {} ({}): model {}\n  frame {}",
            f.index,
            f.case.desc,
            f.want.label(),
            hex(&f.case.frame)
        );
        for p in &f.problems {
            println!("  {}: {}", p.kind, p.detail);
        }
    }
    Ok(t)
}

trait VerdictName {
    fn verdict_name(&self) -> &'static str;
}

impl VerdictName for Reason {
    fn verdict_name(&self) -> &'static str {
        lb_testkit::fuzz::action_name(lb_testkit::fuzz::action_of(*self))
    }
}
