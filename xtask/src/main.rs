//! `cargo xtask`: build, run, test, benchmark and demo voxlb.
//!
//! xtask itself depends on nothing that needs the eBPF toolchain, so it
//! builds on a fresh machine and can install that toolchain (`setup`).

mod bench_maglev;
mod deb;
mod setup;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test, benchmark and demo voxlb"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (apt packages, rust-src, bpf-linker, bpffs).
    Setup,
    /// Build the voxlb binary (release), with its embedded XDP object.
    Build,
    /// Build and run the daemon: `cargo xtask run --config FILE`.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Further arguments for `voxlb run` (e.g. --replace).
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Everything: setup, format and lint checks, unit, kernel and end-to-end tests.
    Test {
        /// Skip `setup` (when you know the machine is ready).
        #[arg(long)]
        no_setup: bool,
    },
    /// fmt --check and clippy -D warnings, for userspace and the eBPF crate.
    Lint,
    /// Build the Debian package (target/deb/voxlb_VERSION_ARCH.deb) with dpkg-deb.
    Deb,
    /// The demo in network namespaces (root): live traffic, drain, failure.
    Demo {
        /// Leave it running at the end and print commands to explore it.
        #[arg(long)]
        keep: bool,
        /// Remove what a `--keep` demo left, then exit.
        #[arg(long)]
        cleanup: bool,
    },
    /// Benchmarks: `dataplane`, `maglev`, `change` (control path: one backend-set
    /// change, build to flip), `e2e` (vs HAProxy and nftables), `load` (a slow
    /// compiler: agent run times with voxlb static / load and HAProxy
    /// leastconn), `ha` (failover figures of several LB hosts), or `all`.
    Bench {
        #[arg(default_value = "all")]
        which: String,
        /// Shorter runs (under two minutes in all).
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz the XDP program through BPF_PROG_TEST_RUN (needs root).
    Fuzz {
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// Seed (decimal or 0x-hex); the default is fixed, for reproducible runs.
        #[arg(long, conflicts_with = "random_seed")]
        seed: Option<String>,
        /// A fresh seed (printed, to reproduce a failure).
        #[arg(long)]
        random_seed: bool,
    },
}

/// Print a step header.
pub fn step(msg: &str) {
    println!("\n==> {msg}");
}

/// Run a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root_dir());
    c
}

fn lint() -> Result<()> {
    step("lint: cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("lint: clippy (userspace, all targets)");
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("lint: clippy (eBPF crates, bpfel-unknown-none, panic=abort)");
    run(Command::new("rustup")
        .current_dir(root_dir())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "lb-ebpf",
            "-p",
            "lb-testkit-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", root_dir().join("target/ebpf-lint"))
        .env("RUSTFLAGS", "-C panic=abort")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    Ok(())
}

fn test(no_setup: bool) -> Result<()> {
    if !no_setup {
        setup::setup()?;
    }
    lint()?;
    step("test: build (debug) so the end-to-end tests have the voxlb binary");
    run(cargo().args(["build", "-p", "lb-userspace"]))?;
    // The package test (tests/tests/package.rs) installs this .deb with
    // dpkg, runs it and purges it.
    let deb = deb::build()?;
    step("test: unit, kernel (BPF_PROG_TEST_RUN), end-to-end and package tests");
    let out = run_tee(
        cargo()
            .args(["test", "--no-fail-fast", "--", "--test-threads", "2"])
            .env("VOXLB_BIN", root_dir().join("target/debug/voxlb"))
            .env("VOXLB_DEB", &deb),
    )?;
    fuzz(FUZZ_CI_CASES, None, false)?;
    let t = test_totals(&out);
    // One closing line over every test binary (cargo prints one per binary,
    // the last of which is often an empty doc-test run).
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        t.passed, t.failed, t.skipped
    );
    if running_as_root() && !t.root_skips.is_empty() {
        bail!(
            "{} test(s) that must run as root skipped although this run is root:\n  {}",
            t.root_skips.len(),
            t.root_skips.join("\n  ")
        );
    }
    Ok(())
}

/// What `cargo test` reported over every test binary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    /// Tests that ran and passed (a test that printed a skip marker is not
    /// one of them, though libtest counts it as passed).
    passed: u64,
    failed: u64,
    /// `#[ignore]`d tests plus tests that printed a skip marker.
    skipped: u64,
    /// Skip lines of tests that must run as root (`lb_testkit::skip`).
    root_skips: Vec<String>,
}

