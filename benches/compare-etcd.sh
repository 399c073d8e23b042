#!/usr/bin/env bash
# The same loads against a 3-member etcd and a 3-node ringkv on this machine, one cluster at a
# time, with the same load generator (kvbench); prints a side-by-side table with ratios.
#
#   benches/compare-etcd.sh                       # 20 s per load, 64 clients
#   DURATION=60 CONCURRENCY=128 benches/compare-etcd.sh
#   RINGKV_GRPC=1 benches/compare-etcd.sh         # also ringkv through its routing gRPC client
#   NODE_ARGS="--async-threads 2" benches/compare-etcd.sh   # ringkv node flags
#   ETCD_GOMAXPROCS=1 benches/compare-etcd.sh     # etcd's Go threads (default: one per CPU)
#
# By default ringkv runs as a static cluster (--id/--cluster: one region, a voter on every
# node) and is loaded over HTTP, the clients spread over the 3 nodes. With RINGKV_GRPC=1 the
# routing client needs placement, so ringkv runs instead as placement (gRPC 127.0.0.1:2379,
# HTTP 2380) plus 3 nodes started with --placement; the benchmark waits until its region has
# 3 voters, and each load runs twice against that same cluster: over HTTP (as above) and with
# --target ringkv-grpc (one routing client sending each request to the leader). Load splits
# are off (--region-split-load-keys-per-sec 0) so the cluster keeps one region like the static
# one; heartbeats to placement are every second, as in `ringkv demo`.
#
# Installs what it lacks (libclang for RocksDB, Debian's etcd-server), builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-64}
KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
KEY_SIZE=${KEY_SIZE:-16}
WORKLOADS=${WORKLOADS:-"write read a"}
RINGKV_GRPC=${RINGKV_GRPC:-0}
# Three nodes share this machine's cores: one async worker each (see --async-threads).
NODE_ARGS=${NODE_ARGS:---async-threads 1}
# etcd's Go runtime threads (GOMAXPROCS); empty = Go's default (one per CPU).
ETCD_GOMAXPROCS=${ETCD_GOMAXPROCS:-}

ops/setup.sh
if ! command -v etcd >/dev/null; then
    echo "installing etcd-server (Debian)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y etcd-server >/dev/null
fi
cargo build --release -p ringkv -p ringkv-kvbench --bins
RINGKV=target/release/ringkv
KVBENCH=target/release/kvbench

work=$(mktemp -d)
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

# Polls `curl URL` until it answers 2xx, for up to 60 s.
wait_for() {
    for _ in $(seq 600); do
        if curl -sf -o /dev/null "$@"; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $*" >&2
    return 1
}

start_etcd() {
    local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
    for i in 1 2 3; do
        GOMAXPROCS=${ETCD_GOMAXPROCS:-$(nproc)} etcd --name "e$i" --data-dir "$work/etcd$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token kvbench --logger zap --log-level error \
            >"$work/etcd$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 1 2 3; do wait_for "http://127.0.0.1:2379$i/health"; done
    wait_for -X POST -d '{"key":"d2FybXVw","value":"MQ=="}' "http://127.0.0.1:23791/v3/kv/put"
}

start_ringkv() {
    "$RINGKV" certs --dir "$work/certs" --nodes 3 >/dev/null
    local cluster="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
    for i in 1 2 3; do
        # shellcheck disable=SC2086 # NODE_ARGS holds several words
        RINGKV_LOG=warn "$RINGKV" node --id "$i" --cluster "$cluster" \
            --http-addr "127.0.0.1:${i}2380" --data-dir "$work/ringkv$i" \
            --certs-dir "$work/certs" $NODE_ARGS >"$work/ringkv$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 1 2 3; do wait_for "http://127.0.0.1:${i}2380/health"; done
    wait_for -X PUT -d 1 "http://127.0.0.1:12380/kv/warmup"
}

