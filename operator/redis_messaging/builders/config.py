"""redis.conf, sentinel.conf and the start, probe and pre-stop scripts.

The files land in one ConfigMap. Nothing secret is ever rendered here: the scripts read the
password from the mounted auth Secret at start-up and write it into the process's private
runtime configuration (an in-memory volume, mode 0600), so it is in no ConfigMap, no environment
value and no command line.

Per-pod facts (the pod's own stable hostname, the address to bind) come from the environment the
StatefulSet gives each pod; test fixtures run the same scripts with those variables pointing at
loopback addresses.
"""

from __future__ import annotations

import hashlib
import json

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner

# Applied before the user's redis.config, so users may override them.
MESSAGING_DEFAULTS: dict[str, str] = {
    # A message broker must refuse writes rather than silently evict stream entries.
    "maxmemory-policy": "noeviction",
    "tcp-keepalive": "60",
    "timeout": "0",
}


def _persistence_lines(spec: RedisMessagingSpec) -> list[str]:
    p = spec.persistence
    aof = p.mode in ("aof", "both")
    rdb = p.mode in ("rdb", "both")
    lines = [
        f"appendonly {'yes' if aof else 'no'}",
        f"appendfsync {p.appendfsync}",
        "aof-use-rdb-preamble yes",
        f'save "{p.rdb_save if rdb else ""}"',
    ]
    return lines


def min_replicas_to_write(spec: RedisMessagingSpec, replicas: int) -> int:
    """An isolated master stops accepting writes; never more than the replicas that exist."""
    return min(spec.redis.min_replicas_to_write, max(replicas - 1, 0))


def _tls_lines(spec: RedisMessagingSpec, port: int) -> list[str]:
    """TLS only: no plain-text port; the certificate files are named at start-up (common.sh)."""
    if not spec.tls.enabled:
        return [f"port {port}"]
    return [
        "port 0",
        f"tls-port {port}",
        "tls-replication yes",
        f"tls-auth-clients {'yes' if spec.tls.auth_clients else 'optional'}",
    ]


def redis_conf(spec: RedisMessagingSpec, *, replicas: int, cluster: bool = False) -> str:
    lines = [
        "# Rendered by redis-messaging-operator. Per-pod lines and auth are added at start-up.",
        *_tls_lines(spec, names.REDIS_PORT),
        "protected-mode no",
        f"dir {names.DATA_MOUNT}",
        "appenddirname appendonlydir",
        "dbfilename dump.rdb",
        *_persistence_lines(spec),
        "replica-read-only yes",
        "repl-diskless-sync yes",
        "repl-diskless-load disabled",
        f"min-replicas-to-write {min_replicas_to_write(spec, replicas)}",
        f"min-replicas-max-lag {spec.redis.min_replicas_max_lag}",
    ]
    if cluster:
        lines += [
            "cluster-enabled yes",
            f"cluster-config-file {names.DATA_MOUNT}/nodes.conf",
            f"cluster-node-timeout {spec.cluster.node_timeout}",
            "cluster-preferred-endpoint-type hostname",
            "cluster-require-full-coverage no",
            "cluster-allow-replica-migration no",
        ]
        if spec.tls.enabled:
            lines.append("tls-cluster yes")
    merged = {**MESSAGING_DEFAULTS, **dict(spec.redis.config)}
    lines += [f"{key} {value}" for key, value in sorted(merged.items())]
    return "\n".join(lines) + "\n"


