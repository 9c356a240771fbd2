"""Sentinel mode's configuration files: sentinel.conf, the monitor block, and the scripts that decide
what a pod does at start (whom a Redis follows, which master a Sentinel monitors) and before it stops
(a switch-over once the replicas caught up). Nothing secret is rendered: see
:mod:`redis_messaging.builders.config`."""

from __future__ import annotations

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import config, names
from redis_messaging.builders.names import Owner


def sentinel_conf(spec: RedisMessagingSpec) -> str:
    lines = [
        "# Rendered by redis-messaging-operator. The monitor block follows from sentinel-monitor.conf.",
        *config.tls_lines(spec, names.SENTINEL_PORT),
        "protected-mode no",
        f"dir {names.RUN_MOUNT}",
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
    ]
    return "\n".join(lines) + "\n"


def sentinel_monitor_conf(spec: RedisMessagingSpec, owner: Owner) -> str:
    """The monitor block; the start script replaces @MASTER@ with the master it finds."""
    s = spec.sentinel
    m = owner.master_name
    lines = [
        f"sentinel monitor {m} @MASTER@ {names.REDIS_PORT} {s.quorum}",
        f"sentinel down-after-milliseconds {m} {s.down_after_milliseconds}",
        f"sentinel failover-timeout {m} {s.failover_timeout}",
        f"sentinel parallel-syncs {m} {s.parallel_syncs}",
    ]
    return "\n".join(lines) + "\n"


SENTINEL_LIB_SH = r"""# Sourced by the Sentinel-mode scripts: what the Sentinels and the other Redis pods say.
# sentinel_master: the master host that a majority of the configured Sentinels name, if any. One
# Sentinel alone may be on the wrong side of a partition, or may not have heard of a failover yet.
sentinel_master() {
  n=0; said=""
  for s in ${RMSG_SENTINEL_HOSTS:-}; do
    n=$((n + 1))
    addr="$(rcli "$s" "$sentinel_port" SENTINEL get-master-addr-by-name "$RMSG_MASTER_NAME" | head -n 1)"
    [ -n "$addr" ] && said="$said$addr
"
  done
  found="$(printf '%s' "$said" | awk 'NF' | sort | uniq -c | sort -rn \
    | awk -v need=$((n / 2 + 1)) 'NR == 1 && $1 >= need { print $2 }')"
  [ -n "$found" ] && printf '%s' "$found"
}

# redis_master: a Redis pod that says it is a master with replicas attached, else none.
redis_master() {
  for h in ${RMSG_REDIS_HOSTS:-}; do
    [ "$h" = "$RMSG_SELF_HOST" ] && continue
    info="$(rcli "$h" "$redis_port" INFO replication | tr -d '\r')"
    case "$info" in
      *role:master*connected_slaves:[1-9]*) printf '%s' "$h"; return 0 ;;
    esac
  done
  return 1
}

# any_master: a Redis pod that says it is a master, with or without replicas, else none.
any_master() {
  redis_master && return 0
  for h in ${RMSG_REDIS_HOSTS:-}; do
    [ "$h" = "$RMSG_SELF_HOST" ] && continue
    case "$(rcli "$h" "$redis_port" INFO replication | tr -d '\r')" in
      *role:master*) printf '%s' "$h"; return 0 ;;
    esac
  done
  return 1
}

# is_master HOST: whether HOST answers as a master now.
is_master() {
  case "$(rcli "$1" "$redis_port" INFO replication | tr -d '\r')" in
    *role:master*) return 0 ;;
  esac
  return 1
}

# peers_all_empty: every other Redis pod answers, has loaded its data, holds no key and is no master.
# (A pod that does not answer may hold data: then the answer is no.)
peers_all_empty() {
  for h in ${RMSG_REDIS_HOSTS:-}; do
    [ "$h" = "$RMSG_SELF_HOST" ] && continue
    info="$(rcli "$h" "$redis_port" INFO replication keyspace persistence | tr -d '\r')"
    case "$info" in
      *role:*) ;;
      *) return 1 ;;
    esac
    case "$info" in
      *loading:1*|*role:master*) return 1 ;;
    esac
    printf '%s\n' "$info" | grep -q '^db[0-9]*:keys=[1-9]' && return 1
  done
  return 0
}
"""

