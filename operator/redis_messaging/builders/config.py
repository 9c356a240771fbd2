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
from collections.abc import Sequence

from redis_messaging.api import models
from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names

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


def tls_lines(spec: RedisMessagingSpec, port: int) -> list[str]:
    """TLS only: no plain-text port; the certificate files are named at start-up (common.sh)."""
    if not spec.tls.enabled:
        return [f"port {port}"]
    return [
        "port 0",
        f"tls-port {port}",
        "tls-replication yes",
        f"tls-auth-clients {'yes' if spec.tls.auth_clients else 'optional'}",
    ]


def redis_conf(spec: RedisMessagingSpec, *, replicas: int, mode_lines: Sequence[str] = ()) -> str:
    """redis.conf: what both modes need, then ``mode_lines`` (a mode's own), then the defaults and the
    user's ``redis.config``."""
    lines = [
        "# Rendered by redis-messaging-operator. Per-pod lines and auth are added at start-up.",
        *tls_lines(spec, names.REDIS_PORT),
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
    lines += mode_lines
    merged = {**MESSAGING_DEFAULTS, **dict(spec.redis.config)}
    lines += [f"{key} {value}" for key, value in sorted(merged.items())]
    return "\n".join(lines) + "\n"


EXPORTER_USER = "rmsg-exporter"
"""The exporter's own ACL user: its password is not the default user's, so a rotation of that one
(whose old value is removed after a grace period) never locks the exporter out."""
EXPORTER_FILE = "exporter"  # its password's file in the users volume
# What the exporter reads, and nothing that shows a secret: no CONFIG (CONFIG GET answers requirepass and
# masterauth), no ACL (hashes of every password), no MONITOR; SLOWLOG and LATENCY only read (no RESET).
# COMMAND INFO (the commands' own description): redis_exporter asks it on every scrape whether the server
# has COMMANDLOG; refused, each scrape was a NOPERM error and an ACL LOG entry.
EXPORTER_RULES_REDIS = ("-@all +ping +info +client|list +client|info +client|setname +slowlog|get +slowlog|len "
                        "+latency|latest +latency|histogram +memory|stats +memory|doctor +cluster|info "
                        "+cluster|nodes +select +command|info")
# COMMANDLOG (Valkey 8.1 and later: the slow log and the logs of large requests and replies), only
# read; on an engine without it the rule is an error (and a redis.conf with it stops the server): the
# start script adds it where `redis-server --version` says Valkey 8.1 or later (has_commandlog), the
# operator's pass where the process's INFO server does (reconcile/acl.py, exporter_rules).
EXPORTER_RULES_COMMANDLOG = "+commandlog|get +commandlog|len"


# On a Sentinel: its view of the masters, never SENTINEL CONFIG (sentinel-pass) nor SENTINEL SET.
EXPORTER_RULES_SENTINEL = ("-@all +ping +info +client|info +client|setname +sentinel|masters +sentinel|master "
                           "+sentinel|sentinels +sentinel|slaves +sentinel|replicas +sentinel|ckquorum +command|info")
EXPORTER_AUTH_SCRIPT = "exporter-auth.sh"  # the exporter's init container writes its password file
EXPORTER_PASSWORD_FILE = "password.json"


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
# passwords read from their files in the users volume; users whose file is missing are skipped. A line
# "if-commandlog <name> <rules>" adds rules to that user's line where the server has COMMANDLOG (a
# user is declared once in a configuration file).
acl_users() {
  [ -f "$1" ] || return 0
  commandlog=no
  if grep -q '^if-commandlog ' "$1" && has_commandlog; then commandlog=yes; fi
  while read -r file user rules; do
    [ "$file" != if-commandlog ] || continue
    [ -n "$file" ] && [ -f "${RMSG_USERS_DIR:-/etc/redis-messaging-users}/$file" ] || continue
    pw="$(cat "${RMSG_USERS_DIR:-/etc/redis-messaging-users}/$file")"
    more=""
    if [ "$commandlog" = yes ]; then
      more="$(awk -v u="$user" '$1 == "if-commandlog" && $2 == u { $1 = ""; $2 = ""; sub(/^ +/, ""); print }' "$1")"
    fi
    printf 'user %s reset on %s %s%s\n' "$user" "$(quote ">$pw")" "$rules" "${more:+ $more}"
  done <"$1"
}

# has_commandlog: whether this image's redis-server has COMMANDLOG (Valkey 8.1 and later; its rules
# are an error on any other server, which then does not start).
has_commandlog() {
  version="$(redis-server --version 2>/dev/null || true)"
  case "$version" in Valkey*) ;; *) return 1 ;; esac
  version="${version#*v=}"
  major="${version%%.*}"
  minor="${version#*.}"
  minor="${minor%%.*}"
  case "$major" in *[!0-9]*|"") return 1 ;; esac
  case "$minor" in *[!0-9]*|"") return 1 ;; esac
  [ "$major" -gt 8 ] || { [ "$major" -eq 8 ] && [ "$minor" -ge 1 ]; }
}

