#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# System packages first (lavapipe, the Vulkan loader, glslc, validation layers), then formatting
# and lints (cheap, and they fail fast), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [[ "${CI:-}" == "true" ]]; then
    # A one-shot build gains nothing from incremental caches; they only cost disk and time.
    export CARGO_INCREMENTAL=0
    # When a build dies on a full disk the linker reports a bus error, not "no space left":
    # show how much room the run had so such a failure explains itself.
    trap 'df -h . >&2; du -sh target >&2 2>/dev/null || true' EXIT
fi
ops/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
