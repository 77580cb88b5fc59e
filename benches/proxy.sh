#!/usr/bin/env bash
# Proxy overhead of the router (issue 5, "Measure"): micro-tomcat serving a request locally vs proxying it
# to the owner, side by side in the same run with HAProxy (round-robin, keep-alive) in front of three nginx
# vs one nginx directly. On two shared cores a proxied request costs CPU in two processes, so the figures
# compared are the penalties (proxied/local vs haproxy/direct), not raw speed.
#
#   benches/proxy.sh            # about 6 minutes; results in target/bench/proxy.json
#
# What it does:
#   1. builds the release binary (or takes MT_BIN), starts a 3-node cluster on free loopback ports with
#      <balancer strategy="consistent-hash" key="session"/>, waits for /readyz 200 on all three;
#   2. asks node-1 (GET /cluster/route?session=...) for a cookie value owned by node-1 and one owned by node-2,
#      for two styles of value (KEY_STYLES="session plain"): well-formed session ids (the headline figures)
#      and the literal k1, k2, ... (which our session layer logs as malformed, one WARN line per request:
#      see cookie_value below), and checks with curl that node-1 answers /app/hello with X-Served-By node-1
#      resp. node-2 for them (before and after the load);
#   3. starts three nginx (a 18-byte static body, like our "hello from node-1") and HAProxy round-robin over
#      them (http mode, option http-keep-alive, http-reuse always), all in the foreground as our children;
#   4. ROUNDS times, alternating: ours local, ours proxied, nginx direct, HAProxy -> nginx, ours local and
#      proxied with kN cookies; each a wrk -t2 -c50 -d$DURATION --latency (keep-alive) after a short
#      unmeasured warm-up; node-1's proxy counters and the node log lines written are recorded per run;
#   5. runs the balancer unit tests (`cargo test --lib balancer -- --nocapture`) and keeps what they print
#      and assert (balance and movement); SKIP_BALANCER_TESTS=1 skips that;
#   6. prints a table, the ratios and the targets, and writes target/bench/proxy.json.
#
# Knobs (environment): DURATION=15s ROUNDS=2 WARMUP=3s CONNECTIONS=50 THREADS=2 KEY_STYLES="session plain";
#   MT_BIN=path  benchmark that binary instead of building the working tree (benches/suite.sh passes its build);
#   QUIET_WAIT_MAX=1500  seconds to wait for other benchmarks (wrk, benches/sessions.sh, observability.sh) to
#                finish before each measurement (0: do not wait); the wait is recorded in the JSON.
# Every process this script starts is recorded in PIDS and stopped on exit, even on failure or Ctrl-C.
# Working files (configs, logs, raw wrk output) live in target/bench/proxy-run/, wiped at each start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}

out_dir=$root/target/bench
work=$out_dir/proxy-run
results=$work/results.jsonl # one JSON object per measurement; summarised at the end
export WRK_LUA_DIR=$root/benches/wrk

# Processes: mt-N, nginx-N, haproxy (each with the STOPSIG that stops it cleanly).
. "$root/benches/lib.sh"
cleanup_dirs+=("$work/mt-data")

# ---------------------------------------------------------------- prerequisites
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required (free ports, summary)"

rm -rf "$work"
mkdir -p "$work/logs" "$work/wrk" "$work/mt-data" "$work/nginx" "$work/haproxy"
: >"$results"

wait_for_quiet
mt_binary

read -r -a PORTS <<<"$(free_ports 10)"
MT_HTTP=("${PORTS[@]:0:3}")
MT_CLUSTER=("${PORTS[@]:3:3}")
NGINX=("${PORTS[@]:6:3}")
HAPROXY=${PORTS[9]}
log "ports: micro-tomcat http ${MT_HTTP[*]} cluster ${MT_CLUSTER[*]}; nginx ${NGINX[*]}; haproxy $HAPROXY"