def sentinel_conf(spec: RedisMessagingSpec) -> str:
    lines = [
        "# Rendered by redis-messaging-operator. The monitor block follows from sentinel-monitor.conf.",
        *_tls_lines(spec, names.SENTINEL_PORT),
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


EXPORTER_USER = "rmsg-exporter"
"""The exporter's own ACL user: its password is not the default user's, so a rotation of that one
(whose old value is removed after a grace period) never locks the exporter out."""
EXPORTER_FILE = "exporter"  # its password's file in the users volume
EXPORTER_RULES_REDIS = ("-@all +ping +info +config|get +client|list +client|info +client|setname +slowlog "
                        "+latency +memory|stats +memory|doctor +cluster|info +cluster|nodes +select")
EXPORTER_RULES_SENTINEL = ("-@all +ping +info +client|info +client|setname +sentinel|masters +sentinel|master "
                           "+sentinel|sentinels +sentinel|slaves +sentinel|replicas +sentinel|ckquorum")


def exporter_user(spec: RedisMessagingSpec) -> bool:
    """Whether the exporter authenticates as its own user (auth on and an exporter to authenticate)."""
    return spec.auth.enabled and spec.monitoring.exporter.enabled


# Shared shell functions: read the password, talk to Redis with a bounded timeout.
COMMON_SH = r"""# Sourced by the other scripts.
conf_dir="${RMSG_CONFIG_DIR:-/etc/redis-messaging}"
auth_dir="${RMSG_AUTH_DIR:-/etc/redis-messaging-auth}"
run_dir="${RMSG_RUN_DIR:-/run/redis}"
redis_port="${RMSG_REDIS_PORT:-6379}"
sentinel_port="${RMSG_SENTINEL_PORT:-26379}"
# The master a Redis pod names while it waits to be told whom to follow: nothing listens there.
no_master="@NO_MASTER@"
if [ -z "${RMSG_SELF_HOST:-}" ]; then
  RMSG_SELF_HOST="$(hostname).${RMSG_HEADLESS_SERVICE}.${POD_NAMESPACE}.svc.${RMSG_CLUSTER_DOMAIN:-cluster.local}"
fi
if [ -f "$auth_dir/password" ]; then
  REDISCLI_AUTH="$(cat "$auth_dir/password")"
  export REDISCLI_AUTH
fi
# TLS (RMSG_TLS=yes): every connection, the pod's key pair as client certificate, the servers verified.
tls_dir="${RMSG_TLS_DIR:-/etc/redis-messaging-tls}"
tls_args=""
if [ "${RMSG_TLS:-}" = yes ]; then
  tls_args="--tls --cacert $tls_dir/ca.crt --cert $tls_dir/tls.crt --key $tls_dir/tls.key"
fi

# rcli HOST PORT ARGS...: redis-cli with a deadline, raw output, no error on an unreachable host.
rcli() {
  host="$1"; port="$2"; shift 2
  # shellcheck disable=SC2086 # $tls_args is a list of options (paths without blanks)
  timeout "${RMSG_CLI_TIMEOUT:-3}" redis-cli $tls_args --no-auth-warning -h "$host" -p "$port" --raw "$@" 2>/dev/null
}

# tls_conf: the certificate lines of redis.conf / sentinel.conf, when TLS is on.
tls_conf() {
  if [ "${RMSG_TLS:-}" = yes ]; then
    printf 'tls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\n' \
      "$(quote "$tls_dir/tls.crt")" "$(quote "$tls_dir/tls.key")" "$(quote "$tls_dir/ca.crt")"
  fi
}

# acl_users LIST: the "user" lines of the ACL users in LIST ("<file> <name> <rules>" per line), the
# passwords read from their files in the users volume; users whose file is missing are skipped.
acl_users() {
  [ -f "$1" ] || return 0
  while read -r file user rules; do
    [ -n "$file" ] && [ -f "${RMSG_USERS_DIR:-/etc/redis-messaging-users}/$file" ] || continue
    pw="$(cat "${RMSG_USERS_DIR:-/etc/redis-messaging-users}/$file")"
    printf 'user %s reset on %s %s\n' "$user" "$(quote ">$pw")" "$rules"
  done <"$1"
}

# quote VALUE: a redis.conf string literal.
quote() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

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
""".replace("@NO_MASTER@", f"{names.NO_MASTER_HOST} {names.NO_MASTER_PORT}")

REDIS_START_SH = r"""#!/bin/sh
# Starts redis-server: the rendered redis.conf, this pod's announce address, auth from the Secret,
# and in sentinel mode `replicaof` the master that the Sentinels (or a live master) name.
set -eu
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
umask 077
mkdir -p "$run_dir"
conf="$run_dir/redis.conf"
# cat, not cp: cp would keep the ConfigMap file's read-only mode, and the lines below append.
cat "$conf_dir/redis.conf" >"$conf"
{
  echo "bind ${RMSG_BIND:-* -::*}"
  tls_conf
  if [ "${RMSG_MODE:-sentinel}" = cluster ]; then
    echo "cluster-announce-hostname $RMSG_SELF_HOST"
    if [ -n "${RMSG_ANNOUNCE_IP:-}" ]; then echo "cluster-announce-ip $RMSG_ANNOUNCE_IP"; fi
  else
    echo "replica-announce-ip $RMSG_SELF_HOST"
  fi
  if [ -n "${REDISCLI_AUTH:-}" ]; then
    # printf, not echo: dash's echo (the image's /bin/sh) would undo the backslash escaping of quote.
    printf 'requirepass %s\n' "$(quote "$REDISCLI_AUTH")"
    printf 'masterauth %s\n' "$(quote "$REDISCLI_AUTH")"
  fi
  # ACL users of spec.auth.users and the exporter's user, passwords from their mounted Secrets; the
  # operator applies them at run time as well (ACL SETUSER), this covers a restart.
  acl_users "$conf_dir/users.acl"
} >>"$conf"
if [ "${RMSG_MODE:-sentinel}" = sentinel ]; then
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
fi
exec redis-server "$conf"
"""

SENTINEL_START_SH = r"""#!/bin/sh
# Starts redis-sentinel with the rendered sentinel.conf, this pod's announce hostname, auth from the
# Secret, and a monitor block naming the master the other Sentinels (or a live master) know.
set -eu
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
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

PROBE_SH = r"""#!/bin/sh
# probe.sh liveness|readiness [redis|sentinel]
# liveness: the process answers (LOADING and MASTERDOWN count as alive).
# readiness: redis answers PONG and is a master or a replica with its link up; sentinel answers PONG.
. "${RMSG_CONFIG_DIR:-/etc/redis-messaging}/common.sh"
kind="${2:-redis}"
port="$redis_port"; [ "$kind" = sentinel ] && port="$sentinel_port"
host="${RMSG_PROBE_HOST:-127.0.0.1}"
reply="$(rcli "$host" "$port" PING)"
case "$1" in
  liveness)
    case "$reply" in PONG|LOADING*|MASTERDOWN*|BUSY*) exit 0 ;; *) exit 1 ;; esac ;;
  readiness)
    [ "$reply" = PONG ] || exit 1
    [ "$kind" = sentinel ] && exit 0
    info="$(rcli "$host" "$port" INFO replication | tr -d '\r')"
    case "$info" in
      *role:master*) exit 0 ;;
      *master_link_status:up*) exit 0 ;;
      *) exit 1 ;;
    esac ;;
