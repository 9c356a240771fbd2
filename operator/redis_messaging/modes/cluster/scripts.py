"""Cluster mode's configuration: the cluster lines of redis.conf, each pod's announced name, and the
pre-stop hook that hands a master's slots to its replica first."""

from __future__ import annotations

from redis_messaging.api.models import MAX_REPLICAS_PER_SHARD, RedisMessagingSpec
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

# A master that restarts cannot always vouch for its data: with `appendfsync everysec` its AOF may lack
# the last writes (Redis postpones the write while an fsync is slow, and answers the clients anyway),
# an RDB is older still, with persistence none or an emptied volume nothing is left. A replica that
# kept its link until this node's last persisted write holds every write acknowledged with WAIT.
# Started as the master its nodes.conf names, this node would be followed by that replica, which would
# full-sync from it and drop what only it held. So before redis-server starts, the replica with the
# highest offset among those takes over (CLUSTER FAILOVER FORCE: the masters vote, its epoch is new;
# TAKEOVER when no vote is won within two node timeouts, e.g. most masters down with this one: this
# node, the only other owner of these slots, is not running); this node then starts, hears the newer
# epoch and follows it. The trade: a write acknowledged without WAIT in the last moment before the
# crash may be lost, as `everysec` may lose it anyway. With `appendonly yes` and `appendfsync always`
# every acknowledged write is in the AOF, and the node starts as the master it was. It also does when
# no replica answers (after waiting up to RMSG_HANDOVER_SEARCH_SECONDS for one when it persisted
# nothing), or none was in sync. Until the take-over is seen (RMSG_HANDOVER_SECONDS) the node does not
# start; past it the start fails and the kubelet starts it again.

# conf_value KEY: the value redis-server takes for KEY in $conf (the last line wins).
conf_value() { awk -v k="$1" '$1 == k { v = $2 } END { print v }' "$conf"; }

# owned_slots ID: the slot fields of node ID's line of the CLUSTER NODES text on stdin ("[...]" fields
# are slots being moved, not owned); empty when the line is missing.
owned_slots() { awk -v id="$1" '$1 == id { n = 0; for (i = 9; i <= NF; i++) if ($i !~ /^\[/) n++; print n }'; }

cluster_handover() {
  nodes="$(conf_value cluster-config-file)"
  [ -s "$nodes" ] || return 0
  me="$(awk '$3 ~ /myself/ && $3 ~ /master/ { print $1 }' "$nodes")"
  [ -n "$me" ] && [ "$(owned_slots "$me" <"$nodes")" -gt 0 ] || return 0
  # When this node last persisted data (its newest AOF or RDB file); nothing persisted: never.
  last_write="$(find "$(dirname "$nodes")" -maxdepth 2 -type f \( -name '*.aof' -o -name '*.rdb' \) -size +0 \
    -exec stat -c %Y {} + 2>/dev/null | sort -n | tail -n 1)"
  last_write="${last_write:-0}"
  if [ "$(conf_value appendonly)" = yes ] && [ "$(conf_value appendfsync)" = always ] && [ "$last_write" -gt 0 ]; then
    return 0
  fi
  field() { printf '%s\n' "$info" | awk -F: -v k="$1" '$1 == k { print $2 }'; }
  search_until=$(( $(date +%s) + ${RMSG_HANDOVER_SEARCH_SECONDS:-30} ))
  while :; do
    best=""; best_port=""; best_offset=-1; silent=0
    # The replicas nodes.conf names: "<id> <ip>:<port>@<bus>[,<hostname>[,<aux>...]] <flags> <master-id> ..."
    for addr in $(awk -v me="$me" '$3 ~ /slave/ && $4 == me { print $2 }' "$nodes"); do
      hp="${addr%%@*}"; ip="${hp%:*}"; rport="${hp##*:}"; rest="${addr#*@}"; name=""
      case "$rest" in *,*) name="${rest#*,}"; name="${name%%,*}" ;; esac
      info=""
      for h in $name $ip; do
        info="$(rcli "$h" "$rport" INFO replication | tr -d '\r')"
        [ -n "$info" ] && break
      done
      if [ -z "$info" ]; then silent=$((silent + 1)); continue; fi
      now="$(date +%s)"
      [ "$(field role)" = slave ] && [ "$(field master_sync_in_progress)" = 0 ] || continue
      follows="$(rcli "$h" "$rport" CLUSTER NODES | tr -d '\r' | awk '$3 ~ /myself/ { print $4 }')"
      [ "$follows" = "$me" ] || continue
      down="$(field master_link_down_since_seconds)"
      # Its link went down after this node's last persisted write (a second of slack for the rounding
      # of both clocks); -1 is a replica that has not synced since it started.
      case "$down" in ''|-*) continue ;; esac
      [ $((now - down + 1)) -ge "$last_write" ] || continue
      offset="$(field slave_repl_offset)"
      if [ "${offset:-0}" -gt "$best_offset" ]; then best="$h"; best_port="$rport"; best_offset="$offset"; fi
    done
    [ -n "$best" ] && break
    # Nothing persisted here, and a replica did not answer (its pod moving, its name not resolving yet):
    # it may hold the shard's data. Wait for it a while rather than start empty and be followed.
    if [ "$last_write" -eq 0 ] && [ "$silent" -gt 0 ] && [ "$(date +%s)" -lt "$search_until" ]; then
      sleep 1
      continue
    fi
    return 0
  done
  echo "redis-start: this node was the master of its slots; replica $best (offset $best_offset) kept" \
    "its link until this node's last persisted write and takes over first"
  take_over "$best" "$best_port" "$me"
}

