#!/bin/sh
# Forms the Redis Cluster, once: waits until every node answers, then
#  - no node knows another yet: `redis-cli --cluster create` (masters first, then
#    CLUSTER_REPLICAS replicas each);
#  - the cluster exists: adds any node that answers alone (its volume was lost) as a
#    replica, and changes nothing else;
# then waits until every node reports cluster_state:ok. Rerunning it is safe.
#   env: CLUSTER_NODES ("host:port host:port ..."), CLUSTER_REPLICAS (1), WAIT_S (600);
#   REDISCLI_AUTH for a password.
set -eu
: "${CLUSTER_NODES:?space-separated host:port of every node}"
REPLICAS=${CLUSTER_REPLICAS:-1}
deadline=$(( $(date +%s) + ${WAIT_S:-600} ))

host_of() { echo "${1%:*}"; }
port_of() { echo "${1##*:}"; }
cli() { node=$1; shift; redis-cli -h "$(host_of "$node")" -p "$(port_of "$node")" "$@"; }
# One field of CLUSTER INFO, empty while the node does not answer.
info() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
# host:port with the host resolved: CLUSTER MEET takes IP addresses only.
resolved() {
  ip=$(getent hosts "$(host_of "$1")" | awk 'NR == 1 { print $1 }')
  [ -n "$ip" ] && echo "$ip:$(port_of "$1")"
}
wait_for() {
  until eval "$2"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $1" >&2; exit 1; }
    sleep 2
  done
}

for node in $CLUSTER_NODES; do
  wait_for "$node to answer" '[ "$(cli "$node" ping 2>/dev/null)" = PONG ] && resolved "$node" >/dev/null'
done

member=""
alone=""
for node in $CLUSTER_NODES; do
  if [ "$(info "$node" cluster_known_nodes)" -gt 1 ]; then member=$node; else alone="$alone $node"; fi
done

if [ -z "$member" ]; then
  echo "forming the cluster:$alone"
  addresses=""
  for node in $CLUSTER_NODES; do addresses="$addresses $(resolved "$node")"; done
  # shellcheck disable=SC2086
  redis-cli --cluster create $addresses --cluster-replicas "$REPLICAS" --cluster-yes
else
  for node in $alone; do
    echo "adding $node to the cluster as a replica"
    redis-cli --cluster add-node "$(resolved "$node")" "$(resolved "$member")" --cluster-slave
  done
  [ -n "$alone" ] || echo "the cluster is already formed: nothing to do"
fi

for node in $CLUSTER_NODES; do
  wait_for "$node to report cluster_state:ok" '[ "$(info "$node" cluster_state)" = ok ]'
done
echo "cluster ok"
