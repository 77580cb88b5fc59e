#!/usr/bin/env bash
# The benchmark suite (issue 7): one command for every figure, a summary table and the raw numbers as JSON.
#
#   benches/suite.sh                 # about 25 minutes; summary on stdout, raw numbers in target/bench/suite.json
#   benches/suite.sh part members    # one part alone (members | writes | memory), results in target/bench/suite-run/
#   benches/suite.sh summary         # print the table and rewrite suite.json from the last run's results
#                                    # (re-reads target/bench/{cluster,sessions,proxy}.json as they are now)
#
# Parts, in order (each can be skipped: SKIP_CLUSTER=1 SKIP_SESSIONS=1 SKIP_PROXY=1, SKIP_CURVES=1 for the
# three curves, or one of SKIP_MEMBERS=1 SKIP_WRITES=1 SKIP_MEMORY=1):
#   cluster   `cargo bench --bench cluster -- detection convergence bandwidth` (failure detection at 3 nodes,
#             convergence at 3/10/20, gossip bandwidth at 3/20) -> target/bench/cluster.json;
#   sessions  benches/sessions.sh: session writes at 1 and 50 clients, leader failover and memory at 100,000
#             sessions, side by side with a 3-member etcd -> target/bench/sessions.json;
#   proxy     benches/proxy.sh: proxy overhead side by side with HAProxy in front of nginx -> target/bench/proxy.json;
#   members   curve: N in MEMBERS founders of our release binary; time until all N see all N up, gossip
#             bytes/s and CPU per node over BW_WINDOW s, and failure detection (kill -9 one non-leader node,
#             poll two survivors' /cluster/status every 20 ms until both say `down`);
#   writes    curve: 1 KiB session creates per second vs wrk connections (CLIENTS), 3 nodes, and a 3-member
#             etcd (1 KiB puts) alternating with it at each level unless WRITES_ETCD=0;
#   memory    curve: VmRSS (and peak VmHWM) per node vs sessions stored (MEM_STEPS, cumulative, one cluster):
#             written by HTTP (wrk, POST /api/sessions) up to MEM_HTTP_UPTO, beyond that loaded through
#             POST /cluster/restore with generated backup files (Import entries of 500 sessions, replicated and
#             fsynced like any write) because HTTP writes at a few hundred/s would take hours for 1M. A step
#             that would not fit in memory (estimated from the measured slope) is skipped and, instead, a
#             second series with MEM_SMALL_BYTES-byte sessions is tried up to that size.
#
# Knobs (environment; defaults in brackets):
#   CLUSTER_TRIALS [12]        detection trials of the cluster bench (its BENCH_TRIALS)
#   SESSIONS_ENV ["DURATION=10s ROUNDS=2 TRIALS=5 MEM_SESSIONS=100000"]   passed to benches/sessions.sh
#   PROXY_ENV ["DURATION=15s ROUNDS=2"]                                   passed to benches/proxy.sh
#   MEMBERS ["3 5 10 20 30 50"] BW_WINDOW [10] DETECT_TRIALS_SMALL [3] (N <= 10) DETECT_TRIALS_LARGE [2]
#   CONVERGE_TIMEOUT [180]     seconds; a size that does not converge ends the members curve there
#   CLIENTS ["1 10 50 100 200"] WRITES_DURATION [10s] WRITES_ETCD [1]
#   MEM_STEPS ["10000 100000 300000 1000000"] MEM_BYTES [1024] MEM_HTTP_UPTO [10000] MEM_SMALL_BYTES [100]
#   MEM_MAX_SECS [600]          no new memory step starts after this many seconds
#   MT_BIN                      benchmark this binary instead of building the working tree
#   QUIET_WAIT_MAX [1500]       seconds to wait for other benchmarks (wrk, benches/sessions.sh, ...) first
# Every process a part starts is recorded in its PIDS and stopped when it exits, even on failure or Ctrl-C.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
self=$root/benches/suite.sh

CLUSTER_TRIALS=${CLUSTER_TRIALS:-12}
SESSIONS_ENV=${SESSIONS_ENV:-"DURATION=10s ROUNDS=2 TRIALS=5 MEM_SESSIONS=100000"}
PROXY_ENV=${PROXY_ENV:-"DURATION=15s ROUNDS=2"}
MEMBERS=${MEMBERS:-"3 5 10 20 30 50"}
BW_WINDOW=${BW_WINDOW:-10}
DETECT_TRIALS_SMALL=${DETECT_TRIALS_SMALL:-3}
DETECT_TRIALS_LARGE=${DETECT_TRIALS_LARGE:-2}
CONVERGE_TIMEOUT=${CONVERGE_TIMEOUT:-180}
CLIENTS=${CLIENTS:-"1 10 50 100 200"}
WRITES_DURATION=${WRITES_DURATION:-10s}
WRITES_ETCD=${WRITES_ETCD:-1}
MEM_STEPS=${MEM_STEPS:-"10000 100000 300000 1000000"}
MEM_BYTES=${MEM_BYTES:-1024}
MEM_HTTP_UPTO=${MEM_HTTP_UPTO:-10000}
MEM_SMALL_BYTES=${MEM_SMALL_BYTES:-100}
MEM_MAX_SECS=${MEM_MAX_SECS:-600}

out_dir=$root/target/bench
work=$out_dir/suite-run
export WRK_LUA_DIR=$root/benches/wrk

# Processes: node-N of each part, etcd-N, wrk-fill, the running part (each with its STOPSIG).
. "$root/benches/lib.sh"

