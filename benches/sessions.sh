#!/usr/bin/env bash
# Sessions replicated through Raft: micro-tomcat's session store against a 3-member etcd cluster,
# measured side by side in one run, on loopback only.
#
#   benches/sessions.sh            # about 10-12 minutes; results in target/bench/sessions.json
#
# What it measures (see the "Sessions (Raft)" section of BENCHMARKS.md for results):
#   1. write throughput and latency: 1 KiB session creates (POST /api/sessions) vs 1 KiB etcd puts of
#      new keys (POST /v3/kv/put on the JSON gateway), wrk with keep-alive, 1 client and 50 clients,
#      each configuration ROUNDS times alternating systems (ours, etcd, ours, etcd), median reported;
#   2. leader failover: kill -9 the leader, then write to a survivor until one write is acknowledged;
#   3. memory: resident set size of each node after MEM_SESSIONS 1 KiB sessions (etcd too, for context).
#
# Knobs (environment): DURATION=15s ROUNDS=2 TRIALS=10 MEM_SESSIONS=100000;
#   MT_BIN=path   benchmark that binary instead of building the working tree (e.g. a build of a commit
#                 while the working tree is mid-edit); MT_SOURCE="..." says in the JSON what it was built from.
# Every process this script starts is recorded in PIDS and killed on exit, even on failure or Ctrl-C.
# Working files (configs, data, logs, raw wrk output) live in target/bench/sessions-run/, wiped at the
# start of each run, so the script can be re-run as is; data dirs are deleted at exit, logs kept.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-2}
TRIALS=${TRIALS:-10}
MEM_SESSIONS=${MEM_SESSIONS:-100000}

out_dir=$root/target/bench
work=$out_dir/sessions-run
results=$work/results.jsonl          # one JSON object per measurement; summarised at the end
export WRK_LUA_DIR=$root/benches/wrk # where the wrk scripts find common.lua

# Fixed loopback ports (checked free below): micro-tomcat http 1808N / cluster 1700N,
# etcd member N client N2379 / peer N2380.
MT_HTTP=(18081 18082 18083)
MT_CLUSTER=(17001 17002 17003)
ETCD_CLIENT=(12379 22379 32379)
ETCD_PEER=(12380 22380 32380)
ETCD_INITIAL_CLUSTER="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"

# Processes (mt-N, etcd-N) are killed with -9 at exit (lib.sh's default STOPSIG).
. "$root/benches/lib.sh"
# Data dirs can be large (100k sessions, etcd's bbolt file); logs stay for inspection.
cleanup_dirs+=("$work/mt-data" "$work/etcd-data")

# ---------------------------------------------------------------- prerequisites
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v jq >/dev/null || need+=(jq)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} (Debian 12 ships etcd 3.4)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required (failover timing, summary)"
# Debian's package may start an etcd service on the default ports; ours use other ports, so it
# would only add noise. Say so rather than touch a process this script did not start.
if pgrep -x etcd >/dev/null; then log "warning: an etcd is already running (not ours): results get noisier"; fi

require_free_ports "17001-17003, 18081-18083, N2379/N2380" \
  "${MT_HTTP[@]}" "${ETCD_CLIENT[@]}" "${ETCD_PEER[@]}" "${MT_CLUSTER[@]}"

rm -rf "$work"
mkdir -p "$work/logs" "$work/wrk" "$work/mt-data" "$work/etcd-data"
: >"$results"

# A private copy: others may rebuild target/release while we restart nodes in the failover trials.
mt_binary

# ---------------------------------------------------------------- micro-tomcat cluster
# The repository's cluster-config.xml with other ports and the data under the run folder.
# Timings are the shipped defaults (gossip 150 ms, Raft heartbeat 100 ms, election timeout 300 ms).
mt_config=$work/cluster-config.xml
cat >"$mt_config" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<cluster id="bench">
  <gossip interval-ms="150" phi-threshold="8" dead-after-ms="5000"/>
  <raft data-dir="$work/mt-data" voters="3"/>
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

mt_url() { echo "http://127.0.0.1:${MT_HTTP[$(($1 - 1))]}"; } # node number -> base URL

mt_start() { # n: start node-n (keeps its data dir across restarts)
  local n=$1
  "$bin" run --config "$mt_config" --name "node-$n" >>"$work/logs/node-$n.log" 2>&1 &
  PIDS[mt-$n]=$!
}

