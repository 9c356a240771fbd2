"""The kubelet of the local cluster: runs the pods that kwok marked Running as real processes.

kwok keeps the fake Node objects alive and gives each scheduled pod its phase and a pod IP from the
node's loopback `podCIDR`; this runner does what a kubelet would do with it, for every pod on those
nodes whose image it knows:

- a sandbox per pod: a process holding a new network namespace (its own `lo` and 127.0.0.1, an
  `eth0` with the pod IP, plugged into the cluster's bridge) and a new UTS namespace (hostname = the
  pod's hostname), killed with the harness (PR_SET_PDEATHSIG);
- per container: the container's own command and args (or the image's entrypoint and cmd), run in the
  pod's namespaces and in a new mount namespace of its own whose root is a copy-on-write overlay of the
  machine's root (e2e/local/container-init.sh), with the pod's volumes bind-mounted at their
  mountPaths (ConfigMap, Secret and downward-API items materialised into a directory of the pod,
  emptyDirs as directories, PersistentVolumeClaims as their hostPath PV's directory), the environment
  of the pod spec (value, fieldRef, secretKeyRef, configMapKeyRef, envFrom), the cluster's hosts file on
  /etc/hosts and a resolv.conf with the pod's search path;
- probes (exec inside the container's namespaces with its environment, httpGet, tcpSocket): startup,
  readiness (the pod's Ready condition follows them) and liveness (a failing container is restarted);
- restarts like `restartPolicy: Always` with a small backoff, the status (conditions, containerStatuses,
  restartCount) patched on the API server;
- deletion: preStop hooks, SIGTERM, SIGKILL after the grace period, then the pod object is removed
  (grace period 0), as the kubelet does.

- the API server, as the kubelet and the ServiceAccount admission plugin give it: the `kubernetes`
  Service's environment (KUBERNETES_SERVICE_HOST is the Service's name, which the cluster's hosts
  file resolves to a relay in front of the API server) and, unless the pod or its ServiceAccount opts
  out, a token from the TokenRequest API with the cluster's CA at
  /var/run/secrets/kubernetes.io/serviceaccount.

Images it knows: redis images run the machine's redis-server / redis-sentinel (Debian packages), or,
for an image of an engine of the matrix (`redis:8.x`, `valkey/valkey:8.x`, `valkey/valkey:9.x`: the
engine with its major version, .ci/build-engine.sh), that engine's binaries; the containers of an
engine not built wait in ErrImagePull, with the command that builds it. The
operator's image runs this checkout with the project's virtualenv (.venv, bound read-only where the
image has it, /opt/redis-messaging, and the checkout's package and `redis-messaging` beside it, first
on PATH, whatever interpreter runs the harness), the redis_exporter image runs the binary
.ci/build-monitoring.sh builds (bound at /redis_exporter, as in the image; without it, its containers
count as running and ready). Pods whose images it does not know are reported running and ready
without processes, as kwok alone would.

Every container runs in a process group of its own. When a pod ends, the runner kills the groups,
then whatever else is in the pod's network namespace (a child that started a session of its own);
the kernel kills the sandboxes and containers if the harness dies first (PR_SET_PDEATHSIG, set again
after a container changes user). What that misses, e.g. the children containers forked, stays in
the pod's network namespace, where the next cluster finds it (runrecord.py).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubeapi import ApiError, KubeApi, Obj, Reflector, now_rfc3339, pod_path, quote
from runrecord import RunRecordError, find_processes, kill_processes, process_start_time, veth_name

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONTAINER_INIT = HERE / "container-init.sh"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLUSTER_DOMAIN = "cluster.local"
LOOP_INTERVAL = 0.1
MAX_BACKOFF = 10.0
BACKOFF_RESET_AFTER = 30.0
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 48 * 3600


class PodNotFound(LookupError):
    pass


# --------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageProfile:
    """What the runner does with containers of an image: the image's ENTRYPOINT, CMD and environment,
    or ``run=False`` for images whose containers are only reported running."""

    kind: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    missing: str = ""  # why this machine cannot play the image: its containers wait in ErrImagePull
    env: tuple[tuple[str, str], ...] = ()
    run: bool = True
    user: tuple[int, int] = (0, 0)  # the image's USER (uid, gid)
    reach: tuple[str, ...] = ()  # paths its user must be able to reach (the interpreter)
    mounts: tuple[tuple[str, str], ...] = ()  # (path here, path in the container): the image's own files


ENGINE_BIN = "/usr/local/lib/rmsg-engine/bin"  # where an engine's binaries are bound in its containers


def image_engine(image: str) -> str | None:
    """The engine of the matrix (.ci/build-engine.sh) that plays a redis or valkey image, by its major
    version: `redis:8.0.2` -> redis-8.0, `valkey/valkey:8.1-alpine` -> valkey-8.1, `valkey/valkey:9`
    and a valkey image without a version -> valkey-9.1; None for Debian's Redis 7.0 (every other redis
    image)."""
    repo = image_repository(image)
    tag = image.split("@", 1)[0].rpartition(":")[2] if ":" in image.split("@", 1)[0].rsplit("/", 1)[-1] else ""
    major = re.match(r"v?(\d+)", tag)
    if repo == "valkey":
        return "valkey-8.1" if major and int(major.group(1)) <= 8 else "valkey-9.1"
    if repo == "redis" and major and int(major.group(1)) == 8:
        return "redis-8.0"
    return None


def image_repository(image: str) -> str:
    """`docker.io/library/redis:7.2@sha256:...` -> `redis`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


# What the operator image's own containers import: the operator, the consumer helper, their libraries.
OPERATOR_IMAGE_IMPORTS = ("redis", "kopf", "kubernetes", "pydantic", "redis_messaging.cli", "redis_messaging.consumer")
_INTERPRETER_PATHS = ("import json, os, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps(["
                      "os.path.realpath(sys.executable), p['stdlib'], p['platstdlib'], p['purelib'], p['platlib']]))")


def project_virtualenv(repo_root: Path) -> Path | None:
    """The virtualenv whose interpreter the operator image's containers run, as the image runs its own
    (/opt/redis-messaging, first on its PATH): the checkout's .venv (.ci/setup.sh makes it), else the
    one this harness runs in; None without either.

    Never this process's interpreter as such: started from outside a virtualenv's directory (a link to
    it elsewhere included), Python finds no pyvenv.cfg next to it and runs as the base interpreter,
    without the virtualenv's packages."""
    candidates = [repo_root / ".venv"]
    if sys.prefix != sys.base_prefix:
        candidates.append(Path(sys.prefix))
    return next((venv for venv in candidates
                 if (venv / "pyvenv.cfg").is_file() and os.access(venv / "bin" / "python", os.X_OK)), None)


def operator_image_problem(repo_root: Path) -> str | None:
    """Why this machine cannot play the operator image (None when it can): no virtualenv, or one that
    lacks what the image's containers import."""
    venv = project_virtualenv(repo_root)
    if venv is None:
        return (f"no virtualenv for the operator image's containers (none at {repo_root / '.venv'}, and the "
                "harness runs in none): run `bash .ci/setup.sh`")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {', '.join(OPERATOR_IMAGE_IMPORTS)}"],
                           env={"PATH": DEFAULT_PATH, "PYTHONPATH": str(repo_root / "operator"), "HOME": "/tmp"},
                           capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the virtualenv {venv} cannot run the operator image ({last}): run `bash .ci/setup.sh`"
    return None


# Where the operator image's containers find the image's files: the virtualenv where the Dockerfile puts
# it, the checkout's package and entry point beside it. Bound there read-only, they stay visible under
# whatever the pod mounts (the chart's /tmp volume hides a checkout or a run directory under /tmp).
IMAGE_VENV = "/opt/redis-messaging"
IMAGE_CHECKOUT = "/opt/redis-messaging-checkout"


