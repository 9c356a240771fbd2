"""Cluster-mode "pods" as real redis-server processes on loopback, running the operator's rendered files.

Each pod of a ``mode: cluster`` resource (``<name>-shard-<i>-<j>``) is played by the real start
script of the ConfigMap that :func:`redis_messaging.modes.config_files` renders
(``sh redis-start.sh`` with ``RMSG_MODE=cluster``), with the environment the shard StatefulSet gives
it (:func:`redis_messaging.modes.cluster.objects.script_env`). Where Kubernetes gives a pod its own address
and a stable DNS name, the harness gives it its own loopback address (``127.a.b.c``, the client port
and the bus port free on it) and uses that address as the name the pod announces
(``cluster-announce-hostname``), so MOVED redirections and ``CLUSTER NODES`` name real addresses.

The only edits made to the rendered ``redis.conf`` are the ones the data volume makes: ``dir /data``
and ``cluster-config-file /data/nodes.conf`` point at the pod's own data directory, which survives
restarts (like a PersistentVolumeClaim) unless a test wipes it (a pod rescheduled on a new volume).

Usage::

    with ClusterEnv(spec, owner, tmp_path, password="pw") as env:
        env.start()
        topology = ClusterTopology(env.addresses())
        ...
        env.kill(pod); env.restart(pod); env.wipe(pod); env.add_shard(3); env.remove_shard(3)

Not a conftest: tests build their own fixtures on top of :class:`ClusterEnv`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError
from redis.retry import Retry
from sentinel_env import free_loopback_ip, port_is_free
from tls_certs import KeyPair, mount

from redis_messaging import modes
from redis_messaging.api import models
from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster import objects as cluster
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.addresses import MapAddresses

Address = tuple[str, int]
BUS_OFFSET = 10000


def three_shards(**extra: Any) -> RedisMessagingSpec:
    """The spec most cluster tests play: 3 shards with a replica each, a 2 s node timeout, and no wait
    before a diskless full sync (replicas attach at once)."""
    return models.parse_spec({
        "mode": "cluster",
        "cluster": {"shards": 3, "replicasPerShard": 1, "nodeTimeout": 2000},
        "redis": {"config": {"repl-diskless-sync-delay": "0"}},
        **extra,
    })


def _replace_line(text: str, old: str, new: str) -> str:
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\n") == old]
    if len(hits) != 1:
        raise RuntimeError(f"the rendered redis.conf has {len(hits)} lines {old!r} (expected 1): update cluster_env.py")
    lines[hits[0]] = new + "\n"
    return "".join(lines)


def mounted_redis_conf(text: str, data_dir: Path) -> str:
    """redis.conf as a pod with its data volume at ``data_dir`` sees it."""
    text = _replace_line(text, f"dir {names.DATA_MOUNT}", f"dir {data_dir}")
    return _replace_line(text, f"cluster-config-file {names.DATA_MOUNT}/nodes.conf",
                         f"cluster-config-file {data_dir}/nodes.conf")


def free_cluster_ip() -> str:
    """A loopback address with both the client port and the cluster bus port free."""
    for _ in range(64):
        ip = free_loopback_ip(names.REDIS_PORT)
        if port_is_free(ip, names.REDIS_PORT + BUS_OFFSET):
            return ip
    raise RuntimeError("no loopback address with ports 6379 and 16379 free")


@dataclass
class Pod:
    name: str
    shard: int
    ip: str
    root: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> Address:
        return (self.ip, names.REDIS_PORT)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class ClusterEnv:
    """The shard pods of one cluster-mode resource, as redis-server processes on loopback addresses."""

    def __init__(self, spec: RedisMessagingSpec, owner: Owner, base_dir: Path, *, password: str | None,
                 tls: KeyPair | None = None, bin_dir: Path | None = None) -> None:
        if spec.mode != "cluster":
            raise ValueError(f"ClusterEnv plays mode: cluster, not {spec.mode}")
        if spec.auth.enabled != (password is not None):
            raise ValueError("pass a password exactly when spec.auth.enabled (the pods mount the auth Secret)")
        if spec.tls.enabled != (tls is not None):
            raise ValueError("pass a key pair exactly when spec.tls.enabled (the pods mount the TLS Secret)")
        # the engine: redis-server on PATH (RMSG_ENGINE's, or Debian's), or the one in bin_dir
        self.path = os.pathsep.join([*([str(bin_dir)] if bin_dir else []), os.environ.get("PATH", os.defpath)])
        if shutil.which("redis-server", path=self.path) is None:
            import pytest

            pytest.skip("redis-server not found: apt-get install -y redis-server redis-tools")
        self.spec = spec
        self.owner = owner
        self.base_dir = base_dir
        self.password = password
        self.tls = tls
        self.tls_options: dict[str, Any] = tls.redis_kwargs() if tls is not None else {}
        self.files = modes.config_files(spec, owner)
        self._pods: dict[str, Pod] = {}
        self._clients: list[Any] = []
        self._closed = False
        for shard in range(spec.cluster.shards):
            self._add_pods(shard)

    # -- pods and volumes ----------------------------------------------------------------------
    def _add_pods(self, shard: int) -> list[str]:
        added = []
        pod_names = cluster.shard_pods(self.spec, self.owner, shard)
        ips = [free_cluster_ip() for _ in pod_names]
        for pod_name, ip in zip(pod_names, ips, strict=True):
            root = self.base_dir / pod_name
            env = {
                "PATH": self.path,
                "HOME": str(root),
                "LC_ALL": "C",
                "POD_NAME": pod_name,
                "POD_NAMESPACE": self.owner.namespace,
                **cluster.script_env(self.spec, self.owner),
                "RMSG_SHARD": str(shard),
                "RMSG_SHARD_HOSTS": " ".join(ips),
                "RMSG_CONFIG_DIR": str(root / "config"),
                "RMSG_AUTH_DIR": str(root / "auth"),
                "RMSG_RUN_DIR": str(root / "run"),
                "RMSG_SELF_HOST": ip,
                "RMSG_BIND": ip,
                # One host, many loopback addresses: the kernel would give outgoing bus connections the
                # source 127.0.0.1, so peers would learn a wrong address. A pod has one address and
                # needs no such line; the start script adds it only when this variable is set.
                "RMSG_ANNOUNCE_IP": ip,
                "RMSG_PROBE_HOST": ip,
            }
            if self.tls is not None:
                env.update({"RMSG_TLS": "yes", "RMSG_TLS_DIR": str(root / "tls")})
            pod = Pod(pod_name, shard, ip, root, env)
            self._pods[pod_name] = pod
            self._write_volumes(pod)
            added.append(pod_name)
        return added

    def _write_volumes(self, pod: Pod) -> None:
        for sub in ("config", "auth", "run", "data"):
            (pod.root / sub).mkdir(parents=True, exist_ok=True)
        files = dict(self.files)
        files["redis.conf"] = mounted_redis_conf(files["redis.conf"], pod.data_dir)
        for key, text in files.items():
            (pod.root / "config" / key).write_text(text)
            (pod.root / "config" / key).chmod(0o555)  # the ConfigMap volume's defaultMode
        if self.tls is not None:
            mount(pod.root / "tls", self.tls)
        if self.password is not None:
            secret = pod.root / "auth" / "password"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password)

    @property
    def pod_names(self) -> list[str]:
        return list(self._pods)

    def shard_pods(self, shard: int) -> list[str]:
        return [p.name for p in self._pods.values() if p.shard == shard]

    def pod(self, name: str) -> Pod:
        try:
            return self._pods[name]
        except KeyError:
            raise KeyError(f"no pod {name!r}; pods are {self.pod_names}") from None

    def address(self, pod: str) -> Address:
        return self.pod(pod).address

    def pod_at(self, host: str) -> str:
        for p in self._pods.values():
            if p.ip == host:
                return p.name
        raise KeyError(f"no pod at {host}")

    def addresses(self) -> MapAddresses:
        """The address map an operator outside the pods' network would be given (with TLS: the client
        settings the reconcile pass records from the TLS Secret)."""
        found = MapAddresses({p.name: p.address for p in self._pods.values()})
        if self.tls is not None:
            found.set_tls(self.owner, self.tls.client_tls(with_key_pair=self.spec.tls.auth_clients))
        return found

    # -- processes -----------------------------------------------------------------------------
    def start(self, pods: Iterable[str] | None = None, *, timeout: float = 20.0) -> Self:
        """Start pods (default: every pod not running) at once, like a StatefulSet with the Parallel
        policy, and wait until each answers PING."""
        chosen = [self.pod(p) for p in pods] if pods is not None else [p for p in self._pods.values() if not p.alive()]
        for p in chosen:
            self._spawn(p)
        for p in chosen:
            self.wait_answering(p.name, timeout=timeout)
        return self

    def _spawn(self, pod: Pod) -> None:
        if self._closed:
            raise RuntimeError("this ClusterEnv is closed")
        if pod.alive():
            raise RuntimeError(f"{pod.name} is already running")
        pod.starts += 1
        with pod.log.open("ab") as log:
            log.write(f"=== cluster_env: start {pod.starts} of {pod.name} ===\n".encode())
            log.flush()
            pod.process = subprocess.Popen(
                ["sh", str(pod.root / "config" / "redis-start.sh")], env=pod.env, cwd=pod.root,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def is_running(self, pod: str) -> bool:
        return self.pod(pod).alive()

    def kill(self, pod: str, sig: int = signal.SIGKILL, *, timeout: float = 10.0) -> None:
        p = self.pod(pod)
        if p.process is None or not p.alive():
            return
        _signal_group(p.process, sig)
        p.process.wait(timeout)
        _signal_group(p.process, signal.SIGKILL)  # forked children (AOF rewrite) go too

    def _terminate(self, pods: list[Pod], grace: float) -> None:
        live = [p for p in pods if p.process is not None and p.alive()]
        for p in live:
            assert p.process is not None
            _signal_group(p.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            assert p.process is not None
            try:
                p.process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _signal_group(p.process, signal.SIGKILL)
                p.process.wait(10)
            _signal_group(p.process, signal.SIGKILL)

    def restart(self, pod: str, *, grace: float = 10.0, timeout: float = 20.0) -> None:
        """A container restart on the same volume: SIGTERM (SIGKILL after ``grace``), start again."""
        p = self.pod(pod)
        self._terminate([p], grace)
        self.start([pod], timeout=timeout)

    def restart_all(self, *, grace: float = 10.0, timeout: float = 30.0) -> None:
        """Every pod down at once, then every pod up at once (a whole-cluster restart)."""
        pods = list(self._pods.values())
        self._terminate(pods, grace)
        self.start([p.name for p in pods], timeout=timeout)

    def wipe(self, pod: str) -> None:
        """The pod's volume is lost (it must not be running): it comes back as a new, empty node."""
        p = self.pod(pod)
        if p.alive():
            raise RuntimeError(f"{pod} is running; kill it first")
        shutil.rmtree(p.data_dir)
        p.data_dir.mkdir()

    def add_shard(self, shard: int, *, start: bool = True) -> list[str]:
        """The pods of a new shard StatefulSet (scale-out)."""
        added = self._add_pods(shard)
        if start:
            self.start(added)
        return added

    def remove_shard(self, shard: int) -> None:
        """The StatefulSet of a shard is deleted: its pods stop and are gone."""
        pods = [p for p in self._pods.values() if p.shard == shard]
        self._terminate(pods, 5.0)
        for p in pods:
            del self._pods[p.name]

    def close(self, *, grace: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._terminate(list(self._pods.values()), grace)
        finally:
            for client in self._clients:
                with contextlib.suppress(Exception):
                    client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run_script(self, pod: str, script: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """One of the pod's ConfigMap scripts with the pod's environment (an exec probe or a hook)."""
        p = self.pod(pod)
        return subprocess.run(["sh", str(p.root / "config" / script), *args], env=p.env, cwd=p.root,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)

    # -- clients -------------------------------------------------------------------------------
    def client(self, pod: str, **kwargs: Any) -> redis.Redis:
        """A plain client of one node (closed by :meth:`close`)."""
        ip, port = self.address(pod)
        options: dict[str, Any] = {"password": self.password, "socket_timeout": 5, "socket_connect_timeout": 2,
                                   "decode_responses": True, "retry": Retry(NoBackoff(), 0), **self.tls_options}
        options.update(kwargs)
        client = redis.Redis(host=ip, port=port, **options)
        self._clients.append(client)
        return client

    def cluster_client(self, **kwargs: Any) -> RedisCluster:
        """A cluster-aware client seeded with every running pod, like an application would be."""
        seeds = [ClusterNode(p.ip, names.REDIS_PORT) for p in self._pods.values() if p.alive()]
        options: dict[str, Any] = {"password": self.password, "socket_timeout": 5, "decode_responses": True,
                                   **self.tls_options}
        options.update(kwargs)
        client = RedisCluster(startup_nodes=seeds, **options)
        self._clients.append(client)
        return client

    def wait_answering(self, pod: str, timeout: float = 20.0) -> None:
        p = self.pod(pod)
        deadline = time.monotonic() + timeout
        with contextlib.closing(redis.Redis(host=p.ip, port=names.REDIS_PORT, password=self.password,
                                            socket_timeout=1, socket_connect_timeout=1,
                                            retry=Retry(NoBackoff(), 0), **self.tls_options)) as probe:
            while True:
                if not p.alive():
                    raise RuntimeError(f"{pod} exited ({p.process.returncode if p.process else None})\n"
                                       f"{self.log_tail(pod)}")
                try:
                    if probe.ping():
                        return
                except RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{pod} does not answer within {timeout:g}s\n{self.log_tail(pod)}")
                time.sleep(0.05)

    def myself(self, pod: str) -> cl.ClusterNode:
        """The pod's own line of ``CLUSTER NODES``: its id, role, slots and open (importing/migrating) marks."""
        text = str(self.client(pod).execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
        return next(n for n in cl.parse_nodes(text) if n.myself)

    def open_marks(self, *, masters_only: bool = False) -> dict[str, tuple[tuple[tuple[int, str], ...],
                                                                       tuple[tuple[int, str], ...]]]:
        """Every running pod that marks a slot open: pod -> (migrating, importing). ``masters_only``:
        the masters' marks (Valkey replicates them to the replicas; Redis does not)."""
        marks = {}
        for pod in self.pod_names:
            if self.is_running(pod):
                me = self.myself(pod)
                if masters_only and not me.is_master:
                    continue
                if me.migrating or me.importing:
                    marks[pod] = (me.migrating, me.importing)
        return marks

    def cluster_info(self, pod: str) -> dict[str, str]:
        text = str(self.client(pod).execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    # -- logs ----------------------------------------------------------------------------------
    def log_tail(self, *pods: str, lines: int = 20) -> str:
        parts = []
        for name in pods or tuple(self._pods):
            p = self.pod(name)
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            parts.append(f"--- {name} ({p.ip}) ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


# -- a loaded cluster -------------------------------------------------------------------------------
# What a move must keep: plain keys, and streams whose consumer group has pending and undelivered entries.
KEYS = 100_000
STREAMS = 12
ENTRIES = 500


def write_data(env: ClusterEnv, keys: int = KEYS) -> dict[str, list[Any]]:
    """``keys`` keys and STREAMS streams of ENTRIES entries each (their group: 60 pending, 400 not
    delivered); the streams' entries, to compare with :func:`check_data`."""
    client = env.cluster_client()
    for start in range(0, keys, 10_000):
        pipe = client.pipeline()
        for i in range(start, min(start + 10_000, keys)):
            pipe.set(f"key:{i}", f"value-{i}")
        pipe.execute()
    streams: dict[str, list[Any]] = {}
    for s in range(STREAMS):
        name = f"orders-{s}"
        client.xgroup_create(name, "billing", id="0", mkstream=True)
        pipe = client.pipeline()
        for e in range(ENTRIES):
            pipe.xadd(name, {"n": str(e)})
        pipe.execute()
        # a consumer took 100 entries and acknowledged 40 of them: 60 pending, 400 not delivered
        got = client.xreadgroup("billing", "worker-1", {name: ">"}, count=100)
        ids = [entry_id for _, entries in got for entry_id, _ in entries]
        client.xack(name, "billing", *ids[:40])
        streams[name] = client.xrange(name)
    client.close()
    return streams


def check_data(env: ClusterEnv, streams: dict[str, list[Any]], keys: int = KEYS) -> None:
    """Every key of :func:`write_data` with its value, every stream entry, and each group's pending and
    undelivered counts."""
    client = env.cluster_client()
    missing = []
    for start in range(0, keys, 10_000):
        pipe = client.pipeline()
        span = range(start, min(start + 10_000, keys))
        for i in span:
            pipe.get(f"key:{i}")
        for i, value in zip(span, pipe.execute(), strict=True):
            if value != f"value-{i}":
                missing.append(i)
    assert missing == [], f"{len(missing)} keys lost, e.g. {missing[:10]}"
    for name, entries in streams.items():
        assert client.xrange(name) == entries, name
        (group,) = client.xinfo_groups(name)
        assert (group["name"], group["pending"], group["lag"]) == ("billing", 60, ENTRIES - 100), name
    client.close()


def slot_counts(env: ClusterEnv) -> dict[str, int]:
    """Slots per master pod, as the first running node sees it."""
    pod = next(p for p in env.pod_names if env.is_running(p))
    text = str(env.client(pod).execute_command("CLUSTER", "NODES"))
    return {env.pod_at(n.ip): n.slot_count for n in cl.parse_nodes(text) if n.is_master and n.slot_count}


def assert_balanced(env: ClusterEnv, shards: int) -> None:
    counts = slot_counts(env)
    assert sum(counts.values()) == 16384
    assert len(counts) == shards, counts
    even = 16384 / shards
    assert all(abs(c - even) <= even * 0.01 for c in counts.values()), counts
    for pod in env.pod_names:
        info = env.cluster_info(pod)
        assert info["cluster_state"] == "ok", (pod, info)
        assert info["cluster_slots_ok"] == "16384", (pod, info)


def with_retries(client: RedisCluster, what: str, call: Any, errors: list[str], *, attempts: int = 6,
                 first: float = 0.05, cap: float = 1.0) -> tuple[Any, int]:
    """``call()`` retried as applications do: on an error, back off exponentially from ``first`` (capped
    at ``cap``) and try again, ``attempts`` times in all; the last error goes to ``errors``. redis-py
    follows an ASK redirection only to a node already in its cache, and a new shard's master is in no
    client's cache before it serves a slot (it trips with an AttributeError): the application then
    refreshes the client's view of the cluster. Its result (None when every attempt failed) and the
    retries it took."""
    for attempt in range(attempts):
        try:
            return call(), attempt
        except (RedisError, AttributeError) as exc:
            if attempt == attempts - 1:
                errors.append(f"{what}: {type(exc).__name__}: {exc}")
                break
            time.sleep(min(first * 2 ** attempt, cap))
            if isinstance(exc, AttributeError):
                try:
                    client.nodes_manager.initialize()
                except RedisError as refresh:
                    errors.append(f"{what}: refreshing the slot map: {refresh}")
    return None, attempts


class Traffic:
    """An application writing and reading while the operator reshards, retrying a failed command
    with backoff like applications do (:func:`with_retries`: from 50 ms, capped at 1 s, six attempts
    span about 1.5 s): every write must succeed and read back. ``retried`` counts the retries."""

    def __init__(self, env: ClusterEnv) -> None:
        self.client = env.cluster_client()
        self.stop = threading.Event()
        self.written = 0
        self.retried = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _try(self, what: str, call: Any) -> Any:
        result, retries = with_retries(self.client, what, call, self.errors)
        self.retried += retries
        return result

    def run(self) -> None:
        while not self.stop.is_set() and self.written < 200_000:
            key, value = f"live:{self.written}", self.written
            self._try(f"SET {key}", lambda k=key, v=value: self.client.set(k, v))
            if self._try(f"GET {key}", lambda k=key: self.client.get(k)) != str(value):
                self.errors.append(f"{key} read back wrong")
            self.written += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


# -- the operator's passes -------------------------------------------------------------------------
def heal_until(topology: Any, spec: RedisMessagingSpec, owner: Owner, password: str | None, *,
               timeout: float = 30.0, interval: float = 0.2, until: Any = None,
               env: ClusterEnv | None = None) -> list[Any]:
    """Run the topology's check-and-heal pass like the operator's loop does (a pass, then the next
    when it asks to come back) until ``until(report)`` (default: healthy); every report, in order."""
    done = until or (lambda report: report.healthy)
    reports = []
    deadline = time.monotonic() + timeout
    while True:
        # the pass lists the resource's pods first, as the reconcile pass does
        pods = [{"metadata": {"name": name}} for name in (env.pod_names if env is not None else ())]
        report = topology.check_and_heal(spec, owner, pods, password)
        reports.append(report)
        if done(report):
            return reports
        if time.monotonic() > deadline:
            history = "\n".join(f"  {r.reason}: {r.message} {[a.message for a in r.actions]}" for r in reports[-8:])
            raise AssertionError(f"not reached within {timeout:g}s; last passes:\n{history}")
        time.sleep(interval)


def tag_on(env: ClusterEnv, pod: str) -> tuple[str, int]:
    """A hash tag whose slot ``pod`` serves."""
    served = env.myself(pod).slot_set()
    for i in range(100_000):
        tag = f"{{t{i}}}"
        if cl.slot_of(tag) in served:
            return tag, cl.slot_of(tag)
    raise AssertionError(f"no tag found for {pod}")


def actions_of(reports: Iterable[Any]) -> list[str]:
    return [a.reason for r in reports for a in r.actions]