# Placement and 3 nodes that get their store ids from it (README: "Running nodes as separate
# processes"); the first node bootstraps the cluster, placement replicates its region onto the
# other two as they join.
start_ringkv_placement() {
    "$RINGKV" certs --dir "$work/certs" --nodes 3 >/dev/null
    RINGKV_LOG=warn "$RINGKV" placement --listen 127.0.0.1:2379 --http-addr 127.0.0.1:2380 \
        --data-dir "$work/placement" >"$work/placement.log" 2>&1 &
    pids+=($!)
    wait_for "http://127.0.0.1:2380/health"
    for i in 1 2 3; do
        # shellcheck disable=SC2086 # NODE_ARGS holds several words
        RINGKV_LOG=warn "$RINGKV" node --placement 127.0.0.1:2379 \
            --raft-addr "127.0.0.1:${i}2379" --http-addr "127.0.0.1:${i}2380" \
            --data-dir "$work/ringkv$i" --certs-dir "$work/certs" --cert-name "node-$i" \
            --placement-heartbeat-ms 1000 --region-split-load-keys-per-sec 0 $NODE_ARGS \
            >"$work/ringkv$i.log" 2>&1 &
        pids+=($!)
        wait_for "http://127.0.0.1:${i}2380/health"
    done
    wait_replicated
    wait_for -X PUT -d 1 "http://127.0.0.1:12380/kv/warmup"
}

# Polls placement's /status until every region has 3 voters and a leader and no operator is
# in flight, for up to 60 s.
wait_replicated() {
    for _ in $(seq 600); do
        if curl -sf http://127.0.0.1:2380/status | python3 -c '
import json, sys
status = json.load(sys.stdin)
regions = status["regions"]
ok = regions and not status["operators"] and all(
    r["leader_store_id"] and sum(p["role"] == 0 for p in r["peers"]) == 3 for r in regions)
sys.exit(0 if ok else 1)'; then
            return 0
        fi
        sleep 0.1
    done
    echo "ringkv regions did not reach 3 voters" >&2
    return 1
}

bench() { # target endpoints workload
    "$KVBENCH" --target "$1" --endpoints "$2" --workload "$3" --json \
        --concurrency "$CONCURRENCY" --duration-secs "$DURATION" --keys "$KEYS" \
        --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE"
}

results="$work/results.jsonl"
echo "etcd $(etcd --version | head -1 | awk '{print $3}'): $WORKLOADS"
start_etcd
for w in $WORKLOADS; do
    bench etcd "http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793" "$w" >>"$results"
done
stop_all
ringkv_http="http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380"
if [ "$RINGKV_GRPC" = 1 ]; then
    echo "ringkv (placement + 3 nodes), HTTP and gRPC: $WORKLOADS"
    start_ringkv_placement
    for w in $WORKLOADS; do
        bench ringkv "$ringkv_http" "$w" >>"$results"
        bench ringkv-grpc 127.0.0.1:2379 "$w" >>"$results"
    done
else
    echo "ringkv: $WORKLOADS"
    start_ringkv
    for w in $WORKLOADS; do
        bench ringkv "$ringkv_http" "$w" >>"$results"
    done
fi
stop_all

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["target"], r["workload"]): r for r in rows}
# ringkv's columns: HTTP always, the routing gRPC client when it ran (RINGKV_GRPC=1).
ringkv = [(t, label) for t, label in (("ringkv", "ringkv"), ("ringkv-grpc", "grpc"))
          if any(target == t for target, _ in by)]
def op(r, name):
    return next((o for o in r["ops"] if o["op"] == name), None)
print()
header = f"{'workload':<8} {'op':<6} {'etcd ops/s':>11}"
for _, label in ringkv:
    header += f" {label + ' ops/s':>13} {'ratio':>6}"
header += f"   {'etcd p50/p99 ms':>16}"
for _, label in ringkv:
    header += f" {label + ' p50/p99 ms':>18}"
print(header + "  errors e/" + "/".join(label[0] for _, label in ringkv))
for (target, workload), r in sorted(by.items()):
    if target != "etcd" or any((t, workload) not in by for t, _ in ringkv):
        continue
    ks = [by[(t, workload)] for t, _ in ringkv]
    for name in ("read", "write", "all"):
        e, gs = op(r, name), [op(k, name) for k in ks]
        if not e or not all(gs):
            continue
        line = f"{workload:<8} {name:<6} {e['throughput_per_sec']:>11.0f}"
        for g in gs:
            ratio = g["throughput_per_sec"] / max(e["throughput_per_sec"], 1e-9)
            line += f" {g['throughput_per_sec']:>13.0f} {ratio:>5.2f}x"
        line += f"   {e['p50_ms']:>7.2f}/{e['p99_ms']:<8.2f}"
        for g in gs:
            line += f" {g['p50_ms']:>8.2f}/{g['p99_ms']:<9.2f}"
        print(line + "  " + "/".join(str(x["errors"]) for x in [r] + ks))
PY
