#!/usr/bin/env bash
# What idle regions cost: starts a static 3-node cluster (release build, separate processes)
# whose ring is cut into REGIONS regions (every node holds a replica of each), waits until it
# is idle (every region hibernating, or a fixed settle time with HIBERNATE=false), then
# measures each node's CPU (user + system, from /proc/PID/stat) over MEASURE_SECS seconds
# and its resident memory. Run it with REGIONS=1 as well to get the memory per region.
#
#   benches/idle-regions.sh                          # 10,000 regions, hibernation on
#   HIBERNATE=false benches/idle-regions.sh          # every region ticking, for comparison
#   REGIONS=1 benches/idle-regions.sh                # the baseline for memory per region
set -euo pipefail
cd "$(dirname "$0")/.."

REGIONS=${REGIONS:-10000}
HIBERNATE=${HIBERNATE:-true}
MEASURE_SECS=${MEASURE_SECS:-30}
SETTLE_TIMEOUT_SECS=${SETTLE_TIMEOUT_SECS:-600}
BIN=target/release/ringkv

cargo build --release --quiet --bin ringkv
dir=$(mktemp -d /tmp/ringkv-idle-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$BIN" certs --dir "$dir/certs" --nodes 3 >/dev/null
cluster=127.0.0.1:41379,127.0.0.1:42379,127.0.0.1:43379
for i in 1 2 3; do
    RINGKV_LOG=warn "$BIN" node --id "$i" --cluster "$cluster" --http-addr "127.0.0.1:4${i}380" \
        --data-dir "$dir/data-$i" --certs-dir "$dir/certs" --initial-regions "$REGIONS" \
        --hibernate-regions "$HIBERNATE" >"$dir/node-$i.log" 2>&1 &
    pids+=($!)
done

# Idle = every node reports every region, each with a leader, and (with hibernation) none
# of them ticking any more.
settled() {
    for i in 1 2 3; do
        curl -sf "http://127.0.0.1:4${i}380/status" >"$dir/status-$i.json" || return 1
        python3 - "$dir/status-$i.json" "$REGIONS" "$HIBERNATE" <<'PY' || return 1
import json, sys
regions = json.load(open(sys.argv[1]))["regions"]
want, hibernate = int(sys.argv[2]), sys.argv[3] == "true"
ok = len(regions) == want and all(r["leader_store_id"] for r in regions)
if hibernate:
    ok = ok and all(r["hibernating"] for r in regions)
sys.exit(0 if ok else 1)
PY
    done
}
started=$(date +%s)
until settled; do
    if (($(date +%s) - started > SETTLE_TIMEOUT_SECS)); then
        echo "the cluster did not settle within ${SETTLE_TIMEOUT_SECS}s" >&2
        tail -5 "$dir"/node-*.log >&2
        exit 1
    fi
    sleep 2
done
settle_secs=$(($(date +%s) - started))
[[ $HIBERNATE == true ]] || sleep 10 # let the start-up elections finish their traffic

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for pid in "${pids[@]}"; do before[$pid]=$(cpu_ticks "$pid"); done
sleep "$MEASURE_SECS"
echo "regions=$REGIONS hibernate=$HIBERNATE settled_in=${settle_secs}s measured=${MEASURE_SECS}s"
printf '%-6s %-12s %-10s\n' node "cpu_%_of_1" rss_mib
i=1
for pid in "${pids[@]}"; do
    used=$(($(cpu_ticks "$pid") - before[$pid]))
    cpu=$(awk -v u="$used" -v t="$ticks" -v s="$MEASURE_SECS" 'BEGIN {printf "%.2f", 100 * u / t / s}')
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    printf '%-6s %-12s %-10s\n' "$i" "$cpu" "$rss"
    i=$((i + 1))
done
