"""The operator at work, in a few minutes, on this machine: README's first command ends here.

It brings up the local cluster of e2e/local (a real API server, etcd, controller manager and scheduler;
the machine's redis-server and redis-sentinel as pods) with the CRD and the chart installed with Helm,
then shows the operator's main job on the resources of examples/:

1. examples/sentinel.yaml and examples/streams-autoscaling.yaml (with its consumer Deployment) applied
   in namespaces of their own, and their progress until both are Ready; then `kubectl get rmsg,pods`;
2. a burst of stream entries: the consumers scaled up from zero, every entry delivered and acknowledged,
   the consumers scaled back to zero (the example's scale-down windows are shortened for the demo, and
   said so);
3. acknowledged writes, the master pod deleted: the failover followed (status, role labels, the master
   Service's pod) and every acknowledged write still there.

It ends with what it showed, and stops everything (or, with --keep, keeps the cluster and the operator
running and prints the KUBECONFIG until Ctrl-C). Where the local cluster cannot run (not Linux, not
root), it says why and exits 2: the e2e tier's kind path (`bash e2e/run-kind.sh`) is the way there.

    .venv/bin/python e2e/local/demo.py [--keep] [--burst N]

The steps are :func:`show`, which e2e/local/test_demo.py runs on the e2e session's cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for entry in (HERE, REPO / "e2e", REPO / "tests" / "support"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from e2e_support import PLURAL, LocalBackend  # noqa: E402

T = TypeVar("T")

NAME = "orders"  # the examples' resource name
CONSUMERS = "billing-worker"  # the streams example's consumer Deployment
STREAM, GROUP = "orders", "billing"
# The streams example waits minutes before scaling down (what production wants); the demo does not.
DEMO_AUTOSCALE = {"maxReplicas": 4, "scaleDownStabilizationSeconds": 10, "idleSecondsBeforeZero": 15}
READY_TIMEOUT = 300.0
SCALE_TIMEOUT = 240.0
FAILOVER_TIMEOUT = 120.0


class DemoFailed(Exception):
    """A step did not show what it should have, within its time."""


@dataclass
class Showing:
    """What the demo prints, with the time since it started, and what it showed."""

    out: TextIO = sys.stdout
    started: float = field(default_factory=time.monotonic)
    shown: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        for line in text.rstrip("\n").splitlines() or [""]:
            self.out.write(f"[{elapsed // 60}:{elapsed % 60:02d}] {line}\n")
        self.out.flush()

    def step(self, title: str) -> None:
        self.out.write("\n")
        self.say(f"== {title}")

    def block(self, text: str) -> None:
        """Command output, indented, as it came."""
        for line in text.rstrip("\n").splitlines():
            self.out.write(f"    {line}\n")
        self.out.flush()

    def showed(self, what: str) -> None:
        self.shown.append(what)
        self.say(f"shown: {what}")

    def watch(self, what: str, probe: Callable[[], tuple[str, T | None]], *, timeout: float,
              interval: float = 1.0) -> T:
        """Print ``probe``'s description whenever it changes, until it returns a result (returned)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                text, result = probe()
            except Exception as exc:  # a probe that fails is shown, and tried again
                text, result = f"({type(exc).__name__}: {str(exc).strip()[:200]})", None
            if text != last:
                self.say(f"  {text}")
                last = text
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what}: not reached within {timeout:g}s (last: {text})")
            time.sleep(interval)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def streams_example() -> list[dict[str, Any]]:
    """examples/streams-autoscaling.yaml with the demo's shorter autoscaling windows."""
    docs = documents(REPO / "examples" / "streams-autoscaling.yaml")
    for doc in docs:
        if doc["kind"] == "RedisMessaging":
            for stream in doc["spec"]["streams"]:
                for group in stream.get("groups") or []:
                    if "autoscale" in group:
                        group["autoscale"].update(DEMO_AUTOSCALE)
    return docs


def apply(cluster: LocalBackend, namespace: str, docs: list[dict[str, Any]]) -> str:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(docs))


def readiness(cluster: LocalBackend, namespace: str) -> tuple[str, bool | None]:
    body = cluster.get(namespace, PLURAL, NAME)
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
    pods = cluster.items(namespace, "pods", f"app.kubernetes.io/instance={NAME}")
    running = sum(1 for p in pods if all(s.get("ready") for s in p.get("status", {}).get("containerStatuses") or [{}]))
    state = f"{ready['status']} ({ready.get('reason', '')})" if ready else "not reported yet"
    text = f"{namespace}/{NAME}: {running}/{len(pods)} pods ready, Ready={state}, master={status.get('master', '-')}"
    return text, (True if ready and ready["status"] == "True" else None)


