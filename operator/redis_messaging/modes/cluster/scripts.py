"""Cluster mode's configuration: the cluster lines of redis.conf, each pod's announced name, and the
pre-stop hook that hands a master's slots to its replica first."""

from __future__ import annotations

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import config, names


def cluster_lines(spec: RedisMessagingSpec) -> list[str]:
    """The lines of redis.conf that make a Redis a cluster node (nodes.conf on the data volume)."""
    lines = [
        "cluster-enabled yes",
        f"cluster-config-file {names.DATA_MOUNT}/nodes.conf",
        f"cluster-node-timeout {spec.cluster.node_timeout}",
        "cluster-preferred-endpoint-type hostname",
        "cluster-require-full-coverage no",
        "cluster-allow-replica-migration no",
    ]
    if spec.tls.enabled:
        lines.append("tls-cluster yes")
    return lines


REDIS_ROLE_SH = r"""# Sourced by redis-start.sh in Cluster mode: the name this node announces on the bus, and the
# hand-over of a master that restarts.
{
  echo "cluster-announce-hostname $RMSG_SELF_HOST"
  if [ -n "${RMSG_ANNOUNCE_IP:-}" ]; then echo "cluster-announce-ip $RMSG_ANNOUNCE_IP"; fi
} >>"$conf"

# A master that restarts cannot vouch for its data: `appendfsync everysec` may not have written its
# last writes, an RDB is older still, with persistence none or an emptied volume nothing is left. A
# replica that was in sync with it until it died holds every write acknowledged with WAIT. Started as
# the master its nodes.conf names, this node would be followed by that replica, which would full-sync
# from it and drop what only it held. So before redis-server starts, the richest such replica takes
# over (CLUSTER FAILOVER FORCE: the masters vote, its epoch is new); this node then starts, hears the
# newer epoch and follows it. When the replicas lost the link before this node's last write (they lack
# writes it holds), none answers, or none is in sync, it starts as the master it was.
# RMSG_HANDOVER_SECONDS bounds the wait for the take-over; past it the start fails and the kubelet
# starts it again (it never serves as the master of data it may lack while a richer replica lives).
cluster_handover() {
  nodes="$(awk '$1 == "cluster-config-file" { print $2 }' "$conf")"
  [ -s "$nodes" ] || return 0
  me="$(awk '$3 ~ /myself/ && $3 ~ /master/ && NF > 8 { print $1 }' "$nodes")"
  [ -n "$me" ] || return 0  # a replica, or a master without slots: nothing to hand over
  data_dir="$(dirname "$nodes")"
  # When this node last persisted data (its newest AOF or RDB file); nothing persisted: never.
  last_write="$(find "$data_dir" -maxdepth 2 -type f \( -name '*.aof' -o -name '*.rdb' \) -size +0 \
    -exec stat -c %Y {} + 2>/dev/null | sort -n | tail -n 1)"
  last_write="${last_write:-0}"
  now="$(date +%s)"
  best=""; best_offset=-1
  field() { printf '%s\n' "$info" | awk -F: -v k="$1" '$1 == k { print $2 }'; }
  # The replicas nodes.conf names: "<id> <ip>:<port>@<bus>[,<hostname>] <flags> <master-id> ..."
  for addr in $(awk -v me="$me" '$3 ~ /slave/ && $4 == me { print $2 }' "$nodes"); do
    ip="${addr%%:*}"; name="${addr#*,}"; [ "$name" = "$addr" ] && name="$ip"
    for h in $name $ip; do
      info="$(rcli "$h" "$redis_port" INFO replication | tr -d '\r')"
      [ -n "$info" ] && break
    done
    [ -n "$info" ] || continue
    [ "$(field role)" = slave ] && [ "$(field master_sync_in_progress)" = 0 ] || continue
    follows="$(rcli "$h" "$redis_port" CLUSTER NODES | tr -d '\r' | awk '$3 ~ /myself/ { print $4 }')"
    [ "$follows" = "$me" ] || continue
    down="$(field master_link_down_since_seconds)"
    # In sync until this node's last write: its link went down after that (a second of slack for
    # the clocks of a file's mtime and a second's rounding); -1 is a replica that never synced.
    case "$down" in ''|-*) continue ;; esac
    [ $((now - down + 1)) -ge "$last_write" ] || continue
    offset="$(field slave_repl_offset)"
    if [ "${offset:-0}" -gt "$best_offset" ]; then best="$h"; best_offset="$offset"; fi
  done
  [ -n "$best" ] || return 0
  echo "redis-start: this node was the master of its slots; replica $best (offset $best_offset)" \
    "was in sync until it died and takes over first"
  timeout_ms="$(awk '$1 == "cluster-node-timeout" { print $2 }' "$conf")"
  deadline=$(( $(date +%s) + ${RMSG_HANDOVER_SECONDS:-$(( ${timeout_ms:-15000} * 4 / 1000 + 10 ))} ))
  asked=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    case "$(rcli "$best" "$redis_port" INFO replication | tr -d '\r')" in
      *role:master*) echo "redis-start: $best is the master now; this node follows it"; return 0 ;;
    esac
    # ask again each node timeout: a vote may be lost, or refused while an earlier one is recent
    if [ "$asked" -le "$(date +%s)" ]; then
      rcli "$best" "$redis_port" CLUSTER FAILOVER FORCE >/dev/null || true
      asked=$(( $(date +%s) + ${timeout_ms:-15000} / 1000 + 1 ))
    fi
    sleep 0.2
  done
  echo "redis-start: $best did not take over within the bound; not starting as the master of data it may lack" >&2
  exit 1
}
cluster_handover
"""

