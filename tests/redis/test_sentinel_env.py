"""The rendered sentinel-mode configuration works with real redis-server and redis-sentinel processes.

Every pod runs the start script of the ConfigMap the operator renders, with the environment its
StatefulSet gives it, on its own loopback address (see :mod:`sentinel_env`): the topology comes up,
auth is enforced without leaking the password, Sentinel fails over, and restarted pods rejoin as
the start scripts decide. The probe and pre-stop scripts are run the way the kubelet runs them.
"""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import engines
import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.retry import Retry
from sentinel_env import SentinelEnv, free_loopback_ip, port_is_free

from redis_messaging import modes
from redis_messaging.api.models import RedisMessagingSpec, parse_spec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner

pytestmark = pytest.mark.redis

OWNER = Owner(name="orders", namespace="shop", uid="uid-1")
# A user-chosen Secret may hold characters that sh and redis.conf quoting must carry through intact.
PASSWORD = "Or ders\"$HOME#1'`;|*&"
DOWN_AFTER_MS = 1000
# Diskless sync waits 5 s for more replicas by default; tests need not.
FAST_SYNC = {"repl-diskless-sync-delay": "0"}

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (RedisError, AssertionError, KeyError, IndexError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


def require_binaries() -> None:
    missing = [b for b in ("redis-server", "redis-sentinel", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: apt-get install -y redis-server redis-sentinel redis-tools")


def sentinel_spec(**extra: Any) -> RedisMessagingSpec:
    spec: dict[str, Any] = {
        "sentinel": {"downAfterMilliseconds": DOWN_AFTER_MS, "failoverTimeout": 5000},
        "redis": {"config": FAST_SYNC},
    }
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value}
    return parse_spec(spec)


def bare_client(address: tuple[str, int], password: str | None = None) -> redis.Redis:
    """A client without retries (redis-py retries a failed AUTH with backoff by default)."""
    return redis.Redis(address[0], address[1], password=password, socket_timeout=2, socket_connect_timeout=2,
                       decode_responses=True, retry=Retry(NoBackoff(), 0))


def sentinel_table(env: SentinelEnv, sentinel: str, what: str) -> list[dict[str, str]]:
    """SENTINEL REPLICAS|SENTINELS <master> of one Sentinel, as a list of field maps."""
    with bare_client(env.address(sentinel), env.password) as client:
        rows = client.execute_command("SENTINEL", what, OWNER.master_name)
    out = []
    for row in rows:
        if isinstance(row, dict):
            out.append({str(k): str(v) for k, v in row.items()})
        else:
            out.append({str(row[i]): str(row[i + 1]) for i in range(0, len(row), 2)})
    return out


def healthy_peers(env: SentinelEnv, sentinel: str, what: str, expected: set[str]) -> bool:
    """Whether the Sentinel lists exactly ``expected`` (IPs) as replicas or Sentinels, none down."""
    rows = sentinel_table(env, sentinel, what)
    ips = {r["ip"] for r in rows}
    down = [r["ip"] for r in rows if "s_down" in r["flags"] or "disconnected" in r["flags"]]
    return ips == expected and not down


def wait_sentinels_know_replicas(env: SentinelEnv, master: str, timeout: float = 20) -> None:
    replica_ips = {env.address(r)[0] for r in env.redis_pods if r != master and env.is_running(r)}
    for sentinel in env.sentinel_pods:
        eventually(functools.partial(healthy_peers, env, sentinel, "REPLICAS", replica_ips),
                   timeout=timeout, what=f"{sentinel} lists the replicas {sorted(replica_ips)}")


def wait_sentinels_acquainted(env: SentinelEnv, master: str, timeout: float = 20) -> None:
    """Until every Sentinel lists every other one and every replica: a Sentinel that knows no peer cannot
    gather a quorum, so a master that fails before would never be failed over (what the operator's
    Ready waits for too). Sentinels learn of each other from their hello messages, every 2 s."""
    wait_sentinels_know_replicas(env, master, timeout)
    for sentinel in env.sentinel_pods:
        others = {env.address(s)[0] for s in env.sentinel_pods if s != sentinel}
        eventually(functools.partial(healthy_peers, env, sentinel, "SENTINELS", others),
                   timeout=timeout, what=f"{sentinel} lists the Sentinels {sorted(others)}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEnv]:
    """3 Redis pods and 3 Sentinels with a password, shared by the tests of the failover story."""
    require_binaries()
    with SentinelEnv(sentinel_spec(), OWNER, tmp_path_factory.mktemp("sentinel"), password=PASSWORD) as e:
        e.start()
        yield e


# -- helpers of the harness itself ------------------------------------------------------------------
def test_free_loopback_ips_are_distinct_and_bindable() -> None:
    ips = [free_loopback_ip(names.REDIS_PORT) for _ in range(5)]
    assert len(set(ips)) == 5
    for ip in ips:
        assert ip.startswith("127.")
        assert not ip.startswith("127.0.0.")
        assert port_is_free(ip, names.REDIS_PORT)


def test_another_process_never_gets_an_address_of_ours_even_while_nothing_listens_there() -> None:
    # The kube and redis tiers run side by side: one took the address of the other's pod while that pod
    # was down for a restart, and the restart failed (bind: Address already in use).
    ours = {free_loopback_ip(names.REDIS_PORT) for _ in range(3)}  # allocated, nothing bound
    code = ("import sys; sys.path[:0] = sys.argv[1:]\n"
            "from sentinel_env import free_loopback_ip\n"
            "print(' '.join(free_loopback_ip(6379) for _ in range(600)))")
    here = Path(__file__).resolve().parent
    paths = [str(here), str(here.parents[1] / "tests" / "support"), str(here.parents[1] / "operator")]
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert len(out) == len(set(out)) == 600  # more than a block of 254: it claimed others
    assert not ours & set(out)
    ours_blocks = {ip.rsplit(".", 1)[0] for ip in ours}
    assert not ours_blocks & {ip.rsplit(".", 1)[0] for ip in out}


# -- (1) the topology comes up from the rendered files -----------------------------------------------
def test_topology_comes_up_from_the_rendered_files(env: SentinelEnv) -> None:
    seed, *replicas = env.redis_pods
    master = env.wait_replication(timeout=20)
    assert master == seed, "the seed (pod 0) starts as the master when nobody knows another one"
    for pod in env.pod_names:
        env.wait_ready(pod, timeout=10)

    # Every Sentinel (not only a majority) names the seed.
    assert env.sentinel_master(timeout=10) == env.address(seed)
    assert set(env.sentinel_masters().values()) == {env.address(seed)}

    # The replicas announce their own address, not the source address of their connection.
    info = env.info(seed)
    assert info["connected_slaves"] == len(replicas)
    announced = {(info[f"slave{i}"]["ip"], int(info[f"slave{i}"]["port"])) for i in range(len(replicas))}
    assert announced == {env.address(r) for r in replicas}
    for replica in replicas:
        replica_info = env.info(replica)
        assert replica_info["role"] == "slave"
        assert replica_info["master_host"] == env.address(seed)[0]

    # Each Sentinel found both replicas (from the master's INFO, every 10 s) and the 2 others (hello).
    wait_sentinels_know_replicas(env, seed)
    for sentinel in env.sentinel_pods:
        others = {env.address(s)[0] for s in env.sentinel_pods if s != sentinel}
        eventually(functools.partial(healthy_peers, env, sentinel, "SENTINELS", others),
                   timeout=10, what=f"{sentinel} lists the 2 other Sentinels")


# -- (2) auth is enforced and the password leaks nowhere ---------------------------------------------
def test_password_is_required_and_never_rendered_nor_on_a_command_line(env: SentinelEnv) -> None:
    env.wait_replication(timeout=20)
    for pod in env.pod_names:
        # NOAUTH (redis-py says "Authentication required", or names HELLO when it negotiates RESP3).
        with (bare_client(env.address(pod)) as anonymous,
              pytest.raises(AuthenticationError, match=r"[Aa]uthentication required|authenticated")):
            anonymous.ping()
        with (bare_client(env.address(pod), "not-the-password") as wrong,
              pytest.raises(AuthenticationError, match=r"WRONGPASS|invalid username-password")):
            wrong.ping()
        assert env.client(pod).ping() is True, f"{pod} refuses the Secret's password"

    secret = PASSWORD.encode()
    for pod in env.pod_names:
        cmdline = Path(f"/proc/{env.pid(pod)}/cmdline").read_bytes()
        binary = b"redis-server" if pod in env.redis_pods else b"redis-sentinel"
        assert cmdline.startswith(binary), f"{pod}: the start script did not exec {binary!r}: {cmdline!r}"
        assert secret not in cmdline, f"{pod}: the password is on the command line"
        # Only the process's private runtime file holds it (umask 077 in the start script).
        runtime = env.pod(pod).run_dir / ("redis.conf" if pod in env.redis_pods else "sentinel.conf")
        assert runtime.stat().st_mode & 0o077 == 0, f"{runtime} is readable by others"
        for rendered in env.pod(pod).config_dir.iterdir():
            assert secret not in rendered.read_bytes(), f"{rendered} holds the password"

    for key, text in modes.config_files(env.spec, OWNER).items():
        assert PASSWORD not in text, f"ConfigMap key {key} holds the password"


# -- (3) failover, and the killed master rejoins as a replica ----------------------------------------
@pytest.mark.xfail(engines.valkey(), reason=engines.SECOND_FAILOVER, strict=False)
def test_sentinel_fails_over_and_the_old_master_rejoins_as_replica(env: SentinelEnv) -> None:
    old = env.wait_replication(timeout=20)
    assert env.sentinel_master(timeout=10) == env.address(old)
    wait_sentinels_acquainted(env, old)
    writer = env.client(old)
    writer.set("order:1", "paid")
    assert writer.wait(len(env.redis_pods) - 1, 5000) == len(env.redis_pods) - 1

    killed_at = time.monotonic()
    env.kill(old)
    limit = DOWN_AFTER_MS / 1000 + 6
    new_address = env.sentinel_master(timeout=limit, other_than=env.address(old))
    failover_seconds = time.monotonic() - killed_at
    assert failover_seconds < limit
    new = env.pod_at(new_address)
    assert env.wait_replication(timeout=15) == new
    assert env.client(new).get("order:1") == "paid"
    # The start script believes the first Sentinel that answers: let every one catch up first.
    eventually(lambda: set(env.sentinel_masters().values()) == {new_address}, timeout=10,
               what="every Sentinel names the new master")

    env.restart(old)
    env.wait_ready(old, timeout=20)
    assert env.wait_replication(timeout=20) == new
    assert env.info(old)["master_host"] == new_address[0]
    log = env.log(old, since_start=True)
    # The start script asked the Sentinels: the pod came up as a replica of the new master, it was
    # not a second master until Sentinel demoted it (that would log a REPLICAOF "user request").
    # (Valkey logs "PRIMARY" where Redis logs "MASTER")
    assert any(f"Connecting to {word} {new_address[0]}:{new_address[1]}" in log
               for word in ("MASTER", "PRIMARY")), log[-2000:]
    assert "user request" not in log, f"Sentinel had to reconfigure the restarted pod:\n{log[-2000:]}"
    # Persistence (aof, the spec's default) lives in the pod's data volume and was loaded on restart.
    assert (env.pod(old).data_dir / "appendonlydir").is_dir()
    assert "DB loaded from append only file" in log
    assert env.client(old).get("order:1") == "paid"
    writer = env.client(new)
    writer.set("order:2", "shipped")
    assert writer.wait(len(env.redis_pods) - 1, 5000) == len(env.redis_pods) - 1
    print(f"failover after SIGKILL of {old}: {failover_seconds:.1f}s")


# -- (4) a restarted Sentinel monitors the current master --------------------------------------------
def test_restarted_sentinel_monitors_the_current_master(env: SentinelEnv) -> None:
    seed = env.redis_pods[0]
    master = env.wait_replication(timeout=20)
    if master == seed:
        # Run alone: move the master off the seed first (with the pre-stop hook), so that the
        # Sentinel can only find it by asking the other Sentinels.
        wait_sentinels_know_replicas(env, master)
        result = env.run_script(master, "prestop.sh", timeout=60)
        assert result.returncode == 0, result.stderr
        master = env.wait_replication(timeout=20)
    current = env.sentinel_master(timeout=10)
    assert current == env.address(master) != env.address(seed)

    sentinel = env.sentinel_pods[1]
    env.kill(sentinel)
    env.restart(sentinel)
    env.wait_ready(sentinel, timeout=10)
    log = env.log(sentinel, since_start=True)
    assert f"+monitor master {OWNER.master_name} {current[0]} {current[1]} " in log, log
    assert env.sentinel_masters()[sentinel] == current

    replica_ips = {env.address(p)[0] for p in env.redis_pods if p != master}
    others = {env.address(s)[0] for s in env.sentinel_pods if s != sentinel}
    eventually(lambda: healthy_peers(env, sentinel, "SENTINELS", others), timeout=10,
               what=f"restarted {sentinel} lists the 2 other Sentinels")
    eventually(lambda: healthy_peers(env, sentinel, "REPLICAS", replica_ips), timeout=10,
               what=f"restarted {sentinel} lists the 2 replicas")
    assert "+switch-master" not in env.log(sentinel, since_start=True)


# -- (5) the pre-stop hook hands the master role over and loses no acknowledged write ------------------
def test_prestop_hands_the_master_role_over_without_losing_writes(env: SentinelEnv) -> None:
    master = env.wait_replication(timeout=20)
    assert env.sentinel_master(timeout=10) == env.address(master)
    # Sentinel reconfigures only the replicas it knows (from the master's INFO, every 10 s).
    wait_sentinels_know_replicas(env, master)
    outcome: dict[str, Any] = {}

    def prestop() -> None:  # what the kubelet runs before it stops the master's container
        started = time.monotonic()
        outcome["result"] = env.run_script(master, "prestop.sh", timeout=60)
        outcome["seconds"] = time.monotonic() - started

    hook = threading.Thread(target=prestop)
    hook.start()
    # A producer still routed to the old pod (the master Service follows the role label later)
    # keeps adding entries; an entry counts once the old master acknowledged it.
    producer = env.client(master)
    acknowledged: list[str] = []
    refused: Counter[str] = Counter()
    n = 0
    while hook.is_alive():
        n += 1
        try:
            acknowledged.append(str(producer.xadd("prestop-orders", {"n": n})))
        except RedisError as exc:
            refused[str(exc).split(" ")[0] or type(exc).__name__] += 1
        time.sleep(0.02)
    hook.join()
    result = outcome["result"]
    assert result.returncode == 0, result.stderr
    assert env.info(master)["role"] == "slave", f"prestop.sh returned after {outcome['seconds']:.1f}s, still master"
    new = env.wait_replication(timeout=20)
    assert new != master
    assert env.sentinel_master(timeout=10) == env.address(new)
    kept = {entry_id for entry_id, _ in env.client(new).xrange("prestop-orders") or []}
    lost = [entry_id for entry_id in acknowledged if entry_id not in kept]
    print(f"prestop.sh switch-over: {outcome['seconds']:.1f}s, {len(acknowledged)} entries acknowledged, "
          f"refused {dict(refused)}")
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} stream entries acknowledged by the old master {master} while "
        f"prestop.sh ran ({outcome['seconds']:.1f}s) are not on the new master {new}: the old master kept "
        "accepting writes after Sentinel promoted a replica, and they were discarded when it became a "
        f"replica. First lost: {lost[:3]}. prestop.sh should pause writes (CLIENT PAUSE ... WRITE) before "
        "SENTINEL FAILOVER and follow the new master itself (REPLICAOF) once the Sentinels name it."
    )


# -- (6) readiness follows the replication link ------------------------------------------------------
def test_readiness_probe_follows_the_replication_link(tmp_path: Path) -> None:
    require_binaries()
    # No auth (the scripts' path without a password file); Sentinel slow to act so that it does not
    # interfere; the replica notices a silent master after repl-timeout (2 s, pinged every 1 s).
    spec = parse_spec({
        "auth": {"enabled": False},
        "redis": {"replicas": 2, "config": {**FAST_SYNC, "repl-timeout": "2", "repl-ping-replica-period": "1"}},
        "sentinel": {"replicas": 1, "quorum": 1, "downAfterMilliseconds": 60000},
    })
    with SentinelEnv(spec, OWNER, tmp_path, password=None) as env:
        env.start()
        master, replica = env.redis_pods
        sentinel = env.sentinel_pods[0]
        assert not (env.pod(master).auth_dir / "password").exists()
        assert env.wait_replication(timeout=15) == master
        for pod in env.pod_names:
            env.wait_ready(pod, timeout=10)
            assert env.probe(pod, "liveness") == 0

        env.stop(master)  # frozen: its sockets stay open, nothing answers
        eventually(lambda: env.probe(replica) != 0, timeout=10,
                   what=f"{replica} not ready while its master is frozen")
        assert env.info(replica)["master_link_status"] == "down"
        assert env.probe(replica, "liveness") == 0, "a replica without its master is alive, only not ready"
        assert env.probe(master) != 0, "a frozen master must not be ready"

        env.cont(master)
        env.wait_ready(replica, timeout=15)
        assert env.probe(master) == 0

        env.kill(replica)
        assert env.probe(replica) != 0
        assert env.probe(replica, "liveness") != 0
        env.kill(sentinel)
        assert env.probe(sentinel) != 0
        assert env.probe(master) == 0, "the master stays ready without its replica"


# -- (7) any password the Secret holds is the one the servers require --------------------------------
def _wait_listening(address: tuple[str, int], timeout: float) -> None:
    def connects() -> bool:
        try:
            socket.create_connection(address, timeout=0.5).close()
        except OSError:
            return False
        return True

    eventually(connects, timeout=timeout, what=f"{address} accepts connections")


def test_password_with_backslashes_survives_the_start_scripts(tmp_path: Path) -> None:
    require_binaries()
    password = r"C:\new\table\\x41"
    spec = sentinel_spec(redis={"replicas": 1}, sentinel={"replicas": 1, "quorum": 1})
    with SentinelEnv(spec, OWNER, tmp_path, password=password) as env:
        env.start()
        failures = []
        for pod in env.pod_names:
            _wait_listening(env.address(pod), timeout=10)
            try:
                env.client(pod).ping()
            except AuthenticationError as exc:
                runtime = env.pod(pod).run_dir / ("redis.conf" if pod in env.redis_pods else "sentinel.conf")
                lines = [line for line in runtime.read_text().splitlines() if "pass" in line]
                failures.append(f"{pod}: {exc}; {runtime.name} has {lines}")
        assert not failures, (
            "the servers require another password than the Secret's: the start scripts write "
            "`echo \"requirepass $(quote ...)\"`, and dash's echo (/bin/sh of Debian images) turns the "
            "doubled backslashes back into escapes. Use printf '%s\\n' in builders/config.py.\n"
            + "\n".join(failures)
        )
