//! The committed SPIR-V (the fallback for machines without `glslc`) must be what the GLSL
//! sources compile to. `glslc` is installed by `ops/install-test-deps.sh`; without it this test
//! fails rather than pass unchecked.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_spirv_matches_the_shader_sources() {
    let shaders = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let out = std::env::temp_dir().join(format!("aic-spirv-check-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&shaders).unwrap() {
        let source = entry.unwrap().path();
        if source.extension().is_none_or(|e| e != "comp") {
            continue;
        }
        let stem = source.file_stem().unwrap().to_string_lossy().into_owned();
        let compiled = out.join(format!("{stem}.spv"));
        let status = Command::new("glslc")
            .args(["-O", "--target-env=vulkan1.0", "-o"])
            .arg(&compiled)
            .arg(&source)
            .status()
            .expect("glslc is needed to check the committed SPIR-V (run ops/install-test-deps.sh)");
        assert!(status.success(), "glslc failed on {}", source.display());
        let committed = std::fs::read(shaders.join("spirv").join(format!("{stem}.spv")))
            .unwrap_or_else(|e| panic!("no committed SPIR-V for {stem}: {e}"));
        assert!(
            std::fs::read(&compiled).unwrap() == committed,
            "shaders/spirv/{stem}.spv is stale: recompile it from shaders/{stem}.comp"
        );
        checked += 1;
    }
    std::fs::remove_dir_all(&out).ok();
    assert_eq!(checked, 24, "every shader was checked");
}