class Images:
    """The images this machine can play, and the commands of the operator image: the project's
    virtualenv (see :func:`project_virtualenv`) at the image's /opt/redis-messaging, first on PATH,
    and the checkout's package, whatever interpreter runs this harness."""

    def __init__(self, bin_dir: Path, repo_root: Path, exporter: Path | None = None,
                 engines: dict[str, Path] | None = None) -> None:
        """``exporter``: a redis_exporter binary (.ci/build-monitoring.sh builds it); without one, the
        exporter's containers are only reported running. ``engines``: engine of the matrix -> the
        directory its binaries are built in (built or not)."""
        self.engines = dict(engines or {})
        self.bin_dir = bin_dir
        self.repo_root = repo_root
        self.exporter = exporter
        venv = project_virtualenv(repo_root)
        if venv is None:
            raise RuntimeError(operator_image_problem(repo_root))
        self.venv = venv
        self.python = venv / "bin" / "python"
        found = subprocess.run([str(self.python), "-I", "-c", _INTERPRETER_PATHS], capture_output=True, text=True,
                               timeout=60, check=True)
        # the interpreter itself and its standard library (the virtualenv's site-packages is mounted)
        venv_real = os.path.realpath(venv)
        self.interpreter_paths: tuple[str, ...] = tuple(
            path for path in dict.fromkeys(json.loads(found.stdout))
            if not (path == venv_real or path.startswith(venv_real + os.sep)))
        # the operator image's PATH: the checkout's `redis-messaging`, then the virtualenv
        self.path = f"{IMAGE_CHECKOUT}/bin:{IMAGE_VENV}/bin:{DEFAULT_PATH}"
        self.mounts = ((str(venv), IMAGE_VENV), (str(bin_dir), f"{IMAGE_CHECKOUT}/bin"),
                       (str(repo_root / "operator"), f"{IMAGE_CHECKOUT}/operator"))
        bin_dir.mkdir(parents=True, exist_ok=True)
        entry = bin_dir / "redis-messaging"
        entry.write_text(
            "#!/bin/sh\n"
            f"exec {IMAGE_VENV}/bin/python -c 'import sys; from redis_messaging.cli import main; "
            "sys.exit(main())' \"$@\"\n"
        )
        entry.chmod(0o755)

    def profile(self, image: str) -> ImageProfile | None:
        repo = image_repository(image)
        if repo in ("redis", "redis-stack-server", "valkey"):
            engine = image_engine(image)
            if engine is None:
                return ImageProfile("redis", cmd=("redis-server",), env=(("PATH", DEFAULT_PATH),))
            where = self.engines.get(engine)
            if where is None or not (where / "redis-server").exists():
                return ImageProfile("redis", missing=f"{image}: engine {engine} is not built here "
                                    f"(bash .ci/build-engine.sh {engine})")
            # bound into the container's root, first on its PATH; Valkey installs its binaries under the
            # redis-* names too, so the pod's scripts find them
            return ImageProfile("redis", cmd=("redis-server",), env=(("PATH", f"{ENGINE_BIN}:{DEFAULT_PATH}"),),
                                mounts=((str(where), ENGINE_BIN),))
        if repo == "redis-messaging-operator":
            return ImageProfile(
                "operator", entrypoint=("redis-messaging",), cmd=("run", "--standalone"),
                env=(("PATH", self.path), ("PYTHONPATH", f"{IMAGE_CHECKOUT}/operator"),
                     ("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"), ("HOME", "/tmp")),
                user=(10001, 10001),  # the Dockerfile's USER
                # the base interpreter, wherever it is (traversable in the container's root only)
                reach=self.interpreter_paths,
                mounts=self.mounts,
            )
        if repo in ("redis_exporter", "redis-exporter"):
            if self.exporter is None:
                return ImageProfile("exporter", run=False)
            # the image: the binary at /redis_exporter, its ENTRYPOINT, run as its USER
            return ImageProfile("exporter", entrypoint=("/redis_exporter",), env=(("PATH", DEFAULT_PATH),),
                                user=(59000, 59000), mounts=((str(self.exporter), "/redis_exporter"),))
        return None


# --------------------------------------------------------------------------------------------------
# Network


