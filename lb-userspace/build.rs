//! Builds the XDP objects of lb-ebpf (the load balancer, `lb-ebpf`, and the
//! compiler-side decapsulator, `voxlb-decap`) on nightly and leaves it in OUT_DIR, where
//! `src/object.rs` embeds it. `AYA_BUILD_SKIP=1` skips this (clippy of the
//! userspace crate alone); the binary then refuses to load anything.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../lb-common/src");
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    if skip {
        // An empty object keeps include_bytes! happy; loading it fails clearly.
        std::fs::write(out.join("lb-ebpf"), b"")?;
        std::fs::write(out.join("voxlb-decap"), b"")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: "../lb-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