def group_status(cluster: LocalBackend, namespace: str) -> dict[str, Any]:
    streams = (cluster.get(namespace, PLURAL, NAME).get("status") or {}).get("streams") or []
    for stream in streams:
        if stream.get("name") == STREAM:
            for group in stream.get("groups") or []:
                if group.get("name") == GROUP:
                    return dict(group)
    return {}


def consumers(cluster: LocalBackend, namespace: str) -> tuple[int, int]:
    """(replicas asked for, pods ready) of the consumer Deployment."""
    body = cluster.get(namespace, "deployment", CONSUMERS)
    return int(body["spec"].get("replicas") or 0), int((body.get("status") or {}).get("readyReplicas") or 0)


def master_of(cluster: LocalBackend, namespace: str) -> str:
    return str((cluster.get(namespace, PLURAL, NAME).get("status") or {}).get("master") or "")


def show(cluster: LocalBackend, showing: Showing, *, sentinel_ns: str, streams_ns: str, burst: int) -> None:
    """The demo's steps on a running cluster with the operator; raises DemoFailed when one is not shown."""
    showing.step(f"1. the examples applied: examples/sentinel.yaml in {sentinel_ns}, "
                 f"examples/streams-autoscaling.yaml in {streams_ns}")
    showing.say(f"   (the streams example's autoscaling shortened for the demo: {DEMO_AUTOSCALE})")
    for ns in (sentinel_ns, streams_ns):
        cluster.kubectl("create", "namespace", ns)
    showing.block(apply(cluster, sentinel_ns, documents(REPO / "examples" / "sentinel.yaml")))
    showing.block(apply(cluster, streams_ns, streams_example()))
    began = time.monotonic()
    for ns in (sentinel_ns, streams_ns):
        showing.watch(f"{ns}/{NAME} Ready", lambda ns=ns: readiness(cluster, ns), timeout=READY_TIMEOUT, interval=2)
    showing.showed(f"two RedisMessaging resources Ready in {time.monotonic() - began:.0f} s "
                   "(a master, two replicas, three Sentinels each, on persistent volumes)")
    showing.say(f"$ kubectl get rmsg,pods -n {sentinel_ns}")
    showing.block(cluster.kubectl("get", "rmsg,pods", "-n", sentinel_ns, "-o", "wide"))
    showing.say(f"$ kubectl get rmsg,pods -n {streams_ns}")
    showing.block(cluster.kubectl("get", "rmsg,pods", "-n", streams_ns))

    showing.step(f"2. a burst of {burst} entries on stream '{STREAM}': the consumers of group '{GROUP}' scale")
    master = master_of(cluster, streams_ns)
    added = cluster.redis_cli(streams_ns, master, "EVAL",
                              f"for i = 1, {burst} do redis.call('XADD', KEYS[1], '*', 'n', i) end return {burst}",
                              "1", STREAM)
    if added.strip() != str(burst):
        raise DemoFailed(f"XADD of the burst answered {added!r}")
    showing.say(f"   {burst} entries added on {master}")
    peak = [0]

    def scaled_up() -> tuple[str, int | None]:
        asked, ready = consumers(cluster, streams_ns)
        group = group_status(cluster, streams_ns)
        peak[0] = max(peak[0], asked)
        text = (f"{CONSUMERS}: {asked} asked, {ready} ready; group lag={group.get('lag', '-')} "
                f"pending={group.get('pending', '-')}")
        return text, (asked if asked > 0 and ready >= 1 else None)

    showing.watch("consumers scaled up", scaled_up, timeout=SCALE_TIMEOUT)

    def drained() -> tuple[str, bool | None]:
        text, _ = scaled_up()
        group = group_status(cluster, streams_ns)
        done = group.get("lag") == 0 and group.get("pending") == 0
        return text, (True if done else None)

    showing.watch("every entry delivered and acknowledged", drained, timeout=SCALE_TIMEOUT)
    fields = cluster.redis_cli(streams_ns, master_of(cluster, streams_ns), "XINFO", "GROUPS", STREAM).splitlines()
    showing.say(f"$ redis-cli XINFO GROUPS {STREAM}")
    showing.block(" ".join(f"{k}={v}" for k, v in zip(fields[::2], fields[1::2], strict=False)))
    showing.showed(f"consumers scaled from 0 to {peak[0]} on a backlog of {burst}; "
                   "every entry delivered and acknowledged")

    def scaled_down() -> tuple[str, bool | None]:
        text, _ = scaled_up()
        asked, ready = consumers(cluster, streams_ns)
        return text, (True if asked == 0 and ready == 0 else None)

    showing.watch("consumers scaled back to zero", scaled_down, timeout=SCALE_TIMEOUT)
    showing.showed("consumers scaled back to 0 once the group was idle")

    showing.step(f"3. the master pod of {sentinel_ns}/{NAME} deleted: the failover followed, nothing lost")
    old = master_of(cluster, sentinel_ns)
    keys = 1000
    cluster.redis_cli(sentinel_ns, old, "EVAL",
                      f"for i = 1, {keys} do redis.call('SET', 'demo:' .. i, i) end return {keys}", "0")
    acked = int(cluster.redis_cli(sentinel_ns, old, "WAIT", "1", "10000") or 0)
    if acked < 1:
        raise DemoFailed(f"no replica acknowledged the {keys} writes on {old}")
    showing.say(f"   {keys} keys written on the master {old}, acknowledged by {acked} replica(s) (WAIT)")
    showing.say(f"$ kubectl delete pod {old} -n {sentinel_ns}")
    cluster.kubectl("delete", "pod", old, "-n", sentinel_ns, "--wait=false")
    began = time.monotonic()

    def followed() -> tuple[str, str | None]:
        now = master_of(cluster, sentinel_ns)
        labelled = cluster.masters(sentinel_ns, NAME)
        text = f"status.master={now or '-'}, pods labelled role=master: {', '.join(labelled) or 'none'}"
        return text, (now if now and now != old and labelled == [now] else None)

    new = showing.watch("the failover followed", followed, timeout=FAILOVER_TIMEOUT)
    took = time.monotonic() - began
    count = cluster.redis_cli(sentinel_ns, new, "EVAL", "return #redis.call('KEYS', 'demo:*')", "0")
    if count.strip() != str(keys):
        raise DemoFailed(f"the new master {new} holds {count.strip()} of the {keys} acknowledged keys")
    showing.say(f"   {new} is master and holds {count.strip()} of the {keys} keys")
    showing.showed(f"master pod {old} deleted: {new} promoted and followed in {took:.0f} s, "
                   f"{keys} of {keys} acknowledged keys there")
    showing.watch(f"{sentinel_ns}/{NAME} Ready again", lambda: readiness(cluster, sentinel_ns),
                  timeout=READY_TIMEOUT, interval=2)
    showing.say(f"$ kubectl get rmsg,pods -n {sentinel_ns}")
    showing.block(cluster.kubectl("get", "rmsg,pods", "-n", sentinel_ns, "-o", "wide"))
    showing.say(f"$ kubectl get events -n {sentinel_ns} --field-selector involvedObject.kind=RedisMessaging")
    events = cluster.kubectl("get", "events", "-n", sentinel_ns, "--sort-by=.lastTimestamp",
                             "--field-selector", "involvedObject.kind=RedisMessaging", check=False)
    showing.block("\n".join(events.splitlines()[:1] + events.splitlines()[-8:]))