REDIS_ROLE_SH = r"""# Sourced by redis-start.sh in Sentinel mode: this pod's announced name, and whom it follows.
. "$conf_dir/sentinel-lib.sh"
echo "replica-announce-ip $RMSG_SELF_HOST" >>"$conf"
# Whom to follow. The rule: an empty or stale Redis never becomes the master others follow, so a
# pod whose data is not vouched for waits as a replica of nobody (NO_MASTER), with replica-priority 0
# so that Sentinel never promotes it, until Sentinel or the operator (which sees every pod and
# elects the one with the most data) tells it whom to follow.
data_dir="$(awk '$1 == "dir" { print $2 }' "$conf_dir/redis.conf" | tail -n 1)"
has_data=""
if [ -s "$data_dir/dump.rdb" ] || ls "$data_dir/appendonlydir/"*.manifest >/dev/null 2>&1; then has_data=1; fi
named="$(sentinel_master || true)"
follow=""; priority=""; role="replica"
if [ -n "$named" ] && [ "$named" != "$RMSG_SELF_HOST" ]; then
  # The Sentinels' choice. Sentinel may promote this pod later only if that master serves now:
  # otherwise its offsets say nothing of its data yet (a restart from AOF resets them).
  follow="$named"
  is_master "$named" || priority=0
elif [ -n "$named" ]; then
  # The Sentinels name this pod, which has just (re)started: it may have come back without its data,
  # or behind its replicas. It serves as master only when there is nothing it could wipe out.
  count=$(echo ${RMSG_REDIS_HOSTS:-} | wc -w)
  if [ "$count" -le 1 ] || peers_all_empty; then role=master; else priority=0; fi
else
  live="$(redis_master || true)"
  [ -n "$live" ] || [ -n "$has_data" ] || live="$(any_master || true)"
  if [ -n "$live" ]; then
    follow="$live"
  elif [ -z "$has_data" ] && [ "$RMSG_SEED_HOST" = "$RMSG_SELF_HOST" ]; then
    # A new resource: the seed pod is the first master once every other pod answers and holds nothing.
    deadline=$(( $(date +%s) + ${RMSG_BOOTSTRAP_WAIT_SECONDS:-20} ))
    while :; do
      if peers_all_empty; then role=master; break; fi
      [ "$(date +%s)" -lt "$deadline" ] || { priority=0; break; }
      sleep 0.5
    done
  elif [ -z "$has_data" ]; then
    follow="$RMSG_SEED_HOST"  # nothing here to lose; the seed serves only if nobody holds data
  else
    priority=0
  fi
fi
if [ "$role" = replica ]; then
  if [ -n "$follow" ]; then
    echo "replicaof $follow $redis_port" >>"$conf"
  else
    echo "replicaof $no_master" >>"$conf"
  fi
  if [ -n "$priority" ]; then echo "replica-priority $priority" >>"$conf"; fi
fi
echo "redis-start: starting as ${role}${follow:+ of $follow}${priority:+ (replica-priority $priority)}" >&2
"""

SENTINEL_START_SH = r"""#!/bin/sh
# Starts redis-sentinel with the rendered sentinel.conf, this pod's announce hostname, auth from the
# Secret, and a monitor block naming the master the other Sentinels (or a live master) know.
set -eu
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
. "$conf_dir/sentinel-lib.sh"
umask 077
mkdir -p "$run_dir"
conf="$run_dir/sentinel.conf"
# The master a majority of the other Sentinels name, else a Redis pod that serves as master (a new
# resource's first master may take a few seconds to appear). Never a guess: with neither, this
# Sentinel starts monitoring nothing and the operator points it at the master it elects.
master="$(sentinel_master || redis_master || true)"
deadline=$(( $(date +%s) + ${RMSG_BOOTSTRAP_WAIT_SECONDS:-20} ))
while [ -z "$master" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 0.5
  master="$(sentinel_master || any_master || true)"
done
{
  cat "$conf_dir/sentinel.conf"
  echo "bind ${RMSG_BIND:-* -::*}"
  tls_conf
  echo "sentinel announce-ip $RMSG_SELF_HOST"
  if [ -n "${REDISCLI_AUTH:-}" ]; then
    printf 'requirepass %s\n' "$(quote "$REDISCLI_AUTH")"
    printf 'sentinel sentinel-pass %s\n' "$(quote "$REDISCLI_AUTH")"
  fi
  if [ -n "$master" ]; then
    sed "s/@MASTER@/$master/" "$conf_dir/sentinel-monitor.conf"
    if [ -n "${REDISCLI_AUTH:-}" ]; then
      printf 'sentinel auth-pass %s %s\n' "$RMSG_MASTER_NAME" "$(quote "$REDISCLI_AUTH")"
    fi
  fi
  acl_users "$conf_dir/sentinel-users.acl"  # the exporter's user
} >"$conf"
exec redis-sentinel "$conf"
"""

