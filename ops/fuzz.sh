#!/usr/bin/env bash
# A long fuzzing campaign over every decoder of untrusted bytes (frames, messages, manifests,
# shards, model descriptions, ledger requests and transactions, ledger answers and blocks, Raft
# messages, genesis files): the same proptest harnesses CI runs with 2,000 cases each, here with
# CASES cases each (default 1,000,000). Prints each harness's cases and time.
#   ops/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-1000000}"
export AIC_FUZZ_CASES="$cases"
for target in "aic-protocol fuzz_decoders" "aic-ledger fuzz_decoders"; do
    set -- $target
    echo "fuzzing $1 ($2): $cases cases per decoder"
    start=$(date +%s)
    cargo test --locked -p "$1" --test "$2" -- --test-threads 2
    echo "$1: done in $(( $(date +%s) - start )) s"
done