# ---------------------------------------------------------------- helpers shared by the parts
mem_available_mb() { awk '/^MemAvailable:/ {printf "%d", $2 / 1024}' /proc/meminfo; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# The probe: HTTP polling and timing in one Python process (curl per 20 ms poll would cost more CPU than
# what it measures), and the generator of backup files for the memory curve.
write_probe() {
  cat >"$work/probe.py" <<'PY'
import json, os, signal, struct, sys, time, urllib.request

def status(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url + "/cluster/status", timeout=timeout) as resp:
            return json.load(resp)
    except Exception:
        return None

def ups(doc):
    return sum(1 for m in doc.get("members", []) if m.get("state") == "up") if doc else 0

def converge(args):
    """converge SINCE COUNT TIMEOUT URL...: seconds from SINCE (epoch) until every URL lists COUNT members up."""
    since, count, timeout, urls = float(args[0]), int(args[1]), float(args[2]), args[3:]
    pending, polls = set(urls), 0
    while pending:
        for url in sorted(pending):
            polls += 1
            if ups(status(url)) >= count:
                pending.discard(url)
        if not pending:
            break
        if time.time() - since > timeout:
            print(json.dumps({"seconds": None, "pending": len(pending), "polls": polls}))
            return
        time.sleep(0.1)
    print(json.dumps({"seconds": round(time.time() - since, 3), "polls": polls}))

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def traffic(args):
    """traffic WINDOW url=pid...: gossip bytes/s, CPU % and RSS per node over WINDOW seconds."""
    window, pairs = float(args[0]), [a.split("=", 1) for a in args[1:]]
    def sample():
        out = []
        for url, pid in pairs:
            doc = status(url) or {}
            g = doc.get("gossip", {})
            out.append((g.get("bytes_sent"), g.get("bytes_received"), cpu_ticks(pid)))
        return time.monotonic(), out
    t0, a = sample()
    time.sleep(window)
    t1, b = sample()
    secs, hz = t1 - t0, os.sysconf("SC_CLK_TCK")
    sent = [(y[0] - x[0]) / secs for x, y in zip(a, b) if x[0] is not None and y[0] is not None]
    recv = [(y[1] - x[1]) / secs for x, y in zip(a, b) if x[1] is not None and y[1] is not None]
    cpu = [100.0 * (y[2] - x[2]) / hz / secs for x, y in zip(a, b)]
    rss = [rss_kb(pid) / 1024 for _, pid in pairs]
    med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2
    print(json.dumps({
        "window_s": round(secs, 3), "nodes_sampled": len(sent),
        "median_sent_bytes_per_s": round(med(sent)), "max_sent_bytes_per_s": round(max(sent)),
        "median_received_bytes_per_s": round(med(recv)), "max_received_bytes_per_s": round(max(recv)),
        "median_cpu_percent_per_node": round(med(cpu), 2), "total_cpu_percent": round(sum(cpu), 1),
        "median_rss_mb": round(med(rss), 1), "max_rss_mb": round(max(rss), 1)}))

def leader(args):
    doc = status(args[0])
    print((doc or {}).get("leader") or "")

def detect(args):
    """detect PID VICTIM INTERVAL TIMEOUT URL...: kill -9 PID, poll every URL until each reports VICTIM down."""
    pid, victim, interval, timeout, urls = int(args[0]), args[1], float(args[2]), float(args[3]), args[4:]
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    seen, polls, last_poll = {}, 0, start
    gaps = []
    while len(seen) < len(urls) and time.monotonic() - start < timeout:
        now = time.monotonic()
        gaps.append(now - last_poll)
        last_poll = now
        for url in urls:
            if url in seen:
                continue
            polls += 1
            doc = status(url, timeout=1.0)
            row = next((m for m in (doc or {}).get("members", []) if m.get("name") == victim), None)
            if row is not None and row.get("state") == "down":
                seen[url] = round(time.monotonic() - start, 4)
        time.sleep(interval)
    done = len(seen) == len(urls)
    print(json.dumps({"seconds": max(seen.values()) if done else None, "per_observer_s": list(seen.values()),
                      "polls": polls, "mean_poll_gap_ms": round(1000 * sum(gaps[1:]) / max(1, len(gaps) - 1), 1)}))

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def pstr(s):
    b = s.encode()
    return varint(len(b)) + b

def backup(args):
    """backup OUT COUNT BYTES TAG: a backup file (postcard, as proto::raft::encode_backup_file) of COUNT
    sessions of BYTES bytes of JSON each, ids TAG:index (16 bytes, big endian)."""
    out, count, nbytes, tag = args[0], int(args[1]), int(args[2]), int(args[3])
    now = int(time.time() * 1000)
    data = pstr('{"pad":"' + "x" * max(1, nbytes - 10) + '"}')
    tail = varint(1) + varint(now) + varint(now) + varint(1800 * 1000)  # version, created, last access, ttl
    with open(out, "wb") as f:
        f.write(b"MTBACK01" + pstr("bench-suite") + pstr("generator") + varint(0) + varint(now) + pstr("")
                + varint(count))
        for i in range(count):
            f.write(struct.pack(">QQ", tag, i) + data + tail)

def golden(args):
    """golden FILE: re-encode the repository's golden backup file with backup()'s encoding (self-check)."""
    raw = open(args[0], "rb").read()
    pos = [8]
    def rv():
        n = shift = 0
        while True:
            b = raw[pos[0]]; pos[0] += 1
            n |= (b & 0x7F) << shift; shift += 7
            if not b & 0x80:
                return n
    def rs():
        n = rv(); s = raw[pos[0]:pos[0] + n].decode(); pos[0] += n; return s
    cid, node, idx, created, cfg, count = rs(), rs(), rv(), rv(), rs(), rv()
    body = b"MTBACK01" + pstr(cid) + pstr(node) + varint(idx) + varint(created) + pstr(cfg) + varint(count)
    for _ in range(count):
        sid = raw[pos[0]:pos[0] + 16]; pos[0] += 16
        data, version, c, la, ttl = rs(), rv(), rv(), rv(), rv()
        body += sid + pstr(data) + varint(version) + varint(c) + varint(la) + varint(ttl)
    print("ok" if body == raw and pos[0] == len(raw) else "MISMATCH")

{"converge": converge, "traffic": traffic, "leader": leader, "detect": detect,
 "backup": backup, "golden": golden}[sys.argv[1]](sys.argv[2:])
PY
}

probe() { python3 "$work/probe.py" "$@"; }

# A micro-tomcat cluster for the curves: COUNT founders on free ports, data under DIR.
#   mt_cluster PREFIX COUNT DIR  -> sets MT_URLS[1..COUNT], MT_ARGS[i] (run arguments), config in DIR
declare -a MT_URLS=() MT_CLUSTER_ADDRS=()
mt_cluster_config() { # prefix count dir
  local prefix=$1 count=$2 dir=$3 i ports
  read -r -a ports <<<"$(free_ports $((2 * count)))"
  mkdir -p "$dir/data" "$dir/logs"
  cleanup_dirs+=("$dir/data")
  MT_URLS=("") # 1-based
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<cluster id=\"suite-$prefix\">"
    echo '  <gossip interval-ms="150" phi-threshold="8" dead-after-ms="5000"/>'
    echo "  <raft data-dir=\"$dir/data\" voters=\"3\" heartbeat-ms=\"100\" election-timeout-ms=\"600\"/>"
    echo '  <sessions ttl-seconds="1800" cookie="MTSESSIONID" max-bytes="1048576"/>'
    echo '  <balancer strategy="consistent-hash" key="session" retries="2"/>'
    echo '  <nodes>'
    for i in $(seq 1 "$count"); do
      echo "    <node name=\"node-$i\" http=\"127.0.0.1:${ports[$((i - 1))]}\" cluster=\"127.0.0.1:${ports[$((count + i - 1))]}\"/>"
      MT_URLS[$i]="http://127.0.0.1:${ports[$((i - 1))]}"
    done
    echo '  </nodes>'
    echo '</cluster>'
  } >"$dir/cluster-config.xml"
  "$bin" check-config "$dir/cluster-config.xml" >/dev/null || die "generated config rejected: $dir/cluster-config.xml"
}
mt_start() { # prefix dir n
  local prefix=$1 dir=$2 n=$3
  "$bin" run --config "$dir/cluster-config.xml" --name "node-$n" >>"$dir/logs/node-$n.log" 2>&1 &
  PIDS[$prefix-$n]=$!
}
mt_wait_ready() { # count: /readyz 200 on node-1..count
  wait_ready 120 "${MT_URLS[@]:1:$1}" || die "cluster not ready after 120 s"
}
log_warnings() { # prefix dir count -> one JSON line with WARN/ERROR counts per node
  local prefix=$1 dir=$2 count=$3 n total=0 c
  for n in $(seq 1 "$count"); do
    c=$(grep -c -E ' (WARN|ERROR) ' "$dir/logs/node-$n.log" 2>/dev/null || true)
    total=$((total + ${c:-0}))
  done
  local kinds
  kinds=$(cat "$dir"/logs/node-*.log 2>/dev/null | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +(WARN|ERROR) //; s/[0-9]+/N/g' |
    cut -c1-80 | sort | uniq -c | sort -rn | head -n 8 | jq -R -s -c 'split("\n") | map(select(. != ""))' || true)
  jq -nc --arg part "$prefix" --argjson total "$total" --argjson kinds "${kinds:-[]}" \
    '{kind: "log", part: $part, warn_or_error_lines: $total, top: $kinds}'
}

