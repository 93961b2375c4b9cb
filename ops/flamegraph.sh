#!/usr/bin/env bash
# Profiles one benchmark with perf (DWARF call graphs: release builds keep their unwind tables)
# and draws its flame graph with inferno, beside the folded stacks it was drawn from.
#
#   ops/flamegraph.sh <crate> <bench> <out.svg>      e.g. ops/flamegraph.sh aic-ledger ledger ledger.svg
#
# The bench's own environment variables pass through (AIC_BENCH_IMPORT_MB=256 ops/flamegraph.sh …).
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: ops/flamegraph.sh <crate> <bench> <out.svg>" >&2
  exit 2
fi
crate=$1 bench=$2 out=$3
if ! command -v perf >/dev/null; then
  apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null; then
  cargo install --locked inferno --no-default-features --features cli
fi
binary=$(cargo bench --no-run -p "$crate" --bench "$bench" --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | grep "/$bench-" | tail -1)
if [ -z "$binary" ]; then
  echo "no bench binary $bench in $crate" >&2
  exit 1
fi
perf record -F 999 --call-graph dwarf,16384 -o "$out.data" "$binary" --bench
perf script -i "$out.data" 2>/dev/null | inferno-collapse-perf >"$out.folded"
inferno-flamegraph --minwidth 1 --title "$crate $bench" "$out.folded" >"$out"
rm -f "$out.data"
echo "flame graph: $out (folded stacks: $out.folded)"
