//! `cargo xtask setup`: install, idempotently, what a fresh machine of this
//! kind lacks to build and test voxlb. Each step checks first and only acts
//! when something is missing, so running it twice is cheap.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run, step};

/// Debian packages: LLVM 22 for bpf-linker, and the tools the kernel tests,
/// end-to-end tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "haproxy",
    "nftables",
    "wrk",
    "curl",
    "tmux",
    // Several LB hosts (tests/tests/ha.rs): BGP through BIRD 2, VRRP
    // through keepalived. Tests run their own instances in namespaces.
    "bird2",
    "keepalived",
];

/// Services the packages above start on install: the tests run their own
/// instances, a system-wide one would only get in the way (and announce).
const STOP_SERVICES: &[&str] = &["bird", "keepalived"];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn have_deb(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn setup() -> Result<()> {
    step("setup: checking what this machine lacks");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have_deb(p))
        .collect();
    if missing.is_empty() {
        println!("  apt packages: all present");
    } else {
        println!("  apt packages missing: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))?;
        for svc in STOP_SERVICES {
            // Best effort: without systemd the package did not start it.
            let _ = Command::new("systemctl")
                .args(["disable", "--now", svc])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    let toolchains = String::from_utf8(
        Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .context("running rustup")?
            .stdout,
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("  nightly toolchain missing: installing (builds the eBPF object)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = String::from_utf8(
        Command::new("rustup")
            .args(["component", "list", "--toolchain", "nightly", "--installed"])
            .output()?
            .stdout,
    )?;
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        println!("  rust-src for nightly missing: installing (-Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    } else {
        println!("  nightly rust-src: present");
    }
    let stable = String::from_utf8(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .output()?
            .stdout,
    )?;
    for comp in ["clippy", "rustfmt"] {
        if !stable.lines().any(|l| l.starts_with(comp)) {
            run(Command::new("rustup").args(["component", "add", comp]))?;
        }
    }
    if !comps.lines().any(|l| l.starts_with("clippy")) {
        // Lints of the eBPF crate run on nightly.
        let _ = run(Command::new("rustup").args([
            "component",
            "add",
            "clippy",
            "--toolchain",
            "nightly",
        ]));
    }

    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if linker_ok {
        println!("  bpf-linker {BPF_LINKER_VERSION}: present");
    } else {
        println!(
            "  bpf-linker {BPF_LINKER_VERSION} missing: building it against LLVM 22 (about a minute)"
        );
        run(Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--version",
                BPF_LINKER_VERSION,
            ]))?;
    }

    ensure_bpffs()?;
    println!("  setup: done");
    Ok(())
}

/// The daemon pins maps under /sys/fs/bpf: it must be a BPF filesystem.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        println!("  bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    println!("  bpffs not mounted: mounting it at /sys/fs/bpf");
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !st.success() {
        bail!("could not mount bpffs at /sys/fs/bpf (are you root?)");
    }
    Ok(())
}