# ================================================================= part: members
part_members() {
  local results=$work/members.jsonl
  : >"$results"
  local n
  for n in $MEMBERS; do
    local dir=$work/members/n$n prefix=m$n trials
    trials=$DETECT_TRIALS_SMALL
    [ "$n" -gt 10 ] && trials=$DETECT_TRIALS_LARGE
    rm -rf "$dir"
    mt_cluster_config "$prefix" "$n" "$dir"
    wait_for_quiet
    log "members: starting $n nodes (load $(loadavg))"
    local since i conv
    since=$(date +%s.%N)
    for i in $(seq 1 "$n"); do mt_start "$prefix" "$dir" "$i"; done
    conv=$(probe converge "$since" "$n" "$CONVERGE_TIMEOUT" "${MT_URLS[@]:1:$n}")
    jq -c --argjson n "$n" --arg load "$(loadavg)" '{kind: "convergence", nodes: $n, loadavg: $load} + .' <<<"$conv" >>"$results"
    if [ "$(jq -r .seconds <<<"$conv")" = null ]; then
      log "members: $n nodes did not all see $n up within ${CONVERGE_TIMEOUT}s ($conv); stopping the curve here"
      for i in $(seq 1 "$n"); do stop_proc "$prefix-$i"; done
      log_warnings "members-$n" "$dir" "$n" >>"$results"
      rm -rf "$dir/data"
      break
    fi
    log "members: $n nodes converged in $(jq .seconds <<<"$conv") s"
    sleep 2
    local pairs=() tr
    for i in $(seq 1 "$n"); do pairs+=("${MT_URLS[$i]}=${PIDS[$prefix-$i]}"); done
    tr=$(probe traffic "$BW_WINDOW" "${pairs[@]}")
    jq -c --argjson n "$n" --arg load "$(loadavg)" '{kind: "bandwidth", nodes: $n, loadavg: $load} + .' <<<"$tr" >>"$results"
    log "members: $n nodes: $(jq -c . <<<"$tr")"
    local trial victim leader observers det k
    for trial in $(seq 1 "$trials"); do
      leader=$(probe leader "${MT_URLS[1]}")
      # victim: counting down from node-n, never the Raft leader (its death would add an election);
      # observers: the two lowest-numbered other nodes.
      victim=""
      for k in $(seq "$((n - trial + 1))" -1 1); do
        [ "node-$k" != "$leader" ] && { victim=$k; break; }
      done
      observers=()
      for k in $(seq 1 "$n"); do
        [ "$k" != "$victim" ] && [ "${#observers[@]}" -lt 2 ] && observers+=("${MT_URLS[$k]}")
      done
      det=$(probe detect "${PIDS[$prefix-$victim]}" "node-$victim" 0.02 30 "${observers[@]}")
      wait "${PIDS[$prefix-$victim]}" 2>/dev/null || true
      unset "PIDS[$prefix-$victim]"
      jq -c --argjson n "$n" --argjson trial "$trial" --arg victim "node-$victim" --arg leader "$leader" --arg load "$(loadavg)" \
        '{kind: "detection", nodes: $n, trial: $trial, victim: $victim, leader: $leader, loadavg: $load} + .' <<<"$det" >>"$results"
      log "members: $n nodes, trial $trial: killed node-$victim, both observers say down after $(jq .seconds <<<"$det") s (poll gap $(jq .mean_poll_gap_ms <<<"$det") ms)"
      if [ "$trial" -lt "$trials" ]; then
        mt_start "$prefix" "$dir" "$victim"
        since=$(date +%s.%N)
        conv=$(probe converge "$since" "$n" 60 "${observers[@]}" "${MT_URLS[$victim]}")
        [ "$(jq -r .seconds <<<"$conv")" != null ] || log "members: node-$victim not seen up again within 60 s"
      fi
    done
    for i in $(seq 1 "$n"); do stop_proc "$prefix-$i"; done
    log_warnings "members-$n" "$dir" "$n" >>"$results"
    rm -rf "$dir/data"
  done
}

