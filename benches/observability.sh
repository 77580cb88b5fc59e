#!/usr/bin/env bash
# Cost of observability: request throughput of a 3-node cluster with metrics on (every request measured,
# /metrics scraped every second) against the same cluster with <metrics enabled="false"/>.
#
#   benches/observability.sh        # about 3 minutes; summary on stdout, raw numbers in target/bench/observability.txt
#
# Each run starts a fresh 3-node cluster (release build, loopback), finds a session id whose owner is
# node-1 (GET /cluster/route?session=kN until owners[0] is node-1) so every request is served where it
# lands, then runs `wrk -t2 -c50 -d$DURATION` against node-1's /app/hello with that session cookie.
# A curl loop fetches /metrics once a second during every run, in both modes (a 404 when off), so the two
# modes get the same extra load and the difference is the cost of measuring and rendering.
# Each round runs both modes back to back, in ABBA order (on off, off on, ...), ROUNDS rounds; the
# medians and their ratio are reported, and the median of the per-round ratios (pairs close in time).
#
# Knobs (environment): DURATION=15s ROUNDS=3 FIRST=true (or false: each round starts with metrics off)
# SKIP_BUILD=1 (measure target/release as it is), MT_BIN=path (that binary), QUIET_WAIT_MAX=1500.
# Waits while any other wrk or bench script runs (someone else's benchmark) before each measurement.
# Every process this script starts is recorded in PIDS and killed on exit, even on failure or Ctrl-C.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-3}
FIRST=${FIRST:-true} # the mode each round starts with (true: metrics on first)

out_dir=$root/target/bench
work=$out_dir/observability-run
raw=$out_dir/observability.txt

HTTP=(29081 29082 29083)
CLUSTER=(29001 29002 29003)

# Nodes (node-N) and the scraper stop with TERM (set where each starts).
. "$root/benches/lib.sh"
cleanup_dirs+=("$work/data")

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }

require_free_ports "29001-29003 and 29081-29083" "${HTTP[@]}" "${CLUSTER[@]}"

rm -rf "$work"
mkdir -p "$work/logs"

# Every run uses this one copy, even if someone rebuilds target/release meanwhile.
mt_binary

url() { echo "http://127.0.0.1:${HTTP[$(($1 - 1))]}"; }

write_config() { # enabled(true|false) -> path of a config
  local enabled=$1 config=$work/cluster-$1.xml
  cat >"$config" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<cluster id="bench">
  <gossip interval-ms="150" phi-threshold="8" dead-after-ms="5000"/>
  <raft data-dir="$work/data" voters="3" heartbeat-ms="100" election-timeout-ms="600"/>
  <metrics enabled="$enabled"/>
  <nodes>
    <node name="node-1" http="127.0.0.1:${HTTP[0]}" cluster="127.0.0.1:${CLUSTER[0]}"/>
    <node name="node-2" http="127.0.0.1:${HTTP[1]}" cluster="127.0.0.1:${CLUSTER[1]}"/>
    <node name="node-3" http="127.0.0.1:${HTTP[2]}" cluster="127.0.0.1:${CLUSTER[2]}"/>
  </nodes>
</cluster>
EOF
  "$bin" check-config "$config" >/dev/null || die "generated config rejected: $config"
  echo "$config"
}

start_cluster() { # config
  local config=$1 n
  rm -rf "$work/data"
  for n in 1 2 3; do
    "$bin" run --config "$config" --name "node-$n" >>"$work/logs/node-$n.log" 2>&1 &
    PIDS[node-$n]=$!
    STOPSIG[node-$n]=TERM
  done
  wait_ready 60 "$(url 1)" "$(url 2)" "$(url 3)" || die "cluster not ready after 60 s (logs: $work/logs)"
}

stop_cluster() { local n; for n in 1 2 3; do stop_proc "node-$n"; done; }

local_session() { # a session id whose owner is node-1
  # k1, k2, ... padded to 22 base64url characters: the shape of a tower-sessions id. A cookie of
  # another shape makes tower-sessions log a warning on every request, and the benchmark would
  # measure log writing.
  local k id owner
  for k in $(seq 1 200); do
    id=$(printf 'k%-21s' "$k" | tr ' ' A)
    owner=$(curl -s --max-time 1 "$(url 1)/cluster/route?session=$id" | jq -r '.owners[0] // empty')
    if [ "$owner" = node-1 ]; then echo "$id"; return 0; fi
  done
  die "no session id k1..k200 (padded) is owned by node-1"
}