# ---------------------------------------------------------------- micro-tomcat
mt_config=$work/cluster-config.xml
cat >"$mt_config" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<cluster id="bench-proxy">
  <gossip interval-ms="150" phi-threshold="8" dead-after-ms="5000"/>
  <raft data-dir="$work/mt-data" voters="3" heartbeat-ms="100" election-timeout-ms="600"/>
  <sessions ttl-seconds="1800" cookie="MTSESSIONID" max-bytes="1048576"/>
  <balancer strategy="consistent-hash" key="session" retries="2"/>
  <nodes>
    <node name="node-1" http="127.0.0.1:${MT_HTTP[0]}" cluster="127.0.0.1:${MT_CLUSTER[0]}"/>
    <node name="node-2" http="127.0.0.1:${MT_HTTP[1]}" cluster="127.0.0.1:${MT_CLUSTER[1]}"/>
    <node name="node-3" http="127.0.0.1:${MT_HTTP[2]}" cluster="127.0.0.1:${MT_CLUSTER[2]}"/>
  </nodes>
</cluster>
EOF
"$bin" check-config "$mt_config" >/dev/null || die "generated config rejected: $mt_config"

mt_url() { echo "http://127.0.0.1:${MT_HTTP[$(($1 - 1))]}"; }

for n in 1 2 3; do
  "$bin" run --config "$mt_config" --name "node-$n" >>"$work/logs/node-$n.log" 2>&1 &
  PIDS[mt-$n]=$!
  STOPSIG[mt-$n]=TERM
done
wait_ready 60 "$(mt_url 1)" "$(mt_url 2)" "$(mt_url 3)" ||
  die "micro-tomcat not ready on all nodes after 60 s (logs: $work/logs/node-*.log)"
log "micro-tomcat: 3 nodes ready"

# Two kinds of cookie value:
#  - "session": a well-formed session id, as our session layer issues them (22 characters, URL-safe base64
#    of 16 bytes; here the MD5 of "kN"), for a session that does not exist: /app/hello never loads it, so
#    the request does no session work. This is what a browser with a session sends: the headline figures.
#  - "plain": k1, k2, ... literally. The session layer rejects such a value as malformed and logs one WARN
#    line per request on the node that serves it ("possibly suspicious activity: malformed session id"),
#    so these runs also measure that logging; kept to show its cost.
cookie_value() { # style N
  case $1 in
    plain) echo "k$2" ;;
    session) python3 -c 'import base64, hashlib, sys; print(base64.urlsafe_b64encode(hashlib.md5(sys.argv[1].encode()).digest()).rstrip(b"=").decode())' "k$2" ;;
  esac
}
key_owned_by() { # style node-name -> a cookie value whose owner (owners[0], as node-1 computes it) is that node
  local style=$1 want=$2 k value owner
  for k in $(seq 1 500); do
    value=$(cookie_value "$style" "$k")
    owner=$(curl -s --max-time 1 "$(mt_url 1)/cluster/route?session=$value" | jq -r '.owners[0] // empty')
    if [ "$owner" = "$want" ]; then echo "$value"; return 0; fi
  done
  die "no $style key for k1..k500 is owned by $want"
}
served_by() { # session key -> X-Served-By of node-1's answer to /app/hello with that cookie
  curl -s -o /dev/null -D - --max-time 2 -H "Cookie: MTSESSIONID=$1" "$(mt_url 1)/app/hello" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-served-by" {print $2}'
}
KEY_STYLES=${KEY_STYLES:-"session plain"}
declare -A KEY_LOCAL=() KEY_REMOTE=()
for style in $KEY_STYLES; do
  KEY_LOCAL[$style]=$(key_owned_by "$style" node-1)
  KEY_REMOTE[$style]=$(key_owned_by "$style" node-2)
done
check_served_by() {
  local a b style
  for style in $KEY_STYLES; do
    a=$(served_by "${KEY_LOCAL[$style]}") b=$(served_by "${KEY_REMOTE[$style]}")
    [ "$a" = node-1 ] || die "key ${KEY_LOCAL[$style]}: node-1 answered with X-Served-By '$a', expected node-1"
    [ "$b" = node-2 ] || die "key ${KEY_REMOTE[$style]}: node-1 answered with X-Served-By '$b', expected node-2"
    log "checked ($style): cookie ${KEY_LOCAL[$style]} -> X-Served-By $a (local), cookie ${KEY_REMOTE[$style]} -> X-Served-By $b (proxied)"
  done
}
check_served_by