# ================================================================= part: writes
part_writes() {
  local results=$work/writes.jsonl dir=$work/writes prefix=w
  : >"$results"
  rm -rf "$dir"
  mt_cluster_config "$prefix" 3 "$dir"
  local n
  for n in 1 2 3; do mt_start "$prefix" "$dir" "$n"; STOPSIG[$prefix-$n]=TERM; done
  mt_wait_ready 3
  local etcd_urls=() use_etcd=0
  if [ "$WRITES_ETCD" = 1 ] && command -v etcd >/dev/null; then
    use_etcd=1
    local ep i cluster_spec=""
    read -r -a ep <<<"$(free_ports 6)"
    mkdir -p "$dir/etcd-data"
    cleanup_dirs+=("$dir/etcd-data")
    for i in 1 2 3; do cluster_spec+="${cluster_spec:+,}e$i=http://127.0.0.1:${ep[$((i + 2))]}"; done
    for i in 1 2 3; do
      etcd --name "e$i" --data-dir "$dir/etcd-data/e$i" \
        --listen-client-urls "http://127.0.0.1:${ep[$((i - 1))]}" --advertise-client-urls "http://127.0.0.1:${ep[$((i - 1))]}" \
        --listen-peer-urls "http://127.0.0.1:${ep[$((i + 2))]}" --initial-advertise-peer-urls "http://127.0.0.1:${ep[$((i + 2))]}" \
        --initial-cluster "$cluster_spec" --initial-cluster-state new --initial-cluster-token suite \
        >>"$dir/logs/etcd-$i.log" 2>&1 &
      PIDS[etcd-$i]=$!
      etcd_urls+=("http://127.0.0.1:${ep[$((i - 1))]}")
    done
    local deadline=$((SECONDS + 60)) ok
    while :; do
      ok=0
      for i in 0 1 2; do curl -s --max-time 1 "${etcd_urls[$i]}/health" | grep -q '"health":"true"' && ok=$((ok + 1)); done
      [ "$ok" -eq 3 ] && break
      [ $SECONDS -lt $deadline ] || die "etcd not healthy after 60 s"
      sleep 0.3
    done
  fi
  sleep 2
  local c threads system url script raw json role seq=0
  for c in $CLIENTS; do
    threads=2
    [ "$c" -lt 2 ] && threads=1
    for system in micro-tomcat etcd; do
      [ "$system" = etcd ] && [ "$use_etcd" = 0 ] && continue
      if [ "$system" = micro-tomcat ]; then
        url=${MT_URLS[1]} script=sessions_post.lua
        role=follower
        [ "$(probe leader "${MT_URLS[1]}")" = node-1 ] && role=leader
      else
        url=${etcd_urls[0]} script=etcd_put.lua role=member-1
      fi
      seq=$((seq + 1))
      raw=$dir/wrk-$seq-$system-c$c.txt
      wait_for_quiet
      local load
      load=$(loadavg)
      WRK_RUN_TAG="suite$seq" wrk -t"$threads" -c"$c" -d"$WRITES_DURATION" --latency -s "$root/benches/wrk/$script" "$url" >"$raw" 2>&1 ||
        log "wrk exited non-zero ($raw)"
      json=$(sed -n 's/^WRKJSON //p' "$raw")
      [ -n "$json" ] || { log "wrk printed no result line, see $raw"; continue; }
      jq -c --arg system "$system" --argjson clients "$c" --arg role "$role" --arg load "$load" --arg raw "$raw" \
        '{kind: "writes", system: $system, clients: $clients, entry: $role, loadavg_before: $load, raw: $raw} + .' <<<"$json" >>"$results"
      log "$(printf 'writes: %-12s c=%-3s %8.1f writes/s  p50 %8.2f ms  p99 %8.2f ms  failed %s' "$system" "$c" \
        "$(jq .ok_rps <<<"$json")" "$(jq .p50_ms <<<"$json")" "$(jq .p99_ms <<<"$json")" "$(jq .failed <<<"$json")")"
    done
  done
  for n in 1 2 3; do stop_proc "$prefix-$n"; done
  for n in 1 2 3; do stop_proc "etcd-$n"; done
  log_warnings writes "$dir" 3 >>"$results"
}

# ================================================================= part: memory
mem_count() { # url -> sessions this node holds (its applied state), or 0
  local c
  c=$(curl -s --max-time 5 "$1/cluster/sessions/digest" | jq -r '.sessions // 0' 2>/dev/null || true)
  echo "${c:-0}"
}

