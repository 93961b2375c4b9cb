#!/usr/bin/env bash
# A soak: a devnet of processes under continuous work for a given time — training jobs,
# transfers, dataset imports, and a service restarted (as a supervisor would) every cycle — with
# each process's memory and open file descriptors sampled, log and disk growth measured, and
# every failed command counted. Prints a report at the end: memory per process at the start and
# end with its slope (least squares over the samples, MiB per hour), descriptors, growth, errors.
#   ops/soak.sh [MINUTES] [DATA_DIR]     (default 30 minutes, a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
dir="${2:-$(mktemp -d -t aic-soak-XXXXXX)}"
cargo build --locked -q -p aic-cli
mkdir -p "$dir"
# A copy of its own: the devnet restarts services with the binary it runs from, and a build in
# the checkout meanwhile replaces target/debug/aic (for a moment it is not there at all).
cp target/debug/aic "$dir/aic"
aic="$dir/aic"
samples="$dir/soak-samples.csv"
errors="$dir/soak-errors.log"
: > "$errors"

"$aic" devnet --processes --json --data-dir "$dir/devnet" > "$dir/devnet.json" 2> "$dir/devnet.err" &
devnet=$!
trap 'kill -TERM $devnet 2>/dev/null; wait $devnet 2>/dev/null || true' EXIT
# The devnet prints its status line once the grid is up and its own story ran.
for _ in $(seq 1 600); do
    [[ -s "$dir/devnet.json" ]] && break
    kill -0 $devnet 2>/dev/null || { cat "$dir/devnet.err" >&2; exit 1; }
    sleep 1
done
[[ -s "$dir/devnet.json" ]] || { echo "the devnet did not come up" >&2; exit 1; }
D="$dir/devnet"
P=(--profile "$D/client.toml")
digits=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["datasets"][0]["asset"])' "$dir/devnet.json")
model=$("$aic" model register --name soak --kind softmax --for-dataset "$digits" --json "${P[@]}" \
    --wallet "$D/wallets/model-owner.key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["asset"])')
receiver=$("$aic" wallet address --wallet "$D/wallets/model-owner.key")
services=(compute-1 compute-2 compute-3 storage-1 storage-2 scheduler-2 scheduler-3)

# One sample: seconds, then per service its RSS (KiB) and open descriptors.
sample() {
    local now line
    now=$(date +%s)
    line="$now"
    for name in "${services[@]}" scheduler-1 gateway-1; do
        local pid rss fds
        pid=$(pgrep -f -- "--config $D/config/$name.toml" | head -1 || true)
        if [[ -n "$pid" ]]; then
            rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        else
            rss=0; fds=0
        fi
        line="$line,$name,$rss,$fds"
    done
    echo "$line" >> "$samples"
}

try() { # a command whose failure is counted, not fatal
    if ! "$@" > /dev/null 2>> "$errors.tmp"; then
        echo "$(date -Is) FAILED: $*" >> "$errors"
        cat "$errors.tmp" >> "$errors"
    fi
    : > "$errors.tmp"
}

logs_start=$(du -sk "$D/logs" | cut -f1)
disk_start=$(du -sk "$D" | cut -f1)
start=$(date +%s)
end=$(( start + minutes * 60 ))
cycle=0
sample
while (( $(date +%s) < end )); do
    cycle=$(( cycle + 1 ))
    try "$aic" job submit --dataset "$digits" --model "$model" --epochs 2 --budget 5 --json "${P[@]}" \
        --wallet "$D/wallets/user.key"
    for _ in 1 2 3; do
        try "$aic" wallet transfer "$receiver" 0.001 --json "${P[@]}" --wallet "$D/wallets/fundraiser.key"
    done
    if (( cycle % 5 == 0 )); then
        # New content each time (the same file twice is the same dataset, refused as such; an
        # added counter column would be excluded as an identifier): leave out a different row.
        awk -v skip="$(( cycle / 5 % 300 + 2 ))" 'NR != skip' \
            storage-node/data/penguins/penguins.csv > "$dir/import.csv"
        try "$aic" dataset import "$dir/import.csv" --target body_mass_g --json "${P[@]}" \
            --wallet "$D/wallets/user.key"
    fi
    victim=${services[$(( cycle % ${#services[@]} ))]}
    try "$aic" devnet restart "$victim" --data-dir "$D"
    sample
done
logs_end=$(du -sk "$D/logs" | cut -f1)
disk_end=$(du -sk "$D" | cut -f1)
"$aic" chain verify "${P[@]}" > /dev/null 2>> "$errors" || echo "$(date -Is) FAILED: chain verify" >> "$errors"

echo "soak: $minutes min, $cycle cycles (a 2-epoch job, 3 transfers, a restart each; an import every 5th)"
python3 - "$samples" <<'PY'
import sys
rows = [l.strip().split(",") for l in open(sys.argv[1]) if l.strip()]
t = [int(r[0]) for r in rows]
names = rows[0][1::3]
print(f"{'process':<12} {'RSS start MiB':>14} {'RSS end MiB':>12} {'slope MiB/h':>12} {'fds start':>10} {'fds end':>8}")
for i, name in enumerate(names):
    rss = [int(r[2 + 3 * i]) / 1024 for r in rows]
    fds = [int(r[3 + 3 * i]) for r in rows]
    # Samples after a restart start a new process: the slope is fitted over the last run only.
    last = max((k for k in range(1, len(rss)) if rss[k] < 0.7 * rss[k - 1]), default=0)
    xs, ys = t[last:], rss[last:]
    n = len(xs)
    if n > 1:
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 3600 if sxx else 0.0
    else:
        slope = 0.0
    print(f"{name:<12} {rss[0]:>14.1f} {rss[-1]:>12.1f} {slope:>12.2f} {fds[0]:>10} {fds[-1]:>8}")
PY
echo "logs grew $(( (logs_end - logs_start) / 1024 )) MiB; the data dir $(( (disk_end - disk_start) / 1024 )) MiB"
echo "failed commands: $(grep -c FAILED "$errors" || true) (see $errors)"
echo "samples: $samples"
