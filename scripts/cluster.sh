#!/usr/bin/env bash
# Runs N local micro-tomcat nodes: node-1..3 from cluster-config.xml, node-4.. joining by seed.
# Logs, data, pid files and the cluster key live under one folder ($MT_HOME, default ./.cluster).
# The nodes share a cluster key made on the first `up` ($MT_HOME/secrets/cluster.key, given to each
# node as MICRO_TOMCAT_GOSSIP_KEY): gossip is sealed and the peer port takes nobody else's writes.
# A MICRO_TOMCAT_GOSSIP_KEY already set in the environment wins over the file.
#
#   scripts/cluster.sh up 3       build if needed, start, wait until all are up, print the status table
#   scripts/cluster.sh status     print the status table (asks the first node that answers)
#   scripts/cluster.sh down       stop exactly the processes `up` started (SIGTERM, then SIGKILL after 15 s)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
home=${MT_HOME:-$root/.cluster}
profile=${MT_PROFILE:-release}
config=${MT_CONFIG:-$root/cluster-config.xml}
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/$profile/micro-tomcat
[ "$profile" = dev ] && bin=$target_dir/debug/micro-tomcat

die() { echo "cluster.sh: $*" >&2; exit 1; }

build() {
  echo "building micro-tomcat ($profile)..."
  (cd "$root" && cargo build --quiet --profile "$profile" --bin micro-tomcat) || die "build failed"
}

# The file's nodes, as "name http cluster" lines.
file_nodes() {
  "$bin" check-config "$config" | awk '$2 == "http" && $4 == "cluster" {print $1, $3, $5}'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

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

status_url() {
  local pidfile name
  for pidfile in "$home"/pids/*.pid; do
    [ -e "$pidfile" ] || continue
    alive "$pidfile" || continue
    name=$(basename "$pidfile" .pid)
    cat "$home/urls/$name"
    return 0
  done
  return 1
}

up() {
  local count=${1:-3}
  [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] || die "up: expected a node count, got '$count'"
  build
  mkdir -p "$home/logs" "$home/data" "$home/pids" "$home/urls"
  for pidfile in "$home"/pids/*.pid; do
    [ -e "$pidfile" ] || continue
    alive "$pidfile" && die "a cluster is already running under $home (scripts/cluster.sh down first)"
    rm -f "$pidfile"
  done
  cluster_key
  mapfile -t founders < <(file_nodes)
  [ "${#founders[@]}" -ge 1 ] || die "no <node> in $config"
  local first_cluster
  first_cluster=$(echo "${founders[0]}" | awk '{print $3}')
  local i name http cluster
  for ((i = 1; i <= count; i++)); do
    if [ "$i" -le "${#founders[@]}" ]; then
      read -r name http cluster <<<"${founders[$((i - 1))]}"
      args=(run --config "$config" --name "$name" --data-dir "$home/data/$name")
    else
      name="node-$i"
      http="127.0.0.1:$((8080 + i))"
      cluster="127.0.0.1:$((7000 + i))"
      args=(run --config "$config" --name "$name" --http "$http" --cluster "$cluster"
            --seed "$first_cluster" --data-dir "$home/data/$name")
    fi
    nohup "$bin" "${args[@]}" >>"$home/logs/$name.log" 2>&1 &
    echo $! >"$home/pids/$name.pid"
    echo "http://$http" >"$home/urls/$name"
    echo "started $name (pid $!): http $http, cluster $cluster, log $home/logs/$name.log"
  done
  echo "waiting for $count members to be up..."
  local deadline=$((SECONDS + 60)) url
  url=$(cat "$home/urls/$(basename "$(ls "$home"/pids/*.pid | head -n 1)" .pid)")
  while [ $SECONDS -lt $deadline ]; do
    if "$bin" status --node "$url" 2>/dev/null | grep -q "^$count members: $count up"; then
      "$bin" status --node "$url"
      return 0
    fi
    sleep 0.3
  done
  "$bin" status --node "$url" || true
  die "not every node came up within 60 s; see $home/logs/"
}

status() {
  [ -x "$bin" ] || build
  local url
  url=$(status_url) || die "no node running under $home (scripts/cluster.sh up 3)"
  "$bin" status --node "$url" "$@"
}

down() {
  local pidfile pid stopped=0
  for pidfile in "$home"/pids/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # Only signal a process that is still the micro-tomcat we started.
    if kill -0 "$pid" 2>/dev/null && grep -q micro-tomcat "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      stopped=$((stopped + 1))
    fi
  done
  local deadline=$((SECONDS + 15))
  for pidfile in "$home"/pids/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null && grep -q micro-tomcat "/proc/$pid/cmdline" 2>/dev/null; then
      echo "$(basename "$pidfile" .pid) did not stop within 15 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  echo "stopped $stopped node(s); logs and data kept under $home"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) shift; status "$@" ;;
  down) down ;;
  *) die "usage: scripts/cluster.sh up N | status [--format table|json|xml] | down" ;;
esac