def _run(argv: list[str], *, what: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


# Run in the pod's network namespace with the pod IP as argument: two gratuitous ARP requests on eth0
# (sender and target address the pod IP), which Linux applies to existing entries whatever their age.
GRATUITOUS_ARP = r"""
import socket, sys, time
ip = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0x0806))
mac = s.getsockname()[4]
frame = b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
for i in range(2):
    s.send(frame)
    time.sleep(0.05)
"""


class PodNetwork:
    """A bridge in the host's network namespace for the pods' loopback subnet.

    Linux treats 127.0.0.0/8 as host-local; ``route_localnet`` on the bridge and on every pod's eth0,
    plus a more specific route for the subnet in the `local` routing table (on the host and in every
    pod), make these addresses travel between namespaces like any other. Pods have no other route:
    nothing they send leaves the machine. The host reaches every pod from the bridge's own address.
    """

    def __init__(self, bridge: str, subnet: ipaddress.IPv4Network) -> None:
        if not subnet.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
            raise ValueError(f"the pod subnet must be a loopback one: {subnet}")
        self.bridge = bridge
        self.subnet = subnet
        self.gateway = str(subnet.network_address + 1)
        self._lock = threading.Lock()
        self._counter = 0
        self._rp_filter: str | None = None  # the bridge's, while some pods are cut off the host
        self._pod_rp_filter: dict[int, str] = {}  # sandbox pid -> its eth0's, while it is cut off some pods

    def create(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"], what="bridge")
        try:
            _run(["ip", "link", "set", self.bridge, "up"], what="bridge up")
            Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1\n")
            _run(["ip", "addr", "add", f"{self.gateway}/32", "dev", self.bridge], what="bridge address")
            _run(["ip", "route", "add", "table", "local", str(self.subnet), "dev", self.bridge,
                  "src", self.gateway], what="bridge route")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        _run(["ip", "link", "del", self.void], what="void delete", check=False)
        _run(["ip", "link", "del", self.bridge], what="bridge delete", check=False)

    def attach(self, sandbox_pid: int, pod_ip: str) -> str:
        """Plug the network namespace of ``sandbox_pid`` into the bridge with ``pod_ip``; the host-side
        interface name is returned (it disappears with the namespace)."""
        if ipaddress.ip_address(pod_ip) not in self.subnet:
            raise ValueError(f"pod IP {pod_ip} is outside the pod subnet {self.subnet}")
        with self._lock:
            while True:  # a name still taken (by whatever) is passed over, not fought over
                self._counter += 1
                host_if = veth_name(self.bridge, self._counter)
                if not Path(f"/sys/class/net/{host_if}").exists():
                    break
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(sandbox_pid)],
             what="veth")
        _run(["ip", "link", "set", host_if, "master", self.bridge, "up"], what="veth up")
        script = (
            "set -e; ip link set lo up; ip link set eth0 up; "
            "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; "
            f"ip addr add {pod_ip}/32 dev eth0; "
            f"ip route add table local {self.subnet} dev eth0 src {pod_ip}"
        )
        self._in_pod(sandbox_pid, script, what="pod network")
        self.announce(sandbox_pid, pod_ip)
        return host_if

    def announce(self, sandbox_pid: int, pod_ip: str) -> None:
        """Tell every neighbour that ``pod_ip`` now lives at this pod's MAC address (a gratuitous ARP,
        as CNI bridge plugins send). kwok hands a deleted pod's IP to the next pod at once: without
        this, the host and pods that talked to the old pod keep sending to its MAC, which is gone,
        until their ARP entry ages out, tens of seconds during which the new pod is unreachable."""
        _run(["ip", "neigh", "flush", "to", pod_ip, "dev", self.bridge], what="neighbour flush", check=False)
        _run(["nsenter", "--target", str(sandbox_pid), "--net", sys.executable, "-c", GRATUITOUS_ARP, pod_ip],
             what="gratuitous ARP")

    def partition(self, host_if: str) -> None:
        """Cut the pod off the bridge: what it sends and what is sent to it is dropped (no reset)."""
        _run(["ip", "link", "set", host_if, "nomaster"], what="partition")

    def heal(self, host_if: str) -> None:
        _run(["ip", "link", "set", host_if, "master", self.bridge], what="heal")

    @property
    def void(self) -> str:
        """A bridge without ports, named like the pods' veths (so a dead cluster's is removed with
        them, runrecord.py): what the host sends to a pod cut off from it goes there and is dropped."""
        return veth_name(self.bridge, 0)

    def cut_host(self, ips: list[str]) -> bool:
        """Cut the host's network namespace (where the operator runs) off these pod IPs, both ways and
        silently (dropped, no reset), while the pods still reach each other over the bridge: a route to
        the void for each IP, and strict reverse-path filtering on the bridge, which then drops what
        arrives from an IP whose route back does not lead to the bridge. False when only the way to
        the pods is cut: with net.ipv4.conf.all.rp_filter=2 (loose) the filter is loose on every
        interface, and lets in what the pods send."""
        rp_filter = Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/rp_filter")
        with self._lock:
            if not Path(f"/sys/class/net/{self.void}").exists():
                _run(["ip", "link", "add", self.void, "type", "bridge"], what="void")
                _run(["ip", "link", "set", self.void, "up"], what="void up")
                Path(f"/proc/sys/net/ipv4/conf/{self.void}/route_localnet").write_text("1\n")
                self._rp_filter = rp_filter.read_text().strip()
                rp_filter.write_text("1\n")
            self._check_in_subnet(ips)
            for ip in ips:
                _run(["ip", "route", "replace", "table", "local", f"{ip}/32", "dev", self.void, "src",
                      self.gateway], what="cut")
        return Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() != "2"

    def cut(self, ips: list[str], sandbox_pid: int | None = None) -> bool:
        """:meth:`cut_host`, or the same in the network namespace of a pod (its sandbox's): there, a
        device without peers takes the routes to ``ips``, and strict reverse-path filtering on the
        pod's eth0 drops what comes from them."""
        if sandbox_pid is None:
            return self.cut_host(ips)
        self._check_in_subnet(ips)
        with self._lock:
            if sandbox_pid not in self._pod_rp_filter:
                self._pod_rp_filter[sandbox_pid] = self._in_pod(
                    sandbox_pid, "cat /proc/sys/net/ipv4/conf/eth0/rp_filter").strip()
                self._in_pod(sandbox_pid, "set -e; ip link add void0 type bridge; ip link set void0 up; "
                                          "echo 1 > /proc/sys/net/ipv4/conf/void0/route_localnet; "
                                          "echo 1 > /proc/sys/net/ipv4/conf/eth0/rp_filter")
            self._in_pod(sandbox_pid, "set -e; " + "; ".join(
                f"ip route replace table local {ip}/32 dev void0" for ip in ips))
        return self._in_pod(sandbox_pid, "cat /proc/sys/net/ipv4/conf/all/rp_filter").strip() != "2"

    def mend(self, sandbox_pid: int | None = None) -> None:
        """Undo every :meth:`cut` of that namespace (the host's when None)."""
        if sandbox_pid is None:
            self.mend_host()
            return
        with self._lock:
            previous = self._pod_rp_filter.pop(sandbox_pid, None)
            if previous is not None:
                self._in_pod(sandbox_pid, f"ip link del void0; echo {int(previous)} > "
                                          "/proc/sys/net/ipv4/conf/eth0/rp_filter", check=False)

    def _check_in_subnet(self, ips: list[str]) -> None:
        for ip in ips:
            if ipaddress.ip_address(ip) not in self.subnet:
                raise ValueError(f"{ip} is outside the pod subnet {self.subnet}")

    @staticmethod
    def _in_pod(sandbox_pid: int, script: str, *, what: str = "pod network cut", check: bool = True) -> str:
        """``script`` run by sh in the network namespace of ``sandbox_pid``: its output."""
        return _run(["nsenter", "--target", str(sandbox_pid), "--net", "sh", "-c", script],
                    what=what, check=check).stdout

    def mend_host(self) -> None:
        """Undo every :meth:`cut_host` (the routes go with the void)."""
        with self._lock:
            _run(["ip", "link", "del", self.void], what="void delete", check=False)
            previous = self._rp_filter
            if previous is not None:
                with contextlib.suppress(OSError):
                    Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/rp_filter").write_text(f"{previous}\n")
                self._rp_filter = None