PRESTOP_SH = r"""#!/bin/sh
# Before a master stops, ask Sentinel to fail over and wait (bounded) until this pod is a replica,
# so a planned restart costs one switch-over instead of down-after-milliseconds of unavailability.
# Writes are paused first and the switch-over is asked for only once every replica has caught up
# with the paused master (Sentinel may pick any of them); otherwise writes resume and the pod stops
# like a crash, leaving the choice to Sentinel, which promotes the replica that holds the most.
# This pod follows the new master as soon as the Sentinels name it: what the old master acknowledged
# after the promotion would be lost when it becomes a replica.
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
. "$conf_dir/sentinel-lib.sh"
host="${RMSG_PROBE_HOST:-127.0.0.1}"
info="$(rcli "$host" "$redis_port" INFO replication | tr -d '\r')"
case "$info" in
  *role:master*connected_slaves:[1-9]*) ;;
  *) exit 0 ;;
esac
seconds="${RMSG_PRESTOP_SECONDS:-30}"
# replicas: "host port" of every replica the master lists.
replicas() {
  rcli "$host" "$redis_port" INFO replication | tr -d '\r' | grep '^slave[0-9]*:' \
    | sed -n 's/.*ip=\([^,]*\),port=\([0-9]*\).*/\1 \2/p'
}
# behind TARGET: a replica that answers slowly, has its link down, or has not processed TARGET yet.
behind() {
  replicas | while read -r r_host r_port; do
    # shellcheck disable=SC2086 # $tls_args is a list of options
    r_info="$(timeout 1 redis-cli $tls_args --no-auth-warning -h "$r_host" -p "$r_port" --raw INFO replication \
      2>/dev/null | tr -d '\r')"
    r_offset="$(printf '%s\n' "$r_info" | sed -n 's/^slave_repl_offset://p')"
    case "$r_info" in *master_link_status:up*) ;; *) echo "$r_host"; continue ;; esac
    if [ -z "$r_offset" ] || [ "$r_offset" -lt "$1" ]; then echo "$r_host"; fi
  done
}
# First without a pause: a replica that cannot catch up now will not within the pause either. A pause
# also holds back Sentinel's hello messages (PUBLISH) and with them its pings: it stays far below
# down-after-milliseconds (RMSG_CATCH_UP_MS, set from the spec).
if [ -n "$(behind 0)" ]; then
  echo "prestop: a replica is unreachable or not linked; no switch-over" >&2
  exit 0
fi
rcli "$host" "$redis_port" CLIENT PAUSE "$((seconds * 1000))" WRITE >/dev/null
target="$(rcli "$host" "$redis_port" INFO replication | tr -d '\r' | sed -n 's/^master_repl_offset://p')"
until_ms=$(( $(date +%s%3N) + ${RMSG_CATCH_UP_MS:-1000} ))
while [ -n "$(behind "${target:-999999999999}")" ]; do
  if [ "$(date +%s%3N)" -ge "$until_ms" ]; then
    echo "prestop: the replicas did not catch up with the paused master; no switch-over" >&2
    rcli "$host" "$redis_port" CLIENT UNPAUSE >/dev/null
    exit 0
  fi
  sleep 0.05
done
asked=""
for s in ${RMSG_SENTINEL_HOSTS:-}; do
  if [ "$(rcli "$s" "$sentinel_port" SENTINEL FAILOVER "$RMSG_MASTER_NAME")" = OK ]; then asked=1; break; fi
done
deadline=$(( $(date +%s) + seconds ))
while [ -n "$asked" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  case "$(rcli "$host" "$redis_port" INFO replication | tr -d '\r')" in
    *role:slave*) break ;;
  esac
  master="$(sentinel_master || true)"
  if [ -n "$master" ] && [ "$master" != "$RMSG_SELF_HOST" ]; then
    rcli "$host" "$redis_port" REPLICAOF "$master" "$redis_port" >/dev/null
  fi
  sleep 0.2
done
rcli "$host" "$redis_port" CLIENT UNPAUSE >/dev/null
exit 0
"""


def config_files(spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
    """Every file of a Sentinel-mode resource's ConfigMap, by key."""
    files = {
        **config.common_files(spec),
        "redis.conf": config.redis_conf(spec, replicas=spec.redis.replicas),
        "redis-role.sh": REDIS_ROLE_SH,
        "sentinel-lib.sh": SENTINEL_LIB_SH,
        "sentinel.conf": sentinel_conf(spec),
        "sentinel-monitor.conf": sentinel_monitor_conf(spec, owner),
        "sentinel-start.sh": SENTINEL_START_SH,
        "prestop.sh": PRESTOP_SH,
    }
    if config.exporter_user(spec):
        exporter = f"{config.EXPORTER_FILE} {config.EXPORTER_USER} {config.EXPORTER_RULES_SENTINEL}"
        files["sentinel-users.acl"] = exporter + "\n"
    return dict(sorted(files.items()))
