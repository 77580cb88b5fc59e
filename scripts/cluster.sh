#!/usr/bin/env bash
# Runs a local micro-tomcat cluster: node-1..3 from cluster-config.xml, node-4.. joining by seed.
# Logs, data, pid files and the cluster key live under one folder ($MT_HOME, default <repo>/.cluster).
# The nodes share a cluster key made on the first start ($MT_HOME/secrets/cluster.key, given to each
# node as MICRO_TOMCAT_GOSSIP_KEY): gossip is sealed and the peer port takes nobody else's writes.
# A MICRO_TOMCAT_GOSSIP_KEY already set in the environment wins over the file.
#
#   scripts/cluster.sh up N          build (cargo's output shown), start N nodes, wait until every one is
#                                    up and ready under a Raft leader, print the status table
#   scripts/cluster.sh status        print the status table (asks the first node that answers)
#   scripts/cluster.sh start NAME    start one node that is not running (a founder, or one added earlier)
#   scripts/cluster.sh stop NAME     stop one node (SIGTERM, then SIGKILL after 15 s)
#   scripts/cluster.sh restart NAME  stop it, start it with the same arguments, wait until it is ready
#   scripts/cluster.sh add N         start N more nodes joining by seed (node-K: HTTP 8080+K, cluster 7000+K)
#   scripts/cluster.sh down          stop every node of this folder, however it was started
#   scripts/cluster.sh clean         after down: delete $MT_HOME (logs, data, the key) entirely
#
# Every node, however started, writes <data-dir>/micro-tomcat.pid while it runs; `down` and `stop`
# signal those and the script's own $MT_HOME/pids/NAME.pid, but only a pid whose /proc cmdline is a
# micro-tomcat using that data dir (a pid file left by kill -9 may name an unrelated process by now).
#
# Environment: MT_HOME (the folder), MT_CONFIG (the config file, default cluster-config.xml),
# MT_PROFILE (cargo profile, default release; dev = target/debug), CARGO_TARGET_DIR, MT_WAIT_SECONDS
# (how long to wait for readiness, default 60), MT_ADD_HTTP_BASE / MT_ADD_CLUSTER_BASE (port bases of
# added nodes, default 8080 / 7000).
set -euo pipefail

root=$(cd "$(dirname "$(realpath "$0")")/.." && pwd)
home=$(realpath -m "${MT_HOME:-$root/.cluster}")
profile=${MT_PROFILE:-release}
config=$(realpath -m "${MT_CONFIG:-$root/cluster-config.xml}")
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/$profile/micro-tomcat
[ "$profile" = dev ] && bin=$target_dir/debug/micro-tomcat
wait_seconds=${MT_WAIT_SECONDS:-60}
http_base=${MT_ADD_HTTP_BASE:-8080}
cluster_base=${MT_ADD_CLUSTER_BASE:-7000}
usage="usage: scripts/cluster.sh up N | status [--format table|json|xml] | start NAME | stop NAME | restart NAME | add N | down | clean"

die() { echo "cluster.sh: $*" >&2; exit 1; }

build() {
  echo "building micro-tomcat ($profile profile; cargo's progress follows)..."
  (cd "$root" && cargo build --profile "$profile" --bin micro-tomcat) || die "build failed"
}

need_bin() { [ -x "$bin" ] || build; }

# The file's nodes, as "name http cluster" lines.
file_nodes() {
  "$bin" check-config "$config" | awk '$2 == "http" && $4 == "cluster" {print $1, $3, $5}'
}

