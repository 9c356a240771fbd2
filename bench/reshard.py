"""Resharding speed: the operator's slot movers against the engine's CLI (`redis-cli --cluster rebalance`).

Identical fresh clusters (3 shards with one replica each, the rendered configuration on real server
processes on loopback, like the `redis` test tier) are loaded with the same keys; a fourth shard (a
master and its replica) joins each, serving no slot. Then, one cluster each:

* operator, key by key: the operator's check-and-heal passes move an even share to the new shard
  (``cluster.slotMigration: KeyByKey``: pipelined batches of CLUSTER SETSLOT / GETKEYSINSLOT / MIGRATE
  ... KEYS), timed until the cluster is balanced and healthy again;
* operator, atomic: the same passes with ``slotMigration: Auto`` on an engine that moves slots itself
  (Valkey 9 and later: one CLUSTER MIGRATESLOTS job per move); only on such an engine;
* the CLI: `redis-cli --cluster rebalance <node> --cluster-use-empty-masters` (Valkey's CLI:
  ``--cluster-use-empty-primaries``; it moves key by key too), timed until it exits.

Each starts from the same settled state, reached before its clock starts: the new shard's nodes joined,
its replica in sync, and every node's CLUSTER NODES listing every node as a connected peer, with
``cluster_state:ok`` and the same slot owners (waited for, at most 30 s). Without that wait the meet
may not have reached every node yet: the CLI's rebalance then stops at ``ERR Unknown node <id>`` (it
sends CLUSTER SETSLOT ... NODE <new master> to every master), and the operator's first passes wait for
the cluster to agree, which the clock would count. All move the same slots' worth of data (a quarter
of the keyspace).

While each moves, a client reads and writes keys of the whole keyspace one command at a time (a cluster
client following MOVED and ASK redirections, retrying what fails like an application does), and the
longest wait of one command is reported: what an application notices of the move.

Prints each time, the keys moved per second, the longest client wait, and the ratios (the operator's
key-by-key move / the CLI: the goal is at most 1.0; atomic / the CLI; atomic / key by key).

    .venv/bin/python bench/reshard.py [--engine redis-7.0|redis-8.0|valkey-8.1|valkey-9.1]
                                      [--keys 200000] [--value-size 100] [--rounds 1] [--smoke]

``--engine``: an engine of `bash .ci/build-engine.sh list` (built by it), or redis-7.0, the default:
Debian's Redis on PATH. ``--smoke`` is one round with 2,000 keys: the same code path in seconds; CI runs
it on the default engine and on Valkey 9.1 (tests/redis/test_bench_smoke_redis.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _project

ROOT = _project.use(__file__, "tests/redis", "tests/support")

import engines  # noqa: E402
from cluster_env import ClusterEnv, heal_until, with_retries  # noqa: E402
from redis.cluster import ClusterNode, RedisCluster  # noqa: E402

from redis_messaging.api import models  # noqa: E402
from redis_messaging.builders.names import Owner  # noqa: E402
from redis_messaging.modes.cluster.topology import ClusterTopology  # noqa: E402
from redis_messaging.redis import cluster as cl  # noqa: E402
from redis_messaging.redis.engine import engine_of, has_atomic_slot_migration  # noqa: E402

PASSWORD = "bench-Pa55word"
OWNER = Owner(name="bench", namespace="bench", uid="uid-bench")
PROBE_LIMIT = 2_000_000  # commands of the probing client, at most, per run


def spec(shards: int, migration: str = "KeyByKey") -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 5000, "slotMigration": migration},
        "persistence": {"mode": "aof"},
        "redis": {"config": {"repl-diskless-sync-delay": "0"}},
    })


def masters(env: ClusterEnv) -> dict[str, int]:
    text = str(env.client(env.pod_names[0]).execute_command("CLUSTER", "NODES"))
    return {env.pod_at(n.ip): n.slot_count for n in cl.parse_nodes(text) if n.is_master}


def unknown_nodes(env: ClusterEnv, clients: dict[str, Any]) -> list[str]:
    """Why the nodes do not agree on the cluster yet: each node that does not list every node (by its
    own id) as a connected peer free of handshake/noaddr/fail flags, whose cluster_state is not ok, or
    whose view of the slots differs from the first node's; empty when they all agree."""
    views = {pod: cl.parse_nodes(str(c.execute_command("CLUSTER", "NODES"))) for pod, c in clients.items()}
    ids = {pod: next(n.id for n in nodes if n.myself) for pod, nodes in views.items()}
    names = {node_id: pod for pod, node_id in ids.items()}
    slot_views = {pod: sorted((n.id, n.slots) for n in nodes if n.is_master and n.slots)
                  for pod, nodes in views.items()}
    reference = slot_views[env.pod_names[0]]
    problems = []
    for pod, nodes in views.items():
        seen = {n.id: n for n in nodes}
        missing = sorted(p for p, node_id in ids.items() if node_id not in seen)
        unsettled = sorted(f"{names.get(n.id, n.id)} ({','.join(sorted(n.flags))})" for n in nodes
                           if not n.myself and ({"handshake", "noaddr", "fail", "fail?"} & n.flags or not n.connected))
        state = cl_state(clients[pod])
        why = ([f"cluster_state {state}"] if state != "ok" else []) \
            + ([f"does not know {', '.join(missing)}"] if missing else []) \
            + ([f"not settled with {', '.join(unsettled)}"] if unsettled else []) \
            + (["sees other slot owners"] if slot_views[pod] != reference else [])
        if why:
            problems.append(f"{pod}: {', '.join(why)}")
    return problems


