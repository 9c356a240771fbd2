"""A local cluster that dies without stopping (SIGKILL of the test run, a CI timeout) leaves processes,
veths, a bridge and directories behind; the next cluster on the machine removes them and runs its
pods, and leaves alone what a live cluster holds (E2E_BACKEND=local only: root, namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import runrecord
from e2e_support import Cluster, eventually
from runrecord import RunRecord, bridge_links, bridge_name, reap_dead

HERE = Path(__file__).resolve().parent


# -- helpers -----------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def in_netns(netns: str) -> list[int]:
    """The live processes in the network namespace ``netns`` (net:[INODE])."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == netns:
                    out.append(int(entry.name))
    return out


def ifindexes() -> set[int]:
    return {int((p / "ifindex").read_text()) for p in Path("/sys/class/net").iterdir()}


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def free_numbers(count: int) -> list[int]:
    """N of 127.255.N.0/24 that no cluster of this machine uses (from the top; clusters take the lowest)."""
    free = [n for n in reversed(runrecord.NUMBERS) if not bridge_links(bridge_name(n))
            and not any((runrecord.STATE_DIR / f"{bridge_name(n)}{s}").exists() for s in (".run", ".pid"))]
    return free[:count]


def netns_process(address: str) -> subprocess.Popen[bytes]:
    """A process in a network namespace of its own holding ``address`` (what a pod looks like)."""
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c",
                             f"ip link set lo up && ip addr add {address}/32 dev lo && exec sleep 600"],
                            start_new_session=True)
    host = os.readlink("/proc/self/ns/net")
    eventually(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != host and "sleep" in Path(
        f"/proc/{proc.pid}/cmdline").read_text(), timeout=10, interval=0.02, what="the namespace")
    return proc


# -- the cleanup, on its own -------------------------------------------------------------------------

OWNER = r"""
import json, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from runrecord import RunRecord, process_start_time
state, number = Path(sys.argv[2]), int(sys.argv[3])
record = RunRecord.claim(state, [number])
work = Path(tempfile.mkdtemp(prefix="rmsg-local-test-"))
record.add_path(work)
# a process group it starts in the host's namespaces (as kwok), and one naming its directory
group = subprocess.Popen(["sleep", "600"], start_new_session=True)
record.add_group(group.pid, process_start_time(group.pid))
named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(work)], start_new_session=True)
print(json.dumps({"work": str(work), "group": group.pid, "named": named.pid}), flush=True)
time.sleep(600)
"""


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Whatever a test starts (processes, pids, links) is removed afterwards, whatever happened."""
    things: list[Any] = []
    yield things
    for thing in things:
        if isinstance(thing, subprocess.Popen):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(thing.pid, signal.SIGKILL)
            thing.wait(10)
        elif isinstance(thing, int):
            kill_all([thing])
        else:
            subprocess.run(["ip", "link", "del", str(thing)], capture_output=True, check=False)


def test_a_dead_clusters_leftovers_are_removed_and_a_live_ones_are_not(tmp_path: Path, cleanup: list[Any]) -> None:
    state = tmp_path / "state"
    number, other = free_numbers(2)
    bridge = bridge_name(number)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(HERE), str(state), str(number)],
                             stdout=subprocess.PIPE, start_new_session=True)
    cleanup.append(owner)
    assert owner.stdout is not None
    made = json.loads(owner.stdout.readline())
    cleanup += [made["group"], made["named"], bridge, f"{bridge}v1"]
    # its pod: a process of a network namespace with an address of its subnet and a veth on its bridge
    pod = netns_process(f"127.255.{number}.9")
    cleanup.append(pod)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", f"{bridge}v1", "type", "veth", "peer", "name", "eth0", "netns",
                    str(pod.pid)], check=True)
    subprocess.run(["ip", "link", "set", f"{bridge}v1", "master", bridge], check=True)
    # another cluster's pod (another subnet), and a process of the host of no recorded group
    bystanders = [netns_process(f"127.255.{other}.9"), subprocess.Popen(["sleep", "600"], start_new_session=True)]
    cleanup += bystanders
    theirs = [made["group"], made["named"], pod.pid]

    assert reap_dead(state) == []  # its owner lives
    assert all(alive(pid) for pid in theirs)
    assert bridge_links(bridge) == [bridge, f"{bridge}v1"]
    assert Path(made["work"]).is_dir()

    owner.kill()  # SIGKILL: what it made outlives it
    owner.wait(10)
    assert all(alive(pid) for pid in theirs)
    done = reap_dead(state)

    assert len(done) == 1, done
    assert "3 processes killed" in done[0], done
    eventually(lambda: not any(alive(pid) for pid in theirs), timeout=5, interval=0.05, what="its processes gone")
    assert bridge_links(bridge) == []
    assert not Path(made["work"]).exists()
    assert list(state.iterdir()) == []
    assert all(alive(p.pid) for p in bystanders)
    # and its subnet can be claimed again
    RunRecord.claim(state, [number]).release()


def test_a_record_of_the_former_format_is_cleaned_up_once_its_pid_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    number, other = free_numbers(2)
    work = Path(tempfile.mkdtemp(prefix="rmsg-local-test-"))
    (state / f"{bridge_name(number)}.pid").write_text(f"{dead.pid}\n{work}\n")
    (state / f"{bridge_name(other)}.pid").write_text(f"{os.getpid()}\n")  # alive: left alone
    done = reap_dead(state)
    assert len(done) == 1, done
    assert not work.exists()
    assert sorted(p.name for p in state.iterdir()) == [f"{bridge_name(other)}.pid"]


# -- a whole cluster, SIGKILLed ----------------------------------------------------------------------

DOOMED = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from localcluster import LocalCluster
cluster = LocalCluster().start()
cluster.kubectl("create", "namespace", "doomed")
cluster.kubectl("apply", "-n", "doomed", "-f", "-", input_text=sys.argv[2])
cluster.kubectl("wait", "-n", "doomed", "--for=condition=Ready", "pod/victim", "--timeout=120s")
deadline = time.monotonic() + 60
while cluster.runner.exec("doomed", "victim", ["redis-cli", "PING"], timeout=5).stdout.strip() != "PONG":
    assert time.monotonic() < deadline, "the victim's redis-server does not answer"
    time.sleep(0.1)
worker = cluster.runner.worker("doomed", "victim")
print(json.dumps({"netns": os.readlink(f"/proc/{worker.sandbox.pid}/ns/net"), "sandbox": worker.sandbox.pid,
                  "ifindex": int(open(f"/sys/class/net/{worker.host_if}/ifindex").read()),
                  "dirs": [str(cluster.work), str(cluster.control_plane.workdir)]}), flush=True)
time.sleep(3600)
"""


