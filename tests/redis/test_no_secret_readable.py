"""No secret readable: every user the operator creates or declares, the default one excluded, logs in
to real processes of both modes (auth on, started from the rendered files by the real start scripts)
and tries every way to read secret material; no reply may hold a password, nor its SHA-256 hex (the
form ACL GETUSER and ACL LIST give).

The users: the exporter's (``rmsg-exporter``, on Redis and on Sentinel; its password read from the
file its init container writes, as the exporter reads it) and two declared users with the widest
rules a user may write: ``app`` with ``~* +@all``, ``audit`` with ``+@all`` in a selector. Before the
reads, passwords are set and used everywhere they can leave a trace: the operator's pass sets every
user and the default password again (ACL SETUSER, CONFIG SET masterauth, SENTINEL CONFIG SET
sentinel-pass, SENTINEL SET auth-pass), every user logs in (AUTH, HELLO AUTH), one fails to (ACL LOG),
with every command in the slow log (``slowlog-log-slower-than 0``).

The reads: CONFIG GET * / requirepass / masterauth, ACL LIST, ACL GETUSER of every user, ACL LOG,
INFO everything, CLIENT LIST, SLOWLOG GET, LATENCY LATEST, MONITOR (while the passwords are set and
used), CLUSTER NODES (cluster mode); on Sentinels also SENTINEL CONFIG GET * / sentinel-pass, SENTINEL
INFO-CACHE and DEBUG, and what the exporter reads there (SENTINEL MASTERS, MASTER, SENTINELS, REPLICAS).
The default user's replies are the control: the same search finds the secrets in them. Commands that
would change a password or hand one out (CONFIG SET, ACL SETUSER, REPLICAOF or CLUSTER MEET/REPLICATE
to a host of the caller's, MODULE LOAD, DEBUG, SENTINEL SET / CONFIG SET / MONITOR) are asked of
Redis with ACL DRYRUN, run as the default user: they must be refused.

The declared users' own work still runs (streams, INFO, ROLE on the master; what a cluster-aware client
asks in cluster mode): their rules lose only the commands denied to every declared user.

Each cell of the printed matrix (command x user@process kind) is "refused", "reveals nothing" (or "ok"
for the login and their own work), over every process of that kind; anything else fails the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster_env import ClusterEnv
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError, RedisError, ResponseError
from redis.retry import Retry
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders import config
from redis_messaging.builders.names import Owner
from redis_messaging.reconcile.acl import AclStep, Rotation
from redis_messaging.redis import acl
from redis_messaging.redis.addresses import MapAddresses

pytestmark = pytest.mark.redis

DEFAULT = "default-Pa55word-of-the-auth-secret"
EXPORTER = "exporter-Pa55word-generated"
APP = "app-Pa55word-declared"
AUDIT = "audit-Pa55word-declared"
PASSWORDS = {"default": DEFAULT, config.EXPORTER_USER: EXPORTER, "app": APP, "audit": AUDIT}
USERS = [  # spec.auth.users: the widest rules a user may write
    {"name": "app", "secretName": "app-password", "rules": "~* &* +@all"},
    {"name": "audit", "secretName": "audit-password", "rules": "~orders* +@stream (~* &* +@all)"},
]
SECRET_FILES = {"app-password": APP, "audit-password": AUDIT}
EVERY_COMMAND_LOGGED = {"slowlog-log-slower-than": "0", "slowlog-max-len": "4096",
                        "repl-diskless-sync-delay": "0"}

REFUSED, NOTHING, LOGGED_IN = "refused", "reveals nothing", "ok"


def secret_forms() -> dict[str, str]:
    """Each password as it could show: as is, its SHA-256 hex (ACL GETUSER, ACL LIST), base64."""
    out = {}
    for user, password in PASSWORDS.items():
        out[password] = f"{user}'s password"
        out[hashlib.sha256(password.encode()).hexdigest()] = f"{user}'s password hash"
        out[base64.b64encode(password.encode()).decode()] = f"{user}'s password in base64"
    return out


def text_of(reply: Any) -> str:
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    if isinstance(reply, dict):
        return " ".join(f"{text_of(k)} {text_of(v)}" for k, v in reply.items())
    if isinstance(reply, list | tuple | set):
        return " ".join(text_of(r) for r in reply)
    return str(reply)


def verdict(reply: Any) -> str:
    text = text_of(reply)
    found = sorted({what for form, what in secret_forms().items() if form in text})
    return f"REVEALS {', '.join(found)}" if found else NOTHING


def attempt(client: redis.Redis, *command: str) -> str:
    try:
        reply = client.execute_command(*command)
    except NoPermissionError:
        return REFUSED
    except ResponseError as exc:
        if "unknown command" in str(exc) or "unknown subcommand" in str(exc):
            return REFUSED  # this process has no such command (Sentinel): nobody can run it
        raise
    return verdict(reply)


def dry_run(admin: redis.Redis, user: str, *command: str) -> str:
    """Whether ``user`` may run ``command``, asked of Redis without running it (ACL DRYRUN)."""
    reply = str(admin.execute_command("ACL", "DRYRUN", user, *command))
    return REFUSED if "no permissions" in reply else f"ALLOWED ({reply})"


class Matrix:
    """command x user@kind -> the verdicts over every process of that kind."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.rows: list[str] = []
        self.columns: list[str] = []

    def add(self, command: str, column: str, result: str) -> None:
        if command not in self.rows:
            self.rows.append(command)
        if column not in self.columns:
            self.columns.append(column)
        self.cells[(command, column)].add(result)

    def failures(self) -> list[str]:
        return [f"{column}: {command}: {result}" for (command, column), results in self.cells.items()
                for result in sorted(results) if result not in (REFUSED, NOTHING, LOGGED_IN)]

    def render(self, title: str) -> str:
        def cell(command: str, column: str) -> str:
            results = self.cells.get((command, column))
            return " / ".join(sorted(results)) if results else "-"

        width = max(len(r) for r in self.rows)
        widths = [max(len(c), *(len(cell(r, c)) for r in self.rows)) for c in self.columns]
        lines = [title, " | ".join([" " * width, *(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))])]
        lines.append("-+-".join(["-" * width, *("-" * w for w in widths)]))
        for r in self.rows:
            lines.append(" | ".join([r.ljust(width), *(cell(r, c).ljust(w)
                                                       for c, w in zip(self.columns, widths, strict=True))]))
        return "\n".join(lines)


