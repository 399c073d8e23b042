#!/usr/bin/env bash
# The same loads against a 3-member etcd and a 3-node ringkv on this machine, one cluster at a
# time, with the same load generator (kvbench); prints a side-by-side table with ratios.
#
#   benches/compare-etcd.sh                       # 20 s per load, 64 clients
#   DURATION=60 CONCURRENCY=128 benches/compare-etcd.sh
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
        etcd --name "e$i" --data-dir "$work/etcd$i" \
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
        RINGKV_LOG=warn "$RINGKV" node --id "$i" --cluster "$cluster" \
            --http-addr "127.0.0.1:${i}2380" --data-dir "$work/ringkv$i" \
            --certs-dir "$work/certs" >"$work/ringkv$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 1 2 3; do wait_for "http://127.0.0.1:${i}2380/health"; done
    wait_for -X PUT -d 1 "http://127.0.0.1:12380/kv/warmup"
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
echo "ringkv: $WORKLOADS"
start_ringkv
for w in $WORKLOADS; do
    bench ringkv "http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380" "$w" >>"$results"
done
stop_all

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["target"], r["workload"]): r for r in rows}
def op(r, name):
    return next((o for o in r["ops"] if o["op"] == name), None)
print()
print(f"{'workload':<8} {'op':<6} {'etcd ops/s':>11} {'ringkv ops/s':>13} {'ratio':>6}   "
      f"{'etcd p50/p99 ms':>16} {'ringkv p50/p99 ms':>18}  errors e/r")
for (target, workload), r in sorted(by.items()):
    if target != "etcd" or ("ringkv", workload) not in by:
        continue
    k = by[("ringkv", workload)]
    for name in ("read", "write", "all"):
        e, g = op(r, name), op(k, name)
        if not e or not g:
            continue
        ratio = g["throughput_per_sec"] / max(e["throughput_per_sec"], 1e-9)
        print(f"{workload:<8} {name:<6} {e['throughput_per_sec']:>11.0f} {g['throughput_per_sec']:>13.0f} "
              f"{ratio:>5.2f}x   {e['p50_ms']:>7.2f}/{e['p99_ms']:<8.2f} {g['p50_ms']:>8.2f}/{g['p99_ms']:<9.2f}"
              f"  {r['errors']}/{k['errors']}")
PY