def summary(showing: Showing, failed: str | None) -> None:
    showing.step("what this showed")
    for what in showing.shown:
        showing.say(f"  - {what}")
    if failed:
        showing.say(f"  NOT shown: {failed}")


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster and the operator running at the end (Ctrl-C stops them)")
    parser.add_argument("--burst", type=int, default=1000, help="stream entries of the burst (default 1000)")
    args = parser.parse_args(argv)
    if args.burst < 1 or args.burst > 100_000:
        parser.error("--burst: between 1 and 100000")
    import localcluster

    showing = Showing(out=out)
    reason = localcluster.missing_requirements()
    if reason is not None:
        showing.say(f"the local cluster cannot run here: {reason}")
        showing.say("on a machine with Docker, `bash e2e/run-kind.sh` runs the e2e tier on kind instead")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    showing.step("0. the local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, "
                 "kwok's nodes, the pod runner")
    failed: str | None = None
    with localcluster.LocalCluster() as local:
        showing.say(f"   up in {local.timings['start']:.0f} s, with the CRD")
        began = time.monotonic()
        local.start_operator()
        showing.say(f"   the chart installed with Helm (`helm upgrade --install`); the operator's pod "
                    f"{local.operator.name if local.operator else '?'} runs after {time.monotonic() - began:.0f} s, "
                    f"its log: {local.operator_log_path}")
        cluster = LocalBackend(local.kubeconfig, local=local)
        try:
            show(cluster, showing, sentinel_ns="demo-sentinel", streams_ns="demo-streams", burst=args.burst)
        except (DemoFailed, OSError, ValueError, RuntimeError) as exc:
            failed = str(exc)
            showing.say(f"the demo failed: {exc}")
            showing.say("the operator's last lines:")
            showing.block(local.operator_log(40))
        summary(showing, failed)
        if args.keep:
            showing.step("--keep: the cluster and the operator keep running; Ctrl-C stops them")
            showing.say(f"export KUBECONFIG={local.kubeconfig}")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(1):
                    pass
        showing.step("stopping the operator and the cluster")
    showing.say(f"done in {time.monotonic() - showing.started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