# --------------------------------------------------------------------------------------------------
# Processes


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _popen(argv: list[str], *, env: dict[str, str], log_path: Path | None = None,
           capture: bool = False) -> subprocess.Popen[bytes]:
    """A process in a new session (its own process group); stdout and stderr to ``log_path``."""
    if capture:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    assert log_path is not None
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Identity:
    """Who a container's processes are (securityContext, else the image's USER)."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    drop_all: bool = False
    read_only_root: bool = False

    @property
    def plain_root(self) -> bool:
        return self.uid == 0 and self.gid == 0 and not self.groups and not self.no_new_privs and not self.drop_all

    def setpriv(self) -> list[str]:
        """The setpriv prefix that becomes this identity (empty for plain root)."""
        if self.plain_root:
            return []
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}"]
        argv.append(f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups")
        if self.no_new_privs:
            argv.append("--no-new-privs")
        if self.drop_all:
            argv += ["--bounding-set=-all", "--inh-caps=-all"]
        return [*argv, "--"]

    def spec_line(self) -> str:
        flags = [f for f, on in (("nnp", self.no_new_privs), ("dropall", self.drop_all)) if on]
        groups = ",".join(map(str, self.groups)) or "-"
        return f"user {self.uid} {self.gid} {groups} {','.join(flags) or '-'}"


def run_bounded(argv: list[str], *, env: dict[str, str], timeout: float,
                track: Callable[[int], None] | None = None, untrack: Callable[[int], None] | None = None) -> ExecResult:
    """Run to completion with a deadline; on timeout the whole process group is killed (-9).
    ``track``/``untrack`` learn its process group while it runs (a stopping runner kills it)."""
    proc = _popen(argv, env=env, capture=True)
    if track is not None:
        track(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = -9
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # what it left behind in its group
        if untrack is not None:
            untrack(proc.pid)
    return ExecResult(code, out.decode(errors="replace"), err.decode(errors="replace"))


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables replaced, $$ escapes, unknown references kept."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def _check_path(path: str) -> str:
    if not path or any(ch.isspace() for ch in path):
        raise ValueError(f"paths with blanks are not supported by the local runner: {path!r}")
    return path


# --------------------------------------------------------------------------------------------------
# Probes


@dataclass
class ProbeState:
    spec: Obj
    kind: str  # startup | readiness | liveness
    next_due: float = 0.0
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # the thresholded result
    running: concurrent.futures.Future[bool] | None = None

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    def record(self, ok: bool) -> None:
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold") or 1):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.result = False


# --------------------------------------------------------------------------------------------------
# Containers


@dataclass
class Container:
    name: str
    spec: Obj
    profile: ImageProfile | None
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart_count: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    next_start: float = 0.0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    last_terminated: Obj | None = None
    done: bool = False  # init container completed, or exited for good (restartPolicy)
    frozen: bool = False
    held: bool = False  # not restarted while held (a test empties its volume meanwhile)
    backoff_steps: int = 0
    identity: Identity = field(default_factory=Identity)
    probes: dict[str, ProbeState] = field(default_factory=dict)

    @property
    def runs_process(self) -> bool:
        return self.profile is not None and self.profile.run

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reset_probes(self, now: float) -> None:
        self.probes = {}
        for kind in ("startup", "readiness", "liveness"):
            spec = self.spec.get(f"{kind}Probe")
            if spec:
                self.probes[kind] = ProbeState(spec, kind, next_due=now + float(spec.get("initialDelaySeconds") or 0))

    @property
    def started(self) -> bool:
        if not self.runs_process:
            return True
        if not self.alive():
            return False
        startup = self.probes.get("startup")
        return startup is None or startup.result is True

    @property
    def ready(self) -> bool:
        if self.init:
            return self.done
        if not self.runs_process:
            return True
        if not self.started:
            return False
        readiness = self.probes.get("readiness")
        return readiness is None or readiness.result is True


# --------------------------------------------------------------------------------------------------
# One pod


class PodWorker:
    """Everything of one pod (by uid): sandbox, containers, probes, status, termination."""

    def __init__(self, runner: PodRunner, pod: Obj) -> None:
        self.runner = runner
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.key = f"{self.namespace}/{self.name}"
        self.pod = pod
        self.dir = runner.work_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.host_if: str | None = None
        self.netns: str | None = None  # the pod's network namespace (net:[INODE]), the sandbox's
        self.pod_ip: str | None = None
        self.containers: list[Container] = []
        self.init_containers: list[Container] = []
        self._lock = threading.RLock()
        self._gone = threading.Event()  # the object is gone from the API (or replaced by another uid)
        self._stop = threading.Event()  # the runner stops: kill everything now
        self._last_status: str | None = None
        self._token_dir: str | None = None  # its ServiceAccount token's directory; "" for none
        self._probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"probe-{self.name}")
        self._thread = threading.Thread(target=self._main, name=f"pod-{self.key}", daemon=True)
        self.terminated = threading.Event()
        for c in pod["spec"].get("initContainers") or []:
            self.init_containers.append(Container(c["name"], c, runner.images.profile(c.get("image", "")), init=True))
        for c in pod["spec"].get("containers") or []:
            self.containers.append(Container(c["name"], c, runner.images.profile(c.get("image", ""))))

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: Obj) -> None:
        with self._lock:
            self.pod = pod

    def gone(self) -> None:
        self._gone.set()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: runner failed", self.key)
        finally:
            self._kill_everything()
            self._probe_pool.shutdown(wait=False, cancel_futures=True)
            self.terminated.set()
            self.runner._worker_done(self)

    def _run(self) -> None:
        # kwok gives the phase and the pod IP; then the sandbox, then the containers.
        ip_wait: float | None = None
        while True:
            if self._stop.is_set() or self._gone.is_set():
                return
            with self._lock:
                pod = self.pod
            if pod["metadata"].get("deletionTimestamp"):
                self._delete_object()
                return
            ip = (pod.get("status") or {}).get("podIP")
            if ip and (pod.get("status") or {}).get("phase") == "Running":
                other = self.runner._claim_ip(ip, self)
                if other is None:
                    self.pod_ip = ip
                    break
                # A pod that was just deleted may still be finishing: its IP is free a moment later.
                if ip_wait is None:
                    ip_wait = time.monotonic() + 10
                elif time.monotonic() > ip_wait:
                    raise RuntimeError(f"pod {self.key} was given the IP {ip} of the running pod {other}")
            time.sleep(LOOP_INTERVAL)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_sandbox()
        now = time.monotonic()
        for c in self.init_containers + self.containers:
            c.next_start = now
        while not self._stop.is_set():
            with self._lock:
                pod = self.pod
            if self._gone.is_set():
                self._terminate(grace=2.0, hooks=False)
                return
            if pod["metadata"].get("deletionTimestamp"):
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._terminate(grace=float(grace), hooks=True)
                self._delete_object()
                return
            self._step()
            self._sync_status()
            time.sleep(LOOP_INTERVAL)

    # ---- sandbox ---------------------------------------------------------------------------------

    def _hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.name)[:63]

    def _start_sandbox(self) -> None:
        hostname = self._hostname()
        argv = ["setpriv", "--pdeathsig", "KILL", "unshare", "--net", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec sleep infinity', hostname]
        self.sandbox = _popen(argv, env={"PATH": DEFAULT_PATH}, log_path=self.dir / "sandbox.log")
        self.runner._track(self.sandbox.pid)
        deadline = time.monotonic() + 10
        while True:  # the namespaces exist once unshare has exec'd into sh (then hostname runs)
            try:
                if os.readlink(f"/proc/{self.sandbox.pid}/ns/uts") != os.readlink("/proc/self/ns/uts"):
                    break
            except OSError:
                pass
            if self.sandbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pod {self.key}: the sandbox did not start; see {self.dir / 'sandbox.log'}")
            time.sleep(0.01)
        self.runner._track_netns(self.sandbox.pid)
        with contextlib.suppress(OSError):
            self.netns = os.readlink(f"/proc/{self.sandbox.pid}/ns/net")
        assert self.pod_ip is not None
        self.host_if = self.runner.network.attach(self.sandbox.pid, self.pod_ip)
        resolv = self.dir / "resolv.conf"
        domain = CLUSTER_DOMAIN
        resolv.write_text(
            f"search {self.namespace}.svc.{domain} svc.{domain} {domain}\n"
            # Nothing listens on port 53 in the pod: names the hosts file does not hold fail at once.
            "nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"
        )
        log.info("pod %s: sandbox pid %d, ip %s, veth %s", self.key, self.sandbox.pid, self.pod_ip, self.host_if)

    # ---- the loop --------------------------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        # init containers one after the other, to completion
        for c in self.init_containers:
            if c.done:
                continue
            self._supervise(c, now)
            if not c.done:
                return
        for c in self.containers:
            self._supervise(c, now)

    def _supervise(self, c: Container, now: float) -> None:
        if not c.runs_process:
            if c.started_at is None:
                c.started_at = now_rfc3339()
                c.done = c.init
            return
        if c.proc is not None:
            code = c.proc.poll()
            if code is None:
                self._probe(c, now)
                return
            self._exited(c, code, now)
        if c.done or c.held or now < c.next_start:
            return
        self._start_container(c)

    def _exited(self, c: Container, code: int, now: float) -> None:
        assert c.proc is not None
        _kill_group(c.proc.pid, signal.SIGKILL)  # children it left behind (AOF rewrite, redis-cli)
        self.runner._untrack(c.proc.pid)
        exit_code = code if code >= 0 else 128 - code
        c.last_terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                             "startedAt": c.started_at, "finishedAt": now_rfc3339()}
        ran = now - c.started_mono
        log.info("pod %s: container %s exited with %d after %.1fs", self.key, c.name, exit_code, ran)
        self._log_line(c, f"exited with code {exit_code}")
        c.proc = None
        c.started_at = None
        c.frozen = False
        policy = self.restart_policy
        if c.init:
            if exit_code == 0:
                c.done = True
                return
            if policy == "Never":
                c.done = True
                return
        elif policy == "Never" or (policy == "OnFailure" and exit_code == 0):
            c.done = True
            return
        if ran > BACKOFF_RESET_AFTER:
            c.backoff_steps = 0
        backoff = min(0.5 * 2 ** min(c.backoff_steps, 5), MAX_BACKOFF)  # 0.5 s, 1 s, 2 s, ... 10 s
        c.backoff_steps += 1
        c.restart_count += 1
        c.next_start = now + backoff
        c.waiting_reason = "CrashLoopBackOff" if exit_code != 0 else "Restarting"
        c.waiting_message = f"back-off {backoff:.1f}s restarting container {c.name}"

    def _log_line(self, c: Container, text: str) -> None:
        with (self.dir / f"{c.name}.log").open("a") as f:
            f.write(f"=== podrunner {now_rfc3339()}: {c.name} {text} ===\n")

    # ---- starting a container -------------------------------------------------------------------

    def _start_container(self, c: Container) -> None:
        assert c.profile is not None
        assert self.sandbox is not None
        if c.profile.missing:  # as a kubelet that cannot pull the image
            c.waiting_reason, c.waiting_message = "ErrImagePull", c.profile.missing
            c.next_start = time.monotonic() + 5.0
            return
        try:
            identity = self._identity(c)
            env = self._container_env(c)
            mounts = self._mounts(c)
        except _NotYet as exc:
            c.waiting_reason, c.waiting_message = exc.reason, str(exc)
            c.next_start = time.monotonic() + 1.0
            return
        spec = c.spec
        command = [_expand(a, env) for a in spec.get("command") or []]
        args = [_expand(a, env) for a in spec.get("args") or []]
        if command:
            argv = command + args
        else:
            argv = list(c.profile.entrypoint) + (args if spec.get("args") is not None else list(c.profile.cmd))
        if not argv:
            c.waiting_reason, c.waiting_message = "CreateContainerError", "no command"
            c.next_start = time.monotonic() + 5
            return
        cdir = self.dir / "containers" / c.name
        cdir.mkdir(parents=True, exist_ok=True)
        lines = [f"root {_check_path(str(cdir))}"]
        for src, dst, ro in mounts:
            # The root is an overlay of this machine's, whose absolute symlinks (/var/run -> /run) would
            # lead container-init.sh's mkdir and mount out of it: their targets inside it instead.
            lines.append(f"bind {_check_path(src)} {_check_path(os.path.realpath(dst))} {'ro' if ro else 'rw'}")
        lines.append(f"file {self.dir / 'resolv.conf'} /etc/resolv.conf")
        lines.append(f"dns {self.runner.dns_dir_for(self.namespace)}")
        lines.append(f"hostname {self._hostname()}")
        lines.append(f"workdir {_check_path(spec.get('workingDir') or '/')}")
        lines += [f"reach {_check_path(path)}" for path in c.profile.reach]
        if identity.read_only_root:
            lines.append("readonly")
        if not identity.plain_root:
            lines.append(identity.spec_line())
        spec_file = cdir / "init.spec"
        spec_file.write_text("\n".join(lines) + "\n")
        full = ["setpriv", "--pdeathsig", "KILL", "nsenter", "--target", str(self.sandbox.pid), "--net", "--uts",
                "--", "unshare", "--mount", "--propagation", "private", "--",
                "sh", str(CONTAINER_INIT), str(spec_file), "--", *argv]
        self._log_line(c, f"start {c.restart_count}: {argv}")
        c.proc = _popen(full, env=env, log_path=self.dir / f"{c.name}.log")
        self.runner._track(c.proc.pid)
        c.env = env
        c.identity = identity
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.waiting_reason, c.waiting_message = "", ""
        c.reset_probes(c.started_mono)
        log.info("pod %s: container %s started (pid %d): %s", self.key, c.name, c.proc.pid, argv)

    def _identity(self, c: Container) -> Identity:
        """The kubelet's reading of the security contexts: user and group (container, else pod, else
        the image's), fsGroup and supplementalGroups as supplementary groups, runAsNonRoot enforced."""
        assert c.profile is not None
        if os.environ.get("E2E_LOCAL_RUN_AS_ROOT") == "1":  # debugging only: what the kubelet would refuse
            return Identity()
        pod_ctx = self.pod["spec"].get("securityContext") or {}
        ctx = c.spec.get("securityContext") or {}

        def pick(key: str) -> Any:
            return ctx[key] if ctx.get(key) is not None else pod_ctx.get(key)

        uid = pick("runAsUser")
        uid = c.profile.user[0] if uid is None else int(uid)
        gid = pick("runAsGroup")
        gid = (c.profile.user[1] if pick("runAsUser") is None else 0) if gid is None else int(gid)
        if pick("runAsNonRoot") and uid == 0:
            raise _NotYet("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        groups = [int(g) for g in pod_ctx.get("supplementalGroups") or []]
        if pod_ctx.get("fsGroup") is not None:
            groups.insert(0, int(pod_ctx["fsGroup"]))
        caps = (ctx.get("capabilities") or {}).get("drop") or []
        return Identity(uid=uid, gid=gid, groups=tuple(dict.fromkeys(groups)),
                        no_new_privs=ctx.get("allowPrivilegeEscalation") is False,
                        drop_all="ALL" in caps, read_only_root=bool(ctx.get("readOnlyRootFilesystem")))

    def _fs_group(self) -> int | None:
        group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        return None if group is None else int(group)

    def _container_env(self, c: Container) -> dict[str, str]:
        assert c.profile is not None
        env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/root"}
        env.update(dict(c.profile.env))
        env["HOSTNAME"] = self._hostname()
        if self.runner.api_service is not None:  # the kubelet's, for the `kubernetes` Service
            env.update({"KUBERNETES_SERVICE_HOST": self.runner.api_service, "KUBERNETES_SERVICE_PORT": "443",
                        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
                        "KUBERNETES_PORT": f"tcp://{self.runner.api_service}:443"})
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(ref["name"], optional=bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = self._secret(ref["name"], optional=bool(ref.get("optional")))
            for k, v in (data or {}).items():
                env[prefix + k] = v.decode(errors="replace")
        for item in c.spec.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
                continue
            source = item.get("valueFrom") or {}
            value: str | None
            if "fieldRef" in source:
                value = self._field(source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self._secret(ref["name"], optional=bool(ref.get("optional")))
                raw = (data or {}).get(ref["key"])
                if raw is None and not ref.get("optional"):
                    raise _NotYet("CreateContainerConfigError", f"secret {ref['name']} has no key {ref['key']}")
                value = None if raw is None else raw.decode(errors="replace")
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = self._config_map(ref["name"], optional=bool(ref.get("optional")))
                raw = (data or {}).get(ref["key"])
                if raw is None and not ref.get("optional"):
                    raise _NotYet("CreateContainerConfigError", f"configmap {ref['name']} has no key {ref['key']}")
                value = None if raw is None else raw.decode(errors="replace")
            elif "resourceFieldRef" in source:
                value = "0"
            else:
                value = ""
            if value is not None:
                env[name] = value
        return env

    def _field(self, path: str) -> str:
        pod = self.pod
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.pod_ip or "", "status.podIPs": self.pod_ip or "",
            "status.hostIP": (pod.get("status") or {}).get("hostIP", ""),
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        return ""

    def _config_map(self, name: str, *, optional: bool) -> dict[str, bytes] | None:
        obj = self.runner.api.get(f"/api/v1/namespaces/{quote(self.namespace)}/configmaps/{quote(name)}")
        if obj is None:
            if optional:
                return None
            raise _NotYet("CreateContainerConfigError", f"configmap {name} not found")
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _secret(self, name: str, *, optional: bool) -> dict[str, bytes] | None:
        obj = self.runner.api.get(f"/api/v1/namespaces/{quote(self.namespace)}/secrets/{quote(name)}")
        if obj is None:
            if optional:
                return None
            raise _NotYet("CreateContainerConfigError", f"secret {name} not found")
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    # ---- volumes ---------------------------------------------------------------------------------

    def _mounts(self, c: Container) -> list[tuple[str, str, bool]]:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        sources: dict[str, str] = {}
        out = []
        for m in c.spec.get("volumeMounts") or []:
            name = m["name"]
            if name not in sources:
                volume = volumes.get(name)
                if volume is None:
                    raise _NotYet("CreateContainerConfigError", f"no volume {name}")
                sources[name] = self._volume(volume)
            src = sources[name]
            if m.get("subPath"):
                src = str(Path(src) / m["subPath"])
                Path(src).mkdir(parents=True, exist_ok=True)
            out.append((src, m["mountPath"], bool(m.get("readOnly"))))
        assert c.profile is not None
        out += [(here, there, True) for here, there in c.profile.mounts]
        if not any(dst == SERVICE_ACCOUNT_DIR for _, dst, _ in out):
            token = self._service_account_volume()
            if token is not None:
                out.append((token, SERVICE_ACCOUNT_DIR, True))
        return out

    def _service_account_volume(self) -> str | None:
        """The directory of the pod's ServiceAccount token (token, ca.crt, namespace), made once per pod
        as the ServiceAccount admission plugin and the kubelet would: a token bound to this pod from
        the TokenRequest API, the cluster's CA from the namespace's kube-root-ca.crt ConfigMap. None
        when the pod or its ServiceAccount opts out (automountServiceAccountToken: false)."""
        if self.runner.api_service is None:
            return None
        if self._token_dir is not None:
            return self._token_dir or None
        spec = self.pod["spec"]
        automount = spec.get("automountServiceAccountToken")
        if automount is False:
            self._token_dir = ""
            return None
        account = spec.get("serviceAccountName") or "default"
        try:
            return self._mint_token(account, automount)
        except (ApiError, urllib3.exceptions.HTTPError, OSError) as exc:  # retried, as the kubelet would
            raise _NotYet("CreateContainerConfigError", f"no token for serviceaccount {account}: {exc}") from exc

    def _mint_token(self, account: str, automount: bool | None) -> str | None:
        spec = self.pod["spec"]
        path = f"/api/v1/namespaces/{quote(self.namespace)}/serviceaccounts/{quote(account)}"
        found = self.runner.api.get(path)
        if found is None:
            raise _NotYet("CreateContainerConfigError", f"serviceaccount {account} not found")
        if automount is None and found.get("automountServiceAccountToken") is False:
            self._token_dir = ""
            return None
        ca = (self._config_map("kube-root-ca.crt", optional=False) or {}).get("ca.crt")
        if ca is None:
            raise _NotYet("CreateContainerConfigError", "configmap kube-root-ca.crt has no ca.crt")
        # Long enough for any run: the runner does not refresh it as the kubelet would. Bound to the pod
        # when the pod names its ServiceAccount (the API server refuses to bind it to a pod whose
        # serviceAccountName is empty, as it is here without the admission plugin that fills it in).
        token_spec: Obj = {"expirationSeconds": TOKEN_SECONDS}
        if spec.get("serviceAccountName"):
            token_spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}
        request = self.runner.api.request("POST", f"{path}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": token_spec})
        files = {"token": (request["status"]["token"].encode(), 0o644), "ca.crt": (ca, 0o644),
                 "namespace": (self.namespace.encode(), 0o644)}
        self._token_dir = self._write_volume(self.dir / "volumes" / "kube-api-access", files)
        return self._token_dir

    def _volume(self, volume: Obj) -> str:
        name = volume["name"]
        target = self.dir / "volumes" / name
        fs_group = self._fs_group()
        if "emptyDir" in volume:
            # The kubelet's emptyDir: world-writable, and with an fsGroup, its group and setgid.
            target.mkdir(parents=True, exist_ok=True)
            if fs_group is not None:
                os.chown(target, -1, fs_group)
            target.chmod(0o2777 if fs_group is not None else 0o777)
            return str(target)
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return str(path)
        if "persistentVolumeClaim" in volume:
            return self._claim_path(volume["persistentVolumeClaim"]["claimName"])
        files: dict[str, tuple[bytes, int]] = {}
        if "configMap" in volume:
            self._keyed(files, volume["configMap"], self._config_map, 0o644)
        elif "secret" in volume:
            spec = dict(volume["secret"])
            spec["name"] = spec.get("secretName")
            self._keyed(files, spec, self._secret, 0o644)
        elif "downwardAPI" in volume:
            self._downward(files, volume["downwardAPI"], 0o644)
        elif "projected" in volume:
            projected = volume["projected"]
            default = int(projected.get("defaultMode", 0o644))
            for source in projected.get("sources") or []:
                if "configMap" in source:
                    self._keyed(files, {**source["configMap"], "defaultMode": default}, self._config_map, default)
                elif "secret" in source:
                    self._keyed(files, {**source["secret"], "defaultMode": default}, self._secret, default)
                elif "downwardAPI" in source:
                    self._downward(files, {**source["downwardAPI"], "defaultMode": default}, default)
                # serviceAccountToken: none here; the pod's token is mounted at SERVICE_ACCOUNT_DIR instead
        else:
            log.warning("pod %s: volume %s of an unsupported type is an empty directory", self.key, name)
        return self._write_volume(target, files)

    def _write_volume(self, target: Path, files: dict[str, tuple[bytes, int]]) -> str:
        """The files of a ConfigMap, Secret, downward-API or projected volume, written into ``target``."""
        fs_group = self._fs_group()
        target.mkdir(parents=True, exist_ok=True)
        for rel, (content, mode) in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            if fs_group is not None:  # the kubelet's SetVolumeOwnership of a read-only volume
                os.chown(tmp, -1, fs_group)
                mode |= 0o440
            tmp.chmod(mode)
            tmp.replace(path)
        if fs_group is not None:
            os.chown(target, -1, fs_group)
            target.chmod(0o2755)
        return str(target)

    def _keyed(self, files: dict[str, tuple[bytes, int]], spec: Obj,
               fetch: Callable[..., dict[str, bytes] | None], default_mode: int) -> None:
        data = fetch(spec["name"], optional=bool(spec.get("optional")))
        if data is None:
            return
        mode = int(spec.get("defaultMode", default_mode))
        items = spec.get("items")
        if items:
            for item in items:
                if item["key"] not in data:
                    if spec.get("optional"):
                        continue
                    raise _NotYet("CreateContainerConfigError", f"{spec['name']} has no key {item['key']}")
                files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
        else:
            for key, value in data.items():
                files[key] = (value, mode)

    def _downward(self, files: dict[str, tuple[bytes, int]], spec: Obj, default_mode: int) -> None:
        mode = int(spec.get("defaultMode", default_mode))
        for item in spec.get("items") or []:
            if "fieldRef" in item:
                files[item["path"]] = (self._field(item["fieldRef"]["fieldPath"]).encode(), int(item.get("mode", mode)))

    def _claim_path(self, claim: str) -> str:
        pvc = self.runner.api.get(f"/api/v1/namespaces/{quote(self.namespace)}/persistentvolumeclaims/{quote(claim)}")
        if pvc is None:
            raise _NotYet("ContainerCreating", f"persistentvolumeclaim {claim} not found")
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise _NotYet("ContainerCreating", f"persistentvolumeclaim {claim} not bound")
        pv = self.runner.api.get(f"/api/v1/persistentvolumes/{quote(volume_name)}")
        path = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path")
        if not path:
            raise _NotYet("ContainerCreating", f"persistentvolume {volume_name} has no hostPath")
        Path(path).mkdir(parents=True, exist_ok=True)
        return str(path)

    # ---- probes ----------------------------------------------------------------------------------

    def _probe(self, c: Container, now: float) -> None:
        startup = c.probes.get("startup")
        for kind in ("startup", "readiness", "liveness"):
            state = c.probes.get(kind)
            if state is None:
                continue
            if kind != "startup" and startup is not None and startup.result is not True:
                continue
            if kind == "startup" and state.result is True:
                continue  # a startup probe stops once it succeeded
            if state.running is not None:
                if not state.running.done():
                    continue
                try:
                    ok = state.running.result()
                except Exception:
                    ok = False
                state.running = None
                state.record(ok)
                if kind in ("liveness", "startup") and state.result is False:
                    log.info("pod %s: %s probe of %s failed %d times: restarting it", self.key, kind, c.name,
                             state.failures)
                    self._log_line(c, f"{kind} probe failed {state.failures} times: killing it")
                    self._stop_container(c, float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
                    return
            if now >= state.next_due and state.running is None:
                state.next_due = now + state.period
                state.running = self._probe_pool.submit(self._run_probe, c, state.spec, state.timeout)

    def _run_probe(self, c: Container, spec: Obj, timeout: float) -> bool:
        if c.frozen:
            time.sleep(timeout)  # a stopped process answers nothing
            return False
        if "exec" in spec:
            return self.exec_in(c, list(spec["exec"]["command"]), timeout=timeout).returncode == 0
        port_spec = (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("port")
        port = self._port(c, port_spec)
        if port is None or self.pod_ip is None:
            return False
        if "tcpSocket" in spec:
            try:
                with socket.create_connection((self.pod_ip, port), timeout=timeout):
                    return True
            except OSError:
                return False
        if "httpGet" in spec:
            conn = http.client.HTTPConnection(self.pod_ip, port, timeout=timeout)
            try:
                conn.request("GET", spec["httpGet"].get("path") or "/")
                return 200 <= conn.getresponse().status < 400
            except (OSError, http.client.HTTPException):
                return False
            finally:
                conn.close()
        return True

    @staticmethod
    def _port(c: Container, port: Any) -> int | None:
        if isinstance(port, int):
            return port
        if isinstance(port, str) and port.isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        return None

    # ---- exec ------------------------------------------------------------------------------------

    def container(self, name: str | None) -> Container:
        candidates = self.containers if name is None else [c for c in self.init_containers + self.containers
                                                           if c.name == name]
        if not candidates:
            raise PodNotFound(f"pod {self.key} has no container {name}")
        return candidates[0]

    def exec_in(self, c: Container, argv: list[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` inside the container (its namespaces, root, working directory, environment)."""
        proc = c.proc
        if proc is None or proc.poll() is not None:
            return ExecResult(126, "", f"container {c.name} of pod {self.key} is not running")
        full = ["nsenter", "--target", str(proc.pid), "--mount", "--uts", "--net", "--root", "--wd", "--",
                *c.identity.setpriv(), *argv]
        # tracked while it runs: a hook or probe still running when the runner stops is killed with the pods
        return run_bounded(full, env=dict(c.env), timeout=timeout, track=self.runner._track_exec,
                           untrack=self.runner._untrack)

    # ---- stopping --------------------------------------------------------------------------------

    def _stop_container(self, c: Container, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace``; the loop notices the exit and restarts it."""
        proc = c.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        if c.frozen:
            _kill_group(proc.pid, signal.SIGCONT)
            c.frozen = False
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _terminate(self, *, grace: float, hooks: bool) -> None:
        """What the kubelet does for a deleted pod: preStop hooks, SIGTERM, SIGKILL at the deadline."""
        deadline = time.monotonic() + max(grace, 0.0)
        running = [c for c in self.init_containers + self.containers if c.alive()]
        log.info("pod %s: terminating (grace %.0fs)", self.key, grace)
        for c in running:
            if c.frozen:
                assert c.proc is not None
                _kill_group(c.proc.pid, signal.SIGCONT)
                c.frozen = False
        if hooks:
            futures = []
            for c in running:
                hook = ((c.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
                if hook:
                    self._log_line(c, "preStop hook")
                    futures.append(self._probe_pool.submit(
                        self.exec_in, c, list(hook["command"]), timeout=max(deadline - time.monotonic(), 0.1)))
            while futures and not self._stop.is_set() and time.monotonic() < deadline:
                futures = [f for f in futures if not f.done()]
                time.sleep(LOOP_INTERVAL)
        for c in running:
            assert c.proc is not None
            self._log_line(c, "SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGTERM)
        # Until they exit or the grace period ends (or the runner stops: then at once).
        while (any(c.alive() for c in running) and not self._stop.is_set()
               and time.monotonic() < deadline):
            time.sleep(LOOP_INTERVAL)
        for c in running:
            if c.alive():
                assert c.proc is not None
                self._log_line(c, "SIGKILL at the end of the grace period")
                _kill_group(c.proc.pid, signal.SIGKILL)
        self._kill_everything()

    def _kill_everything(self) -> None:
        for c in self.init_containers + self.containers:
            if c.proc is not None:
                _kill_group(c.proc.pid, signal.SIGCONT)
                _kill_group(c.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(10)
                self.runner._untrack(c.proc.pid)
        if self.sandbox is not None:
            if self.netns is not None:
                # What left the containers' process groups (a child in a session of its own) is still in
                # the pod's network namespace, as a cgroup would hold it. The sandbox goes last: while it
                # lives, that namespace's number cannot be another's.
                sandbox = self.sandbox.pid
                try:
                    kill_processes(lambda: [p for p in find_processes(netns=[self.netns or ""]) if p.pid != sandbox])
                except RunRecordError as exc:
                    log.warning("pod %s: %s", self.key, exc)
            _kill_group(self.sandbox.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sandbox.wait(10)
            self.runner._untrack(self.sandbox.pid)
            self.sandbox = None
        if self.host_if is not None:
            # The namespace outlives its processes while the kernel still holds sockets of it (a killed
            # server's connections closing towards peers that are gone): its eth0 would keep the pod IP
            # on the bridge, answer ARP for it and reset connections, while kwok gives that IP to the
            # next pod. Deleting the veth takes the pod off the network at once.
            _run(["ip", "link", "del", self.host_if], what="veth delete", check=False)

    def _delete_object(self) -> None:
        """The pod's processes are gone: remove the object, as the kubelet does (grace period 0)."""
        if self._stop.is_set():
            return
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        try:
            self.runner.api.delete(pod_path(self.namespace, self.name), body)
        except Exception as exc:
            log.warning("pod %s: deleting the object failed: %s", self.key, exc)

    # ---- chaos -----------------------------------------------------------------------------------

    def freeze(self) -> None:
        with self._lock:
            for c in self.containers:
                if c.alive():
                    assert c.proc is not None
                    c.frozen = True
                    _kill_group(c.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        with self._lock:
            for c in self.containers:
                if c.proc is not None and c.frozen:
                    _kill_group(c.proc.pid, signal.SIGCONT)
                c.frozen = False

    def kill_container(self, name: str | None, sig: int = signal.SIGKILL) -> None:
        c = self.container(name)
        if c.proc is not None:
            _kill_group(c.proc.pid, sig)

    def hold(self, name: str | None) -> None:
        """The container is not restarted once it exits, until :meth:`release`."""
        self.container(name).held = True

    def release(self, name: str | None) -> None:
        self.container(name).held = False

    # ---- status ----------------------------------------------------------------------------------

    def _container_status(self, c: Container) -> Obj:
        status: Obj = {
            "name": c.name, "image": c.spec.get("image", ""), "imageID": "",
            "ready": c.ready, "started": c.started if not c.init else c.alive(),
            "restartCount": c.restart_count,
        }
        if (c.proc is not None and c.alive()) or (not c.runs_process and c.started_at):
            status["state"] = {"running": {"startedAt": c.started_at}}
            status["containerID"] = f"rmsg-local://{c.proc.pid if c.proc else 0}"
        elif c.done and c.last_terminated is not None:
            status["state"] = {"terminated": c.last_terminated}
        else:
            waiting: Obj = {"reason": c.waiting_reason or "ContainerCreating"}
            if c.waiting_message:
                waiting["message"] = c.waiting_message
            status["state"] = {"waiting": waiting}
        if c.last_terminated is not None:
            status["lastState"] = {"terminated": c.last_terminated}
        return status

    def _sync_status(self) -> None:
        ready = all(c.ready for c in self.containers) and all(c.done for c in self.init_containers)
        phase = "Running"
        if self.restart_policy != "Always" and self.containers and all(c.done for c in self.containers):
            failed = any((c.last_terminated or {}).get("exitCode", 0) != 0 for c in self.containers)
            phase = "Failed" if failed else "Succeeded"
            ready = False
        value = "True" if ready else "False"
        status: Obj = {
            "phase": phase,
            "conditions": [
                {"type": "Initialized", "status": "True" if all(c.done for c in self.init_containers) else "False"},
                {"type": "ContainersReady", "status": value},
                {"type": "Ready", "status": value},
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        fingerprint = json.dumps(status, sort_keys=True)
        if fingerprint == self._last_status:
            return
        now = now_rfc3339()
        previous = {c.get("type"): c for c in (self.pod.get("status") or {}).get("conditions") or []}
        for condition in status["conditions"]:
            old = previous.get(condition["type"])
            condition["lastTransitionTime"] = (old.get("lastTransitionTime") if old and old.get("status")
                                               == condition["status"] else now)
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            result = self.runner.api.patch(pod_path(self.namespace, self.name) + "/status", body)
        except ApiError as exc:
            if exc.status == 409:  # another pod of the same name now: this one is gone
                self._gone.set()
                return
            log.warning("pod %s: status patch failed: %s", self.key, exc)
            return
        if result is None:
            self._gone.set()
            return
        self._last_status = fingerprint
        if ready != self.runner._ready_seen.get(self.uid):
            self.runner._ready_seen[self.uid] = ready
            log.info("pod %s: Ready=%s", self.key, value)


class _NotYet(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# The runner


class PodRunner:
    """Watches the pods on the given nodes and runs a :class:`PodWorker` for each."""

    def __init__(self, api: KubeApi, *, nodes: set[str], network: PodNetwork, work_dir: Path,
                 dns_dir_for: Callable[[str], Path], repo_root: Path, api_service: str | None = None,
                 exporter: Path | None = None, engines: dict[str, Path] | None = None) -> None:
        """``api_service``: the name pods reach the API server by, on port 443 (their
        KUBERNETES_SERVICE_HOST); with it, a pod whose ServiceAccount token is mounted gets one, as
        the kubelet mounts it. None: pods get neither."""
        self.api = api
        self.api_service = api_service
        self.nodes = nodes
        self.network = network
        self.work_dir = work_dir
        self.dns_dir_for = dns_dir_for
        self.images = Images(work_dir / "image-bin", repo_root, exporter, engines)
        self._workers: dict[str, PodWorker] = {}  # by uid
        self._by_key: dict[str, str] = {}  # ns/name -> uid of the current worker
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self._ips: dict[str, PodWorker] = {}
        self.all_pids: dict[int, int] = {}  # every process group it started, with its start time (leftovers)
        self.all_netns: set[str] = set()  # and every network namespace (net:[inode]) of its pods
        self._ready_seen: dict[str, bool] = {}
        self._stopping = False
        self.reflector = Reflector(api, "/api/v1/pods", self._on_change, name="pods")

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> PodRunner:
        self.reflector.start()
        self.reflector.wait_synced(30)
        return self

    def stop(self) -> None:
        """Kill every pod's processes at once (no grace), then stop watching."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for w in workers:
            w.stop()
        deadline = time.monotonic() + 15
        for w in workers:
            w.join(max(deadline - time.monotonic(), 0.1))
        self.reflector.stop()
        with self._lock:
            leftovers = set(self._pids)
        for pid in leftovers:  # belt and braces: any group a worker could not reap
            _kill_group(pid, signal.SIGKILL)

    def _track(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)
            self.all_pids[pid] = process_start_time(pid)
        self._track_netns(pid)

    def _track_netns(self, pid: int) -> None:
        """The network namespace ``pid`` is in now (a sandbox's once it has made its own)."""
        with self._lock, contextlib.suppress(OSError):
            self.all_netns.add(os.readlink(f"/proc/{pid}/ns/net"))

    def _track_exec(self, pid: int) -> None:
        """A short-lived exec (probe, hook): killed if still running when the runner stops. Not part of
        what :meth:`leftovers` looks for: it has not entered the pod's namespaces yet, and its pid is
        reused once it is gone."""
        with self._lock:
            self._pids.add(pid)

    def _untrack(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def _claim_ip(self, ip: str, worker: PodWorker) -> str | None:
        """Record that ``worker`` uses ``ip``; the pod already using it, if any."""
        with self._lock:
            holder = self._ips.get(ip)
            if holder is not None and holder is not worker and not holder.terminated.is_set():
                return holder.key
            self._ips[ip] = worker
            return None

    def _worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if worker.pod_ip is not None and self._ips.get(worker.pod_ip) is worker:
                del self._ips[worker.pod_ip]
            self._workers.pop(worker.uid, None)
            if self._by_key.get(worker.key) == worker.uid:
                del self._by_key[worker.key]

    def _on_change(self, key: str, old: Obj | None, new: Obj | None) -> None:
        with self._lock:
            if self._stopping:
                return
            current_uid = self._by_key.get(key)
            current = self._workers.get(current_uid) if current_uid else None
            if current is not None and (new is None or current.uid != new["metadata"]["uid"]):
                current.gone()
                del self._by_key[key]
                current = None
            if new is None:
                return
            if (new.get("spec") or {}).get("nodeName") not in self.nodes:
                return
            if current is None:
                if new["metadata"]["uid"] in self._workers:
                    return  # an old worker finishing
                worker = PodWorker(self, new)
                self._workers[worker.uid] = worker
                self._by_key[key] = worker.uid
                worker.start()
            else:
                current.update(new)

    # ---- what tests use --------------------------------------------------------------------------

    def worker(self, namespace: str, name: str) -> PodWorker:
        with self._lock:
            uid = self._by_key.get(f"{namespace}/{name}")
            worker = self._workers.get(uid) if uid else None
        if worker is None:
            raise PodNotFound(f"no pod {namespace}/{name} runs on the local nodes")
        return worker

    def exec(self, namespace: str, name: str, argv: list[str], *, container: str | None = None,
             timeout: float = 60.0) -> ExecResult:
        """`kubectl exec` for the local cluster: (exit code, combined output)."""
        worker = self.worker(namespace, name)
        return worker.exec_in(worker.container(container), argv, timeout=timeout)

    def pod_ip(self, namespace: str, name: str) -> str | None:
        return self.worker(namespace, name).pod_ip

    def partition(self, namespace: str, name: str) -> None:
        worker = self.worker(namespace, name)
        assert worker.host_if is not None
        self.network.partition(worker.host_if)

    def heal(self, namespace: str, name: str) -> None:
        worker = self.worker(namespace, name)
        assert worker.host_if is not None
        self.network.heal(worker.host_if)

    def running(self, namespace: str) -> list[str]:
        """The pods of ``namespace`` whose processes have not ended yet (deleted ones included)."""
        with self._lock:
            return sorted(w.name for w in self._workers.values()
                          if w.namespace == namespace and not w.terminated.is_set())

    def cut_off(self, namespace: str, names: list[str], sandbox_pid: int | None = None) -> tuple[list[str], bool]:
        """Cut the host, or the pod of ``sandbox_pid``, off these pods, which still reach each other:
        their IPs, and whether both ways are cut (see :meth:`PodNetwork.cut`)."""
        ips = [ip for ip in (self.worker(namespace, name).pod_ip for name in names) if ip]
        return ips, self.network.cut(ips, sandbox_pid)

    def mend(self, sandbox_pid: int | None = None) -> None:
        self.network.mend(sandbox_pid)

    def sandbox_pid(self, namespace: str, name: str) -> int:
        """The process holding the pod's namespaces (`nsenter --net=/proc/PID/ns/net` joins its network)."""
        sandbox = self.worker(namespace, name).sandbox
        if sandbox is None or sandbox.poll() is not None:
            raise PodNotFound(f"pod {namespace}/{name} has no sandbox running")
        return sandbox.pid

    def freeze(self, namespace: str, name: str) -> None:
        self.worker(namespace, name).freeze()

    def thaw(self, namespace: str, name: str) -> None:
        self.worker(namespace, name).thaw()

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.worker(namespace, name).dir / f"{container}.log"

    def pids(self) -> set[int]:
        with self._lock:
            return set(self._pids)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