# ---------------------------------------------------------------- nginx x3 and HAProxy
for n in 1 2 3; do
  d=$work/nginx/$n
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
# nginx-$n for benches/proxy.sh: one static body, no logging, keep-alive.
worker_processes auto;
pid $d/nginx.pid;
error_log $work/logs/nginx-$n.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen 127.0.0.1:${NGINX[$((n - 1))]};
    location / {
      default_type text/plain;
      return 200 "hello from nginx-$n";
    }
  }
}
EOF
  nginx -t -q -p "$d" -e "$work/logs/nginx-$n.error.log" -c "$d/nginx.conf" || die "nginx-$n config rejected"
  nginx -p "$d" -e "$work/logs/nginx-$n.error.log" -c "$d/nginx.conf" -g 'daemon off;' >>"$work/logs/nginx-$n.log" 2>&1 &
  PIDS[nginx-$n]=$!
  STOPSIG[nginx-$n]=QUIT
done

haproxy_cfg=$work/haproxy/haproxy.cfg
cat >"$haproxy_cfg" <<EOF
# HAProxy for benches/proxy.sh: round-robin over the three nginx, keep-alive on both sides.
global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY
  default_backend nginx
backend nginx
  balance roundrobin
  server nginx-1 127.0.0.1:${NGINX[0]}
  server nginx-2 127.0.0.1:${NGINX[1]}
  server nginx-3 127.0.0.1:${NGINX[2]}
EOF
haproxy -c -q -f "$haproxy_cfg" || die "haproxy config rejected: $haproxy_cfg"
haproxy -db -f "$haproxy_cfg" >>"$work/logs/haproxy.log" 2>&1 &
PIDS[haproxy]=$!
STOPSIG[haproxy]=TERM

deadline=$((SECONDS + 20))
for port in "${NGINX[@]}" "$HAPROXY"; do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/")" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "nothing answers 200 on 127.0.0.1:$port (logs: $work/logs)"
    sleep 0.2
  done
done
rr=$(for _ in 1 2 3; do curl -s --max-time 1 "http://127.0.0.1:$HAPROXY/"; echo; done | sort | tr '\n' ' ')
log "nginx x3 and HAProxy answer; three requests through HAProxy: $rr"

