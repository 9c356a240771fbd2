"""Failover: from a master's death to the first write accepted again, and the operator's share.

Real redis-server and redis-sentinel processes on loopback run the rendered configuration (the
`redis` tier's SentinelEnv); a real kube-apiserver (the `kube` tier's ControlPlane, when its binaries
are there) holds the Pod objects whose role labels the operator's failover watcher moves.

For each of N rounds: SIGKILL the master, write through a Sentinel-aware client until a write is
accepted (kill -> first accepted write), and take the watcher's own measure of +switch-master ->
labels and status.master moved (the operator's share). Then the killed pod is restarted, as its
StatefulSet would, and the topology settles before the next round.

    .venv/bin/python bench/failover.py [--rounds 10] [--down-after 1000] [--smoke]

``--smoke`` is the same run at its smallest (two rounds: the second settles after the first's restart),
seconds long; CI runs it (tests/kube/test_bench_smoke_kube.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path

import _project

ROOT = _project.use(__file__, "tests/redis", "tests/kube", "tests/support")

from redis.exceptions import RedisError  # noqa: E402
from redis.sentinel import Sentinel  # noqa: E402
from sentinel_env import SentinelEnv  # noqa: E402

from redis_messaging.api import models  # noqa: E402
from redis_messaging.builders import names  # noqa: E402
from redis_messaging.builders.names import Owner  # noqa: E402
from redis_messaging.modes.sentinel.topology import SentinelTopology  # noqa: E402
from redis_messaging.modes.sentinel.watch import FailoverWatch, Followed  # noqa: E402
from redis_messaging.redis.addresses import MapAddresses  # noqa: E402

PASSWORD = "bench-failover-Pa55"


def settle(topology: SentinelTopology, spec: models.RedisMessagingSpec, owner: Owner, timeout: float) -> str:
    end = time.monotonic() + timeout
    report = topology.check_and_heal(spec, owner, [], PASSWORD)
    while not report.healthy:
        if time.monotonic() > end:
            raise TimeoutError(f"topology not healthy within {timeout}s: {report.reason}: {report.message}")
        time.sleep(0.3)
        report = topology.check_and_heal(spec, owner, [], PASSWORD)
    assert report.master is not None
    return report.master


def kube_objects(owner: Owner, spec: models.RedisMessagingSpec,  # type: ignore[no-untyped-def]
                 stack: contextlib.ExitStack):
    """A control plane with the resource and its redis Pod objects, or None without binaries; the
    control plane stops with ``stack``."""
    try:
        from controlplane import AssetsNotFoundError, ControlPlane, locate_assets
        from helpers import install_crd
    except ImportError:
        return None
    try:
        locate_assets()
    except AssetsNotFoundError as exc:
        print(f"no control plane ({exc}); the operator's share is measured without the API server")
        return None
    from kubernetes import client

    from redis_messaging.kube.client import Kube

    cp = ControlPlane(with_controller_manager=False)
    stack.callback(cp.stop)
    cp.start()
    api = cp.api_client()
    install_crd(api)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": owner.namespace}})
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(
        models.GROUP, models.VERSION, owner.namespace, models.PLURAL,
        {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": owner.name},
         "spec": spec.model_dump(by_alias=True, exclude_none=True)})
    for i in range(spec.redis.replicas):
        labels = {**names.common_labels(owner, names.COMPONENT_REDIS),
                  names.LABEL_ROLE: names.ROLE_MASTER if i == 0 else names.ROLE_REPLICA}
        core.create_namespaced_pod(owner.namespace, {
            "metadata": {"name": owner.redis_pod(i), "labels": labels},
            "spec": {"containers": [{"name": "redis", "image": spec.image}]}})
    kube = Kube(cp.api_client(cp.operator_kubeconfig), "bench")
    return cp, kube, created["metadata"]["uid"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--down-after", type=int, default=1000, help="sentinel downAfterMilliseconds")
    parser.add_argument("--smoke", action="store_true", help="the same run at its smallest: two rounds (seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 2
    with contextlib.ExitStack() as stack:
        return run(args, stack)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    spec = models.parse_spec({
        "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
        "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": args.down_after, "failoverTimeout": 5000},
    })
    owner = Owner(name="bench", namespace="bench-failover", uid="bench-uid")
    kube_side = kube_objects(owner, spec, stack)
    if kube_side is not None:
        owner = Owner(name=owner.name, namespace=owner.namespace, uid=kube_side[2])

    to_write: list[float] = []
    share: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rmsg-bench-failover-") as tmp, \
            SentinelEnv(spec, owner, Path(tmp), password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        addresses = MapAddresses({p: env.address(p) for p in env.redis_pods},
                                 {p: env.address(p) for p in env.sentinel_pods})
        topology = SentinelTopology(addresses, timeout=0.5)
        followed: list[Followed] = []
        got = threading.Event()

        def on_followed(_: Owner, f: Followed) -> None:
            followed.append(f)
            got.set()

        watch = None
        if kube_side is not None:
            watch = FailoverWatch(kube_side[1], addresses, owner, on_followed=on_followed)
            watch.ensure(redis_replicas=3, sentinel_replicas=3, password=PASSWORD)
        sentinel = Sentinel([env.address(p) for p in env.sentinel_pods], socket_timeout=0.3,
                            sentinel_kwargs={"password": PASSWORD, "socket_timeout": 0.3}, password=PASSWORD)
        client = sentinel.master_for(owner.master_name, socket_timeout=0.3)
        try:
            for round_ in range(1, args.rounds + 1):
                master = settle(topology, spec, owner, 60)
                client.set("probe", round_)
                got.clear()
                killed = time.monotonic()
                env.kill(master)
                end = killed + 30
                while time.monotonic() < end:
                    try:
                        client.set("probe", round_)
                        break
                    except (RedisError, OSError):
                        time.sleep(0.02)
                else:
                    raise TimeoutError("no write accepted within 30 s of the kill")
                to_write.append(time.monotonic() - killed)
                if watch is not None:
                    if not got.wait(10):
                        raise TimeoutError("the watcher did not follow the switch")
                    share.append(followed[-1].seconds)
                print(f"round {round_}: {master} killed, first write after {to_write[-1]:.2f} s"
                      + (f", labels+status moved {share[-1] * 1000:.0f} ms after +switch-master" if share else ""))
                env.restart(master)
        finally:
            if watch is not None:
                watch.stop(timeout=5)

    print()
    print(f"rounds: {len(to_write)}, sentinel down-after-milliseconds: {args.down_after}")
    print(f"kill -> first accepted write: median {statistics.median(to_write):.2f} s, max {max(to_write):.2f} s, "
          f"target down-after + 2 s = {args.down_after / 1000 + 2:.1f} s")
    if share:
        print(f"operator's share (+switch-master -> labels and status moved): median "
              f"{statistics.median(share) * 1000:.0f} ms, max {max(share) * 1000:.0f} ms, target 500 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
