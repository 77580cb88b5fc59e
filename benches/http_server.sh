#!/usr/bin/env bash
# The HTTP accept loop (issue 16, "HTTP port bounds"): /app/hello on a single node served by one build vs
# another, side by side, alternating A B A B ... so that a change in machine load hits both alike.
#
#   benches/http_server.sh OLD_BIN NEW_BIN     # e.g. an `axum::serve` build vs ours
#
# Each run: a fresh single-node cluster on free loopback ports, /readyz 200, a 2 s unmeasured warm-up, then
# wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency with benches/wrk/get.lua (keep-alive, no cookie: the
# demo app answers without touching sessions). Prints one line per run (label, requests/s, p50 ms, p99 ms,
# node CPU µs per request from /proc/PID/stat) and the medians of each binary; CPU per request is the
# figure least moved by other work on the machine.
# Knobs: DURATION=10s ROUNDS=3 CONNECTIONS=50 THREADS=2. Every node started is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
bins=("$1" "$2")
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
export WRK_LUA_DIR=$root/benches/wrk
work=$(mktemp -d)
. "$root/benches/lib.sh"
cleanup_dirs+=("$work")

run_one() { # bin label -> prints "label rps p50 p99"
  local bin=$1 label=$2 http cluster pid
  read -r http cluster <<<"$(free_ports 2)"
  rm -rf "$work/data"
  cat > "$work/cluster-config.xml" <<EOF
<cluster id="bench"><raft data-dir="data" voters="1"/>
  <nodes><node name="node-1" http="127.0.0.1:$http" cluster="127.0.0.1:$cluster"/></nodes></cluster>
EOF
  "$bin" run --config "$work/cluster-config.xml" --name node-1 > "$work/$label.log" 2>&1 &
  pid=$!
  PIDS[node]=$pid
  STOPSIG[node]=TERM
  wait_ready 20 "http://127.0.0.1:$http" || die "$label not ready after 20 s (log: $work/$label.log)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$root/benches/wrk/get.lua" "http://127.0.0.1:$http/app/hello" > /dev/null
  local line cpu_before cpu_after
  cpu_before=$(cpu_ticks "$pid")
  line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$root/benches/wrk/get.lua" \
    "http://127.0.0.1:$http/app/hello" | grep '^WRKJSON')
  cpu_after=$(cpu_ticks "$pid")
  stop_proc node
  python3 - "$label" "$line" "$((cpu_after - cpu_before))" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
d = json.loads(sys.argv[2].split(" ", 1)[1])
assert d["failed"] == 0, d
cpu_us = int(sys.argv[3]) / int(sys.argv[4]) * 1e6 / d["requests"]
print(sys.argv[1], round(d["rps"]), d["p50_ms"], d["p99_ms"], round(cpu_us, 2))
EOF
}

results=$work/results.txt
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1; do
    label=$([ $i -eq 0 ] && echo old || echo new)
    run_one "${bins[$i]}" "$label" | tee -a "$results"
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {}
for label in ("old", "new"):
    mine = [r for r in rows if r[0] == label]
    med[label] = [statistics.median(float(r[i]) for r in mine) for i in (1, 3, 4)]
    print(f"{label}: median {med[label][0]:.0f} req/s, median p99 {med[label][1]:.3f} ms, "
          f"median {med[label][2]:.2f} µs CPU per request")
new, old = med["new"], med["old"]
print(f"new/old: throughput {new[0] / old[0]:.3f}, p99 {new[1] / old[1]:.3f}, CPU per request {new[2] / old[2]:.3f}")
EOF