def cl_state(client: Any) -> str:
    text = str(client.execute_command("CLUSTER", "INFO"))
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cluster_state:")), "")


def wait_known(env: ClusterEnv, timeout: float = 30.0) -> float:
    """Wait (at most ``timeout``) until every node knows every other and they agree on the slots (see
    ``unknown_nodes``); the seconds it took."""
    clients = {pod: env.client(pod) for pod in env.pod_names}
    began = time.monotonic()
    deadline = began + timeout
    while problems := unknown_nodes(env, clients):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the nodes do not agree on the cluster within {timeout:g}s: " + "; ".join(problems))
        time.sleep(0.1)
    return time.monotonic() - began




@dataclass
class Run:
    seconds: float
    longest_wait: float  # the longest one command of the probing client took, seconds
    commands: int  # the probing client's commands
    retried: int  # of them, how many needed a retry


class Probe:
    """A client reading and writing keys of the whole keyspace one command at a time while a move runs;
    the longest time one command took, retries included (bounded in count and by the run). It runs in
    a process of its own (forked: it builds its own client there), so that it takes no time from the
    operator's code it measures, which runs in this process."""

    def __init__(self, env: ClusterEnv, keys: int) -> None:
        self.seeds = [env.address(p) for p in env.pod_names if env.is_running(p)]
        self.password = env.password
        self.keys = keys
        context = multiprocessing.get_context("fork")
        self.stop = context.Event()
        self.results: Any = context.Queue()
        self.process = context.Process(target=self._run, daemon=True)
        self.longest = 0.0
        self.commands = 0
        self.retried = 0
        self.errors: list[str] = []

    def _run(self) -> None:
        try:
            self._probe()
        except BaseException as exc:  # said in the parent, which waits for a result
            self.results.put((0.0, 0, 0, [f"the probe failed: {type(exc).__name__}: {exc}"]))

    def _probe(self) -> None:
        longest, commands, retried, errors = 0.0, 0, 0, []
        client = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
                              password=self.password, socket_timeout=5, decode_responses=True)
        rng = random.Random(7)
        while not self.stop.is_set() and commands < PROBE_LIMIT:
            key = f"key:{rng.randrange(self.keys)}"
            began = time.monotonic()
            write = bool(commands % 2)

            def command(k: str = key, write: bool = write) -> Any:
                return client.set(k, client.get(k) or "") if write else client.get(k)

            _, retries = with_retries(client, key, command, errors, first=0.01, cap=0.5)
            retried += retries
            longest = max(longest, time.monotonic() - began)
            commands += 1
        self.results.put((longest, commands, retried, errors[:10]))

    def __enter__(self) -> Probe:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            self.longest, self.commands, self.retried, self.errors = self.results.get(timeout=30)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()


