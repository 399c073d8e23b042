#!/usr/bin/env bash
# Checks ringkv's monitoring against a running local cluster (`make demo` or ops/Procfile):
#  1. a real Prometheus (Debian's `prometheus`, installed if missing) started with
#     ops/prometheus.yml scrapes every node and placement, and a query over its HTTP API
#     returns ringkv series from each of them;
#  2. every metric the alert rules (ops/alerts.yml) and the Grafana dashboard
#     (ops/grafana/ringkv.json) reference exists in a live scrape;
#  3. promtool accepts the config and the rules.
# Usage: ops/check-metrics.sh   (nodes on 12380/22380/32380, placement HTTP on 2380)
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=(127.0.0.1:12380 127.0.0.1:22380 127.0.0.1:32380)
PLACEMENT=127.0.0.1:2380
PROM_ADDR=127.0.0.1:19090

fail() { echo "check-metrics: $*" >&2; exit 1; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus (Debian package)..."
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq prometheus >/dev/null
  # The package starts a system service on :9090; this check runs its own instance.
  $SUDO systemctl stop prometheus 2>/dev/null || true
fi

for target in "${NODES[@]}" "$PLACEMENT"; do
  curl -sf "http://$target/metrics" >/dev/null || fail "nothing answers http://$target/metrics: start the cluster first (make demo)"
done

# A little traffic, so request, raft and transport series exist.
for i in $(seq 1 20); do
  curl -sf -XPUT "http://${NODES[$((i % 3))]}/kv/check-metrics-$i" -d "v$i" >/dev/null || fail "PUT failed"
  curl -sf "http://${NODES[$(((i + 1) % 3))]}/kv/check-metrics-$i" >/dev/null || fail "GET failed"
done

promtool check config ops/prometheus.yml >/dev/null || fail "promtool rejects ops/prometheus.yml"
promtool check rules ops/alerts.yml >/dev/null || fail "promtool rejects ops/alerts.yml"

# 2. Referenced metric names against a live scrape of every target.
scraped=$(for target in "${NODES[@]}" "$PLACEMENT"; do curl -sf "http://$target/metrics"; done \
  | grep -oE '^ringkv_[a-z0-9_]+' | sed -E 's/_(bucket|sum|count)$//' | sort -u)
referenced=$(grep -ohE 'ringkv_[a-z0-9_]+' ops/alerts.yml ops/grafana/ringkv.json \
  | sed -E 's/_(bucket|sum|count)$//' | sort -u)
missing=$(comm -23 <(echo "$referenced") <(echo "$scraped"))
[ -z "$missing" ] || fail "referenced but not exported: $(echo $missing)"
echo "ok: all $(echo "$referenced" | wc -l) metrics referenced by alerts and dashboard are exported"

# 1. A real Prometheus scrapes the cluster.
workdir=$(mktemp -d)
trap 'kill $prom_pid 2>/dev/null || true; rm -rf "$workdir"' EXIT
cp ops/prometheus.yml ops/alerts.yml "$workdir/"
prometheus --config.file="$workdir/prometheus.yml" --storage.tsdb.path="$workdir/data" \
  --web.listen-address="$PROM_ADDR" >"$workdir/prometheus.log" 2>&1 &
prom_pid=$!
query() { curl -sf "http://$PROM_ADDR/api/v1/query" --data-urlencode "query=$1"; }
deadline=$((SECONDS + 60))
while :; do
  result=$(query 'count by (instance) ({__name__=~"ringkv_.+"})' 2>/dev/null || true)
  instances=$(echo "$result" | python3 -c '
import json, sys
try:
    data = json.load(sys.stdin)["data"]["result"]
except Exception:
    data = []
for r in data:
    print(r["metric"]["instance"], r["value"][1])' 2>/dev/null || true)
  seen=$(echo "$instances" | grep -c . || true)
  [ "$seen" -ge $((${#NODES[@]} + 1)) ] && break
  [ $SECONDS -lt $deadline ] || { tail -5 "$workdir/prometheus.log" >&2; fail "Prometheus saw ringkv series from $seen of $((${#NODES[@]} + 1)) targets: $instances"; }
  sleep 1
done
echo "ok: Prometheus scrapes ringkv series from every target:"
echo "$instances" | sed 's/^/  /'
rules=$(curl -sf "http://$PROM_ADDR/api/v1/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
print(sum(len(g["rules"]) for g in groups))')
echo "ok: Prometheus loaded $rules alert rules"