# take_over HOST PORT ID: has the replica at HOST:PORT take over the slots of node ID (FORCE, then
# TAKEOVER past two node timeouts) and waits until it has; past RMSG_HANDOVER_SECONDS this start fails.
take_over() {
  timeout_ms="$(conf_value cluster-node-timeout)"
  timeout_s=$(( ${timeout_ms:-15000} / 1000 + 1 ))
  started="$(date +%s)"
  deadline=$(( started + ${RMSG_HANDOVER_SECONDS:-$(( timeout_s * 4 + 10 ))} ))
  asked=0; how=FORCE
  while [ "$(date +%s)" -lt "$deadline" ]; do
    case "$(rcli "$1" "$2" INFO replication | tr -d '\r')" in
      *role:master*) echo "redis-start: $1 is the master now; this node follows it"; return 0 ;;
    esac
    view="$(rcli "$1" "$2" CLUSTER NODES | tr -d '\r')"
    if [ -n "$view" ] && [ "$(printf '%s\n' "$view" | owned_slots "$3")" != "" ] \
        && [ "$(printf '%s\n' "$view" | owned_slots "$3")" -eq 0 ]; then
      echo "redis-start: another node holds this node's slots now; this node follows it"
      return 0
    fi
    if [ "$asked" -le "$(date +%s)" ]; then
      if [ "$(date +%s)" -ge $(( started + 2 * timeout_s )) ]; then how=TAKEOVER; fi
      rcli "$1" "$2" CLUSTER FAILOVER "$how" >/dev/null || true
      asked=$(( $(date +%s) + timeout_s ))
    fi
    sleep 0.2
  done
  echo "redis-start: $1 did not take over within the bound; not starting as the master of data it may lack" >&2
  exit 1
}

