#!/bin/sh
# micro-tomcat in a Kubernetes StatefulSet: start one pod's node, or check its readiness.
#
#   k8s-start.sh          resolve the peers, decide found-or-join, exec `micro-tomcat run`
#   k8s-start.sh ready    readiness check (exit 0 = ready), used by the pod's readinessProbe
#
# Why a wrapper: micro-tomcat takes IP:PORT addresses only (host names are refused), so the headless
# Service's DNS name is resolved here; and a Raft member keeps the address it joined with, so a pod that
# comes back with another IP must join as a new member (its old data directory is moved aside).
# See docs/deploy/README.md for what this does and does not cover.
#
# Environment (the StatefulSet sets the first two from the downward API):
#   POD_NAME       e.g. micro-tomcat-0; the node name, and the ordinal (0 founds a new cluster)
#   POD_IP         the pod's IP; the node listens on and advertises POD_IP:HTTP_PORT and POD_IP:CLUSTER_PORT
#   PEER_SERVICE   the headless Service (default micro-tomcat-peers), publishNotReadyAddresses: true
#   HTTP_PORT      default 8080        CLUSTER_PORT  default 7000
#   DATA_DIR       default /var/lib/micro-tomcat/data (on the pod's volume)
#   WAIT_SECONDS   how long to look for the cluster before giving up (default 300)
#   VOTERS         the cluster's Raft voters (default 3, micro-tomcat's default); used by `ready`
#   MICRO_TOMCAT   the binary (default micro-tomcat on PATH)
set -eu

: "${POD_NAME:?set POD_NAME}"
: "${POD_IP:?set POD_IP}"
PEER_SERVICE=${PEER_SERVICE:-micro-tomcat-peers}
HTTP_PORT=${HTTP_PORT:-8080}
CLUSTER_PORT=${CLUSTER_PORT:-7000}
DATA_DIR=${DATA_DIR:-/var/lib/micro-tomcat/data}
WAIT_SECONDS=${WAIT_SECONDS:-300}
MICRO_TOMCAT=${MICRO_TOMCAT:-micro-tomcat}

if [ "${1:-}" = ready ]; then
    # Ready = the node's own /readyz, no older incarnation of this pod is still a Raft member (after a
    # pod comes back with a new IP its old Raft id stays until remove-after-ms, and meanwhile the
    # cluster tolerates one failure less), and the cluster has its VOTERS voters again. A rolling
    # update waits here before it stops the next pod.
    curl -fsS -o /dev/null "http://$POD_IP:$HTTP_PORT/readyz" || exit 1
    "$MICRO_TOMCAT" status --node "http://$POD_IP:$HTTP_PORT" --format json |
        jq -e --arg me "$POD_NAME" --argjson want "${VOTERS:-3}" '
            ([.raft.voters[], .raft.learners[]] | map(select(. == $me)) | length == 1)
            and ((.raft.voters | index($me)) != null or (.raft.voters | length) >= $want)' >/dev/null
    exit $?
fi

log() { echo "k8s-start: $*" >&2; }

# 1. Same data, new IP: the others would keep sending Raft traffic to the old address. Start over as
#    a new member (the leader removes the old one after remove-after-ms); keep the last copy aside.
parent=$(dirname "$DATA_DIR")
mkdir -p "$parent"
if [ -f "$DATA_DIR/node-id" ] && [ "$(cat "$parent/pod-ip" 2>/dev/null || true)" != "$POD_IP" ]; then
    rm -rf "$DATA_DIR.previous"
    mv "$DATA_DIR" "$DATA_DIR.previous"
    log "the pod IP is now $POD_IP (was $(cat "$parent/pod-ip" 2>/dev/null || echo unknown)): moved $DATA_DIR to $DATA_DIR.previous; joining as a new member"
fi
echo "$POD_IP" >"$parent/pod-ip"

# 2. Find the cluster: the other pods' IPs, and whether any of them answers with a Raft leader.
ordinal=${POD_NAME##*-}
deadline=$(($(date +%s) + WAIT_SECONDS))
while :; do
    peers=$(getent ahostsv4 "$PEER_SERVICE" 2>/dev/null | awk '{print $1}' | sort -u | grep -vx "$POD_IP" || true)
    answered=no
    leader=no
    for ip in $peers; do
        if status=$("$MICRO_TOMCAT" status --node "http://$ip:$HTTP_PORT" --format json 2>/dev/null); then
            answered=yes
            if echo "$status" | jq -e '.leader != null' >/dev/null; then
                leader=yes
            fi
        fi
    done
    if [ "$leader" = yes ]; then
        mode="join"
        break
    fi
    if [ ! -f "$DATA_DIR/node-id" ] && [ "$ordinal" = 0 ] && [ "$answered" = no ]; then
        # Nobody runs yet and this is pod 0 with an empty volume: a new cluster starts here.
        mode="found"
        break
    fi
    if [ -f "$DATA_DIR/node-id" ] && [ -n "$peers" ]; then
        # A member restarting with its data (same IP): the others may be restarting too.
        mode="rejoin"
        break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "no running cluster found through $PEER_SERVICE after ${WAIT_SECONDS}s (peers: ${peers:-none}, answered: $answered)"
        exit 1
    fi
    sleep 2
done

set -- run --name "$POD_NAME" --http "$POD_IP:$HTTP_PORT" --cluster "$POD_IP:$CLUSTER_PORT" --data-dir "$DATA_DIR"
if [ "$mode" != found ]; then
    for ip in $peers; do
        set -- "$@" --seed "$ip:$CLUSTER_PORT"
    done
fi
log "$mode: micro-tomcat $*"
exec "$MICRO_TOMCAT" "$@"