measure() { # enabled(true|false) round -> requests/s
  local enabled=$1 round=$2 config session out lines rps p50 p99 cpu_before cpu_after requests cpu_us
  local log_before log_after
  config=$(write_config "$enabled")
  start_cluster "$config"
  session=$(local_session)
  # Warm up connections and the allocator; not measured.
  wrk -t2 -c50 -d3s -H "Cookie: MTSESSIONID=$session" "$(url 1)/app/hello" >/dev/null
  wait_for_quiet
  (while :; do curl -s -o /dev/null --max-time 1 "$(url 1)/metrics"; sleep 1; done) &
  PIDS[scraper]=$!
  STOPSIG[scraper]=TERM
  out=$work/wrk-$enabled-$round.txt
  cpu_before=$(cpu_ticks "${PIDS[node-1]}")
  log_before=$(wc -l <"$work/logs/node-1.log")
  wrk -t2 -c50 -d"$DURATION" --latency -H "Cookie: MTSESSIONID=$session" "$(url 1)/app/hello" >"$out"
  cpu_after=$(cpu_ticks "${PIDS[node-1]}")
  log_after=$(wc -l <"$work/logs/node-1.log")
  # A log line per request would be what we measure; a few lines (a membership event) are fine.
  [ $((log_after - log_before)) -lt 100 ] || die "node-1 logged $((log_after - log_before)) lines during the run; see $work/logs/node-1.log"
  stop_proc scraper
  lines=$(curl -s "$(url 1)/metrics" | grep -c '^micro_tomcat_' || true)
  stop_cluster
  grep -q 'Non-2xx' "$out" && die "non-2xx answers during the run: $out"
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  requests=$(awk '/requests in/ {print $1}' "$out")
  # CPU time node-1 spent per request: unlike throughput, barely moved by other load on the machine.
  cpu_us=$(awk -v t=$((cpu_after - cpu_before)) -v n="$requests" 'BEGIN {printf "%.1f", t * 10000 / n}')
  printf 'metrics=%s round=%s session=%s requests_per_s=%s p50=%s p99=%s cpu_us_per_request=%s metric_lines=%s\n' \
    "$enabled" "$round" "$session" "$rps" "$p50" "$p99" "$cpu_us" "$lines" >>"$raw"
  log "metrics=$enabled round $round: $rps req/s (p50 $p50, p99 $p99), node-1 CPU $cpu_us µs/request"
}

{
  echo "# benches/observability.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) DURATION=$DURATION ROUNDS=$ROUNDS"
  echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), nproc $(nproc)"
} >>"$raw"
# ABBA order (on off, off on, on off, ...): a machine that slowly gets busier or quieter favours
# neither mode.
other=$([ "$FIRST" = true ] && echo false || echo true)
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    measure "$FIRST" "$round"
    measure "$other" "$round"
  else
    measure "$other" "$round"
    measure "$FIRST" "$round"
  fi
done

python3 - "$raw" "$ROUNDS" <<'PY'
import statistics, sys
path, rounds = sys.argv[1], int(sys.argv[2])
lines = [l for l in open(path) if l.startswith("metrics=")][-2 * rounds:]
runs = {"true": [], "false": []}
cpu = {"true": [], "false": []}
by_round = {}
for line in lines:
    fields = dict(f.split("=", 1) for f in line.split())
    runs[fields["metrics"]].append(float(fields["requests_per_s"]))
    cpu[fields["metrics"]].append(float(fields["cpu_us_per_request"]))
    by_round.setdefault(fields["round"], {})[fields["metrics"]] = float(fields["requests_per_s"])
pairs = [r["true"] / r["false"] for r in by_round.values() if len(r) == 2]
on, off = statistics.median(runs["true"]), statistics.median(runs["false"])
print(f"metrics on : {' '.join(f'{x:.0f}' for x in runs['true'])} req/s, median {on:.0f}")
print(f"metrics off: {' '.join(f'{x:.0f}' for x in runs['false'])} req/s, median {off:.0f}")
print(f"throughput on/off = {on / off:.3f} ({(on / off - 1) * 100:+.1f}%); per round "
      f"{' '.join(f'{p:.3f}' for p in pairs)}, median {statistics.median(pairs):.3f}")
con, coff = statistics.median(cpu["true"]), statistics.median(cpu["false"])
print(f"node-1 CPU per request: on {' '.join(f'{x:.1f}' for x in cpu['true'])} µs, median {con:.1f}; "
      f"off {' '.join(f'{x:.1f}' for x in cpu['false'])} µs, median {coff:.1f}; "
      f"on/off = {con / coff:.3f} ({(con / coff - 1) * 100:+.1f}%)")
PY