class FakeKube:
    """The Secrets the operator's pass reads (the declared users' passwords, the exporter's)."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind != "Secret" or name not in self.secrets:
            return None
        return {"data": {"password": base64.b64encode(self.secrets[name].encode()).decode()}}

    def annotate(self, *_: Any, **__: Any) -> None:
        raise AssertionError("no rotation here: nothing to annotate")


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    path.chmod(0o600)


def mount_users(pod_root: Path, env: dict[str, str], redis_pod: bool) -> None:
    """The projected users volume: the exporter's password on every pod, the declared users' on Redis pods."""
    users = pod_root / "users"
    write_secret(users / config.EXPORTER_FILE, EXPORTER)
    if redis_pod:
        for i, user in enumerate(USERS):
            write_secret(users / config.user_file(i), SECRET_FILES[user["secretName"]])
    env["RMSG_USERS_DIR"] = str(users)


def exporter_password(run_script: Callable[..., Any], pod_root: Path, env: dict[str, str],
                      address: tuple[str, int]) -> str:
    """What the exporter logs in with: its init container's file (exporter-auth.sh), looked up by the
    address it scrapes as given (redis_exporter before v1.70; the file holds it under the address with
    the user name too, as v1.70 and later look it up: tests/unit/test_exporter_login.py)."""
    scraped = f"redis://{address[0]}:{address[1]}"
    env.update({"REDIS_ADDR": scraped, "REDIS_USER": config.EXPORTER_USER,
                "REDIS_PASSWORD_FILE": str(pod_root / "exporter-auth" / config.EXPORTER_PASSWORD_FILE)})
    (pod_root / "exporter-auth").mkdir(exist_ok=True)
    done = run_script(config.EXPORTER_AUTH_SCRIPT)
    assert done.returncode == 0, done.stderr
    password: str = json.loads(Path(env["REDIS_PASSWORD_FILE"]).read_text())[scraped]
    return password


def login(address: tuple[str, int], user: str, password: str) -> redis.Redis:
    return redis.Redis(host=address[0], port=address[1], username=user, password=password, socket_timeout=3,
                       socket_connect_timeout=2, decode_responses=True, retry=Retry(NoBackoff(), 0))


def use_every_password(address: tuple[str, int], users: dict[str, str], *, sentinel: bool,
                       master_name: str) -> None:
    """Passwords set and used on one process, as the operator and clients do: the default password set
    again (ACL SETUSER, masterauth; Sentinel: sentinel-pass, auth-pass), each user logging in (AUTH,
    HELLO AUTH), one login failing (an ACL LOG entry)."""
    admin = login(address, "default", DEFAULT)
    try:
        acl.add_password(admin, DEFAULT, sentinel=sentinel, master_name=master_name)
        for user, password in users.items():
            admin.execute_command("HELLO", "2", "AUTH", user, password)
            admin.execute_command("AUTH", "default", DEFAULT)
        wrong = login(address, "app" if not sentinel else config.EXPORTER_USER, DEFAULT)  # another's password
        with suppress(RedisError):
            wrong.ping()
        wrong.close()
    finally:
        admin.close()


def monitor(address: tuple[str, int], user: str, password: str, users: dict[str, str], *, sentinel: bool,
            master_name: str) -> str:
    """MONITOR as ``user`` while every password is set and used."""
    client = login(address, user, password)
    try:
        watcher = client.monitor()
        try:
            watcher.__enter__()
        except NoPermissionError:
            return REFUSED
        except ResponseError as exc:
            if "unknown command" in str(exc):
                return REFUSED
            raise
        conn = watcher.connection
        assert conn is not None
        conn.socket_timeout = 0.2
        seen: list[Any] = []
        noise = threading.Thread(target=use_every_password, args=(address, users),
                                 kwargs={"sentinel": sentinel, "master_name": master_name})
        noise.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                seen.append(conn.read_response())
            except (TimeoutError, redis.exceptions.TimeoutError):
                if not noise.is_alive():
                    break
        noise.join(10)
        return verdict(seen)
    finally:
        client.close()


# The reads, run as each user: (command, whether it is asked of Redis, of Sentinel). "@M" is the master name.
READS: list[tuple[tuple[str, ...], bool, bool]] = [
    (("CONFIG", "GET", "*"), True, True),
    (("CONFIG", "GET", "requirepass"), True, True),
    (("CONFIG", "GET", "masterauth"), True, True),
    (("SENTINEL", "CONFIG", "GET", "*"), False, True),
    (("SENTINEL", "CONFIG", "GET", "sentinel-pass"), False, True),
    (("ACL", "LIST"), True, True),
    *((("ACL", "GETUSER", user), True, True) for user in PASSWORDS),
    (("ACL", "LOG"), True, True),
    (("INFO", "everything"), True, True),
    (("CLIENT", "LIST"), True, True),
    (("SLOWLOG", "GET", "4096"), True, True),
    (("LATENCY", "LATEST"), True, False),
    (("CLUSTER", "NODES"), True, False),  # cluster mode only (see reads())
    (("SENTINEL", "MASTERS"), False, True),  # what the exporter reads on a Sentinel
    (("SENTINEL", "MASTER", "@M"), False, True),
    (("SENTINEL", "SENTINELS", "@M"), False, True),
    (("SENTINEL", "REPLICAS", "@M"), False, True),
    (("SENTINEL", "INFO-CACHE", "@M"), False, True),
    (("SENTINEL", "DEBUG"), False, True),
]
# Commands that would change a password or hand one out: asked with ACL DRYRUN, never run.
DRY_RUNS: list[tuple[tuple[str, ...], bool, bool]] = [
    (("CONFIG", "SET", "requirepass", "x"), True, False),
    (("ACL", "SETUSER", "default", ">x"), True, True),
    (("MODULE", "LOAD", "/x.so"), True, False),
    (("DEBUG", "SLEEP", "0"), True, False),
    (("REPLICAOF", "127.0.0.1", "1"), True, False),  # Sentinel mode (see reads())
    (("CLUSTER", "MEET", "127.0.0.1", "1"), True, False),  # cluster mode
    (("CLUSTER", "REPLICATE", "0" * 40), True, False),  # cluster mode
    (("SENTINEL", "SET", "@M", "auth-pass", "x"), False, True),
    (("SENTINEL", "CONFIG", "SET", "sentinel-pass", "x"), False, True),
    (("SENTINEL", "MONITOR", "other", "127.0.0.1", "1", "1"), False, True),
]
CLUSTER_ONLY = {("CLUSTER", "NODES"), ("CLUSTER", "MEET", "127.0.0.1", "1"), ("CLUSTER", "REPLICATE", "0" * 40)}
SENTINEL_MODE_ONLY = {("REPLICAOF", "127.0.0.1", "1")}


def commands(table: list[tuple[tuple[str, ...], bool, bool]], *, kind: str, cluster: bool) -> list[tuple[str, ...]]:
    out = []
    for command, on_redis, on_sentinel in table:
        if not (on_redis if kind == "redis" else on_sentinel):
            continue
        if (command in CLUSTER_ONLY and not cluster) or (command in SENTINEL_MODE_ONLY and cluster):
            continue
        out.append(command)
    return out


def probe(matrix: Matrix, column: str, address: tuple[str, int], user: str, password: str, *, kind: str,
          cluster: bool = False, watch: dict[str, str] | None = None) -> None:
    """Every read and dry run of ``kind`` as ``user``; with ``watch`` (the users whose passwords are used
    meanwhile), MONITOR too."""
    def named(command: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(OWNER.master_name if w == "@M" else w for w in command)

    try:
        client = login(address, user, password)
        client.ping()
    except RedisError as exc:
        matrix.add("login (AUTH)", column, f"FAILED: {type(exc).__name__}")
        return
    matrix.add("login (AUTH)", column, LOGGED_IN)
    try:
        for command in commands(READS, kind=kind, cluster=cluster):
            matrix.add(" ".join(named(command)), column, attempt(client, *named(command)))
    finally:
        client.close()
    if watch is not None:
        matrix.add("MONITOR (passwords set and used meanwhile)", column,
                   monitor(address, user, password, watch, sentinel=kind == "sentinel", master_name=OWNER.master_name))
    admin = login(address, "default", DEFAULT)
    try:
        for command in commands(DRY_RUNS, kind=kind, cluster=cluster):
            matrix.add(f"{' '.join(named(command))} (dry run)", column, dry_run(admin, user, *named(command)))
    finally:
        admin.close()


def the_search_finds_what_the_default_user_reads(address: tuple[str, int], *, kind: str) -> None:
    """The control: the default user may read the secrets (it is the operator's), and the search finds
    them in its replies; the passwords went through the slow log (redacted) before the reads."""
    admin = login(address, "default", DEFAULT)
    try:
        if kind == "redis":
            assert verdict(admin.execute_command("CONFIG", "GET", "masterauth")) == "REVEALS default's password"
            assert verdict(admin.execute_command("ACL", "GETUSER", "app")) == "REVEALS app's password hash"
            slowlog = text_of(admin.execute_command("SLOWLOG", "GET", "4096"))
            for logged in ("SETUSER", "masterauth", "HELLO"):  # the password-bearing commands, redacted
                assert logged in slowlog, slowlog[-2000:]
        else:
            reply = admin.execute_command("SENTINEL", "CONFIG", "GET", "sentinel-pass")
            assert verdict(reply) == "REVEALS default's password"
        assert verdict(admin.execute_command("ACL", "LIST")).startswith("REVEALS")
    finally:
        admin.close()


def still_works(matrix: Matrix, column: str, address: tuple[str, int], user: str, password: str,
                work: list[tuple[str, ...]]) -> None:
    """What a declared user is for keeps working: its rules lose only the commands denied to every user."""
    client = login(address, user, password)
    try:
        for command in work:
            try:
                client.execute_command(*command)
                result = LOGGED_IN
            except RedisError as exc:
                result = f"FAILED: {exc}"
            words = command[:2] if command[0] in ("XGROUP", "CLUSTER") else command[:1]
            matrix.add(f"its own work: {' '.join(words)}", column, result)
    finally:
        client.close()


STREAM_WORK = [("XADD", "orders", "*", "n", "1"), ("XGROUP", "CREATE", "orders", "billing", "0"),
               ("XREADGROUP", "GROUP", "billing", "c1", "COUNT", "1", "STREAMS", "orders", ">"),
               ("XPENDING", "orders", "billing"), ("INFO", "replication"), ("ROLE",)]
CLUSTER_CLIENT_WORK = [("CLUSTER", "SLOTS"), ("CLUSTER", "SHARDS"), ("CLUSTER", "MYID"), ("READONLY",)]


def check(matrix: Matrix, title: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + matrix.render(title) + "\n(-: not a command of that kind of process, or not in that mode)")
    assert matrix.failures() == [], "\n".join(matrix.failures())


# ---------------------------------------------------------------------------------------------


OWNER = Owner(name="orders", namespace="shop", uid="uid-secrets")
SENTINEL_SPEC = models.parse_spec({
    "auth": {"secretName": "orders-password", "users": USERS},
    "redis": {"replicas": 2, "config": EVERY_COMMAND_LOGGED},
    "sentinel": {"replicas": 3, "quorum": 2},
})
CLUSTER_SPEC = models.parse_spec({
    "mode": "cluster",
    "auth": {"secretName": "orders-password", "users": USERS},
    "cluster": {"shards": 3, "replicasPerShard": 0},
    "redis": {"config": EVERY_COMMAND_LOGGED},
})


@pytest.fixture
def sentinel_env(tmp_path: Path) -> Iterator[SentinelEnv]:
    with SentinelEnv(SENTINEL_SPEC, OWNER, tmp_path / "pods", password=DEFAULT) as env:
        for name in env.pod_names:
            pod = env.pod(name)
            mount_users(pod.root, pod.env, pod.kind == "redis")
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        for name in env.sentinel_pods:
            env.wait_ready(name, timeout=30)
        yield env


def rules_of(address: tuple[str, int], names: list[str]) -> dict[str, Any]:
    admin = login(address, "default", DEFAULT)
    try:
        return {n: text_of(acl._pairs(admin.execute_command("ACL", "GETUSER", n)).get("commands")) for n in names}
    finally:
        admin.close()


def test_no_user_reads_a_secret_in_sentinel_mode(sentinel_env: SentinelEnv, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    env = sentinel_env
    declared = [u["name"] for u in USERS]
    every = ["default", config.EXPORTER_USER, *declared]
    exporter = {p: exporter_password(lambda s, p=p: env.run_script(p, s), env.pod(p).root, env.pod(p).env,
                                     env.address(p)) for p in env.pod_names}
    assert set(exporter.values()) == {EXPORTER}
    # The users as the start scripts set them, then the operator's pass (the same rules, set again).
    from_start = {p: rules_of(env.address(p), every[1:]) for p in env.redis_pods}
    step = AclStep(FakeKube({**SECRET_FILES, OWNER.exporter_secret: EXPORTER}),  # type: ignore[arg-type]
                   MapAddresses({p: env.address(p) for p in env.redis_pods},
                                {p: env.address(p) for p in env.sentinel_pods}), timeout=2.0)
    report = step.after_apply(SENTINEL_SPEC, OWNER, Rotation(DEFAULT, DEFAULT))
    assert report.condition is not None
    assert report.condition.status is True, report.condition
    assert {p: rules_of(env.address(p), every[1:]) for p in env.redis_pods} == from_start

    redis_users = {u: PASSWORDS[u] for u in every[1:]}
    for pod in env.redis_pods:
        use_every_password(env.address(pod), redis_users, sentinel=False, master_name=OWNER.master_name)
    for pod in env.sentinel_pods:
        use_every_password(env.address(pod), {config.EXPORTER_USER: EXPORTER}, sentinel=True,
                           master_name=OWNER.master_name)

    for pod in env.pod_names:
        the_search_finds_what_the_default_user_reads(env.address(pod), kind=env.pod(pod).kind)

    matrix = Matrix()
    for user in every[1:]:
        for i, pod in enumerate(env.redis_pods):
            probe(matrix, f"{user}@redis", env.address(pod), user, PASSWORDS[user], kind="redis",
                  watch=redis_users if i == 0 else None)
    for i, pod in enumerate(env.sentinel_pods):
        probe(matrix, f"{config.EXPORTER_USER}@sentinel", env.address(pod), config.EXPORTER_USER, EXPORTER,
              kind="sentinel", watch={config.EXPORTER_USER: EXPORTER} if i == 0 else None)
    master = env.wait_replication()
    for user in declared:  # each in its own stream (audit: orders* only, outside its selector)
        still_works(matrix, f"{user}@redis", env.address(master), user, PASSWORDS[user],
                    [tuple(f"orders-{user}" if w == "orders" else w for w in c) for c in STREAM_WORK])
    check(matrix, f"secret-reading matrix, sentinel mode ({len(env.redis_pods)} Redis, "
                  f"{len(env.sentinel_pods)} Sentinels; user@process kind)", capsys)


def test_no_user_reads_a_secret_in_cluster_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ClusterEnv(CLUSTER_SPEC, OWNER, tmp_path / "pods", password=DEFAULT) as env:
        for name in env.pod_names:
            pod = env.pod(name)
            mount_users(pod.root, pod.env, True)
        env.start()
        declared = [u["name"] for u in USERS]
        every = ["default", config.EXPORTER_USER, *declared]
        for name in env.pod_names:
            pod = env.pod(name)
            assert exporter_password(lambda s, n=name: env.run_script(n, s), pod.root, pod.env,
                                     env.address(name)) == EXPORTER
        from_start = {p: rules_of(env.address(p), every[1:]) for p in env.pod_names}
        step = AclStep(FakeKube({**SECRET_FILES, OWNER.exporter_secret: EXPORTER}),  # type: ignore[arg-type]
                       env.addresses(), timeout=2.0)
        report = step.after_apply(CLUSTER_SPEC, OWNER, Rotation(DEFAULT, DEFAULT))
        assert report.condition is not None
        assert report.condition.status is True, report.condition
        assert {p: rules_of(env.address(p), every[1:]) for p in env.pod_names} == from_start

        users = {u: PASSWORDS[u] for u in every[1:]}
        for pod in env.pod_names:
            use_every_password(env.address(pod), users, sentinel=False, master_name=OWNER.master_name)
        for pod in env.pod_names:
            the_search_finds_what_the_default_user_reads(env.address(pod), kind="redis")
        matrix = Matrix()
        for user in every[1:]:
            for i, pod in enumerate(env.pod_names):
                probe(matrix, f"{user}@shard", env.address(pod), user, PASSWORDS[user], kind="redis", cluster=True,
                      watch=users if i == 0 else None)
        for user in declared:  # what a cluster-aware client asks (no slots are served: no data commands)
            still_works(matrix, f"{user}@shard", env.address(env.pod_names[0]), user, PASSWORDS[user],
                        CLUSTER_CLIENT_WORK)
        check(matrix, f"secret-reading matrix, cluster mode ({len(env.pod_names)} shard pods; user@process kind)",
              capsys)