MEM_SKIPPED="" # steps the last mem_series did not load (too big for memory or out of time)
mem_series() { # label bytes http_upto steps...
  local label=$1 bytes=$2 http_upto=$3
  shift 3
  local results=$work/memory.jsonl dir=$work/memory-$label prefix=mem$label n
  rm -rf "$dir"
  mt_cluster_config "$prefix" 3 "$dir"
  for n in 1 2 3; do mt_start "$prefix" "$dir" "$n"; STOPSIG[$prefix-$n]=TERM; done
  mt_wait_ready 3
  sleep 2
  local empty_hwm=0
  for n in 1 2 3; do
    jq -nc --arg series "$label" --argjson bytes "$bytes" --arg node "node-$n" --argjson rss "$(rss_mb "${PIDS[$prefix-$n]}")" \
      '{kind: "memory", series: $series, session_bytes: $bytes, target: 0, node: $node, rss_mb: $rss, sessions: 0, via: "-"}' >>"$results"
  done
  empty_hwm=$(hwm_mb "${PIDS[$prefix-1]}")
  local current=0 step skipped=() tag=0 last_hwm=$empty_hwm
  for step in "$@"; do
    local why=""
    [ $((SECONDS - mem_started)) -lt "$MEM_MAX_SECS" ] || why="time budget MEM_MAX_SECS=$MEM_MAX_SECS s spent"
    [ "${#skipped[@]}" -eq 0 ] || why="a smaller step was skipped"
    if [ -n "$why" ]; then
      log "memory[$label]: not loading $step: $why"
      jq -nc --arg series "$label" --argjson target "$step" --arg why "$why" \
        '{kind: "memory_skipped", series: $series, target: $target, why: $why}' >>"$results"
      skipped+=("$step")
      continue
    fi
    # Will it fit? Peak per node grows about linearly: extrapolate the measured slope (or assume
    # 3 x the payload before the first point), for three nodes, and keep 40% of MemAvailable free.
    local need avail
    if [ "$current" -gt 0 ]; then
      need=$(awk -v h="$last_hwm" -v e="$empty_hwm" -v c="$current" -v s="$step" 'BEGIN {printf "%d", 3 * (e + (h - e) / c * s)}')
    else
      need=$(awk -v b="$bytes" -v s="$step" 'BEGIN {printf "%d", 3 * 3 * s * (b + 200) / 1048576}')
    fi
    avail=$(mem_available_mb)
    if [ "$need" -gt $((avail * 6 / 10)) ]; then
      log "memory: $step sessions of $bytes B would need about $need MB for 3 nodes; MemAvailable is $avail MB: skipped"
      jq -nc --arg series "$label" --argjson target "$step" --argjson need "$need" --argjson avail "$avail" \
        '{kind: "memory_skipped", series: $series, target: $target, why: "estimated \($need) MB for 3 nodes > 60% of MemAvailable \($avail) MB"}' >>"$results"
      skipped+=("$step")
      continue
    fi
    wait_for_quiet
    local t0=$SECONDS via
    if [ "$step" -le "$http_upto" ]; then
      via=http
      log "memory[$label]: writing sessions over HTTP until node-1 holds $step (wrk -c50, $bytes B each)"
      WRK_SESSION_BYTES=$bytes wrk -t2 -c50 -d1200s -s "$root/benches/wrk/sessions_post_sized.lua" "${MT_URLS[1]}" \
        >"$dir/fill-$step.txt" 2>&1 &
      PIDS[wrk-fill]=$!
      STOPSIG[wrk-fill]=INT
      while [ "$(mem_count "${MT_URLS[1]}")" -lt "$step" ]; do
        kill -0 "${PIDS[wrk-fill]}" 2>/dev/null || die "wrk stopped early, see $dir/fill-$step.txt"
        [ $((SECONDS - t0)) -lt 1200 ] || die "memory: fewer than $step sessions after 20 minutes"
        sleep 0.5
      done
      stop_proc wrk-fill
      jq -c --arg series "$label" --argjson target "$step" '{kind: "memory_fill", series: $series, target: $target} + .' \
        <<<"$(sed -n 's/^WRKJSON //p' "$dir/fill-$step.txt")" >>"$results" || true
    else
      via=restore
      local have chunk file answer leader_url
      have=$(mem_count "${MT_URLS[1]}")
      leader_url=${MT_URLS[1]}
      case "$(probe leader "${MT_URLS[1]}")" in node-2) leader_url=${MT_URLS[2]} ;; node-3) leader_url=${MT_URLS[3]} ;; esac
      log "memory[$label]: loading $((step - have)) sessions of $bytes B through POST /cluster/restore (files of <= 100000)"
      while [ "$have" -lt "$step" ]; do
        chunk=$((step - have))
        [ "$chunk" -gt 100000 ] && chunk=100000
        tag=$((tag + 1))
        file=$dir/restore-$tag.mtbackup
        probe backup "$file" "$chunk" "$bytes" "$((step * 1000 + tag))"
        answer=$(curl -s --max-time 900 -X POST --data-binary @"$file" -H 'Content-Type: application/octet-stream' "$leader_url/cluster/restore")
        rm -f "$file"
        [ "$(jq -r '.imported // 0' <<<"$answer" 2>/dev/null)" = "$chunk" ] || die "restore of $chunk sessions answered: $answer"
        have=$((have + chunk))
      done
    fi
    local load_secs=$((SECONDS - t0)) deadline=$((SECONDS + 300))
    for n in 1 2 3; do
      while [ "$(mem_count "${MT_URLS[$n]}")" -lt "$step" ]; do
        [ $SECONDS -lt $deadline ] || die "node-$n holds only $(mem_count "${MT_URLS[$n]}") of $step sessions after 5 minutes"
        sleep 0.5
      done
    done
    sleep 5 # let a snapshot started by the load finish: steady state
    local count rss hwm disk
    for n in 1 2 3; do
      count=$(mem_count "${MT_URLS[$n]}")
      rss=$(rss_mb "${PIDS[$prefix-$n]}") hwm=$(hwm_mb "${PIDS[$prefix-$n]}")
      disk=$(du -sm "$dir/data/node-$n" 2>/dev/null | cut -f1)
      jq -nc --arg series "$label" --argjson bytes "$bytes" --argjson target "$step" --arg node "node-$n" --argjson rss "$rss" \
        --argjson hwm "$hwm" --argjson count "$count" --arg via "$via" --argjson secs "$load_secs" --argjson disk "${disk:-0}" \
        --arg load "$(loadavg)" \
        '{kind: "memory", series: $series, session_bytes: $bytes, target: $target, node: $node, rss_mb: $rss, peak_mb: $hwm,
          sessions: $count, via: $via, load_seconds: $secs, disk_mb: $disk, loadavg: $load}' >>"$results"
      log "memory[$label]: node-$n holds $count sessions: VmRSS $rss MB (peak $hwm MB), disk $disk MB"
    done
    last_hwm=$(hwm_mb "${PIDS[$prefix-1]}")
    for n in 2 3; do last_hwm=$(awk -v a="$last_hwm" -v b="$(hwm_mb "${PIDS[$prefix-$n]}")" 'BEGIN {print (a > b ? a : b)}'); done
    current=$step
  done
  for n in 1 2 3; do stop_proc "$prefix-$n"; done
  log_warnings "memory-$label" "$dir" 3 >>"$results"
  rm -rf "$dir/data"
  MEM_SKIPPED="${skipped[*]}"
}

part_memory() {
  : >"$work/memory.jsonl"
  [ "$(probe golden "$root/proto/tests/golden/backup_file.bin")" = ok ] ||
    die "the backup generator does not reproduce proto/tests/golden/backup_file.bin; the format changed"
  mem_started=$SECONDS
  # shellcheck disable=SC2086
  mem_series "${MEM_BYTES}b" "$MEM_BYTES" "$MEM_HTTP_UPTO" $MEM_STEPS
  local skipped=$MEM_SKIPPED
  if [ -n "$skipped" ] && [ "$MEM_SMALL_BYTES" != "$MEM_BYTES" ]; then
    # Smaller sessions for the sizes that did not fit: a second, fresh cluster, a point at 100k for the slope.
    log "memory: trying $MEM_SMALL_BYTES-byte sessions for $skipped"
    mem_started=$SECONDS
    # shellcheck disable=SC2086
    mem_series "${MEM_SMALL_BYTES}b" "$MEM_SMALL_BYTES" 0 100000 $skipped
  fi
}

