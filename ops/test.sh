#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# System packages first (lavapipe, the Vulkan loader, glslc, validation layers), then formatting
# and lints (cheap, and they fail fast), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
ops/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
