#!/usr/bin/env bash
# Write throughput and group commit as the region count grows: for each count in REGION_COUNTS,
# a static 3-node ringkv (release build, separate processes, fsync on) whose ring is cut into
# that many regions, leaders spread by the election race; kvbench writes for DURATION seconds
# with CONCURRENCY clients over the three nodes; prints writes/s, latency, and synced raft-log
# writes (fsyncs) per acknowledged write, per node and for the whole cluster.
#
#   benches/regions.sh                                   # 16, 64 and 1000 regions
#   REGION_COUNTS="64" DURATION=30 benches/regions.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REGION_COUNTS=${REGION_COUNTS:-"16 64 1000"}
DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-64}
KEYS=${KEYS:-10000}
# Three nodes share this machine's cores: one async worker each (see --async-threads).
NODE_ARGS=${NODE_ARGS:---async-threads 1}

ops/setup.sh
cargo build --release --quiet -p ringkv -p ringkv-kvbench --bins
RINGKV=target/release/ringkv
KVBENCH=target/release/kvbench
work=$(mktemp -d /tmp/ringkv-regions-XXXXXX)
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
"$RINGKV" certs --dir "$work/certs" --nodes 3 >/dev/null

# Sum of a counter (all label sets matching the grep pattern) over the three nodes.
counter() {
    for i in 1 2 3; do curl -sf "http://127.0.0.1:${i}2380/metrics"; done |
        awk -v pattern="^$1" '$0 ~ pattern {sum += $NF} END {printf "%d\n", sum}'
}

settled() { # regions: every node reports them all, each with a leader
    for i in 1 2 3; do
        curl -sf "http://127.0.0.1:${i}2380/status" | python3 -c '
import json, sys
regions = json.load(sys.stdin)["regions"]
sys.exit(0 if len(regions) == int(sys.argv[1]) and all(r["leader_store_id"] for r in regions) else 1)' "$1" ||
            return 1
    done
}

printf '%-8s %10s %9s %9s %15s %16s %7s\n' regions writes/s p50_ms p99_ms fsync/write/node fsync/write/all errors
for regions in $REGION_COUNTS; do
    cluster="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
    for i in 1 2 3; do
        # shellcheck disable=SC2086
        RINGKV_LOG=warn "$RINGKV" node --id "$i" --cluster "$cluster" \
            --http-addr "127.0.0.1:${i}2380" --data-dir "$work/r$regions-$i" \
            --certs-dir "$work/certs" --initial-regions "$regions" $NODE_ARGS \
            >"$work/r$regions-$i.log" 2>&1 &
        pids+=($!)
    done
    for _ in $(seq 600); do settled "$regions" 2>/dev/null && break; sleep 0.5; done
    settled "$regions"
    fsyncs_before=$(counter ringkv_raft_log_fsync_total)
    acked_before=$(counter 'ringkv_http_requests_total\{op="put",status="204"\}')
    result=$("$KVBENCH" --target ringkv --json --workload write --no-preload \
        --endpoints "http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380" \
        --concurrency "$CONCURRENCY" --duration-secs "$DURATION" --keys "$KEYS" 2>"$work/kvbench.err") || {
        echo "kvbench failed:" >&2
        cat "$work/kvbench.err" >&2
        exit 1
    }
    fsyncs=$(($(counter ringkv_raft_log_fsync_total) - fsyncs_before))
    acked=$(($(counter 'ringkv_http_requests_total\{op="put",status="204"\}') - acked_before))
    python3 - "$regions" "$fsyncs" "$acked" "$result" <<'PY'
import json, sys
regions, fsyncs, acked = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = json.loads(sys.argv[4])
w = next(o for o in r["ops"] if o["op"] == "write")
per = fsyncs / max(acked, 1)
print(f"{regions:<8} {w['throughput_per_sec']:>10.0f} {w['p50_ms']:>9.2f} {w['p99_ms']:>9.2f} "
      f"{per / 3:>15.3f} {per:>16.3f} {r['errors']:>7}")
PY
    stop_all
done
