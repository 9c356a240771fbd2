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


REDIS_ROLE_SH = r"""# Sourced by redis-start.sh in Cluster mode: the name this node announces on the bus.
{
  echo "cluster-announce-hostname $RMSG_SELF_HOST"
  if [ -n "${RMSG_ANNOUNCE_IP:-}" ]; then echo "cluster-announce-ip $RMSG_ANNOUNCE_IP"; fi
} >>"$conf"
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