# ================================================================= summary: table + JSON
summarize() { # the table and target/bench/suite.json from the parts' results and $work/meta.env
  [ -f "$work/meta.env" ] || die "no $work/meta.env: run the suite first"
  # shellcheck disable=SC1091
  source "$work/meta.env"
  export BENCH_NPROC BENCH_CPU BENCH_MEM BENCH_START BENCH_END BENCH_UPTIME_START BENCH_UPTIME_END BENCH_SECONDS MT_SOURCE
  python3 - "$out_dir" "$work" <<'PY'
import json, os, statistics, sys

out_dir, work = sys.argv[1], sys.argv[2]
env = os.environ

def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None

def load_lines(path):
    try:
        return [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        return []

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(v, spec="", unit=""):
    return "-" if v is None else format(v, spec) + unit

parts = load_lines(f"{work}/parts.jsonl")
ran = {p["part"]: p for p in parts}
# A part's JSON counts only if this suite run produced it (not a stale file from an earlier run).
def fresh(name, path):
    return load_json(path) if name in ran and ran[name]["exit_status"] == 0 else None

cluster = fresh("cluster", f"{out_dir}/cluster.json")
sessions = fresh("sessions", f"{out_dir}/sessions.json")
proxy = fresh("proxy", f"{out_dir}/proxy.json")
members = load_lines(f"{work}/members.jsonl") if "members" in ran else []
writes = load_lines(f"{work}/writes.jsonl") if "writes" in ran else []
memory = load_lines(f"{work}/memory.jsonl") if "memory" in ran else []

rows = []  # (figure, ours, peer, ratio, target, met)
def row(figure, ours, peer="", ratio="", target="", met=None):
    rows.append({"figure": figure, "ours": ours, "peer": peer, "ratio": ratio, "target": target,
                 "met": None if met is None else bool(met)})

if cluster:
    d = cluster.get("detection") or {}
    if d:
        row("failure detection, 3 nodes (median of %d)" % d.get("trials", 0), fmt(d.get("median_s"), ".2f", " s"),
            "Tomcat McastService default: 3 s (on paper)", fmt(d["median_s"] / 3.0, ".2f", "x") if d.get("median_s") else "",
            "median <= 1.5 s", d.get("median_s") is not None and d["median_s"] <= 1.5)
    for c in cluster.get("convergence") or []:
        row(f"convergence, {c['nodes']} nodes (median)", fmt(c.get("median_s"), ".2f", " s"), "", "",
            "<= 3 s at 20" if c["nodes"] == 20 else "", (c["median_s"] <= 3) if c["nodes"] == 20 else None)
    for b in cluster.get("bandwidth") or []:
        row(f"gossip bandwidth, {b['nodes']} nodes (per node)", fmt(b.get("median_sent_bytes_per_s"), ",.0f", " B/s sent"))
if sessions:
    s = sessions["summary"]
    for c in ("c1", "c50"):
        ours = s["load"][c].get("micro-tomcat via node-1")
        peer = s["load"][c].get("etcd via member-1")
        if ours and peer:
            r = ours["writes_per_s"] / peer["writes_per_s"] if peer["writes_per_s"] else None
            row(f"session writes, {c[1:]} client(s), via node-1", fmt(ours["writes_per_s"], ".0f", "/s") + f" p99 {ours['p99_ms']:.1f} ms",
                "etcd " + fmt(peer["writes_per_s"], ".0f", "/s") + f" p99 {peer['p99_ms']:.1f} ms", fmt(r, ".2f", "x"),
                ">= 2x etcd writes/s", r is not None and r >= 2)
    fo_m, fo_e = s["failover"]["micro-tomcat"], s["failover"]["etcd"]
    row("leader failover, client clock (median)", fmt(fo_m.get("median_s"), ".2f", " s"),
        "etcd " + fmt(fo_e.get("median_s"), ".2f", " s"),
        fmt(fo_m["median_s"] / fo_e["median_s"], ".2f", "x") if fo_m.get("median_s") and fo_e.get("median_s") else "",
        "<= etcd and <= 1 s", fo_m.get("median_s") is not None and fo_e.get("median_s") is not None
        and fo_m["median_s"] <= fo_e["median_s"] and fo_m["median_s"] <= 1.0)
    row("leader failover, first accepted write (median)", fmt(fo_m.get("first_ack_median_s"), ".2f", " s"),
        "etcd " + fmt(fo_e.get("first_ack_median_s"), ".2f", " s"),
        fmt(fo_m["first_ack_median_s"] / fo_e["first_ack_median_s"], ".2f", "x")
        if fo_m.get("first_ack_median_s") and fo_e.get("first_ack_median_s") else "")
    rm, re_ = s["rss"]["micro-tomcat"], s["rss"]["etcd"]
    n = sessions["settings"]["memory_sessions"]
    row(f"memory, max RSS per node at {n:,} x 1 KiB sessions", fmt(rm.get("max_mb"), ".0f", " MB"),
        "etcd " + fmt(re_.get("max_mb"), ".0f", " MB"),
        fmt(rm["max_mb"] / re_["max_mb"], ".2f", "x") if rm.get("max_mb") and re_.get("max_mb") else "",
        "<= 300 MB", rm.get("max_mb") is not None and rm["max_mb"] <= 300)
if proxy:
    p = proxy["summary"]
    row("proxy: throughput proxied/local", fmt(p["ours_proxied_over_local"], ".3f"),
        "HAProxy/direct nginx " + fmt(p["haproxy_over_direct"], ".3f"), fmt(p["ours_ratio_over_haproxy_ratio"], ".2f", "x"),
        ">= 1.5x HAProxy's", proxy["targets"]["ratio_ge_1.5x_haproxy_ratio"])
    row("proxy: added p50", f"{p['ours_added_p50_ms']:+.3f} ms", f"HAProxy {p['haproxy_added_p50_ms']:+.3f} ms", "",
        "<= HAProxy's", proxy["targets"]["added_p50_le_haproxy_added_p50"])

# ---- curves
curve_members = []
for n in sorted({r["nodes"] for r in members if "nodes" in r}):
    conv = next((r for r in members if r["kind"] == "convergence" and r["nodes"] == n), {})
    bw = next((r for r in members if r["kind"] == "bandwidth" and r["nodes"] == n), {})
    det = [r for r in members if r["kind"] == "detection" and r["nodes"] == n]
    secs = [r["seconds"] for r in det]
    curve_members.append({
        "nodes": n, "converged_s": conv.get("seconds"),
        "sent_bytes_per_s_per_node": bw.get("median_sent_bytes_per_s"), "received_bytes_per_s_per_node": bw.get("median_received_bytes_per_s"),
        "cpu_percent_per_node": bw.get("median_cpu_percent_per_node"), "cpu_percent_total": bw.get("total_cpu_percent"),
        "rss_mb_per_node": bw.get("median_rss_mb"),
        "detection_trials": len(det), "detection_median_s": median(secs), "detection_max_s": max([x for x in secs if x is not None], default=None),
        "detection_raw_s": secs, "poll_gap_ms": median([r.get("mean_poll_gap_ms") for r in det]),
        "loadavg": bw.get("loadavg") or conv.get("loadavg")})
curve_writes = []
for c in sorted({r["clients"] for r in writes if r["kind"] == "writes"}):
    ours = next((r for r in writes if r["kind"] == "writes" and r["clients"] == c and r["system"] == "micro-tomcat"), None)
    peer = next((r for r in writes if r["kind"] == "writes" and r["clients"] == c and r["system"] == "etcd"), None)
    curve_writes.append({
        "clients": c, "entry": ours and ours["entry"],
        "writes_per_s": ours and ours["ok_rps"], "p50_ms": ours and ours["p50_ms"], "p99_ms": ours and ours["p99_ms"],
        "failed": ours and ours["failed"],
        "etcd_writes_per_s": peer and peer["ok_rps"], "etcd_p50_ms": peer and peer["p50_ms"], "etcd_p99_ms": peer and peer["p99_ms"],
        "etcd_failed": peer and peer["failed"],
        "ratio": (ours["ok_rps"] / peer["ok_rps"]) if ours and peer and peer["ok_rps"] else None,
        "loadavg": ours and ours["loadavg_before"]})
curve_memory = []
for series in sorted({r["series"] for r in memory if r["kind"] == "memory"}, key=lambda s: -int(s[:-1])):
    for target in sorted({r["target"] for r in memory if r["kind"] == "memory" and r["series"] == series}):
        pts = [r for r in memory if r["kind"] == "memory" and r["series"] == series and r["target"] == target]
        curve_memory.append({
            "series": series, "session_bytes": pts[0]["session_bytes"], "target": target,
            "sessions": min(r["sessions"] for r in pts), "via": pts[0]["via"],
            "rss_mb_per_node": {r["node"]: r["rss_mb"] for r in pts}, "max_rss_mb": max(r["rss_mb"] for r in pts),
            "median_rss_mb": median([r["rss_mb"] for r in pts]),
            "max_peak_mb": max((r.get("peak_mb") or 0) for r in pts) or None,
            "disk_mb_per_node": max((r.get("disk_mb") or 0) for r in pts) or None,
            "load_seconds": pts[0].get("load_seconds"), "loadavg": pts[0].get("loadavg")})
    for r in memory:
        if r["kind"] == "memory_skipped" and r["series"] == series:
            curve_memory.append({"series": series, "target": r["target"], "sessions": r["target"], "skipped": r["why"]})
# bytes per session from consecutive points of a series
for series in {m["series"] for m in curve_memory}:
    pts = [m for m in curve_memory if m["series"] == series and "max_rss_mb" in m]
    for a, b in zip(pts, pts[1:]):
        if b["sessions"] > a["sessions"]:
            b["rss_bytes_per_added_session"] = round((b["median_rss_mb"] - a["median_rss_mb"]) * 1048576 / (b["sessions"] - a["sessions"]))

doc = {
    "machine": {"nproc": int(env["BENCH_NPROC"]), "cpu": env["BENCH_CPU"], "memory": env["BENCH_MEM"],
                "start": env["BENCH_START"], "end": env["BENCH_END"],
                "uptime_start": env["BENCH_UPTIME_START"].strip(), "uptime_end": env["BENCH_UPTIME_END"].strip()},
    "micro_tomcat": env.get("MT_SOURCE"), "seconds": int(env["BENCH_SECONDS"]), "parts": parts,
    "table": rows,
    "curves": {"members": curve_members, "writes_vs_clients": curve_writes, "memory_vs_sessions": curve_memory},
    "logs": [r for r in members + writes + memory if r.get("kind") == "log"],
    "sources": {"cluster": cluster, "sessions": sessions and sessions.get("summary"), "sessions_targets": sessions and sessions.get("targets"),
                "proxy": proxy and proxy.get("summary"), "proxy_targets": proxy and proxy.get("targets")},
    "raw": {"members": members, "writes": writes, "memory": memory},
}
with open(f"{out_dir}/suite.json", "w") as f:
    json.dump(doc, f, indent=2)

print()
print(f"micro-tomcat benchmark suite -- {env['BENCH_START']} .. {env['BENCH_END']} ({int(env['BENCH_SECONDS']) // 60} min), "
      f"{env['BENCH_NPROC']} x {env['BENCH_CPU']}, {env['BENCH_MEM']}")
print(f"load at start: {env['BENCH_UPTIME_START'].strip()}")
print(f"load at end:   {env['BENCH_UPTIME_END'].strip()}")
for p in parts:
    print(f"  part {p['part']:<9} exit {p['exit_status']}  {p['seconds']:>5} s  load {p['loadavg_before']} -> {p['loadavg_after']}")
print()
w = max([len(r["figure"]) for r in rows] + [6])
print(f"{'figure':<{w}}  {'ours':<28} {'peer (same run)':<42} {'ratio':>7}  {'target':<22} met")
for r in rows:
    met = "" if r["met"] is None else ("MET" if r["met"] else "MISSED")
    print(f"{r['figure']:<{w}}  {r['ours']:<28} {r['peer']:<42} {r['ratio']:>7}  {r['target']:<22} {met}")
if curve_members:
    print("\nmembers: convergence, gossip per node, CPU, detection (kill -9, both observers say down)")
    print(f"{'N':>4} {'converged':>10} {'sent B/s':>10} {'recv B/s':>10} {'CPU%/node':>9} {'CPU% all':>8} {'RSS MB':>7} {'detect med':>10} {'max':>6}  raw")
    for m in curve_members:
        print(f"{m['nodes']:>4} {fmt(m['converged_s'], '.2f', ' s'):>10} {fmt(m['sent_bytes_per_s_per_node'], ',.0f'):>10} "
              f"{fmt(m['received_bytes_per_s_per_node'], ',.0f'):>10} {fmt(m['cpu_percent_per_node'], '.1f'):>9} "
              f"{fmt(m['cpu_percent_total'], '.0f'):>8} {fmt(m['rss_mb_per_node'], '.0f'):>7} "
              f"{fmt(m['detection_median_s'], '.2f', ' s'):>10} {fmt(m['detection_max_s'], '.2f'):>6}  {m['detection_raw_s']}")
if curve_writes:
    print("\nsession writes (1 KiB creates via node-1) vs clients, and etcd puts (1 KiB) in the same run")
    print(f"{'clients':>7} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'etcd w/s':>9} {'etcd p50':>8} {'etcd p99':>8} {'ratio':>6}  failed")
    for c in curve_writes:
        print(f"{c['clients']:>7} {fmt(c['writes_per_s'], '.0f'):>9} {fmt(c['p50_ms'], '.2f'):>8} {fmt(c['p99_ms'], '.2f'):>8} "
              f"{fmt(c['etcd_writes_per_s'], '.0f'):>9} {fmt(c['etcd_p50_ms'], '.2f'):>8} {fmt(c['etcd_p99_ms'], '.2f'):>8} "
              f"{fmt(c['ratio'], '.2f'):>6}  {c['failed']}/{c['etcd_failed']}")
if curve_memory:
    print("\nmemory per node vs sessions stored (3 nodes, every node holds every session; B/added session from the median node)")
    print(f"{'series':>6} {'sessions':>9} {'via':>8} {'RSS MB node-1/2/3':>18} {'median':>7} {'peak MB':>8} {'disk MB':>8} {'B/added session':>15} {'load s':>6}")
    for m in curve_memory:
        if "skipped" in m:
            print(f"{m['series']:>6} {m['sessions']:>9,} skipped: {m['skipped']}")
        else:
            per = "/".join(f"{v:.0f}" for _, v in sorted(m["rss_mb_per_node"].items()))
            print(f"{m['series']:>6} {m['sessions']:>9,} {m['via']:>8} {per:>18} {m['median_rss_mb']:>7.0f} {fmt(m['max_peak_mb'], '.0f'):>8} "
                  f"{fmt(m['disk_mb_per_node'], '.0f'):>8} {fmt(m.get('rss_bytes_per_added_session'), ','):>15} {fmt(m['load_seconds']):>6}")
for l in doc["logs"]:
    print(f"log {l['part']}: {l['warn_or_error_lines']} WARN/ERROR lines; most frequent: {l['top'][:3]}")
print(f"\nraw numbers: {out_dir}/suite.json (and cluster.json, sessions.json, proxy.json)")
PY
}

# ================================================================= part dispatch (child processes)
bin=${MT_BIN:-$work/micro-tomcat}
if [ "${1:-}" = summary ]; then # re-print the table and rewrite suite.json from the last run's results
  summarize
  exit 0
fi
if [ "${1:-}" = part ]; then
  [ -x "$bin" ] || die "no binary at $bin (run benches/suite.sh once, or set MT_BIN)"
  mkdir -p "$work/logs"
  write_probe
  case "${2:-}" in
    members) part_members ;;
    writes) part_writes ;;
    memory) part_memory ;;
    *) die "unknown part '${2:-}' (members | writes | memory)" ;;
  esac
  exit 0
