#!/bin/sh
# micro-tomcat in a Kubernetes StatefulSet: start one pod's node, or check its readiness.
#
#   k8s-start.sh          resolve the peers, decide found-or-join, exec `micro-tomcat run`
#   k8s-start.sh ready    readiness check (exit 0 = ready), used by the pod's readinessProbe
#
# Why a wrapper: micro-tomcat takes IP:PORT addresses only (host names are refused), so the headless
# Service's DNS name is resolved here; and pods have no founders' addresses to put in a config file, so
# this decides whether the pod founds a cluster, joins one, or rejoins with its data. A pod that comes
# back with another IP keeps its data directory and so its Raft id: its peers reach it at the address
# it gossips for that id, and the leader updates the Raft membership.
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
    # Ready = the node's own /readyz, this pod's name is one Raft member (not none: a member removed
    # while it was away is added again; not two: after a pod lost its volume it joins with a new Raft
    # id, its old id stays until remove-after-ms, and meanwhile the cluster tolerates one failure
    # less), and the cluster has its VOTERS voters again. A pod that kept its data keeps its Raft id,
    # so it is one member from the start. A rolling update waits here before it stops the next pod.
    curl -fsS -o /dev/null "http://$POD_IP:$HTTP_PORT/readyz" || exit 1
    "$MICRO_TOMCAT" status --node "http://$POD_IP:$HTTP_PORT" --format json |
        jq -e --arg me "$POD_NAME" --argjson want "${VOTERS:-3}" '
            ([.raft.voters[], .raft.learners[]] | map(select(. == $me)) | length == 1)
            and ((.raft.voters | index($me)) != null or (.raft.voters | length) >= $want)' >/dev/null
    exit $?
fi

log() { echo "k8s-start: $*" >&2; }

# Find the cluster: the other pods' IPs and, for a pod without data, whether any of them answers with
# a Raft leader. A pod with data (any IP: a container restart, or a pod recreated elsewhere with its
# volume) rejoins with its Raft id; its IP is not compared with the one it had.
ordinal=${POD_NAME##*-}
deadline=$(($(date +%s) + WAIT_SECONDS))
while :; do
    peers=$(getent ahostsv4 "$PEER_SERVICE" 2>/dev/null | awk '{print $1}' | sort -u | grep -vx "$POD_IP" || true)
    if [ -f "$DATA_DIR/node-id" ]; then
        if [ -n "$peers" ]; then
            # A member with its data: the others may be restarting too, so no leader is awaited.
            mode="rejoin"
            break
        fi
    else
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
        if [ "$ordinal" = 0 ] && [ "$answered" = no ]; then
            # Nobody runs yet and this is pod 0 with an empty volume: a new cluster starts here.
            mode="found"
            break
        fi
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        if [ -f "$DATA_DIR/node-id" ]; then
            log "this pod has data but no other pod resolved through $PEER_SERVICE after ${WAIT_SECONDS}s"
        else
            log "no running cluster found through $PEER_SERVICE after ${WAIT_SECONDS}s (peers: ${peers:-none}, answered: $answered)"
        fi
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