def prepared(base: Path, keys: int, value_size: int, bin_dir: Path | None) -> ClusterEnv:
    """A loaded 3-shard cluster plus a joined, empty fourth shard with its replica in sync, known to
    every node."""
    env = ClusterEnv(spec(3), OWNER, base, password=PASSWORD, bin_dir=bin_dir)
    env.start()
    heal_until(ClusterTopology(env.addresses(), timeout=2.0), spec(3), OWNER, PASSWORD, timeout=60, env=env)
    client = env.cluster_client()
    value = "v" * value_size
    for start in range(0, keys, 20_000):
        pipe = client.pipeline()
        for i in range(start, min(start + 20_000, keys)):
            pipe.set(f"key:{i}", value)
        pipe.execute()
    client.close()
    env.add_shard(3)
    joiner = ClusterTopology(env.addresses(), timeout=2.0, reshard=False)  # join and attach, move nothing

    def joined(report: object) -> bool:
        shards = getattr(report, "status", {}).get("shards", [])
        return (len(shards) == 4 and all(s.get("master") and s.get("replicas") for s in shards)
                and "replicas in sync" not in getattr(report, "message", ""))

    heal_until(joiner, spec(4), OWNER, PASSWORD, timeout=60, until=joined, env=env)
    wait_known(env)
    return env


def total_keys(env: ClusterEnv) -> int:
    return sum(int(env.client(p).dbsize()) for p, slots in masters(env).items() if slots)


def timed(base: Path, keys: int, value_size: int, bin_dir: Path | None, move: Callable[[ClusterEnv], None],
          balanced: Callable[[dict[str, int]], bool]) -> Run:
    """``move`` run and timed on a prepared cluster, under the probing client; then checked."""
    env = prepared(base, keys, value_size, bin_dir)
    try:
        with Probe(env, keys) as probe:
            started = time.monotonic()
            move(env)
            took = time.monotonic() - started
        counts = masters(env)
        assert balanced(counts), counts
        assert total_keys(env) == keys
        assert probe.errors == [], probe.errors[:3]
        return Run(took, probe.longest, probe.commands, probe.retried)
    finally:
        env.close()


def operator_move(migration: str) -> Callable[[ClusterEnv], None]:
    def move(env: ClusterEnv) -> None:
        topology = ClusterTopology(env.addresses(), timeout=2.0, reshard_budget=600.0)
        reports = heal_until(topology, spec(4, migration), OWNER, PASSWORD, timeout=600, interval=0.05, env=env)
        moved = [a.message for r in reports for a in r.actions if a.reason == "SlotsMigrated"]
        atomic = [m for m in moved if "atomically" in m]
        assert moved, "nothing moved"
        assert len(atomic) == (len(moved) if migration == "Auto" else 0), moved
    return move


def cli_move(bin_dir: Path | None) -> Callable[[ClusterEnv], None]:
    cli = str(bin_dir / "redis-cli") if bin_dir else "redis-cli"

    def move(env: ClusterEnv) -> None:
        seed = env.address(env.pod_names[0])
        version = subprocess.run([cli, "--version"], capture_output=True, text=True, check=False).stdout
        empty = "--cluster-use-empty-primaries" if "valkey" in version.lower() else "--cluster-use-empty-masters"
        command = [cli, "--no-auth-warning", "-a", PASSWORD, "--cluster", "rebalance", f"{seed[0]}:{seed[1]}", empty]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cli} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return move