esac
exit 1
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


def config_files(spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
    """Every file of the ConfigMap, by key."""
    files = {
        "common.sh": COMMON_SH,
        "redis-start.sh": REDIS_START_SH,
        "probe.sh": PROBE_SH,
    }
    if spec.mode == "sentinel":
        files.update(
            {
                "redis.conf": redis_conf(spec, replicas=spec.redis.replicas),
                "sentinel.conf": sentinel_conf(spec),
                "sentinel-monitor.conf": sentinel_monitor_conf(spec, owner),
                "sentinel-start.sh": SENTINEL_START_SH,
                "prestop.sh": PRESTOP_SH,
            }
        )
    else:
        files["redis.conf"] = redis_conf(spec, replicas=1 + spec.cluster.replicas_per_shard, cluster=True)
        files["prestop.sh"] = CLUSTER_PRESTOP_SH
    if spec.auth.enabled and (spec.auth.users or exporter_user(spec)):
        files["users.acl"] = users_acl(spec)
    if exporter_user(spec) and spec.mode == "sentinel":
        files["sentinel-users.acl"] = f"{EXPORTER_FILE} {EXPORTER_USER} {EXPORTER_RULES_SENTINEL}\n"
    return dict(sorted(files.items()))


def user_file(index: int) -> str:
    """The file of the i-th user's password in the mounted users volume."""
    return f"user-{index}"


def users_acl(spec: RedisMessagingSpec) -> str:
    """One line per ACL user: the password file, the name, the rules (never a password)."""
    lines = [f"{user_file(i)} {u.name} {' '.join(u.rules.split())}\n" for i, u in enumerate(spec.auth.users)]
    if exporter_user(spec):
        lines.append(f"{EXPORTER_FILE} {EXPORTER_USER} {EXPORTER_RULES_REDIS}\n")
    return "".join(lines)


def content_hash(data: object) -> str:
    """A short stable hash of JSON-serialisable data (config, desired objects)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