CLUSTER_PRESTOP_SH = r"""#!/bin/sh
# Cluster mode: before a master that has an online replica stops, that replica takes over with
# CLUSTER FAILOVER (coordinated: it catches up with the master first, so no acknowledged write is
# lost), and this pod waits (bounded) until it is a replica. A planned restart then costs one
# switch-over instead of node-timeout of unavailability for the shard's slots.
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
host="${RMSG_PROBE_HOST:-127.0.0.1}"
info="$(rcli "$host" "$redis_port" INFO replication | tr -d '\r')"
case "$info" in
  *role:master*connected_slaves:[1-9]*) ;;
  *) exit 0 ;;
esac
me="$(rcli "$host" "$redis_port" CLUSTER MYID | tr -d '\r')"
# A connected replica, at the address the cluster knows it by: "<id> <ip>:<port>@<bus>[,<host>] <flags> ..."
replica="$(rcli "$host" "$redis_port" CLUSTER REPLICAS "$me" | tr -d '\r' | grep ' connected' | grep -v fail \
  | head -n 1 | cut -d ' ' -f 2 | cut -d '@' -f 1)"
[ -n "$replica" ] || exit 0
replica_host="${replica%:*}"; replica_port="${replica##*:}"
[ "$(rcli "$replica_host" "$replica_port" CLUSTER FAILOVER)" = OK ] || exit 0
deadline=$(( $(date +%s) + ${RMSG_PRESTOP_SECONDS:-30} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  case "$(rcli "$host" "$redis_port" INFO replication | tr -d '\r')" in
    *role:slave*) break ;;
  esac
  sleep 0.2
done
exit 0
"""


def config_files(spec: RedisMessagingSpec) -> dict[str, str]:
    """Every file of a Cluster-mode resource's ConfigMap, by key."""
    files = {
        **config.common_files(spec),
        "redis.conf": config.redis_conf(spec, replicas=1 + spec.cluster.replicas_per_shard,
                                        mode_lines=cluster_lines(spec)),
        "redis-role.sh": REDIS_ROLE_SH,
        "prestop.sh": CLUSTER_PRESTOP_SH,
    }
    return dict(sorted(files.items()))
