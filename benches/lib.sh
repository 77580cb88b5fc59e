# The process harness every bench script sources: logging, owned processes stopped at exit, free ports,
# the binary under test, readiness, waiting for other benchmarks, per-process CPU and memory.
#
#   root=$(cd "$(dirname "$0")/.." && pwd)
#   . "$root/benches/lib.sh"
#
# Every process a script starts goes into PIDS[key] (with STOPSIG[key] if KILL is not how it stops
# cleanly); every directory in cleanup_dirs is deleted at exit. Both happen on any exit, failure or
# Ctrl-C included. The caller sets `work` (its run folder) before anything can fail.
# shellcheck shell=bash
: "${root:?benches/lib.sh needs root (the repository) set first}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 2; }

# ---------------------------------------------------------------- process bookkeeping and cleanup
declare -A PIDS=()    # key (mt-1, etcd-2, nginx-1, ...) -> pid of a process this script started
declare -A STOPSIG=() # key -> signal that stops it cleanly (default KILL; nginx: QUIT stops its workers too)
cleanup_dirs=()       # data dirs deleted at exit (they can be gigabytes); logs stay for inspection

stop_proc() { # key: stop one of our processes and reap it (quietly: no "Killed" job notice)
  stop_proc_ "$@" 2>/dev/null
}
stop_proc_() {
  local key=$1 pid=${PIDS[$1]:-} sig=${STOPSIG[$1]:-KILL}
  [ -n "$pid" ] || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  # A clean stop may take a moment (nginx's master waits for its workers); then make sure.
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$key]"
  unset "STOPSIG[$key]"
}

cleanup() {
  local status=$? key dir
  trap - EXIT INT TERM
  for key in "${!PIDS[@]}"; do stop_proc "$key"; done
  for dir in "${cleanup_dirs[@]}"; do rm -rf "$dir"; done
  if [ "$status" -ne 0 ] && [ -d "${work:-}/logs" ]; then log "exit status $status; logs are in $work/logs"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- ports
free_ports() { # N: N ports free for both TCP and UDP on 127.0.0.1 (all held open until every one is chosen)
  python3 - "$1" <<'PY'
import socket, sys
held, ports = [], []
while len(ports) < int(sys.argv[1]):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); continue
    held += [t, u]; ports.append(port)
print(" ".join(map(str, ports)))
for s in held: s.close()
PY
}

require_free_ports() { # what-is-needed port...: dies naming what is needed if any port is taken (TCP or UDP)
  local needed=$1 port
  shift
  for port in "$@"; do
    if [ -n "$(ss -ltnH "sport = :$port")" ] || [ -n "$(ss -lunH "sport = :$port")" ]; then
      die "port $port is in use; this benchmark needs $needed free"
    fi
  done
}

# ---------------------------------------------------------------- the binary under test
mt_binary() { # sets bin (a private copy in $work) and MT_SOURCE: MT_BIN if given, else a fresh release build
  if [ -n "${MT_BIN:-}" ]; then
    bin=$MT_BIN
    MT_SOURCE=${MT_SOURCE:-"given binary $MT_BIN"}
  else
    # Where cargo puts it: CARGO_TARGET_DIR when set (a target dir shared between checkouts).
    bin=${CARGO_TARGET_DIR:-$root/target}/release/micro-tomcat
    if [ -n "${SKIP_BUILD:-}" ]; then
      MT_SOURCE=${MT_SOURCE:-"target/release as last built"}
    else
      log "building micro-tomcat (release)"
      cargo build --release --bin micro-tomcat >"$work/logs/build.log" 2>&1 || die "build failed, see $work/logs/build.log"
      MT_SOURCE="working tree of $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(git status --porcelain -- src proto Cargo.toml Cargo.lock 2>/dev/null | wc -l) changed files under src/ proto/ Cargo.*"
    fi
  fi
  [ -x "$bin" ] || die "no binary at $bin"
  # Run a private copy: others may rebuild target/release while we (re)start nodes.
  if [ "$bin" != "$work/micro-tomcat" ]; then cp "$bin" "$work/micro-tomcat"; fi
  bin=$work/micro-tomcat
}

wait_ready() { # seconds base-url...: until /readyz answers 200 on every one; fails after `seconds`
  local deadline=$((SECONDS + $1)) url ok
  shift
  while :; do
    ok=0
    for url in "$@"; do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/readyz")" = 200 ] && ok=$((ok + 1))
    done
    [ "$ok" -eq $# ] && return 0
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- sharing the machine
QUIET_WAIT_MAX=${QUIET_WAIT_MAX:-1500}
quiet_waited=0 # seconds this script spent waiting for other benchmarks
wait_for_quiet() { # other benchmarks would share our cores: wait for them (bounded by QUIET_WAIT_MAX s)
  [ "$QUIET_WAIT_MAX" -gt 0 ] || return 0
  local start=$SECONDS me others
  me=$(basename "$0" .sh)
  # Every bench script but this one and the suite (which runs the others as its children).
  # [b]enches: the pattern must not match a shell whose own command line merely mentions the name.
  others=$(cd "$root/benches" && ls -- *.sh | sed 's/\.sh$//' | grep -vx -e lib -e suite -e "$me" | paste -sd'|')
  while pgrep -x wrk >/dev/null || pgrep -f "[b]enches/($others)\.sh" >/dev/null; do
    if [ $((SECONDS - start)) -ge "$QUIET_WAIT_MAX" ]; then
      log "warning: another benchmark is still running after ${QUIET_WAIT_MAX}s; measuring anyway"
      break
    fi
    log "another benchmark is running ($(pgrep -ax wrk | head -1)$(pgrep -af "[b]enches/($others)\.sh" | head -1)); waiting 20 s"
    sleep 20
  done
  quiet_waited=$((quiet_waited + SECONDS - start))
}

# ---------------------------------------------------------------- per-process figures
cpu_ticks() { # pid -> utime + stime in clock ticks (fields after the command name, which may hold spaces)
  awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"
}
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