fi

# ================================================================= the suite
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required"

rm -rf "$work"
mkdir -p "$work/logs"
: >"$work/parts.jsonl"
suite_started=$SECONDS
start_date=$(date -u)
start_uptime=$(uptime)

wait_for_quiet
mt_binary
export MT_SOURCE

run_part() { # name command... : runs one part as a child process, records status, time and load
  local name=$1 t0=$SECONDS load0 status=0
  shift
  load0=$(loadavg)
  log "=== $name: $* (log: $work/logs/$name.log)"
  "$@" >"$work/logs/$name.log" 2>&1 &
  PIDS[part]=$!
  STOPSIG[part]=TERM
  wait "${PIDS[part]}" || status=$?
  unset "PIDS[part]"
  jq -nc --arg name "$name" --argjson status "$status" --argjson secs $((SECONDS - t0)) --arg l0 "$load0" --arg l1 "$(loadavg)" \
    '{part: $name, exit_status: $status, seconds: $secs, loadavg_before: $l0, loadavg_after: $l1}' >>"$work/parts.jsonl"
  log "=== $name: exit $status after $((SECONDS - t0)) s"
  tail -n 40 "$work/logs/$name.log" | sed 's/^/    /' >&2
}

skip() { [ -n "${!1:-}" ] && [ "${!1}" != 0 ]; }
if ! skip SKIP_CLUSTER; then
  wait_for_quiet
  run_part cluster env BENCH_TRIALS="$CLUSTER_TRIALS" cargo bench --bench cluster -- detection convergence bandwidth