/// Sum cargo's `test result: ok. P passed; F failed; I ignored; ...` lines
/// and count the `SKIP: <test>: <why>` markers of lb_testkit::skip (found
/// anywhere in a line: libtest may have half-written a line of its own).
fn test_totals(out: &str) -> Totals {
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let mut markers = 0;
    let mut root_skips = Vec::new();
    for line in out.lines() {
        if let Some(at) = line.find("SKIP: ") {
            markers += 1;
            let marker = &line[at..];
            if marker.contains(": [root] ") {
                root_skips.push(marker.to_owned());
            }
            continue;
        }
        if !line.starts_with("test result:") {
            continue;
        }
        for part in line.split([';', '.']) {
            let mut w = part.split_whitespace();
            if let (Some(n), Some(what)) = (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
            {
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    Totals {
        passed: passed.saturating_sub(markers),
        failed,
        skipped: ignored + markers,
        root_skips,
    }
}

/// Whether xtask runs with effective uid 0 (`Uid:` in /proc/self/status:
/// real, effective, saved, filesystem).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn demo(keep: bool, cleanup: bool) -> Result<()> {
    step("demo: build voxlb, the test backend and the demo (debug)");
    run(cargo().args([
        "build",
        "-p",
        "lb-userspace",
        "-p",
        "voxlb-tests",
        "--bin",
        "voxlb",
        "--bin",
        "voxlb-testd",
        "--bin",
        "voxlb-demo",
    ]))?;
    step("demo: voxlb-demo");
    let debug = root_dir().join("target/debug");
    let mut cmd = Command::new(debug.join("voxlb-demo"));
    cmd.env("VOXLB_BIN", debug.join("voxlb"));
    if keep {
        cmd.arg("--keep");
    }
    if cleanup {
        cmd.arg("--cleanup");
    }
    run(&mut cmd)
}

/// Cases `xtask test` fuzzes (a few seconds; `xtask fuzz` does a million).
const FUZZ_CI_CASES: u64 = 30_000;

/// The fuzzer needs the eBPF object, so it is an example of the dev-only
/// lb-testkit rather than part of xtask. It prints `fuzz: N cases, V invariant
/// violations` and fails when V > 0.
fn fuzz(cases: u64, seed: Option<&str>, random_seed: bool) -> Result<()> {
    step(&format!("fuzz: {cases} cases through BPF_PROG_TEST_RUN"));
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "lb-testkit",
        "--example",
        "fuzz_dataplane",
        "--",
        "--cases",
        &cases.to_string(),
    ]);
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    if random_seed {
        cmd.arg("--random-seed");
    }
    run(&mut cmd)
}

/// A benchmark that is an example of the test kit (it loads the eBPF
/// objects): run it in release, echoing its output, and publish a full run
/// to bench/NAME.md and the README.
fn testkit_bench(name: &str, example: &str, args: &[&str], quick: bool) -> Result<()> {
    let out = run_tee(
        cargo()
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "lb-testkit",
                "--example",
                example,
                "--",
            ])
            .args(args),
    )?;
    if !quick {
        publish(name, &format!("cargo xtask bench {name}"), &out)?;
    }
    Ok(())
}

/// A benchmark binary of the namespace fixtures (`voxlb-tests`): build it in
/// release with the daemon and the test backend it finds next to itself,
/// run it; a full run wrote `bench/NAME.md` itself, which goes into the
/// README.
fn namespace_bench(name: &str, bin: &str, args: &[&str], quick: bool) -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-q",
        "-p",
        "lb-userspace",
        "-p",
        "voxlb-tests",
        "--bins",
    ]))?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "voxlb-tests",
            "--bin",
            bin,
            "--",
        ])
        .args(args))?;
    if !quick {
        embed_in_readme(name)?;
    }
    Ok(())
}

/// Run a command, echoing its stdout as it comes, and return that stdout.
fn run_tee(cmd: &mut Command) -> Result<String> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut all = String::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        all.push_str(&line);
        all.push('\n');
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(all)
}