# The cluster key: MICRO_TOMCAT_GOSSIP_KEY if set, else $home/secrets/cluster.key, made once
# (32 random bytes, base64, readable by this user only) and kept, as the data dirs are.
cluster_key() {
  [ -n "${MICRO_TOMCAT_GOSSIP_KEY:-}" ] && return 0
  local file=$home/secrets/cluster.key
  if [ ! -s "$file" ]; then
    mkdir -p "$home/secrets"
    chmod 700 "$home/secrets"
    (umask 077 && head -c 32 /dev/urandom | base64 >"$file.tmp" && mv "$file.tmp" "$file")
    echo "made a cluster key for this cluster: $file"
  fi
  MICRO_TOMCAT_GOSSIP_KEY=$(cat "$file")
  export MICRO_TOMCAT_GOSSIP_KEY
}

# Whether process $1 is a micro-tomcat whose data dir is $2: `--data-dir` in its command line
# (resolved against its working directory), or else an open file under $2.
is_node_of() {
  local pid=$1 dir=$2 arg data="" want_value=0 cwd fd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  local -a argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline" 2>/dev/null || return 1
  # `nohup micro-tomcat ...` for the moment before nohup execs the node.
  [ "${#argv[@]}" -ge 1 ] && [ "$(basename -- "${argv[0]}")" = nohup ] && argv=("${argv[@]:1}")
  [ "${#argv[@]}" -ge 1 ] && [[ "$(basename -- "${argv[0]}")" == micro-tomcat* ]] || return 1
  for arg in "${argv[@]}"; do
    if [ "$want_value" = 1 ]; then data=$arg; want_value=0; continue; fi
    case "$arg" in
      --data-dir) want_value=1 ;;
      --data-dir=*) data=${arg#--data-dir=} ;;
    esac
  done
  if [ -n "$data" ]; then
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    [[ "$data" = /* ]] || data=$cwd/$data
    [ "$(realpath -m "$data")" = "$(realpath -m "$dir")" ]
    return
  fi
  for fd in "/proc/$pid"/fd/*; do
    [[ "$(readlink "$fd" 2>/dev/null)" == "$dir"/* ]] && return 0
  done
  return 1
}

# The live pids of node $1: from its own pid file and from ours, checked as above.
node_pids() {
  local name=$1 file pid
  local -a found=()
  for file in "$home/data/$name/micro-tomcat.pid" "$home/pids/$name.pid"; do
    [ -s "$file" ] || continue
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] || continue
    is_node_of "$pid" "$home/data/$name" || continue
    [[ " ${found[*]-} " == *" $pid "* ]] || found+=("$pid")
  done
  [ "${#found[@]}" -gt 0 ] && printf '%s\n' "${found[@]}"
  return 0
}

# Every node name this folder knows: the file's founders, nodes started here, data dirs.
known_names() {
  {
    [ -x "$bin" ] && file_nodes 2>/dev/null | awk '{print $1}'
    local path
    for path in "$home"/nodes/*.args "$home"/pids/*.pid; do
      [ -e "$path" ] && basename "$path" | sed 's/\.[a-z]*$//'
    done
    for path in "$home"/data/*/; do
      [ -d "$path" ] && basename "$path"
    done
  } | sort -u -V
}

running_names() {
  local name
  while read -r name; do
    [ -n "$(node_pids "$name")" ] && echo "$name"
  done < <(known_names)
  return 0
}

url_of() { [ -s "$home/urls/$1" ] && cat "$home/urls/$1"; }

status_url() {
  local name url
  while read -r name; do
    url=$(url_of "$name") || continue
    echo "$url"
    return 0
  done < <(running_names)
  return 1
}

# The first line of an HTTP GET to $1 (http://IP:PORT) path $2, over bash's /dev/tcp (no curl needed).
http_status_line() {
  local hostport=${1#http://}
  (
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$2" "$hostport" >&3
    read -r -t 2 line <&3 || exit 1
    echo "${line%$'\r'}"
  ) 2>/dev/null
}

# The body of /readyz of $1, for a failure message.
readyz_body() {
  local hostport=${1#http://}
  (
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 1
    printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$hostport" >&3
    timeout 2 cat <&3 | tr -d '\r' | sed '1,/^$/d'
  ) 2>/dev/null || echo "does not answer"
}

# Starts node $1 with the args recorded in $home/nodes/$1.args; records our pid file.
launch() {
  local name=$1
  local -a args=()
  mapfile -t args <"$home/nodes/$name.args"
  mkdir -p "$home/logs" "$home/pids" "$home/data"
  nohup "$bin" "${args[@]}" >>"$home/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$home/pids/$name.pid"
  echo "started $name (pid $!): $(cat "$home/nodes/$name.addrs" 2>/dev/null), log $home/logs/$name.log"
}

# Records the arguments of founder $1 (from the config file); fails if $1 is not one.
record_founder() {
  local name=$1 fname http cluster
  while read -r fname http cluster; do
    if [ "$fname" = "$name" ]; then
      mkdir -p "$home/nodes" "$home/urls"
      printf '%s\n' run --config "$config" --name "$name" --data-dir "$home/data/$name" \
        >"$home/nodes/$name.args"
      echo "http $http, cluster $cluster" >"$home/nodes/$name.addrs"
      echo "http://$http" >"$home/urls/$name"
      return 0
    fi
  done < <(file_nodes)
  return 1
}

# Records the arguments of node $1, started by hand as process $2, from its command line, so that
# `start` and `restart` can run it again (a founder without them is started from the file instead).
record_from_proc() {
  local name=$1 pid=$2 arg http="" next=0
  local -a argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline" 2>/dev/null || return 0
  [ "$(basename -- "${argv[0]:-}")" = nohup ] && argv=("${argv[@]:1}")
  [ "${#argv[@]}" -ge 2 ] && [ "${argv[1]}" = run ] || return 0
  for arg in "${argv[@]}"; do
    [ "$next" = 1 ] && { http=$arg; next=0; }
    [ "$arg" = --http ] && next=1
  done
  # Relative paths (config, data dir) were relative to its working directory: keep them working.
  local cwd
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 0
  mkdir -p "$home/nodes" "$home/urls"
  local -a args=()
  local previous=""
  for arg in "${argv[@]:1}"; do
    case "$previous" in
      --config | --data-dir | --docroot) [[ "$arg" = /* ]] || arg=$cwd/$arg ;;
    esac
    args+=("$arg")
    previous=$arg
  done
  printf '%s\n' "${args[@]}" >"$home/nodes/$name.args"
  if [ -n "$http" ]; then
    echo "http $http" >"$home/nodes/$name.addrs"
    echo "http://$http" >"$home/urls/$name"
  fi
  echo "recorded how $name was started (pid $pid) in $home/nodes/$name.args"
}

# Records the arguments of joiner node-$1 (ports from the bases, seeded by the first founder).
record_joiner() {
  local k=$1 name="node-$1" seed
  seed=$(file_nodes | awk 'NR == 1 {print $3}')
  [ -n "$seed" ] || die "no <node> in $config to join through"
  local http="127.0.0.1:$((http_base + k))" cluster="127.0.0.1:$((cluster_base + k))"
  mkdir -p "$home/nodes" "$home/urls"
  printf '%s\n' run --config "$config" --name "$name" --http "$http" --cluster "$cluster" \
    --seed "$seed" --data-dir "$home/data/$name" >"$home/nodes/$name.args"
  echo "http $http, cluster $cluster" >"$home/nodes/$name.addrs"
  echo "http://$http" >"$home/urls/$name"
}

# Waits until every node named is running, answers /readyz 200 and is `up` in the status table, and
# the cluster has a Raft leader; then prints the table. Fails naming the logs after MT_WAIT_SECONDS.
wait_ready() {
  local -a names=("$@")
  echo "waiting up to $wait_seconds s for ${names[*]} to be up and ready under a Raft leader..."
  local deadline=$((SECONDS + wait_seconds)) name url table leader ok
  while :; do
    ok=1
    for name in "${names[@]}"; do
      # Our pid file's process gone and no pid file of the node's own: it exited.
      if ! runs "$(cat "$home/pids/$name.pid" 2>/dev/null || echo none)" &&
        [ -z "$(node_pids "$name")" ]; then
        echo "cluster.sh: $name exited; the end of $home/logs/$name.log:" >&2
        tail -n 15 "$home/logs/$name.log" >&2 || true
        exit 1
      fi
      url=$(url_of "$name") || { ok=0; break; }
      [[ "$(http_status_line "$url" /readyz)" == "HTTP/"*" 200"* ]] || { ok=0; break; }
    done
    if [ "$ok" = 1 ]; then
      table=$("$bin" status --node "$(url_of "${names[0]}")" 2>/dev/null) || table=""
      leader=$(sed -n '1s/.*leader \([^)]*\)).*/\1/p' <<<"$table")
      if [ -n "$leader" ] && [ "$leader" != "-" ]; then
        for name in "${names[@]}"; do
          grep -Eq "^$name\*? +up " <<<"$table" || ok=0
        done
        if [ "$ok" = 1 ]; then
          echo "$table"
          return 0
        fi
      fi
    fi
    [ $SECONDS -lt $deadline ] || break
    sleep 0.3
  done
  echo "cluster.sh: not ready within $wait_seconds s:" >&2
  for name in "${names[@]}"; do
    echo "  $name: /readyz: $(readyz_body "$(url_of "$name")")  (log $home/logs/$name.log)" >&2
  done
  "$bin" status --node "$(url_of "${names[0]}")" >&2 || true
  die "see the logs under $home/logs/"
}

refuse_running() {
  local running
  running=$(running_names | tr '\n' ' ')
  [ -z "$running" ] || die "$1: nodes of $home are running: ${running% } (scripts/cluster.sh down first)"
}

up() {
  local count=${1:-3}
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "up: expected a node count, got '$count'"
  refuse_running up
  build
  rm -f "$home"/pids/*.pid
  cluster_key
  local -a founders=() started=()
  mapfile -t founders < <(file_nodes)
  [ "${#founders[@]}" -ge 1 ] || die "no <node> in $config"
  local i name
  for ((i = 1; i <= count; i++)); do
    if [ "$i" -le "${#founders[@]}" ]; then
      name=$(awk '{print $1}' <<<"${founders[$((i - 1))]}")
      record_founder "$name"
    else
      name="node-$i"
      record_joiner "$i"
    fi
    launch "$name"
    started+=("$name")
  done
  wait_ready "${started[@]}"
}

status() {
  need_bin
  local url
  url=$(status_url) || die "no node running under $home (scripts/cluster.sh up 3)"
  "$bin" status --node "$url" "$@"
}

# Prepares node $1 to start: its recorded args, else a founder's from the file.
start_one() {
  local name=$1
  [ -n "$name" ] || die "start: which node? ($usage)"
  [ -z "$(node_pids "$name")" ] ||
    die "start: $name is already running (pid $(node_pids "$name" | paste -sd ' '))"
  if [ ! -s "$home/nodes/$name.args" ]; then
    record_founder "$name" ||
      die "start: $name is neither a <node> of $config nor a node added under $home (scripts/cluster.sh add 1)"
  fi
  url_of "$name" >/dev/null || die "start: no URL recorded for $name in $home/urls"
  cluster_key
  launch "$name"
}

start() {
  need_bin
  start_one "${1:-}"
  wait_ready "$1"
}

# Whether pid $1 runs: exists and is not a zombie (an exited node its parent has not reaped yet).
runs() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# Stops the pids given: SIGTERM to all, then SIGKILL to those still there after 15 s.
stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 15)) alive
  while :; do
    alive=()
    for pid in "$@"; do runs "$pid" && alive+=("$pid"); done
    [ "${#alive[@]}" -gt 0 ] || return 0
    [ $SECONDS -lt $deadline ] || break
    sleep 0.1
  done
  for pid in "${alive[@]}"; do
    echo "pid $pid did not stop within 15 s of SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
}

stop() {
  local name=${1:-}
  [ -n "$name" ] || die "stop: which node? ($usage)"
  known_names | grep -qxF -- "$name" || die "stop: $name is not a node of $home or $config"
  local -a pids=()
  mapfile -t pids < <(node_pids "$name")
  if [ "${#pids[@]}" -eq 0 ]; then
    rm -f "$home/pids/$name.pid"
    echo "$name was not running"
    return 0
  fi
  [ -s "$home/nodes/$name.args" ] || record_from_proc "$name" "${pids[0]}"
  quorum_warning "$name"
  stop_pids "${pids[@]}"
  rm -f "$home/pids/$name.pid"
  echo "stopped $name (pid ${pids[*]})"
}

# Before a node stops: warn when the cluster would be left without a Raft quorum (the status table's
# voters line says so). A warning, not a refusal: stopping may be what the operator wants.
quorum_warning() {
  local url line
  url=$(status_url) || return 0
  [ -x "$bin" ] || return 0
  line=$("$bin" status --node "$url" 2>/dev/null | grep '^raft voters:') || return 0
  case "$line" in
    *"NO QUORUM"*)
      echo "cluster.sh: warning: the cluster has no Raft quorum already ($line)" >&2 ;;
    *"one more voter down loses the quorum"*)
      echo "cluster.sh: warning: stopping $1 may leave the cluster without a Raft quorum until it is back ($line)" >&2 ;;
  esac
}

restart() {
  local name=${1:-}
  [ -n "$name" ] || die "restart: which node? ($usage)"
  need_bin
  stop "$name"
  start_one "$name"
  wait_ready "$name"
}

add() {
  local count=${1:-}
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "add: expected a node count, got '$count'"
  need_bin
  [ -n "$(running_names)" ] || die "add: no node of $home is running to join (scripts/cluster.sh up 3)"
  cluster_key
  # node-K after the highest K any known node has, and after the file's founders.
  local next founders
  founders=$(file_nodes | wc -l)
  next=$(known_names | sed -n 's/^node-\([0-9][0-9]*\)$/\1/p' | sort -n | tail -n 1)
  next=$(( ${next:-0} > founders ? ${next:-0} : founders ))
  local -a started=()
  local i k
  for ((i = 1; i <= count; i++)); do
    k=$((next + i))
    record_joiner "$k"
    launch "node-$k"
    started+=("node-$k")
  done
  wait_ready "${started[@]}"
}

down() {
  local name
  local -a pids=() names=()
  while read -r name; do
    local -a mine=()
    mapfile -t mine < <(node_pids "$name")
    [ "${#mine[@]}" -gt 0 ] || continue
    pids+=("${mine[@]}")
    names+=("$name")
  done < <(known_names)
  [ "${#pids[@]}" -eq 0 ] || stop_pids "${pids[@]}"
  rm -f "$home"/pids/*.pid
  local left
  left=$(running_names | tr '\n' ' ')
  [ -z "$left" ] || die "down: still running: ${left% }"
  echo "stopped ${#names[@]} node(s)${names[*]:+: ${names[*]}}; logs and data kept under $home"
}

clean() {
  [ -e "$home" ] || { echo "nothing to clean: $home does not exist"; return 0; }
  refuse_running clean
  # Only a folder this script made: nothing in it but what a cluster leaves.
  local entry
  for entry in "$home"/* "$home"/.[!.]*; do
    [ -e "$entry" ] || continue
    case "$(basename "$entry")" in
      data | logs | nodes | pids | secrets | urls) ;;
      *) die "clean: $entry is not something cluster.sh made; remove $home yourself" ;;
    esac
  done
  rm -rf -- "$home"
  echo "removed $home"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) shift; status "$@" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  restart) shift; restart "$@" ;;
  add) shift; add "$@" ;;
  down) down ;;
  clean) clean ;;
  *) die "$usage" ;;
esac
