//! Builds the test XDP object (lb-testkit-ebpf) on nightly into OUT_DIR,
//! where `src/object.rs` embeds it. `AYA_BUILD_SKIP=1` skips it, as for the
//! production object.
fn main() -> anyhow::Result<()> {
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    if skip {
        std::fs::write(out.join("lb-testkit-ebpf"), b"")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-testkit-ebpf",
            root_dir: "../lb-testkit-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
