"""Resharding speed: the operator's slot mover against `redis-cli --cluster rebalance`.

Two identical fresh clusters (3 shards with one replica each, the rendered configuration on real
redis-server processes on loopback, like the `redis` test tier) are loaded with the same keys; a
fourth shard (a master and its replica) joins each, serving no slot. Then:

* ours: the operator's check-and-heal passes move an even share to the new shard (pipelined
  batches of CLUSTER SETSLOT / GETKEYSINSLOT / MIGRATE ... KEYS), timed until the cluster is balanced
  and healthy again;
* redis-cli: `redis-cli --cluster rebalance <node> --cluster-use-empty-masters`, timed until it exits.

Both start from the same settled state, reached before either clock starts: the new shard's nodes
joined, its replica in sync, and every node's CLUSTER NODES listing every node as a connected peer, with
``cluster_state:ok`` and the same slot owners (waited for, at most 30 s). Without that wait the meet
may not have reached every node yet: redis-cli's rebalance then stops at ``ERR Unknown node <id>`` (it
sends CLUSTER SETSLOT ... NODE <new master> to every master), and the operator's first passes wait for
the cluster to agree, which the clock would count. Both move the same slots' worth of data (a quarter
of the keyspace). Prints both times, the keys moved per second and the ratio (ours / redis-cli; the
goal is at most 1.0).

    .venv/bin/python bench/reshard.py [--keys 200000] [--value-size 100] [--rounds 1] [--smoke]

``--smoke`` is one round with 2,000 keys: the same code path in seconds; CI runs it
(tests/redis/test_bench_smoke_redis.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _project

ROOT = _project.use(__file__, "tests/redis", "tests/support")

from cluster_env import ClusterEnv, heal_until  # noqa: E402

from redis_messaging.api import models  # noqa: E402
from redis_messaging.builders.names import Owner  # noqa: E402
from redis_messaging.modes.cluster.topology import ClusterTopology  # noqa: E402
from redis_messaging.redis import cluster as cl  # noqa: E402

PASSWORD = "bench-Pa55word"
OWNER = Owner(name="bench", namespace="bench", uid="uid-bench")


def spec(shards: int) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 5000},
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


def prepared(base: Path, keys: int, value_size: int) -> ClusterEnv:
    """A loaded 3-shard cluster plus a joined, empty fourth shard with its replica in sync, known to
    every node."""
    env = ClusterEnv(spec(3), OWNER, base, password=PASSWORD)
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


def run_ours(base: Path, keys: int, value_size: int) -> float:
    env = prepared(base, keys, value_size)
    try:
        topology = ClusterTopology(env.addresses(), timeout=2.0, reshard_budget=600.0)
        started = time.monotonic()
        heal_until(topology, spec(4), OWNER, PASSWORD, timeout=600, interval=0.05, env=env)
        took = time.monotonic() - started
        counts = masters(env)
        assert sorted(counts.values()) == [4096] * 4, counts
        assert total_keys(env) == keys
        return took
    finally:
        env.close()


def run_redis_cli(base: Path, keys: int, value_size: int) -> float:
    env = prepared(base, keys, value_size)
    try:
        seed = env.address(env.pod_names[0])
        command = ["redis-cli", "--no-auth-warning", "-a", PASSWORD, "--cluster", "rebalance",
                   f"{seed[0]}:{seed[1]}", "--cluster-use-empty-masters"]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
        counts = masters(env)
        assert all(abs(c - 4096) <= 4096 * 0.02 for c in counts.values()), counts
        assert total_keys(env) == keys
        return took
    finally:
        env.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one round of 2,000 keys: the same code path in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.keys, args.rounds = 2_000, 1
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("needs redis-server and redis-cli (apt-get install -y redis-server redis-tools)")
        return 2
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="reshard-bench-") as tmp:
            # alternate the order so that neither side always runs on a warmer machine
            order = [("ours", run_ours), ("redis-cli", run_redis_cli)]
            if round_ % 2:
                order.reverse()
            for name, run in order:
                took = run(Path(tmp) / name, args.keys, args.value_size)
                (ours if name == "ours" else theirs).append(took)
                print(f"round {round_ + 1}: {name:9s} {took:6.2f}s")
    moved = args.keys / 4
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"\nmoving a quarter of {args.keys} keys ({args.value_size} B values) to a 4th shard, median of "
          f"{args.rounds} round(s):")
    print(f"  operator (pipelined batches) : {o:6.2f}s  ~{moved / o:,.0f} keys/s")
    print(f"  redis-cli --cluster rebalance: {t:6.2f}s  ~{moved / t:,.0f} keys/s")
    print(f"  ratio ours / redis-cli       : {o / t:.2f}x (goal <= 1.0x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