mt_wait_ready() { # wait until /readyz answers 200 on all three nodes
  wait_ready 60 "$(mt_url 1)" "$(mt_url 2)" "$(mt_url 3)" ||
    die "micro-tomcat not ready on all nodes after 60 s (logs: $work/logs/node-*.log)"
}

mt_leader() { # prints the leader's node number, asking the first node that names one
  local n leader
  for n in 1 2 3; do
    leader=$(curl -s --max-time 1 "$(mt_url "$n")/cluster/status" | jq -r '.leader // empty' 2>/dev/null) || true
    if [[ "$leader" =~ ^node-([123])$ ]]; then echo "${BASH_REMATCH[1]}"; return 0; fi
  done
  return 1
}

mt_leader_url() { # the leader's http_addr as listed in "members" (what a client would use)
  curl -s --max-time 1 "$(mt_url 1)/cluster/status" |
    jq -r '.leader as $l | .members[] | select(.name == $l) | "http://" + .http_addr'
}

mt_start_cluster() {
  local n
  for n in 1 2 3; do mt_start "$n"; done
  mt_wait_ready
}

mt_stop_cluster() { local n; for n in 1 2 3; do stop_proc "mt-$n"; done; }

# ---------------------------------------------------------------- etcd cluster
# Defaults except addresses: fsync on every commit, heartbeat 100 ms, election timeout 1000 ms.
etcd_url() { echo "http://127.0.0.1:${ETCD_CLIENT[$(($1 - 1))]}"; }

etcd_start() { # n: start member en (same flags and data dir on restart; etcd then ignores --initial-*)
  local n=$1 i=$(($1 - 1))
  etcd --name "e$n" --data-dir "$work/etcd-data/e$n" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-cluster "$ETCD_INITIAL_CLUSTER" --initial-cluster-state new --initial-cluster-token bench \
    >>"$work/logs/etcd-$n.log" 2>&1 &
  PIDS[etcd-$n]=$!
}

etcd_wait_ready() { # /health is true once the member sees a leader
  local deadline=$((SECONDS + 60)) n ok
  while :; do
    ok=0
    for n in 1 2 3; do
      curl -s --max-time 1 "$(etcd_url "$n")/health" | grep -q '"health":"true"' && ok=$((ok + 1))
    done
    [ "$ok" -eq 3 ] && return 0
    [ $SECONDS -lt $deadline ] || die "etcd not healthy on all members after 60 s (logs: $work/logs/etcd-*.log)"
    sleep 0.2
  done
}

etcd_leader() { # prints the leader's member number: the member whose own id equals the leader id
  local n status
  for n in 1 2 3; do
    status=$(curl -s --max-time 1 -X POST -d '{}' "$(etcd_url "$n")/v3/maintenance/status") || continue
    if [ "$(jq -r '.header.member_id == .leader' <<<"$status")" = true ]; then echo "$n"; return 0; fi
  done
  return 1
}

etcd_start_cluster() {
  local n
  for n in 1 2 3; do etcd_start "$n"; done
  etcd_wait_ready
  # A put through the JSON gateway must work before we load it (key "probe", value "ok").
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"key":"cHJvYmU=","value":"b2s="}' "$(etcd_url 1)/v3/kv/put")" = 200 ] ||
    die "etcd put through the JSON gateway failed"
}

etcd_stop_cluster() { local n; for n in 1 2 3; do stop_proc "etcd-$n"; done; }

# ---------------------------------------------------------------- load (wrk)
wrk_seq=0
run_wrk() { # system target role clients threads round url script [extra env...]
  local system=$1 target=$2 role=$3 clients=$4 threads=$5 round=$6 url=$7 script=$8
  wrk_seq=$((wrk_seq + 1))
  local raw=$work/wrk/$wrk_seq-$system-$target-c$clients-r$round.txt
  WRK_RUN_TAG="r$wrk_seq" wrk -t"$threads" -c"$clients" -d"$DURATION" --latency -s "$root/benches/wrk/$script" "$url" >"$raw" 2>&1 ||
    log "wrk exited non-zero ($raw)"
  local json
  json=$(sed -n 's/^WRKJSON //p' "$raw")
  [ -n "$json" ] || die "wrk printed no result line, see $raw"
  # wrk's own "Non-2xx or 3xx responses" line, kept verbatim as a cross-check of errors.status.
  local non2xx
  non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$raw")
  jq -c --arg system "$system" --arg target "$target" --arg role "$role" --argjson clients "$clients" \
    --argjson round "$round" --arg url "$url" --arg raw "$raw" --arg non2xx "${non2xx:-0}" \
    '{kind: "load", system: $system, target: $target, role: $role, clients: $clients, round: $round,
      url: $url, raw: $raw, non2xx_line: ($non2xx | tonumber)} + .' <<<"$json" >>"$results"
  log "$(printf '%-13s %-8s %-9s c=%-2s round %s: %8.1f writes/s  p50 %7.2f ms  p99 %7.2f ms  failed %s' \
    "$system" "$target" "($role)" "$clients" "$round" \
    "$(jq .ok_rps <<<"$json")" "$(jq .p50_ms <<<"$json")" "$(jq .p99_ms <<<"$json")" "$(jq .failed <<<"$json")")"
}