def victim(name: str) -> dict[str, Any]:
    """A pod whose processes outlive a killed harness: it runs as another user (which clears the
    parent-death signal its runner set) and forks a child of a session of its own."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "securityContext": {"runAsUser": 999, "runAsGroup": 999},
                     "containers": [{"name": "redis", "image": "redis:7.2", "command": [
                         "sh", "-c", "setsid sleep 3600 & exec redis-server --save '' --protected-mode no"]}]}}


def ready(kubectl: Any, namespace: str, name: str) -> bool:
    pod = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json"))
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def test_a_new_cluster_runs_pods_after_one_was_killed_and_leaves_a_live_one_alone(
        cluster: Cluster, namespace: str, local_cluster: Any, cleanup: list[Any]) -> None:
    # the session's cluster, alive all along, with a pod
    cluster.apply(namespace, victim("bystander"))
    eventually(lambda: cluster.exec(namespace, "bystander", "redis", "redis-cli", "PING").strip() == "PONG",
               timeout=60, interval=0.2, what="the bystander's redis-server answering")
    bystander = local_cluster.runner.worker(namespace, "bystander")
    bystander_pids = in_netns(os.readlink(f"/proc/{bystander.sandbox.pid}/ns/net"))

    doomed = subprocess.Popen([sys.executable, "-c", DOOMED, str(HERE), json.dumps(victim("victim"))],
                              stdout=subprocess.PIPE, start_new_session=True)
    cleanup.append(doomed)
    assert doomed.stdout is not None
    line = doomed.stdout.readline()
    assert line, f"the doomed cluster did not start (exit {doomed.wait(60)})"
    made = json.loads(line)
    os.killpg(doomed.pid, signal.SIGKILL)  # the harness and whatever stayed in its process group
    doomed.wait(10)
    # what the kernel kills with it (PR_SET_PDEATHSIG), as the pod's sandbox, is gone by now
    eventually(lambda: not alive(made["sandbox"]), timeout=10, interval=0.05, what="the sandbox killed with it")
    survivors = in_netns(made["netns"])
    cleanup += survivors
    assert survivors, "nothing of the killed cluster's pod survived it: this test proves nothing"
    assert made["ifindex"] in ifindexes()

    fresh = type(local_cluster)()
    try:
        fresh.start()
        # what the killed cluster left is gone; the live one's is not
        assert in_netns(made["netns"]) == []
        assert made["ifindex"] not in ifindexes()
        assert not any(Path(d).exists() for d in made["dirs"])
        assert all(alive(pid) for pid in bystander_pids)
        assert ready(cluster.kubectl, namespace, "bystander")
        # and the new cluster's pods run (before, they stayed ContainerCreating: "File exists")
        fresh.kubectl("create", "namespace", "fresh")
        fresh.kubectl("apply", "-n", "fresh", "-f", "-", input_text=json.dumps(victim("victim")))
        eventually(lambda: ready(fresh.kubectl, "fresh", "victim"), timeout=60, interval=0.2,
                   what="a pod of the new cluster Ready")
        eventually(lambda: fresh.runner.exec("fresh", "victim", ["redis-cli", "PING"], timeout=10).stdout.strip()
                   == "PONG", timeout=30, interval=0.2, what="its redis-server answering")
    finally:
        fresh.stop()
    assert fresh.leftovers() == []