fi
if ! skip SKIP_SESSIONS; then
  wait_for_quiet
  # shellcheck disable=SC2086
  run_part sessions env $SESSIONS_ENV MT_BIN="$bin" MT_SOURCE="$MT_SOURCE" "$root/benches/sessions.sh"
fi
if ! skip SKIP_PROXY; then
  wait_for_quiet
  # shellcheck disable=SC2086
  run_part proxy env $PROXY_ENV MT_BIN="$bin" MT_SOURCE="$MT_SOURCE" "$root/benches/proxy.sh"
fi
if ! skip SKIP_CURVES; then
  skip SKIP_MEMBERS || run_part members env MT_BIN="$bin" "$self" part members
  skip SKIP_WRITES || run_part writes env MT_BIN="$bin" "$self" part writes
  skip SKIP_MEMORY || run_part memory env MT_BIN="$bin" "$self" part memory
fi

# ================================================================= summary: table + JSON
{
  printf 'BENCH_NPROC=%q\n' "$(nproc)"
  printf 'BENCH_CPU=%q\n' "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  printf 'BENCH_MEM=%q\n' "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  printf 'BENCH_START=%q\n' "$start_date"
  printf 'BENCH_END=%q\n' "$(date -u)"
  printf 'BENCH_UPTIME_START=%q\n' "$start_uptime"
  printf 'BENCH_UPTIME_END=%q\n' "$(uptime)"
  printf 'BENCH_SECONDS=%q\n' "$((SECONDS - suite_started))"
  printf 'MT_SOURCE=%q\n' "$MT_SOURCE"
} >"$work/meta.env"
summarize
