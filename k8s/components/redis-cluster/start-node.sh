#!/bin/sh
# Starts one node of the Redis Cluster. A pod rescheduled with a new IP rejoins by
# itself (its peers learn the address from its first ping), but when every pod moves at
# once (a node pool upgrade, a restarted kind cluster) the IPs each nodes.conf holds
# are all stale and no node reaches another. So before starting, every peer's IP in
# nodes.conf is replaced by what its hostname resolves to now; peers not resolvable yet
# keep theirs and are corrected by their own first ping.
#   env: ANNOUNCE_HOSTNAME (required), POD_IP, REDIS_CONF, DATA_DIR; extra args go to redis-server.
set -eu
: "${ANNOUNCE_HOSTNAME:?the DNS name clients and peers use for this node}"
REDIS_CONF=${REDIS_CONF:-/etc/redis-cluster/redis.conf}
DATA_DIR=${DATA_DIR:-/data}
nodes="$DATA_DIR/nodes.conf"

# Rewrites nodes.conf in place (a function: `set --` here leaves the script's arguments alone).
refresh_peer_addresses() {
  fresh="$nodes.fresh"
  : > "$fresh"
  # <id> <ip:port@cport,hostname[,aux...]> <flags> ...; the vars line has no address.
  while IFS= read -r line; do
    set -f
    # shellcheck disable=SC2086
    set -- $line
    set +f
    address=${2-}
    case "$address" in
      *@*,*)
        rest=${address#*,}
        host=${rest%%,*}
        ip=""
        case ",${3-}," in
          *,myself,*) ;;
          *) [ -n "$host" ] && ip=$(getent hosts "$host" | awk 'NR == 1 { print $1 }') ;;
        esac
        if [ -n "$ip" ]; then
          ipport=${address%%@*}
          line="$1 $ip:${ipport##*:}@${address#*@}${line#"$1 $address"}"
        fi
        ;;
    esac
    printf '%s\n' "$line" >> "$fresh"
  done < "$nodes"
  mv "$fresh" "$nodes"
}

if [ -s "$nodes" ]; then refresh_peer_addresses; fi

exec redis-server "$REDIS_CONF" --dir "$DATA_DIR" --cluster-announce-hostname "$ANNOUNCE_HOSTNAME" ${POD_IP:+--cluster-announce-ip "$POD_IP"} "$@"