# quote VALUE: a redis.conf string literal.
quote() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}
""".replace("@NO_MASTER@", f"{names.NO_MASTER_HOST} {names.NO_MASTER_PORT}")

REDIS_START_SH = r"""#!/bin/sh
# Starts redis-server: the rendered redis.conf, auth from the Secret, and what the mode's
# redis-role.sh adds (this pod's announced name; in Sentinel mode, whom it follows).
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
  if [ -n "${REDISCLI_AUTH:-}" ]; then
    # printf, not echo: dash's echo (the image's /bin/sh) would undo the backslash escaping of quote.
    printf 'requirepass %s\n' "$(quote "$REDISCLI_AUTH")"
    printf 'masterauth %s\n' "$(quote "$REDISCLI_AUTH")"
  fi
  # ACL users of spec.auth.users and the exporter's user, passwords from their mounted Secrets; the
  # operator applies them at run time as well (ACL SETUSER), this covers a restart.
  acl_users "$conf_dir/users.acl"
} >>"$conf"
# What differs between the modes (announced names, in Sentinel mode whom to follow): the mode's file.
. "$conf_dir/redis-role.sh"
exec redis-server "$conf"
"""


EXPORTER_AUTH_SH = r"""#!/bin/sh
# The exporter's init container: writes the file redis_exporter reads its password from
# (REDIS_PASSWORD_FILE, -redis.password-file): a JSON object from the address it scrapes (REDIS_ADDR,
# as the exporter spells it; from v1.70 on with its user name in it) to the password, taken from the
# mounted Secret. Nothing else carries the password: no environment value, no command line.
set -eu
umask 077
users_dir="${RMSG_USERS_DIR:-/etc/redis-messaging-users}"
out="${REDIS_PASSWORD_FILE:?}"
addr="${REDIS_ADDR:?}"
with_user="${addr%%://*}://${REDIS_USER:?}@${addr#*://}"
# json VALUE: a JSON string literal.
json() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}
pw="$(cat "$users_dir/exporter")"
printf '{%s: %s, %s: %s}\n' "$(json "$addr")" "$(json "$pw")" "$(json "$with_user")" "$(json "$pw")" >"$out.tmp"
mv "$out.tmp" "$out"
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




def common_files(spec: RedisMessagingSpec) -> dict[str, str]:
    """The files of the ConfigMap both modes have; each mode adds its own (redis.conf, redis-role.sh,
    its pre-stop hook, ...): :func:`redis_messaging.modes.Mode.config_files`."""
    files = {
        "common.sh": COMMON_SH,
        "redis-start.sh": REDIS_START_SH,
        "probe.sh": PROBE_SH,
    }
    if spec.auth.enabled and (spec.auth.users or exporter_user(spec)):
        files["users.acl"] = users_acl(spec)
    if exporter_user(spec):
        files[EXPORTER_AUTH_SCRIPT] = EXPORTER_AUTH_SH
    return files


DENIED_TO_USERS = tuple(f"-{command}" for command in models.USER_DENIED_COMMANDS)
"""Appended to every declared user's rules, and to each of its selectors (the rules outside a selector
do not reach into it): whatever the rules grant, no declared user can read a password."""


def password_rule(token: str) -> bool:
    """A rule that sets or removes a password (or nopass): the password is the Secret's, never a rule's."""
    return token[:1] in (">", "<", "#", "!") or token.lower() == "nopass"


def declared_rules(rules: str) -> str:
    """The rules a declared user is given: its own, without a password (>, <, #, !) or nopass (the
    password is its Secret's), then :data:`DENIED_TO_USERS`, inside each selector too. Selectors are
    found as Redis merges them: from a rule that starts with "(" to the first that ends with ")"."""
    out: list[str] = []
    inside = False
    for token in rules.split():
        if not inside and password_rule(token):
            continue
        opens = not inside and token.startswith("(")
        closes = (inside or opens) and token.endswith(")") and token != "("
        inside = (inside or opens) and not closes
        if not closes:
            out.append(token)
            continue
        body = token[:-1]
        denied = list(DENIED_TO_USERS)
        if body == "(":  # "()": the selector's first rule carries its parenthesis
            denied[0] = "(" + denied[0]
        elif body:
            out.append(body)
        denied[-1] += ")"
        out += denied
    return " ".join([*out, *DENIED_TO_USERS])


def user_file(index: int) -> str:
    """The file of the i-th user's password in the mounted users volume."""
    return f"user-{index}"


def users_acl(spec: RedisMessagingSpec) -> str:
    """One line per ACL user: the password file, the name, the rules (never a password)."""
    lines = [f"{user_file(i)} {u.name} {declared_rules(u.rules)}\n" for i, u in enumerate(spec.auth.users)]
    if exporter_user(spec):
        lines.append(f"{EXPORTER_FILE} {EXPORTER_USER} {EXPORTER_RULES_REDIS}\n")
        lines.append(f"if-commandlog {EXPORTER_USER} {EXPORTER_RULES_COMMANDLOG}\n")
    return "".join(lines)


def content_hash(data: object) -> str:
    """A short stable hash of JSON-serialisable data (config, desired objects)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
