//! `cargo xtask bench maglev`: what a Maglev table costs to build and how well
//! it balances and holds still, for the sizes the daemon uses.
//!
//! Times are only meaningful in release (`cargo xtask` runs a debug build;
//! use `cargo run -p xtask --release -- bench maglev`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::Context;
use lb_common::maglev::{self, Entry};

/// `n` backends 10.x.y.z with the given weights (value = position).
fn backends(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
            Entry::from_addr(IpAddr::V4(ip), weight(i), i as u32)
        })
        .collect()
}

/// Median build time over `repeats` builds, and the table.
fn timed_build(e: &[Entry], m: u32, repeats: usize) -> anyhow::Result<(Duration, Vec<u32>)> {
    let mut times = Vec::with_capacity(repeats);
    let mut table = Vec::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        table = maglev::build(e, m)?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], table))
}

/// Largest and smallest share over the weight-proportional ideal.
fn balance(e: &[Entry], table: &[u32]) -> (f64, f64) {
    let mut count = vec![0u64; e.len()];
    for &v in table {
        count[v as usize] += 1;
    }
    let total: u64 = e.iter().map(|x| x.weight as u64).sum();
    let ratios = e.iter().zip(&count).map(|(x, &c)| {
        let ideal = table.len() as f64 * x.weight as f64 / total as f64;
        c as f64 / ideal
    });
    ratios.fold((0f64, f64::MAX), |(hi, lo), r| (hi.max(r), lo.min(r)))
}

struct Row {
    label: &'static str,
    n: usize,
    m: u32,
    build: Duration,
    max_ratio: f64,
    min_ratio: f64,
    /// Removing one backend (ideal: its share, 1/N for equal weights).
    remove: Moves,
    /// Adding one of weight 1 (ideal: its new share, 1/(N+1) if equal).
    add: Moves,
}

/// Worst case over `probes` changes: (moved, ideal, extra) where moved is the
/// fraction of slots rewritten, ideal the changed backend's own share, and
/// extra = moved - ideal, the slots moved between backends that stayed.
type Moves = (f64, f64, f64);

fn worst(acc: &mut Option<Moves>, moved: f64, own: f64) {
    if acc.is_none_or(|a| moved - own > a.2) {
        *acc = Some((moved, own, moved - own));
    }
}

fn share(table: &[u32], value: u32) -> f64 {
    table.iter().filter(|&&v| v == value).count() as f64 / table.len() as f64
}

/// Remove `probes` backends spread over the set, one at a time; then add
/// `probes` new backends (addresses outside the set), one at a time.
fn disruption(e: &[Entry], m: u32, full: &[u32], probes: usize) -> anyhow::Result<(Moves, Moves)> {
    let (mut remove, mut add) = (None, None);
    let step = (e.len() / probes).max(1);
    for gone in (0..e.len()).step_by(step).take(probes) {
        let mut fewer = e.to_vec();
        fewer.remove(gone);
        let t = maglev::build(&fewer, m)?;
        let moved = maglev::diff(full, &t).len() as f64 / m as f64;
        worst(&mut remove, moved, share(full, gone as u32));
    }
    for k in 0..probes {
        let mut more = e.to_vec();
        let ip = Ipv4Addr::new(10, 255, k as u8, 1);
        more.push(Entry::from_addr(IpAddr::V4(ip), 1, e.len() as u32));
        if maglev::validate_size(m, more.len()).is_err() {
            break;
        }
        let t = maglev::build(&more, m)?;
        let moved = maglev::diff(full, &t).len() as f64 / m as f64;
        worst(&mut add, moved, share(&t, e.len() as u32));
    }
    let none = (f64::NAN, f64::NAN, f64::NAN);
    Ok((remove.unwrap_or(none), add.unwrap_or(none)))
}

const STRESS: &str = "one 10^6";

pub fn run(quick: bool) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: debug build; for real times run `cargo run -p xtask --release -- bench maglev`"
        );
    }
    let (repeats, probes) = if quick { (1, 2) } else { (5, 8) };
    let sizes: &[u32] = if quick { &[65537] } else { &[65537, 655373] };
    type Weights = fn(usize) -> u32;
    // The last case is a stress test of the scheduler (one backend holds
    // nearly all weight): its light backends' ideal is under one slot, so
    // it is left out of the worst balance.
    let cases: &[(&str, usize, Weights)] = &[
        ("equal", 10, |_| 1),
        ("equal", 100, |_| 1),
        ("equal", 1000, |_| 1),
        ("1..4", 100, |i| 1 + (i % 4) as u32),
        (STRESS, 1000, |i| if i == 0 { 1_000_000 } else { 1 }),
    ];

    println!(
        "{:<9} {:>5} {:>7} {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7}",
        "weights",
        "N",
        "M",
        "build ms",
        "max/ideal",
        "min/ideal",
        "rm moved",
        "ideal",
        "extra",
        "add mvd",
        "ideal",
        "extra"
    );
    let mut rows = Vec::new();
    for &m in sizes {
        for &(label, n, weight) in cases {
            if quick && n > 100 {
                continue;
            }
            let e = backends(n, weight);
            if let Err(err) = maglev::validate_size(m, n) {
                println!("{label:<9} {n:>5} {m:>7}  refused: {err}");
                continue;
            }
            let (build, table) =
                timed_build(&e, m, repeats).with_context(|| format!("N={n} M={m}"))?;
            let (max_ratio, min_ratio) = balance(&e, &table);
            let (remove, add) = disruption(&e, m, &table, probes)?;
            let row = Row {
                label,
                n,
                m,
                build,
                max_ratio,
                min_ratio,
                remove,
                add,
            };
            print_row(&row);
            rows.push(row);
        }
    }

    let balanced = || rows.iter().filter(|r| r.label != STRESS);
    let hi = balanced().map(|r| r.max_ratio).fold(0f64, f64::max);
    let lo = balanced().map(|r| r.min_ratio).fold(f64::MAX, f64::min);
    println!();
    println!("worst balance (all but {STRESS:?}): max/ideal {hi:.4}, min/ideal {lo:.4}");
    println!(
        "moved = fraction of slots rewritten; ideal = the removed (added) backend's own \
         share, 1/N (1/(N+1)) for equal weights; extra = moved - ideal, worst of {probes} \
         removals (additions); build ms = median of {repeats}"
    );
    Ok(())
}

fn print_row(r: &Row) {
    let pct = |x: f64| format!("{:.3}%", x * 100.0);
    println!(
        "{:<9} {:>5} {:>7} {:>9.2} | {:>9.4} {:>9.4} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7}",
        r.label,
        r.n,
        r.m,
        r.build.as_secs_f64() * 1000.0,
        r.max_ratio,
        r.min_ratio,
        pct(r.remove.0),
        pct(r.remove.1),
        pct(r.remove.2),
        pct(r.add.0),
        pct(r.add.1),
        pct(r.add.2),
    );
}