# ---------------------------------------------------------------- failover probe
# Kills PID with SIGKILL, then measures two things from that instant:
#  - "seconds": a client writing to URL in a loop, 2 s timeout per try (as curl --max-time 2), retrying at
#    once on any failure, a new connection per try: time until its first acknowledged write. A try that
#    was sent to a node still waiting on the dead leader hangs until the timeout, so this includes the
#    client's timeout when that happens;
#  - "first_ack_seconds": the same writes also started every 50 ms in parallel (each 2 s timeout): time
#    until ANY write is acknowledged, i.e. when the system accepts writes again, whatever the client timeout.
# kind "session": POST /api/sessions with 1 KiB, ack = 201; kind "etcd": put of a new key, 1 KiB, ack = 200.
# "failures" counts the failed tries of both kinds together (status code or exception name).
failover_probe() { # pid url kind tag
  python3 - "$@" <<'PY'
import base64, datetime, json, os, signal, sys, threading, time, urllib.error, urllib.request
pid, url, kind, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
b64 = lambda s: base64.b64encode(s.encode()).decode()
lock = threading.Lock()
failures, acks, counter = {}, [], [0]

def attempt():
    """One write; returns True when acknowledged. Records the failure kind otherwise."""
    with lock:
        counter[0] += 1
        n = counter[0]
    if kind == "session":
        data, ok = json.dumps({"pad": "x" * 1014}, separators=(",", ":")), 201
    else:
        data, ok = json.dumps({"key": b64(f"failover/{tag}/{n}"), "value": b64("x" * 1024)}), 200
    req = urllib.request.Request(url, data=data.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            what = resp.status
    except urllib.error.HTTPError as err:
        what = err.code
    except Exception as err:  # connection refused or reset, timeout
        what = type(err).__name__
    with lock:
        if what == ok:
            acks.append(time.monotonic() - start)
            return True
        failures[str(what)] = failures.get(str(what), 0) + 1
    return False

done = threading.Event()
def stagger():
    while not done.wait(0.05):
        threading.Thread(target=attempt, daemon=True).start()

killed_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
start = time.monotonic()
os.kill(pid, signal.SIGKILL)
threading.Thread(target=stagger, daemon=True).start()
seconds, tries = None, 0
while time.monotonic() - start < 60:
    tries += 1
    if attempt():
        seconds = round(time.monotonic() - start, 4)
        break
done.set()
with lock:
    first = round(min(acks), 4) if acks else None
    print(json.dumps({"seconds": seconds, "first_ack_seconds": first, "tries": tries,
                      "killed_at": killed_at, "failures": dict(failures)}))
PY
}

# ---------------------------------------------------------------- memory
# Resident set size now, and its peak over the process's life (VmHWM: e.g. while a snapshot is built).

# wrk knows only durations, so: run wrk -c50 in the background for up to 10 minutes, poll the store's
# count every 0.5 s, and stop wrk with SIGINT (it then prints its summary) once MEM_SESSIONS is reached.
fill() { # system url script count_url jq_count_filter [count_request_body]
  local system=$1 url=$2 script=$3 count_url=$4 filter=$5 body=${6:-} raw=$work/wrk/fill-$1.txt count
  wrk -t2 -c50 -d600s -s "$root/benches/wrk/$script" "$url" >"$raw" 2>&1 &
  PIDS[wrk-fill]=$!
  local deadline=$((SECONDS + 600))
  while :; do
    sleep 0.5
    if [ -n "$body" ]; then
      count=$(curl -s --max-time 2 -X POST -d "$body" "$count_url" | jq -r "$filter" 2>/dev/null || true)
    else
      count=$(curl -s --max-time 2 "$count_url" | jq -r "$filter" 2>/dev/null || true)
    fi
    [ "${count:-0}" -ge "$MEM_SESSIONS" ] && break
    kill -0 "${PIDS[wrk-fill]}" 2>/dev/null || die "wrk stopped early at ${count:-0} writes, see $raw"
    [ $SECONDS -lt $deadline ] || die "$system: only ${count:-0} writes after 10 minutes"
  done
  kill -INT "${PIDS[wrk-fill]}"
  wait "${PIDS[wrk-fill]}" || true
  unset "PIDS[wrk-fill]"
  jq -c --arg system "$system" '{kind: "fill", system: $system} + .' <<<"$(sed -n 's/^WRKJSON //p' "$raw")" >>"$results"
  log "$system: $count writes stored, fill ran at $(sed -n 's/^WRKJSON //p' "$raw" | jq .ok_rps) writes/s"
}

# ================================================================= run
log "work dir $work"
log "starting micro-tomcat (3 nodes) and etcd (3 members) on loopback"
mt_start_cluster
etcd_start_cluster
sleep 2 # let both settle (first snapshots, compaction timers) before measuring

# ---- 1. throughput and latency, alternating systems each round
for round in $(seq 1 "$ROUNDS"); do
  for level in "1 1" "50 2"; do
    read -r clients threads <<<"$level"
    # Ours through node-1 (the headline: a client talks to any node), then through the node of the
    # other role, so leader and follower paths are both seen: the leader if node-1 follows, else a follower.
    leader=$(mt_leader) || die "micro-tomcat has no leader before the load run"
    if [ "$leader" = 1 ]; then
      role1=leader other=2 other_target=follower
    else
      role1=follower other=$leader other_target=leader
    fi
    other_url=$(mt_url "$other")
    [ "$other_target" = leader ] && other_url=$(mt_leader_url)
    run_wrk micro-tomcat node-1 "$role1" "$clients" "$threads" "$round" "$(mt_url 1)" sessions_post.lua
    eleader=$(etcd_leader) || die "etcd has no leader before the load run"
    erole=follower; [ "$eleader" = 1 ] && erole=leader
    run_wrk etcd member-1 "$erole" "$clients" "$threads" "$round" "$(etcd_url 1)" etcd_put.lua
    run_wrk micro-tomcat "$other_target" "$other_target" "$clients" "$threads" "$round" "$other_url" sessions_post.lua
  done
done

# ---- 2. leader failover
log "failover: micro-tomcat, $TRIALS trials"
for trial in $(seq 1 "$TRIALS"); do
  mt_wait_ready
  sleep 1 # a steady leader with current heartbeats, as in production
  victim=$(mt_leader) || die "micro-tomcat has no leader before failover trial $trial"
  survivor=$((victim % 3 + 1))
  probe=$(failover_probe "${PIDS[mt-$victim]}" "$(mt_url "$survivor")/api/sessions" session "$trial")
  wait "${PIDS[mt-$victim]}" 2>/dev/null || true
  unset "PIDS[mt-$victim]"
  new_leader=$(mt_leader || echo "?")
  jq -c --argjson trial "$trial" --arg victim "node-$victim" --arg via "node-$survivor" --arg new "node-$new_leader" \
    '{kind: "failover", system: "micro-tomcat", trial: $trial, killed: $victim, via: $via, new_leader: $new} + .' <<<"$probe" >>"$results"
  log "micro-tomcat trial $trial: killed leader node-$victim, write via node-$survivor acked after $(jq .seconds <<<"$probe") s (any write: $(jq .first_ack_seconds <<<"$probe") s) (failures $(jq -c .failures <<<"$probe")), new leader node-$new_leader"
  mt_start "$victim"
done
mt_wait_ready

log "failover: etcd, $TRIALS trials"
for trial in $(seq 1 "$TRIALS"); do
  etcd_wait_ready
  sleep 1
  victim=$(etcd_leader) || die "etcd has no leader before failover trial $trial"
  survivor=$((victim % 3 + 1))
  probe=$(failover_probe "${PIDS[etcd-$victim]}" "$(etcd_url "$survivor")/v3/kv/put" etcd "$trial")
  wait "${PIDS[etcd-$victim]}" 2>/dev/null || true
  unset "PIDS[etcd-$victim]"
  new_leader=$(etcd_leader || echo "?")
  jq -c --argjson trial "$trial" --arg victim "e$victim" --arg via "e$survivor" --arg new "e$new_leader" \
    '{kind: "failover", system: "etcd", trial: $trial, killed: $victim, via: $via, new_leader: $new} + .' <<<"$probe" >>"$results"
  log "etcd trial $trial: killed leader e$victim, put via e$survivor acked after $(jq .seconds <<<"$probe") s (any put: $(jq .first_ack_seconds <<<"$probe") s) (failures $(jq -c .failures <<<"$probe")), new leader e$new_leader"
  etcd_start "$victim"
done
etcd_wait_ready

# ---- 3. memory at MEM_SESSIONS sessions, each system fresh and alone on the machine
log "memory: fresh micro-tomcat cluster, $MEM_SESSIONS sessions of 1 KiB"
mt_stop_cluster
etcd_stop_cluster
rm -rf "$work/mt-data" "$work/etcd-data"
mt_start_cluster
sleep 2
for n in 1 2 3; do
  jq -nc --arg node "node-$n" --argjson rss "$(rss_mb "${PIDS[mt-$n]}")" \
    '{kind: "rss", system: "micro-tomcat", phase: "empty", node: $node, rss_mb: $rss, sessions: 0}' >>"$results"
done
fill micro-tomcat "$(mt_url 1)" sessions_post.lua "$(mt_url 1)/cluster/sessions/digest" '.sessions'
# Every node must have applied them all (followers may lag the acknowledgement a little).
deadline=$((SECONDS + 120))
for n in 1 2 3; do
  while :; do
    count=$(curl -s --max-time 2 "$(mt_url "$n")/cluster/sessions/digest" | jq -r '.sessions // 0' 2>/dev/null || true)
    count=${count:-0}
    [ "$count" -ge "$MEM_SESSIONS" ] && break
    [ $SECONDS -lt $deadline ] || die "node-$n holds only $count sessions after the fill"
    sleep 0.5
  done
done
sleep 3 # let any snapshot started by the fill finish, so RSS is the steady state
for n in 1 2 3; do
  count=$(curl -s --max-time 2 "$(mt_url "$n")/cluster/sessions/digest" | jq -r '.sessions')
  rss=$(rss_mb "${PIDS[mt-$n]}") hwm=$(hwm_mb "${PIDS[mt-$n]}")
  jq -nc --arg node "node-$n" --argjson rss "$rss" --argjson hwm "$hwm" --argjson count "$count" \
    '{kind: "rss", system: "micro-tomcat", phase: "full", node: $node, rss_mb: $rss, peak_mb: $hwm, sessions: $count}' >>"$results"
  log "node-$n: $count sessions, VmRSS $rss MB (peak $hwm MB)"
done
# On-disk size and the last snapshot's size (the node logs "built session snapshot ... bytes=N").
snapshot_bytes=$(grep -ho 'built session snapshot.*bytes=[0-9]*' "$work"/logs/node-*.log | tail -n 1 | sed 's/.*bytes=//' || true)
jq -nc --argjson bytes "${snapshot_bytes:-null}" '{kind: "snapshot", system: "micro-tomcat", last_snapshot_bytes: $bytes}' >>"$results"
du -sk "$work/mt-data"/* | awk '{print $2, $1}' | while read -r dir kb; do
  jq -nc --arg node "$(basename "$dir")" --argjson kb "$kb" '{kind: "disk", system: "micro-tomcat", node: $node, mb: ($kb / 1024)}' >>"$results"
done
mt_stop_cluster

log "memory: fresh etcd cluster, $MEM_SESSIONS keys of 1 KiB (for context)"
etcd_start_cluster
sleep 2
WRK_RUN_TAG=fill fill etcd "$(etcd_url 1)" etcd_put.lua "$(etcd_url 1)/v3/kv/range" '.count // "0" | tonumber' \
  '{"key":"YmVuY2gvZmlsbC8=","range_end":"YmVuY2gvZmlsbDA=","count_only":true}'
sleep 3
for n in 1 2 3; do
  count=$(ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:${ETCD_CLIENT[$((n - 1))]}" get --prefix bench/fill/ --keys-only -w json --limit 1 | jq -r '.count')
  rss=$(rss_mb "${PIDS[etcd-$n]}") hwm=$(hwm_mb "${PIDS[etcd-$n]}")
  jq -nc --arg node "e$n" --argjson rss "$rss" --argjson hwm "$hwm" --argjson count "$count" \
    '{kind: "rss", system: "etcd", phase: "full", node: $node, rss_mb: $rss, peak_mb: $hwm, sessions: $count}' >>"$results"
  log "e$n: $count keys, VmRSS $rss MB (peak $hwm MB)"
done
etcd_stop_cluster

# ---------------------------------------------------------------- summary: table + JSON
# Machine facts for the record.
export BENCH_NPROC=$(nproc)
export BENCH_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
export BENCH_DATE=$(date -u)
export BENCH_SOURCE=$MT_SOURCE
export BENCH_ETCD=$(etcd --version | awk '/^etcd Version/ {print $3}')
export BENCH_WRK=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}')
export BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_TRIALS=$TRIALS BENCH_MEM_SESSIONS=$MEM_SESSIONS
python3 - "$results" "$out_dir/sessions.json" <<'PY'
import json, os, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1])]
env = os.environ

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def load(system, target, clients):
    runs = [r for r in rows if r["kind"] == "load" and r["system"] == system
            and r["target"] == target and r["clients"] == clients]
    if not runs:
        return None
    return {
        "runs": len(runs),
        "roles": sorted({r["role"] for r in runs}),
        "writes_per_s": median([r["ok_rps"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "failed": sum(r["failed"] for r in runs),
        "raw_writes_per_s": [r["ok_rps"] for r in runs],
        "raw_p99_ms": [r["p99_ms"] for r in runs],
    }

summary = {"load": {}, "failover": {}, "rss": {}}
for clients in (1, 50):
    key = f"c{clients}"
    summary["load"][key] = {
        "micro-tomcat via node-1": load("micro-tomcat", "node-1", clients),
        "micro-tomcat via leader": load("micro-tomcat", "leader", clients),
        "micro-tomcat via follower": load("micro-tomcat", "follower", clients),
        "etcd via member-1": load("etcd", "member-1", clients),
    }
for system in ("micro-tomcat", "etcd"):
    trials = [r for r in rows if r["kind"] == "failover" and r["system"] == system]
    secs = [t["seconds"] for t in trials]
    ok = [s for s in secs if s is not None]
    first = [t["first_ack_seconds"] for t in trials if t["first_ack_seconds"] is not None]
    summary["failover"][system] = {
        "trials": len(trials), "acknowledged": len(ok),
        # the brief's measure: one client, 2 s timeout per try, retry at once
        "median_s": median(ok), "max_s": max(ok) if ok else None, "raw_s": secs,
        # when the system accepted a write again (tries started every 50 ms)
        "first_ack_median_s": median(first), "first_ack_max_s": max(first) if first else None,
        "first_ack_raw_s": [t["first_ack_seconds"] for t in trials],
        "failures": [t["failures"] for t in trials],
    }
for system in ("micro-tomcat", "etcd"):
    full = [r for r in rows if r["kind"] == "rss" and r["system"] == system and r["phase"] == "full"]
    empty = [r for r in rows if r["kind"] == "rss" and r["system"] == system and r["phase"] == "empty"]
    summary["rss"][system] = {
        "per_node_mb": {r["node"]: r["rss_mb"] for r in full},
        "peak_per_node_mb": {r["node"]: r.get("peak_mb") for r in full},
        "sessions_per_node": {r["node"]: r["sessions"] for r in full},
        "empty_per_node_mb": {r["node"]: r["rss_mb"] for r in empty},
        "max_mb": max((r["rss_mb"] for r in full), default=None),
    }

def ratio(a, b):
    return a / b if a is not None and b else None

ours = summary["load"]
t = {}
c50, c1 = ours["c50"], ours["c1"]
m50, e50 = c50["micro-tomcat via node-1"], c50["etcd via member-1"]
m1, e1 = c1["micro-tomcat via node-1"], c1["etcd via member-1"]
fo_m, fo_e = summary["failover"]["micro-tomcat"], summary["failover"]["etcd"]
no_errors = all(r["failed"] == 0 for r in rows if r["kind"] == "load")
t["writes_50_clients_ge_2x_etcd"] = bool(m50 and e50 and m50["writes_per_s"] >= 2 * e50["writes_per_s"])
t["p99_50_clients_le_half_etcd"] = bool(m50 and e50 and m50["p99_ms"] <= 0.5 * e50["p99_ms"])
t["writes_1_client_ge_2x_etcd"] = bool(m1 and e1 and m1["writes_per_s"] >= 2 * e1["writes_per_s"])
# The issue's target is "median <= etcd's and <= 1 s": both parts, each judged separately, and the
# comparison with etcd also by the first accepted write (independent of the client's 2 s timeout).
t["failover_median_le_etcd"] = bool(
    fo_m["median_s"] is not None and fo_e["median_s"] is not None and fo_m["median_s"] <= fo_e["median_s"])
t["failover_first_accepted_write_median_le_etcd"] = bool(
    fo_m["first_ack_median_s"] is not None and fo_e["first_ack_median_s"] is not None
    and fo_m["first_ack_median_s"] <= fo_e["first_ack_median_s"])
t["failover_median_le_1s"] = bool(fo_m["median_s"] is not None and fo_m["median_s"] <= 1.0)
mx = summary["rss"]["micro-tomcat"]["max_mb"]
t[f"rss_le_300mb_at_{env['BENCH_MEM_SESSIONS']}_sessions"] = bool(mx is not None and mx <= 300)
t["no_errors_under_load"] = no_errors

doc = {
    "machine": {"nproc": int(env["BENCH_NPROC"]), "cpu": env["BENCH_CPU"], "date": env["BENCH_DATE"]},
    "versions": {"micro_tomcat": env["BENCH_SOURCE"],
                 "etcd": env["BENCH_ETCD"], "wrk": env["BENCH_WRK"]},
    "settings": {"duration": env["BENCH_DURATION"], "rounds": int(env["BENCH_ROUNDS"]),
                 "failover_trials": int(env["BENCH_TRIALS"]), "memory_sessions": int(env["BENCH_MEM_SESSIONS"]),
                 "body_bytes": 1024,
                 "micro_tomcat": "raft heartbeat 100 ms, election timeout 600-900 ms, gossip 150 ms",
                 "etcd": "defaults: heartbeat 100 ms, election timeout 1000 ms, fsync on"},
    "summary": summary, "targets": t, "raw": rows,
}
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=2)

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

print()
print(f"Sessions (Raft) -- {env['BENCH_DATE']}, {env['BENCH_NPROC']} x {env['BENCH_CPU']}, "
      f"median of {env['BENCH_ROUNDS']} runs of {env['BENCH_DURATION']} each")
print(f"{'clients':>7}  {'system / entry node':<36} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x etcd w/s':>10} {'p99/etcd':>8}  errors")
for clients in (1, 50):
    group = summary["load"][f"c{clients}"]
    base = group["etcd via member-1"]
    for name, r in group.items():
        if r is None:
            continue
        label = name + (f" ({'/'.join(r['roles'])})" if name.endswith("node-1") or name.startswith("etcd") else "")
        wr = ratio(r["writes_per_s"], base and base["writes_per_s"])
        pr = ratio(r["p99_ms"], base and base["p99_ms"])
        print(f"{clients:>7}  {label:<36} {r['writes_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{fmt(wr, '>10.2f')} {fmt(pr, '>8.2f')}  {r['failed'] or 'none'}")
print()
for system in ("micro-tomcat", "etcd"):
    f = summary["failover"][system]
    print(f"failover {system:<13} median {fmt(f['median_s'], '.3f')} s  max {fmt(f['max_s'], '.3f')} s  "
          f"({f['acknowledged']}/{f['trials']} acknowledged)  raw {f['raw_s']}")
    print(f"  first write accepted (tries every 50 ms): median {fmt(f['first_ack_median_s'], '.3f')} s  "
          f"max {fmt(f['first_ack_max_s'], '.3f')} s")
for system in ("micro-tomcat", "etcd"):
    r = summary["rss"][system]
    print(f"RSS at {env['BENCH_MEM_SESSIONS']} x 1 KiB, {system:<13} " +
          "  ".join(f"{k} {v:.0f} MB (peak {r['peak_per_node_mb'][k]:.0f})" for k, v in r["per_node_mb"].items()))
print()
for name, met in t.items():
    print(f"  {'MET   ' if met else 'MISSED'}  {name}")
print(f"\nraw numbers: {sys.argv[2]}")
PY
