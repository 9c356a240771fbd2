"""From a backlog crossing the target to the scale subresource patched, through the running operator.

What runs: the kube tier's control plane (etcd, kube-apiserver, kube-controller-manager from
.ci/control-plane.sh or KUBEBUILDER_ASSETS), a redis-server on 127.0.0.1 playing the resource's master
(through REDIS_MESSAGING_ADDRESS_MAP), and the operator in-process (Kopf's KopfRunner) with its real
autoscale loop ticking every REDIS_MESSAGING_AUTOSCALE_TICK_SECONDS (2 s by default).

Each round adds entries so that the backlog of a declared group crosses the next multiple of
``backlogPerReplica`` (the first round wakes the Deployment from zero with 50 entries), at a random
moment of the tick, and measures:

* crossing -> patch: from the XADD reply to the scale patch as the API server logged it (audit log,
  ResponseComplete) — what DESIGN.md bounds by one tick + 0.5 s;
* tick -> patch: from the start of the autoscaler tick to the patch answered (the operator's own share).

Run: ``.venv/bin/python bench/autoscale_e2e.py [--rounds 10] [--smoke]``. ``--smoke`` is the same run
with two rounds (the wake from zero, then one more replica), seconds; CI runs it
(tests/kube/test_bench_smoke_kube.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _project

_project.use(__file__, "tests/kube", "tests/support")

from autoscale import HOST, redis_server  # noqa: E402 - bench/autoscale.py, after the path is set
from controlplane import ControlPlane, locate_assets  # noqa: E402
from redis.client import Redis  # noqa: E402

NAMESPACE = "bench"
DEPLOYMENT = "worker"
PER_REPLICA = 100


def stamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["stageTimestamp"]).timestamp()


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"median {statistics.median(values) * 1000:6.0f} ms, p95 {p95 * 1000:6.0f} ms, "
            f"max {ordered[-1] * 1000:6.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="two rounds (wake from zero, one more replica): seconds")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 2
    tick = float(os.environ.get("REDIS_MESSAGING_AUTOSCALE_TICK_SECONDS", "2"))

    with ControlPlane(locate_assets()) as cp, redis_server() as port, \
            tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        if not cp.has_controller_manager:
            sys.exit("needs kube-controller-manager (.ci/control-plane.sh builds it)")
        os.environ["KUBECONFIG"] = str(cp.operator_kubeconfig)
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        address_map = Path(tmp) / "addresses.json"
        address_map.write_text(json.dumps({
            "redis": {f"{NAMESPACE}/orders-redis-0": f"{HOST}:{port}"},
            "sentinel": {f"{NAMESPACE}/orders-sentinel-0": f"{HOST}:1"},
        }))
        os.environ.update({"REDIS_MESSAGING_ADDRESS_MAP": str(address_map), "REDIS_MESSAGING_METRICS_PORT": "0"})

        from helpers import Api, eventually, install_crd, operator_running, rmsg
        from kubernetes import client

        api_client = cp.api_client()
        install_crd(api_client)
        api = Api(api_client)
        api.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        api.apps.create_namespaced_deployment(NAMESPACE, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": DEPLOYMENT}},
                     "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                                  "spec": {"containers": [{"name": "w", "image": "busybox:1.36"}]}}}})
        r = Redis(host=HOST, port=port, decode_responses=True)

        def replicas() -> int:
            return int(api.apps.read_namespaced_deployment_scale(DEPLOYMENT, NAMESPACE).spec.replicas or 0)

        with operator_running(NAMESPACE):
            from redis_messaging.runtime import operator as runtime

            ticks_to_patch: list[float] = []
            api.create(NAMESPACE, rmsg("orders", {
                "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1}, "auth": {"enabled": False},
                "streams": [{"name": "orders", "groups": [{"name": "billing", "autoscale": {
                    "target": {"name": DEPLOYMENT}, "maxReplicas": args.rounds + 1,
                    "backlogPerReplica": PER_REPLICA}}]}]}))
            eventually(lambda: r.exists("orders") and r.xinfo_groups("orders"), timeout=60, what="group created")
            autoscaler = eventually(lambda: (op := runtime.current()) and op.autoscaler, what="autoscaler")
            autoscaler.on_scaled = lambda scaled: ticks_to_patch.append(scaled.tick_to_patch)

            crossing_to_patch: list[float] = []
            backlog = 0
            for round_ in range(args.rounds):
                time.sleep(random.uniform(0, tick))  # cross at any moment of the tick
                add = 50 if round_ == 0 else PER_REPLICA
                pipe = r.pipeline(transaction=False)
                for n in range(add):
                    pipe.xadd("orders", {"n": str(n)})
                pipe.execute()
                crossed = time.time()
                backlog += add
                want = -(-backlog // PER_REPLICA)
                eventually(lambda want=want: replicas() == want, timeout=tick * 3 + 5, interval=0.05,
                           what=f"scaled to {want}")

                def patch(since: float = crossed) -> dict[str, Any] | None:
                    found = [e for e in cp.audit_events(since=since - 1, user="operator", verbs={"patch"},
                                                        resource="deployments")
                             if e["objectRef"].get("subresource") == "scale" and stamp(e) >= since]
                    return found[0] if found else None

                crossing_to_patch.append(stamp(eventually(patch, what="the patch in the audit log")) - crossed)
            autoscaler.on_scaled = None
        r.close()
        api_client.close()

    print(f"backlog crossing the target -> scale subresource patched, {args.rounds} rounds, tick {tick:g} s, "
          "through the running operator against kube-apiserver + kube-controller-manager:")
    print(f"  crossing -> patch (audit log): {ms(crossing_to_patch)}")
    print(f"  tick start -> patch answered:  {ms(ticks_to_patch)}")
    bound = tick + 0.5
    print(f"  bound (one tick + 0.5 s):      {bound * 1000:6.0f} ms -> "
          f"{'met' if max(crossing_to_patch) <= bound else 'NOT met'} by every round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