# A node whose volume was lost (no nodes.conf) starts as a new, empty node, at the address of the node
# it was. If that node still owns slots, its replicas still follow that address: they would reconnect to
# the new node and full-sync its empty data set. So before redis-server starts, the shard's other pods
# are asked whether a slot-owning master is known at this node's name and port; if so, the replica of it
# with the highest offset takes over first (waiting up to RMSG_HANDOVER_SEARCH_SECONDS for one to
# answer), and this node starts once nobody follows its address. When no peer knows such a master (a
# new shard, its slots moved on) or none answers (they all start at once, as in a full restart, and
# then none follows a live master), it starts at once.
# The shard's pods: RMSG_SHARD_HOSTS, or this pod's StatefulSet siblings by ordinal (0..@MAX_ORDINAL@:
# the most a shard can have; a name that does not exist fails at once), on its headless Service.
shard_hosts() {
  if [ -n "${RMSG_SHARD_HOSTS:-}" ]; then echo "$RMSG_SHARD_HOSTS"; return; fi
  base="${POD_NAME:-$(hostname)}"; base="${base%-*}"; rest="${RMSG_SELF_HOST#*.}"
  i=0
  while [ "$i" -le @MAX_ORDINAL@ ]; do printf '%s-%s.%s ' "$base" "$i" "$rest"; i=$((i + 1)); done
}

lost_volume_handover() {
  nodes="$(conf_value cluster-config-file)"
  [ -s "$nodes" ] && return 0
  self_ip="${RMSG_ANNOUNCE_IP:-}"
  peers="$(shard_hosts)"
  search_until=$(( $(date +%s) + ${RMSG_HANDOVER_SEARCH_SECONDS:-30} ))
  while :; do
    old=""
    for h in $peers; do
      [ "$h" = "$RMSG_SELF_HOST" ] && continue
      # "<id> <ip>:<port>@<bus>[,<hostname>] <flags> <master> <ping> <pong> <epoch> <link> <slot>...": a
      # master owning slots at this node's name (or announced address) and port, in a peer's view.
      old="$(rcli "$h" "$redis_port" CLUSTER NODES | tr -d '\r' \
        | awk -v name="$RMSG_SELF_HOST" -v ip="$self_ip" -v port="$redis_port" '
          $3 ~ /master/ && $3 !~ /myself/ {
            a = $2; host = ""; c = index(a, ",")
            if (c) { host = substr(a, c + 1); sub(/,.*/, "", host) }
            hp = a; sub(/@.*/, "", hp); p = hp; sub(/.*:/, "", p); h = hp; sub(/:[0-9]+$/, "", h)
            if (p != port || !(host == name || h == name || (ip != "" && h == ip))) next
            n = 0; for (i = 9; i <= NF; i++) if ($i !~ /^\[/) n++
            if (n > 0) { print $1; exit }
          }')"
      [ -n "$old" ] && break
    done
    # Nobody knows this address as a slot owner: a new node, or the old one's slots have moved on.
    [ -n "$old" ] || return 0
    best=""; best_offset=-1
    for h in $peers; do
      [ "$h" = "$RMSG_SELF_HOST" ] && continue
      follows="$(rcli "$h" "$redis_port" CLUSTER NODES | tr -d '\r' | awk '$3 ~ /myself/ && $3 ~ /slave/ { print $4 }')"
      [ "$follows" = "$old" ] || continue
      info="$(rcli "$h" "$redis_port" INFO replication | tr -d '\r')"
      case "$info" in *master_sync_in_progress:0*) ;; *) continue ;; esac
      offset="$(printf '%s\n' "$info" | awk -F: '$1 == "slave_repl_offset" { print $2 }')"
      if [ "${offset:-0}" -gt "$best_offset" ]; then best="$h"; best_offset="${offset:-0}"; fi
    done
    [ -n "$best" ] && break
    # Its replica does not answer (its pod moving too): it may hold the shard's data; wait a while.
    if [ "$(date +%s)" -ge "$search_until" ]; then
      echo "redis-start: no replica of node $old, which this node replaces, answered; starting as a new node"
      return 0
    fi
    sleep 1
  done
  echo "redis-start: this node's volume is gone; node $old, which it was, still owns slots, and its" \
    "replica $best (offset $best_offset) takes over first"
  take_over "$best" "$redis_port" "$old"
}
cluster_handover
lost_volume_handover
""".replace("@MAX_ORDINAL@", str(MAX_REPLICAS_PER_SHARD))

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
