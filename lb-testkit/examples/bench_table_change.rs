//! `cargo xtask bench change`: what one backend-set change costs the control
//! path from start to finish, for 10, 100 and 1000 compilers at 65 537 and
//! 655 373 slots: build the new Maglev table, diff it against the copy
//! packets are not reading, write the changed slots (plain stores into the
//! memory-mapped array, no syscall per slot), and flip the active index.
//!
//! The change is a health event: one compiler goes down, then comes back,
//! alternately for different compilers; each timed change is one of those.
//! Also: the first install of a table (every slot written), and a service
//! the change does not touch (the table memo compares its input and reuses
//! the table: no build, and `apply` writes nothing for it).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use lb_common::maglev::{self, Entry};
use lb_testkit::harness::TestDataPlane;
use voxlb::{dataplane::DataPlane, tables};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let changes = if quick { 4 } else { 10 };
    let mut dp = TestDataPlane::load(1024)?;
    println!(
        "voxlb control path: one backend-set change, build + diff + write + flip (median of {changes} changes; release build)"
    );
    println!(
        "{:>6} {:>8} {:>14} {:>10} {:>17} {:>14} {:>14} {:>16}",
        "N",
        "slots",
        "first install",
        "build",
        "diff+write+flip",
        "whole change",
        "slots written",
        "untouched svc"
    );
    let mut sid = 0u32;
    for m in [65537u32, 655373] {
        for n in [10usize, 100, 1000] {
            let all: Vec<Entry> = (0..n)
                .map(|i| {
                    let ip = Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8);
                    Entry::from_addr(IpAddr::V4(ip), 100, i as u32)
                })
                .collect();
            let t0 = Instant::now();
            let table = match maglev::build(&all, m) {
                Ok(t) => t,
                Err(e) => {
                    println!("{n:>6} {m:>8}  refused: {e}");
                    continue;
                }
            };
            dp.install_table(sid, &table)?;
            let first = t0.elapsed();
            // The other copy gets its first full write too, so that every
            // timed change below diffs against a real previous table.
            dp.install_table(sid, &table)?;
            let mut history = vec![table.clone(), table];
            let (mut build, mut write, mut whole, mut written) = (vec![], vec![], vec![], vec![]);
            for c in 0..changes {
                // Down on even changes, back up on odd ones.
                let down = (c / 2 * 37) % n;
                let entries: Vec<Entry> = if c % 2 == 0 {
                    all.iter()
                        .filter(|e| e.value != down as u32)
                        .copied()
                        .collect()
                } else {
                    all.clone()
                };
                let t0 = Instant::now();
                let table = maglev::build(&entries, m).map_err(|e| anyhow::anyhow!("{e}"))?;
                let t1 = Instant::now();
                dp.install_table(sid, &table)?;
                let t2 = Instant::now();
                build.push(t1 - t0);
                write.push(t2 - t1);
                whole.push(t2 - t0);
                // The copy written was the one active two changes ago.
                let prev = &history[history.len() - 2];
                written.push(table.iter().zip(prev).filter(|(a, b)| a != b).count());
                history.push(table);
            }
            // A service this change does not touch: the memo serves its table.
            let name = format!("bench-untouched-{sid}");
            tables::build(&name, &all, m).map_err(|e| anyhow::anyhow!("{e}"))?;
            let t0 = Instant::now();
            let again = tables::build(&name, &all, m).map_err(|e| anyhow::anyhow!("{e}"))?;
            let same = again == history[0];
            let untouched = t0.elapsed();
            anyhow::ensure!(same, "memo returned another table");
            written.sort_unstable();
            println!(
                "{n:>6} {m:>8} {:>11} ms {:>7} ms {:>14} ms {:>11} ms {:>14} {:>13} ms",
                ms(first),
                ms(median(build)),
                ms(median(write)),
                ms(median(whole)),
                written[written.len() / 2],
                ms(untouched),
            );
            sid += 1;
        }
    }
    println!("target: whole change < 50 ms for 1000 compilers at 655373 slots");
    Ok(())
}