/// Write a full (not `--quick`) benchmark's output to `bench/NAME.md` and
/// embed that file in the README between its markers.
fn publish(name: &str, command: &str, output: &str) -> Result<()> {
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let text = format!(
        "<!-- generated by `{command}`; do not edit -->\n{when}; `{command}`; load average after: {}\n\n```\n{}```\n",
        load.join(" "),
        output
            .lines()
            .filter(|l| !l.starts_with("==>") && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let dir = root_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.md")), text)?;
    embed_in_readme(name)
}

/// Replace the README's `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`
/// section with the contents of `bench/NAME.md`.
fn embed_in_readme(name: &str) -> Result<()> {
    let readme = root_dir().join("README.md");
    let text = std::fs::read_to_string(&readme)?;
    let body = std::fs::read_to_string(root_dir().join(format!("bench/{name}.md")))?;
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        bail!("README.md has no {open} ... {close} section");
    };
    let new = format!("{}{open}\n{}{}", &text[..a], body, &text[b..]);
    std::fs::write(&readme, new)?;
    println!("  bench/{name}.md written and embedded in README.md");
    Ok(())
}

fn bench(which: &str, quick: bool) -> Result<()> {
    let q: &[&str] = if quick { &["--quick"] } else { &[] };
    let all = which == "all";
    let mut ran = false;
    if all || which == "maglev" {
        step("bench maglev (table build time, balance, disruption)");
        if cfg!(debug_assertions) {
            // Build times only mean something in release: re-run ourselves so.
            let out = run_tee(
                cargo()
                    .args([
                        "run",
                        "--release",
                        "-q",
                        "-p",
                        "xtask",
                        "--",
                        "bench",
                        "maglev",
                    ])
                    .args(q),
            )?;
            if !quick {
                publish("maglev", "cargo xtask bench maglev", &out)?;
            }
        } else {
            bench_maglev::run(quick)?;
        }
        ran = true;
    }
    if all || which == "dataplane" {
        step("bench dataplane (BPF_PROG_TEST_RUN, kernel-measured ns/packet)");
        testkit_bench("dataplane", "bench_dataplane", q, quick)?;
        ran = true;
    }
    if all || which == "change" {
        step("bench change (control path: build + diff + write + flip of one change; needs root)");
        testkit_bench("change", "bench_table_change", q, quick)?;
        ran = true;
    }
    if all || which == "e2e" {
        step("bench e2e (voxlb vs HAProxy vs nftables DNAT, in namespaces; needs root)");
        namespace_bench("e2e", "voxlb-bench-e2e", q, quick)?;
        ran = true;
    }
    if all || which == "load" {
        step(
            "bench load (a slow compiler: agent run times, voxlb static / load vs HAProxy leastconn; needs root)",
        );
        namespace_bench("load", "voxlb-bench-load", q, quick)?;
        ran = true;
    }
    if all || which == "ha" {
        step(
            "bench ha (several LB hosts: failover figures from the namespace tests; needs root, bird, keepalived)",
        );
        // The figures are what tests/tests/ha.rs measures while it proves
        // that no connection is lost; they are printed, never asserted.
        let out = run_tee(cargo().args([
            "test",
            "-q",
            "-p",
            "voxlb-tests",
            "--test",
            "ha",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ]))?;
        let figures: String = out
            .lines()
            // `-q` prints a progress dot before a test's first line.
            .map(|l| l.trim_start_matches('.'))
            .filter(|l| l.starts_with("figure:") || l.starts_with("test "))
            .map(|l| format!("{l}\n"))
            .collect();
        if !quick {
            publish("ha", "cargo xtask bench ha", &figures)?;
        }
        ran = true;
    }
    if !ran {
        bail!("unknown benchmark {which:?}: use dataplane, maglev, change, e2e, load, ha or all");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => setup::setup()
            .and_then(|_| run(cargo().args(["build", "--release", "-p", "lb-userspace"]))),
        Cmd::Run { config, rest } => setup::setup()
            .and_then(|_| run(cargo().args(["build", "--release", "-p", "lb-userspace"])))
            .and_then(|_| {
                run(Command::new(root_dir().join("target/release/voxlb"))
                    .arg("run")
                    .arg("--config")
                    .arg(&config)
                    .args(&rest))
            }),
        Cmd::Test { no_setup } => test(no_setup),
        Cmd::Lint => lint(),
        Cmd::Deb => setup::setup().and_then(|_| deb::build().map(|_| ())),
        Cmd::Demo { keep, cleanup } => setup::setup().and_then(|_| demo(keep, cleanup)),
        Cmd::Bench { which, quick } => bench(&which, quick),
        Cmd::Fuzz {
            cases,
            seed,
            random_seed,
        } => fuzz(cases, seed.as_deref(), random_seed),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Totals, test_totals};

    #[test]
    fn totals_sum_every_test_binary() {
        let out = "running 3 tests\n\
            test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.18s\n\
            test result: FAILED. 2 passed; 1 failed; 4 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
            not a result: 99 passed\n";
        assert_eq!(
            test_totals(out),
            Totals {
                passed: 19,
                failed: 1,
                skipped: 4,
                root_skips: vec![],
            }
        );
    }

    #[test]
    fn a_skip_marker_moves_a_test_from_passed_to_skipped() {
        let out = "running 4 tests\n\
            SKIP: flood::one: [root] needs root: loading BPF programs\n\
            test flood::one ... ok\n\
            test health::v6 ... SKIP: health::v6: no IPv6 loopback here\n\
            ok\n\
            test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.10s\n";
        assert_eq!(
            test_totals(out),
            Totals {
                passed: 2,
                failed: 0,
                skipped: 3,
                root_skips: vec![
                    "SKIP: flood::one: [root] needs root: loading BPF programs".into()
                ],
            }
        );
    }
}