# ---------------------------------------------------------------- load (wrk)
proxy_counters() { # node-1's proxy counters: "local success failure retries"
  curl -s --max-time 2 "$(mt_url 1)/metrics" | awk '
    /^micro_tomcat_requests_served_locally_total / {l = $2}
    /^micro_tomcat_proxy_requests_total\{.*outcome="success"/ {s += $2}
    /^micro_tomcat_proxy_requests_total\{.*outcome="failure"/ {f += $2}
    /^micro_tomcat_proxy_retries_total / {r = $2}
    END {printf "%d %d %d %d\n", l, s, f, r}'
}

run_wrk() { # name round url [header]
  local name=$1 round=$2 url=$3 header=${4:-} raw=$work/wrk/$1-r$2.txt hdr=()
  [ -n "$header" ] && hdr=(-H "$header")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${hdr[@]}" "$url" >/dev/null 2>&1 || true # warm-up, not kept
  wait_for_quiet
  local before after load lines0 lines1
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  lines0=$(cat "$work"/logs/node-*.log | wc -l)
  before=$(proxy_counters)
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$root/benches/wrk/get.lua" "${hdr[@]}" "$url" >"$raw" 2>&1 ||
    log "wrk exited non-zero ($raw)"
  after=$(proxy_counters)
  lines1=$(cat "$work"/logs/node-*.log | wc -l)
  local json
  json=$(sed -n 's/^WRKJSON //p' "$raw")
  [ -n "$json" ] || die "wrk printed no result line, see $raw"
  local non2xx
  non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$raw")
  read -r l0 s0 f0 r0 <<<"$before"
  read -r l1 s1 f1 r1 <<<"$after"
  jq -c --arg case "$name" --argjson round "$round" --arg url "$url" --arg header "$header" --arg raw "$raw" \
    --arg load "$load" --arg non2xx "${non2xx:-0}" \
    --argjson loglines "$((lines1 - lines0))" --argjson local "$((l1 - l0))" --argjson proxied "$((s1 - s0))" --argjson pfail "$((f1 - f0))" --argjson retries "$((r1 - r0))" \
    '{kind: "load", case: $case, round: $round, url: $url, header: $header, raw: $raw, loadavg_before: $load,
      non2xx_line: ($non2xx | tonumber), node_log_lines_written: $loglines,
      node1_counters: {served_locally: $local, proxied_ok: $proxied, proxy_failures: $pfail, retries: $retries}} + .' \
    <<<"$json" >>"$results"
  log "$(printf '%-20s round %s: %9.0f req/s  p50 %6.3f ms  p99 %7.3f ms  failed %s  (node-1: %s local, %s proxied, %s proxy failures; %s node log lines; load %s)' \
    "$name" "$round" "$(jq .ok_rps <<<"$json")" "$(jq .p50_ms <<<"$json")" "$(jq .p99_ms <<<"$json")" "$(jq .failed <<<"$json")" \
    "$((l1 - l0))" "$((s1 - s0))" "$((f1 - f0))" "$((lines1 - lines0))" "$load")"
}

log "load: ROUNDS=$ROUNDS x (ours local, ours proxied, nginx direct, haproxy), wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
for round in $(seq 1 "$ROUNDS"); do
  for style in $KEY_STYLES; do
    suffix=""
    [ "$style" = session ] || suffix="-$style"
    run_wrk "ours-local$suffix" "$round" "$(mt_url 1)/app/hello" "Cookie: MTSESSIONID=${KEY_LOCAL[$style]}"
    run_wrk "ours-proxied$suffix" "$round" "$(mt_url 1)/app/hello" "Cookie: MTSESSIONID=${KEY_REMOTE[$style]}"
    if [ "$style" = "${KEY_STYLES%% *}" ]; then
      run_wrk nginx-direct "$round" "http://127.0.0.1:${NGINX[0]}/"
      run_wrk haproxy "$round" "http://127.0.0.1:$HAPROXY/"
    fi
  done
done
check_served_by # routing did not change under load

# Our processes' own words about the run: warnings and errors in the node logs.
for n in 1 2 3; do
  warns=$(grep -c -E ' (WARN|ERROR) ' "$work/logs/node-$n.log" || true)
  sample=$(grep -E ' (WARN|ERROR) ' "$work/logs/node-$n.log" | tail -n 3 | cut -c1-300 || true)
  jq -nc --arg node "node-$n" --argjson count "${warns:-0}" --arg sample "$sample" \
    '{kind: "log", node: $node, warn_or_error_lines: $count, last: ($sample | split("\n") | map(select(. != "")))}' >>"$results"
done
for n in 1 2 3; do stop_proc "mt-$n"; done
for key in nginx-1 nginx-2 nginx-3 haproxy; do stop_proc "$key"; done

# ---------------------------------------------------------------- balancer unit tests (balance, movement)
balancer_status=skipped
if [ -z "${SKIP_BALANCER_TESTS:-}" ]; then
  log "balancer unit tests: cargo test --lib balancer -- --nocapture --test-threads 1"
  if cargo test --lib balancer -- --nocapture --test-threads 1 >"$work/logs/balancer-tests.log" 2>&1; then
    balancer_status=passed
  else
    balancer_status=failed
    log "warning: balancer tests failed or did not build, see $work/logs/balancer-tests.log"
  fi
fi
# What the tests print (balance per member count, keys moved) and each test's verdict.
balancer_lines=$(grep -E 'members: hits|keys moved|^test result|^test balancer' "$work/logs/balancer-tests.log" 2>/dev/null || true)
jq -nc --arg status "$balancer_status" --arg lines "$balancer_lines" \
  '{kind: "balancer_tests", status: $status, lines: ($lines | split("\n") | map(select(. != "")))}' >>"$results"

# ---------------------------------------------------------------- summary: table + JSON
export BENCH_NPROC=$(nproc)
export BENCH_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
export BENCH_DATE=$(date -u)
export BENCH_UPTIME=$(uptime)
export BENCH_SOURCE=$MT_SOURCE
export BENCH_WRK=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}')
export BENCH_NGINX=$(nginx -v 2>&1 | sed 's/.*nginx\///')
export BENCH_HAPROXY=$(haproxy -v | awk 'NR == 1 {print $3}')
export BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_CONNECTIONS=$CONNECTIONS BENCH_THREADS=$THREADS
keys=""
for style in $KEY_STYLES; do keys+="$style: local=${KEY_LOCAL[$style]} remote=${KEY_REMOTE[$style]}; "; done
export BENCH_KEYS=$keys BENCH_QUIET_WAITED=$quiet_waited
python3 - "$results" "$out_dir/proxy.json" <<'PY'
import json, os, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1])]
env = os.environ

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

