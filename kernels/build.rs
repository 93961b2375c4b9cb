//! Compiles the GLSL compute shaders in `shaders/` to SPIR-V with Debian's `glslc`. Where `glslc`
//! is absent, the committed `shaders/spirv/*.spv` are used instead (a test checks they match the
//! sources wherever `glslc` is present).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags the committed SPIR-V was built with; keep in step with `tests/spirv.rs`.
const GLSLC_FLAGS: [&str; 2] = ["-O", "--target-env=vulkan1.0"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let shaders = Path::new("shaders");
    println!("cargo:rerun-if-changed=shaders");
    let glslc_works = Command::new("glslc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(shaders)
        .expect("kernels/shaders exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "comp"))
        .collect();
    sources.sort();
    for source in sources {
        let stem = source
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let target = out.join(format!("{stem}.spv"));
        if glslc_works {
            let status = Command::new("glslc")
                .args(GLSLC_FLAGS)
                .arg("-o")
                .arg(&target)
                .arg(&source)
                .status()
                .expect("glslc runs");
            assert!(status.success(), "glslc failed on {}", source.display());
        } else {
            let committed = shaders.join("spirv").join(format!("{stem}.spv"));
            println!(
                "cargo:warning=glslc not found; using the committed {}",
                committed.display()
            );
            std::fs::copy(&committed, &target).unwrap_or_else(|e| panic!("{}: {e}", committed.display()));
        }
    }
}
