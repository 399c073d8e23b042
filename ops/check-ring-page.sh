#!/usr/bin/env bash
# Checks placement's ring page in a real browser: loads http://ADDR/ring in headless Chromium
# and checks that every region placement lists in http://ADDR/status is drawn as an arc
# (<path class="region" data-region-id="ID">). Installs Debian's chromium if it is missing.
#
#   ops/check-ring-page.sh 127.0.0.1:2380
#
# Regions can split between reading /status and the page's own read of it, so a mismatch is
# retried a few times before it counts.
set -euo pipefail

me="ops/check-ring-page.sh"
if [ $# -ne 1 ]; then
  echo "usage: $me PLACEMENT_HTTP_ADDR   (e.g. 127.0.0.1:2380)" >&2
  exit 2
fi
addr=$1
attempts=3

browser=""
for candidate in chromium chromium-browser; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
if [ -z "$browser" ]; then
  echo "$me: installing chromium" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
  browser=chromium
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the region ids in /status, one a line; fails if placement cannot be read.
status_region_ids() {
  curl -fsS --max-time 10 "http://$addr/status" >"$work/status.json" || {
    echo "$me: cannot read http://$addr/status: is placement's HTTP server there?" >&2
    return 1
  }
  python3 -c '
import json, sys
for region in json.load(open(sys.argv[1]))["regions"]:
    print(region["id"])
' "$work/status.json"
}

# Loads the page and writes its DOM, after the scripts ran, to $work/ring.html.
dump_ring_page() {
  # --virtual-time-budget lets the page's first fetch of /status and its drawing finish
  # before the DOM is dumped (timers run on virtual time, so this takes well under 8 s).
  if ! timeout 60 "$browser" --headless --no-sandbox --disable-gpu \
      --user-data-dir="$work/profile" --virtual-time-budget=8000 \
      --dump-dom "http://$addr/ring" >"$work/ring.html" 2>"$work/chromium.log"; then
    echo "$me: chromium failed to load http://$addr/ring; its log (D-Bus noise left out):" >&2
    grep -v -i dbus "$work/chromium.log" | tail -n 20 >&2
    return 1
  fi
}

# Compares the ids in $work/expected with the drawn region paths; prints what it found.
compare() {
  python3 - "$work/expected" "$work/ring.html" <<'EOF'
import sys
from html.parser import HTMLParser

class RegionPaths(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = []
    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "path" and "region" in (attrs.get("class") or "").split():
            self.ids.append(attrs.get("data-region-id"))

expected = [line.strip() for line in open(sys.argv[1]) if line.strip()]
page = RegionPaths()
page.feed(open(sys.argv[2], encoding="utf-8").read())
drawn = set(page.ids)

def show(ids):
    ids = sorted(ids, key=lambda i: int(i) if (i or "").isdigit() else -1)
    return ", ".join(str(i) for i in ids[:20]) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")

print(f"/status lists {len(expected)} regions: {show(expected)}")
print(f"/ring draws {len(page.ids)} region arcs: {show(page.ids)}")
missing = [i for i in expected if i not in drawn]
extra = drawn - set(expected)
duplicated = len(page.ids) - len(drawn)
if extra:
    print(f"drawn but not in /status (changed in between?): {show(extra)}")
if duplicated:
    print(f"{duplicated} arcs drawn twice")
if missing:
    print(f"NOT drawn: {show(missing)}")
sys.exit(1 if missing or duplicated or not expected else 0)
EOF
}

for attempt in $(seq 1 "$attempts"); do
  status_region_ids >"$work/expected"
  if [ ! -s "$work/expected" ]; then
    echo "$me: http://$addr/status lists no regions (cluster not bootstrapped?); nothing to check" >&2
    exit 1
  fi
  dump_ring_page
  if compare; then
    echo "$me: OK: every region in /status is drawn on http://$addr/ring"
    exit 0
  fi
  if [ "$attempt" -lt "$attempts" ]; then
    echo "$me: mismatch (attempt $attempt of $attempts); trying again" >&2
    sleep 2
  fi
done
echo "$me: FAILED: the ring page does not draw every region placement lists (see above)" >&2
exit 1