cases = {}
names = []
for r in rows:
    if r["kind"] == "load" and r["case"] not in names:
        names.append(r["case"])
for case in names:
    runs = [r for r in rows if r["kind"] == "load" and r["case"] == case]
    cases[case] = {
        "runs": len(runs),
        "rps": median([r["ok_rps"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "failed": sum(r["failed"] for r in runs),
        "non2xx": sum(r["non2xx_line"] for r in runs),
        "raw_rps": [r["ok_rps"] for r in runs],
        "raw_p50_ms": [r["p50_ms"] for r in runs],
        "raw_p99_ms": [r["p99_ms"] for r in runs],
        "node_log_lines_per_request": median([r["node_log_lines_written"] / max(1, r["requests"]) for r in runs]),
        "loadavg_before": [r["loadavg_before"] for r in runs],
    }

def ratio(a, b):
    return a / b if a is not None and b else None

local, proxied, direct, hap = (cases[c] for c in ("ours-local", "ours-proxied", "nginx-direct", "haproxy"))
ours_ratio = ratio(proxied["rps"], local["rps"])
hap_ratio = ratio(hap["rps"], direct["rps"])
ours_added = proxied["p50_ms"] - local["p50_ms"]
hap_added = hap["p50_ms"] - direct["p50_ms"]
plain = None
if "ours-local-plain" in cases and "ours-proxied-plain" in cases:
    pl, pp = cases["ours-local-plain"], cases["ours-proxied-plain"]
    plain = {"ours_proxied_over_local": ratio(pp["rps"], pl["rps"]),
             "ours_ratio_over_haproxy_ratio": ratio(ratio(pp["rps"], pl["rps"]), hap_ratio),
             "ours_added_p50_ms": pp["p50_ms"] - pl["p50_ms"],
             "local_rps_vs_session_style": ratio(pl["rps"], local["rps"])}
# Per round too (each round's four runs are adjacent in time), to show how stable the ratios are.
per_round = []
for rnd in sorted({r["round"] for r in rows if r["kind"] == "load"}):
    get = {r["case"]: r for r in rows if r["kind"] == "load" and r["round"] == rnd}
    if all(c in get for c in ("ours-local", "ours-proxied", "nginx-direct", "haproxy")):
        per_round.append({
            "round": rnd,
            "ours_ratio": ratio(get["ours-proxied"]["ok_rps"], get["ours-local"]["ok_rps"]),
            "haproxy_ratio": ratio(get["haproxy"]["ok_rps"], get["nginx-direct"]["ok_rps"]),
            "ours_added_p50_ms": get["ours-proxied"]["p50_ms"] - get["ours-local"]["p50_ms"],
            "haproxy_added_p50_ms": get["haproxy"]["p50_ms"] - get["nginx-direct"]["p50_ms"],
        })
proxied_runs = [r for r in rows if r["kind"] == "load" and r["case"].startswith("ours-proxied")]
local_runs = [r for r in rows if r["kind"] == "load" and r["case"].startswith("ours-local")]
targets = {
    "ratio_ge_1.5x_haproxy_ratio": bool(ours_ratio and hap_ratio and ours_ratio >= 1.5 * hap_ratio),
    "added_p50_le_haproxy_added_p50": bool(ours_added <= hap_added),
    "no_errors_under_load": all(r["failed"] == 0 for r in rows if r["kind"] == "load"),
    # node-1's own counters: the proxied runs really were proxied, the local ones really local
    "proxied_runs_were_proxied": all(r["node1_counters"]["proxied_ok"] >= 0.99 * r["requests"] for r in proxied_runs),
    "local_runs_were_local": all(r["node1_counters"]["proxied_ok"] == 0 for r in local_runs),
}
balancer = next((r for r in rows if r["kind"] == "balancer_tests"), None)
logs = [r for r in rows if r["kind"] == "log"]
doc = {
    "machine": {"nproc": int(env["BENCH_NPROC"]), "cpu": env["BENCH_CPU"], "date": env["BENCH_DATE"],
                "uptime_at_end": env["BENCH_UPTIME"].strip()},
    "versions": {"micro_tomcat": env["BENCH_SOURCE"], "wrk": env["BENCH_WRK"],
                 "nginx": env["BENCH_NGINX"], "haproxy": env["BENCH_HAPROXY"]},
    "settings": {"duration": env["BENCH_DURATION"], "rounds": int(env["BENCH_ROUNDS"]),
                 "connections": int(env["BENCH_CONNECTIONS"]), "threads": int(env["BENCH_THREADS"]),
                 "session_keys": env["BENCH_KEYS"], "seconds_waited_for_other_benchmarks": int(env["BENCH_QUIET_WAITED"]),
                 "micro_tomcat": "3 nodes, consistent-hash by session, metrics on (default), /app/hello",
                 "nginx": "3 instances, worker_processes auto, return 200 static 18-byte body, access_log off",
                 "haproxy": "round-robin over the 3 nginx, http mode, option http-keep-alive, http-reuse always"},
    "summary": {"cases": cases, "ours_proxied_over_local": ours_ratio, "haproxy_over_direct": hap_ratio,
                "ours_ratio_over_haproxy_ratio": ratio(ours_ratio, hap_ratio),
                "ours_added_p50_ms": ours_added, "haproxy_added_p50_ms": hap_added, "per_round": per_round,
                "plain_k_keys": plain},
    "targets": targets, "balancer_tests": balancer, "node_logs": logs, "raw": rows,
}
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=2)

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

print()
print(f"Proxy overhead -- {env['BENCH_DATE']}, {env['BENCH_NPROC']} x {env['BENCH_CPU']}, "
      f"wrk -t{env['BENCH_THREADS']} -c{env['BENCH_CONNECTIONS']} -d{env['BENCH_DURATION']}, "
      f"median of {env['BENCH_ROUNDS']} runs")
print(f"{'case':<44} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  errors  log lines/req  raw req/s")
labels = {"ours-local": "micro-tomcat node-1, key it owns", "ours-proxied": "micro-tomcat node-1 -> node-2",
          "ours-local-plain": "micro-tomcat node-1, key it owns (kN cookie)",
          "ours-proxied-plain": "micro-tomcat node-1 -> node-2 (kN cookie)",
          "nginx-direct": "nginx-1 direct", "haproxy": "HAProxy -> 3 x nginx (round-robin)"}
for case, r in cases.items():
    print(f"{labels.get(case, case):<44} {fmt(r['rps'], '>9.0f')} {fmt(r['p50_ms'], '>8.3f')} {fmt(r['p99_ms'], '>8.3f')}  "
          f"{r['failed'] or 'none':<6}  {fmt(r['node_log_lines_per_request'], '>13.2f')}  {' '.join(f'{x:.0f}' for x in r['raw_rps'])}")
print()
print(f"throughput ratio  ours proxied/local {fmt(ours_ratio, '.3f')}   HAProxy/direct {fmt(hap_ratio, '.3f')}   "
      f"-> ours is {fmt(ratio(ours_ratio, hap_ratio), '.2f')}x HAProxy's (target >= 1.5x)")
print(f"added p50         ours {ours_added:+.3f} ms   HAProxy {hap_added:+.3f} ms (target: ours <= HAProxy's)")
if plain:
    print(f"with kN cookies: ours proxied/local {fmt(plain['ours_proxied_over_local'], '.3f')} "
          f"({fmt(plain['ours_ratio_over_haproxy_ratio'], '.2f')}x HAProxy's), added p50 {plain['ours_added_p50_ms']:+.3f} ms; "
          f"local req/s {fmt(plain['local_rps_vs_session_style'], '.2f')}x the well-formed-cookie runs")
for p in per_round:
    print(f"  round {p['round']}: ratios {fmt(p['ours_ratio'], '.3f')} vs {fmt(p['haproxy_ratio'], '.3f')}, "
          f"added p50 {p['ours_added_p50_ms']:+.3f} vs {p['haproxy_added_p50_ms']:+.3f} ms")
if balancer:
    print(f"\nbalancer unit tests: {balancer['status']}")
    for line in balancer["lines"]:
        print(f"  {line}")
print()
for r in logs:
    print(f"{r['node']}: {r['warn_or_error_lines']} WARN/ERROR log lines")
print()
for name, met in targets.items():
    print(f"  {'MET   ' if met else 'MISSED'}  {name}")
print(f"\nraw numbers: {sys.argv[2]}")
PY