def even(counts: dict[str, int]) -> bool:
    return sorted(counts.values()) == [4096] * 4


def near_even(counts: dict[str, int]) -> bool:
    return len(counts) == 4 and all(abs(c - 4096) <= 4096 * 0.02 for c in counts.values())


def engine_binaries(name: str) -> tuple[Path | None, str]:
    """The directory of the engine's binaries (None: PATH's, the default engine) and what its server
    says it is."""
    bin_dir = None if name == engines.DEFAULT else engines.engine_dir(name)
    server = str(bin_dir / "redis-server") if bin_dir else (shutil.which("redis-server") or "redis-server")
    if bin_dir is not None and not Path(server).exists():
        raise SystemExit(f"{name} is not built: bash .ci/build-engine.sh {name}")
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return bin_dir, version


def moves_atomically(version: str) -> bool:
    """Whether the server of ``redis-server --version`` ("Valkey server v=9.1.2 ...") moves slots itself."""
    words = dict(part.split("=", 1) for part in version.split() if "=" in part)
    name = "valkey" if version.lower().startswith("valkey") else "redis"
    return has_atomic_slot_migration(engine_of({"server_name": name, f"{name}_version": words.get("v", "")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default=engines.DEFAULT,
                        help=f"{engines.DEFAULT} (PATH's redis-server) or one of: bash .ci/build-engine.sh list")
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one round of 2,000 keys: the same code path in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.keys, args.rounds = 2_000, 1
    bin_dir, version = engine_binaries(args.engine)
    if bin_dir is None and (shutil.which("redis-server") is None or shutil.which("redis-cli") is None):
        print("needs redis-server and redis-cli (apt-get install -y redis-server redis-tools)")
        return 2
    cli_name = "valkey-cli" if version.lower().startswith("valkey") else "redis-cli"
    contenders: dict[str, tuple[Callable[[ClusterEnv], None], Callable[[dict[str, int]], bool]]] = {
        "operator, key by key": (operator_move("KeyByKey"), even),
    }
    if moves_atomically(version):
        contenders["operator, atomic"] = (operator_move("Auto"), even)
    contenders[f"{cli_name} --cluster rebalance"] = (cli_move(bin_dir), near_even)
    print(f"engine: {args.engine} ({version})")
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="reshard-bench-") as tmp:
            # rotate the order so that no contender always runs on a warmer machine
            names = list(contenders)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for index, name in enumerate(names):
                move, balanced = contenders[name]
                run = timed(Path(tmp) / str(index), args.keys, args.value_size, bin_dir, move, balanced)
                runs[name].append(run)
                print(f"round {round_ + 1}: {name:32s} {run.seconds:6.2f}s, longest client wait "
                      f"{run.longest_wait * 1000:6.1f} ms ({run.commands} commands, {run.retried} retried)")
    moved = args.keys / 4
    median = {name: statistics.median(r.seconds for r in rs) for name, rs in runs.items()}
    waits = {name: max(r.longest_wait for r in rs) for name, rs in runs.items()}
    print(f"\nmoving a quarter of {args.keys} keys ({args.value_size} B values) to a 4th shard on {args.engine}, "
          f"median of {args.rounds} round(s):")
    for name, seconds in median.items():
        print(f"  {name + ':':34s} {seconds:6.2f}s  ~{moved / seconds:,.0f} keys/s  longest client wait "
              f"{waits[name] * 1000:,.1f} ms")
    cli = median[f"{cli_name} --cluster rebalance"]
    keyed = median["operator, key by key"]
    print(f"  ratio key by key / {cli_name}:      {keyed / cli:.2f}x (goal <= 1.0x)")
    if "operator, atomic" in median:
        atomic = median["operator, atomic"]
        print(f"  ratio atomic / {cli_name}:          {atomic / cli:.2f}x")
        print(f"  ratio atomic / key by key:         {atomic / keyed:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
