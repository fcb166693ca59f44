//! The data plane's clock line (`vx_clock_v2`, [`ClockBase`]): fitted
//! through readings of `voxlb_clock`, which returns jiffies and the coarse
//! CLOCK_MONOTONIC of one instant, so that the packet path stamps flows
//! with an inlined jiffies load instead of a clock helper call.

use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};

use super::*;

/// One reading of (jiffies, CLOCK_MONOTONIC coarse ns).
fn reading(prog: &mut Xdp) -> Result<(u64, u64)> {
    let frame = [0u8; 64];
    let mut out = [0u8; 64 + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    prog.test_run(opts).map_err(other)?;
    let word = |i: usize| u64::from_ne_bytes(out[i..i + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(8)))
}

/// Draw the clock line and write it into `vx_clock_v2`, unless the line
/// already there (pinned by an earlier run of this boot) still holds: a
/// packet must never read a line half rewritten. Called before the packet
/// path is attached.
pub fn calibrate_clock(ebpf: &mut Ebpf) -> Result<ClockBase> {
    let prog: &mut Xdp = loader::program(ebpf, names::CLOCK_PROGRAM)?;
    prog.load().map_err(other)?;
    // Readings every few ms over at least 100 ms (ten ticks at HZ = 100),
    // bounded: a line fitted through many, not drawn through two.
    let start = Instant::now();
    let first = reading(prog)?;
    let (mut readings, mut last) = (vec![first], first);
    while (start.elapsed() < Duration::from_millis(100) || last.0 < first.0 + 2)
        && start.elapsed() <= Duration::from_millis(500)
    {
        std::thread::sleep(Duration::from_millis(4));
        last = reading(prog)?;
        readings.push(last);
    }
    let line = ClockBase::from_readings(&readings)
        .ok_or_else(|| other("clock: jiffies did not advance in 500 ms"))?;
    let map = ebpf
        .map_mut(names::CLOCK)
        .ok_or_else(|| other(format!("map {} missing from the object", names::CLOCK)))?;
    let mut arr: Array<&mut MapData, ClockBase> =
        Array::try_from(map).map_err(map_err(names::CLOCK))?;
    let have = arr.get(&0, 0).map_err(map_err(names::CLOCK))?;
    let tick = line.ns_per_jiffy;
    if have.ns_per_jiffy == tick && have.ns_at(last.0).abs_diff(last.1) <= 2 * tick {
        return Ok(have);
    }
    arr.set(0, line, 0).map_err(map_err(names::CLOCK))?;
    info!(
        ns_per_jiffy = tick,
        "data-plane clock: jiffies on CLOCK_MONOTONIC"
    );
    Ok(line)
}
