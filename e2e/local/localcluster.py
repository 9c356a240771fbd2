"""A local Kubernetes cluster without Docker, for the e2e tier (E2E_BACKEND=local).

Real: etcd, kube-apiserver, kube-controller-manager (StatefulSet, ReplicaSet, Deployment, garbage
collector, PV binder, namespaces), kube-scheduler, the operator, redis-server and redis-sentinel.
Emulated: the kubelet. kwok keeps three fake Nodes Ready and gives scheduled pods their phase and a pod
IP from a loopback subnet; the pod runner (podrunner.py) runs each pod's containers as processes in
namespaces of their own (network, UTS, mount) with the pod's volumes, environment and probes.

Also here, the two things a cluster's add-ons would do:

- volumes: a provisioner for the default StorageClass `standard` that binds every new claim to a
  hostPath PersistentVolume backed by a directory of the run (data survives pod restarts);
- names: instead of cluster DNS, a hosts file per namespace (mounted on every pod's /etc/hosts, and on
  the operator's) with the headless-Service names of pods (`<pod>.<svc>.<ns>.svc.cluster.local`) and
  Service names resolving to the pod IPs of their endpoints (no kube-proxy: a ClusterIP Service name
  resolves to one ready endpoint, e.g. the master Service to the master pod).

The operator is installed as users install it: the chart with `helm upgrade --install`, its
Deployment's pod played by the pod runner like any other (the operator image played from the
checkout), logging in with its ServiceAccount's token through the `kubernetes` Service (a relay on the
bridge's address, port 443, to the API server). `LocalCluster(operator_in="process")` runs it as a
process of this machine instead (the host's network namespace, the chart's RBAC), for a benchmark that
reads its memory and CPU alone.

Several clusters may run on one machine at once (each claims its own pod subnet and bridge). One that
dies without stopping (SIGKILL, a CI timeout) leaves processes, veths, a bridge and directories behind;
the next cluster to start removes them, and nothing of a live one (runrecord.py).

Usage::

    with LocalCluster() as cluster:      # ~15 s
        cluster.kubeconfig               # admin kubeconfig (kubectl --kubeconfig ...)
        cluster.start_operator()
        cluster.runner.exec("ns", "pod", ["redis-cli", "PING"])

`python e2e/local/localcluster.py` brings one up and waits (Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "kube"))  # tests/kube/controlplane.py
sys.path.insert(0, str(REPO / "tests" / "support"))  # tests/support/monitoring_tools.py (the binaries' cache)

from controlplane import (  # noqa: E402
    API_SERVICE_NAMES,
    MONITORING_CRDS,
    OPERATOR_USER,
    ControlPlane,
    locate_assets,
    monitoring_crd,
)
from kubeapi import KubeApi, Obj, Reflector, quote, selector_matches  # noqa: E402
from podrunner import (  # noqa: E402
    CLUSTER_DOMAIN,
    PodNetwork,
    PodNotFound,
    PodRunner,
    PodWorker,
    _kill_group,
    operator_image_problem,
)
from runrecord import RunRecord, boot_ticks, bridge_links, find_processes, process_start_time  # noqa: E402

log = logging.getLogger(__name__)

KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
NODES = 3
NODE_LABEL = "rmsg.local/node"
STORAGE_CLASS = "standard"
PROVISIONER = "rmsg.local/hostpath"
OPERATOR_NAMESPACE = "redis-messaging"
OPERATOR_RELEASE = "redis-messaging-operator"
OPERATOR_CONTAINER = "operator"  # the chart's
OPERATOR_IMAGE_TAG = "local"  # played from the checkout by the pod runner, never pulled
API_RELAY_PORT = 443
CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("reached")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(f"error: {exc}")
"""
STARTUP_TIMEOUT = 60.0


class LocalClusterError(RuntimeError):
    pass


def cache_dir() -> Path:
    env = os.environ
    root = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(env.get("RMSG_CACHE") or f"{root}/redis-messaging-operator")


def kwok_binary() -> Path:
    return cache_dir() / f"kwok-{KWOK_VERSION}" / "kwok"


def helm_binary() -> Path | None:
    found = sorted(cache_dir().glob("helm-*/helm"))
    if found:
        return found[-1]
    which = shutil.which("helm")
    return Path(which) if which else None


def engine_dirs() -> dict[str, Path]:
    """Engine of the matrix -> where .ci/build-engine.sh builds its binaries (built or not): what plays
    the images of `redis:8`, `valkey/valkey:8` and `valkey/valkey:9` (podrunner.image_engine)."""
    from engines import engine_dir, pinned  # tests/support/engines.py: the cache .ci/setup.sh fills

    return {name: engine_dir(name) for name in pinned()}


def exporter_binary() -> Path | None:
    """The redis_exporter .ci/build-monitoring.sh built, which plays the exporter image; None without."""
    from monitoring_tools import binaries_dir  # imports the operator's package: only once it is needed

    binary = binaries_dir() / "redis_exporter"
    if os.access(binary, os.X_OK):
        return binary
    log.warning("no redis_exporter at %s (bash .ci/build-monitoring.sh): exporter containers only count as "
                "running", binary)
    return None


def missing_requirements() -> str | None:
    """Why the local cluster cannot run on this machine, or None."""
    if sys.platform != "linux":
        return "the local cluster needs Linux (namespaces)"
    if os.geteuid() != 0:
        return "the local cluster needs root (network and mount namespaces, a bridge)"
    try:
        assets = locate_assets()
    except LookupError as exc:
        return str(exc)
    for name in ("kube-controller-manager", "kube-scheduler"):
        if not os.access(assets / name, os.X_OK):
            return (f"no {name} in {assets}: run `.ci/control-plane.sh etcd kube-apiserver "
                    "kube-controller-manager kube-scheduler`")
    if not os.access(kwok_binary(), os.X_OK):
        return f"no kwok at {kwok_binary()}: run `bash e2e/local/build-kwok.sh`"
    if shutil.which("kubectl") is None and os.access(assets / "kubectl", os.X_OK):
        # the kubectl .ci/setup.sh built when the machine had none: on PATH for this run and the tests
        os.environ["PATH"] = f"{assets}{os.pathsep}{os.environ.get('PATH', '')}"
    if helm_binary() is None:
        return "no helm to install the operator's chart: run `bash .ci/setup.sh`"
    tools = ("unshare", "nsenter", "setpriv", "ip", "mount", "kubectl", "redis-server", "redis-sentinel", "redis-cli")
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"missing on PATH: {', '.join(absent)} (util-linux, iproute2, kubectl, Debian's redis packages)"
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    return operator_image_problem(REPO)


# --------------------------------------------------------------------------------------------------
# processes


class Process:
    """A child in its own process group, killed with the harness (PR_SET_PDEATHSIG via setpriv)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.popen = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        _kill_group(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit %.0fs after SIGTERM; killing it", self.name, grace)
        _kill_group(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<{exc}>"


# --------------------------------------------------------------------------------------------------
# names


class HostsFiles:
    """The cluster's names: one hosts file per namespace (and one for the operator), rewritten
    atomically in a directory that pods mount (their /etc/hosts is a symlink into it)."""

    def __init__(self, api: KubeApi, root: Path, domain: str = CLUSTER_DOMAIN,
                 include: Callable[[str], bool] | None = None, fixed: Iterable[tuple[str, str]] = ()) -> None:
        """``fixed``: (address, names) lines every file carries, e.g. the API server's Service names."""
        self.root = root
        self.fixed = list(fixed)
        self.domain = domain
        self.include = include  # namespaces whose pods and Services get names (None: all)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._namespaces: set[str] = set()
        self.pods = Reflector(api, "/api/v1/pods", self._changed, name="hosts-pods")
        self.services = Reflector(api, "/api/v1/services", self._changed, name="hosts-services")
        self._thread = threading.Thread(target=self._writer, name="hosts-writer", daemon=True)
        self.writes = 0

    def start(self) -> None:
        self.global_dir()  # the operator's, written at once
        self.pods.start()
        self.services.start()
        self.pods.wait_synced(30)
        self.services.wait_synced(30)
        self._thread.start()
        self.write()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(10)
        self.pods.stop()
        self.services.stop()

    def global_dir(self) -> Path:
        return self.dir_for("")

    def dir_for(self, namespace: str) -> Path:
        directory = self.root / (namespace or "_cluster")
        with self._lock:
            known = namespace in self._namespaces
            self._namespaces.add(namespace)
        if not known:
            directory.mkdir(parents=True, exist_ok=True)
            self.write()
        return directory

    def _changed(self, key: str, old: Obj | None, new: Obj | None) -> None:
        if self.include is not None and not self.include(key.split("/", 1)[0]):
            return  # nothing of it is named: no rewrite
        self._dirty.set()

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            time.sleep(0.02)  # one write for a burst of events
            try:
                self.write()
            except Exception:
                log.exception("writing the hosts files failed")

    def render(self) -> dict[str, str]:
        """namespace ("" for the operator's) -> hosts file content."""
        named = self.include or (lambda namespace: True)
        pods = [p for p in self.pods.items()
                if (p.get("status") or {}).get("podIP") and named(p["metadata"]["namespace"])]
        services = [s for s in self.services.items() if named(s["metadata"]["namespace"])]
        entries: list[tuple[str, str, str]] = []  # (ip, fqdn, namespace)
        aliases: dict[str, list[tuple[str, str]]] = {}  # namespace -> (ip, name relative to it)

        def ready(pod: Obj) -> bool:
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (pod.get("status") or {}).get("conditions") or [])

        for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
            subdomain = pod["spec"].get("subdomain")
            if not subdomain:
                continue
            ns = pod["metadata"]["namespace"]
            hostname = pod["spec"].get("hostname") or pod["metadata"]["name"]
            ip = pod["status"]["podIP"]
            entries.append((ip, f"{hostname}.{subdomain}.{ns}.svc.{self.domain}", ns))
            base = f"{hostname}.{subdomain}"
            for short in (base, f"{base}.{ns}", f"{base}.{ns}.svc"):
                aliases.setdefault(ns, []).append((ip, short))
        for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
            spec = svc.get("spec") or {}
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selected = [p for p in pods if p["metadata"]["namespace"] == ns
                        and not p["metadata"].get("deletionTimestamp")
                        and selector_matches(spec.get("selector"), p["metadata"].get("labels"))
                        and (spec.get("publishNotReadyAddresses") or ready(p))]
            selected.sort(key=lambda p: (not ready(p), p["metadata"]["name"]))
            if spec.get("clusterIP") != "None":
                selected = selected[:1]  # no kube-proxy: the name is one endpoint
            for pod in selected:
                ip = pod["status"]["podIP"]
                entries.append((ip, f"{name}.{ns}.svc.{self.domain}", ns))
                for short in (name, f"{name}.{ns}", f"{name}.{ns}.svc"):
                    aliases.setdefault(ns, []).append((ip, short))
        header = ("# The local cluster's names (e2e/local/localcluster.py), rewritten on every change.\n"
                  "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                  + "".join(f"{ip}\t{names}\n" for ip, names in self.fixed))
        common = "".join(f"{ip}\t{fqdn}\n" for ip, fqdn, _ in entries)
        with self._lock:
            namespaces = set(self._namespaces)
        out = {}
        for ns in namespaces:
            extra = "".join(f"{ip}\t{short}\n" for ip, short in aliases.get(ns, [])) if ns else ""
            out[ns] = header + common + extra
        return out

    def write(self) -> None:
        with self._write_lock:
            self._write()

    def _write(self) -> None:
        for ns, content in self.render().items():
            directory = self.root / (ns or "_cluster")
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "hosts"
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == content:
                    continue
            tmp = directory / ".hosts.tmp"
            tmp.write_text(content)
            tmp.chmod(0o644)
            tmp.replace(path)
        self.writes += 1


# --------------------------------------------------------------------------------------------------
# volumes


RESYNC_SECONDS = 2.0


class HostPathProvisioner:
    """Dynamic provisioning for the StorageClass `standard`: each new claim gets a hostPath PV on a
    directory of the run, bound to it (claimRef); a released PV is deleted with its directory."""

    def __init__(self, api: KubeApi, root: Path) -> None:
        self.api = api
        self.root = root
        self.claims = Reflector(api, "/api/v1/persistentvolumeclaims", self._claim, name="provisioner-claims")
        self.volumes = Reflector(api, "/api/v1/persistentvolumes", self._volume, name="provisioner-volumes")
        self.provisioned = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._resync, name="provisioner-resync", daemon=True)

    def start(self) -> None:
        self.api.request("POST", "/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS,
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        })
        self.claims.start()
        self.volumes.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.claims.stop()
        self.volumes.stop()

    def _resync(self) -> None:
        """Every claim still unbound is provisioned again (idempotent: the volume's name is the claim's
        uid): a creation that failed (e.g. 429 while the API server's storage initialises) or an event
        missed is not the end of a claim, as a controller's resync would see to."""
        while not self._stop.wait(RESYNC_SECONDS):
            for claim in self.claims.items():
                key = f"{claim['metadata']['namespace']}/{claim['metadata']['name']}"
                try:
                    self._claim(key, None, claim)
                except Exception as exc:
                    log.warning("provisioning %s failed (retried in %gs): %s", key, RESYNC_SECONDS, exc)

    def _claim(self, key: str, old: Obj | None, pvc: Obj | None) -> None:
        if pvc is None or (pvc.get("spec") or {}).get("volumeName"):
            return
        annotations = pvc["metadata"].get("annotations") or {}
        wanted = annotations.get("volume.kubernetes.io/storage-provisioner") or annotations.get(
            "volume.beta.kubernetes.io/storage-provisioner")
        if wanted != PROVISIONER or pvc["metadata"].get("deletionTimestamp"):
            return
        meta, spec = pvc["metadata"], pvc["spec"]
        path = self.root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # like kind's local-path provisioner: any pod user may write (hostPath has no fsGroup)
        body = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                             "name": meta["name"], "uid": meta["uid"]},
            },
        }
        if self.api.create("/api/v1/persistentvolumes", body) is not None:
            self.provisioned += 1
            log.info("provisioned %s for %s at %s", body["metadata"]["name"], key, path)

    def _volume(self, key: str, old: Obj | None, pv: Obj | None) -> None:
        if pv is None:
            return
        annotations = pv["metadata"].get("annotations") or {}
        if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        if (pv.get("status") or {}).get("phase") == "Released" and pv["spec"].get(
                "persistentVolumeReclaimPolicy") == "Delete":
            self.api.delete(f"/api/v1/persistentvolumes/{quote(pv['metadata']['name'])}")
            path = Path(pv["spec"]["hostPath"]["path"])
            if self.root in path.parents:
                shutil.rmtree(path, ignore_errors=True)
            log.info("deleted released %s", pv["metadata"]["name"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# the `kubernetes` Service


class ApiRelay:
    """What kube-proxy does for the `kubernetes` Service: pods connect to the bridge's address, port
    443 (the name kubernetes.default.svc resolves to it), and reach the API server, which listens on
    the host's 127.0.0.1 only. Bytes are relayed as they are: TLS ends at the API server, whose
    certificate carries the Service's names."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="api-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError as exc:
                if self._stopped:
                    return
                log.warning("API relay: accept failed (%s); accepting again", exc)
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(client,), name="api-relay-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError as exc:
            log.warning("API relay: cannot reach the API server at %s:%d: %s", *self.target, exc)
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._stopped:
                client.close()
                upstream.close()
                return
            self._sockets |= {client, upstream}
            self.connections += 1
        back = threading.Thread(target=self._pipe, args=(upstream, client), name="api-relay-back", daemon=True)
        back.start()
        self._pipe(client, upstream)
        back.join()
        with self._lock:
            self._sockets -= {client, upstream}
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            sockets = list(self._sockets)
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept(), which close() alone does not
        self._server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


# --------------------------------------------------------------------------------------------------
# the operator's pod


class OperatorPod:
    """The operator as users run it: the pod of the chart's Deployment, played by the pod runner. Its
    container's process is what :meth:`signal` reaches (a restarted container is a new process)."""

    def __init__(self, runner: PodRunner, namespace: str, name: str) -> None:
        self.runner = runner
        self.namespace = namespace
        self.name = name
        self.log_path = runner.log_path(namespace, name, OPERATOR_CONTAINER)  # raises PodNotFound

    def _worker(self) -> PodWorker | None:
        try:
            return self.runner.worker(self.namespace, self.name)
        except PodNotFound:
            return None

    def _process(self) -> subprocess.Popen[bytes] | None:
        worker = self._worker()
        proc = worker.container(OPERATOR_CONTAINER).proc if worker is not None else None
        return proc if proc is not None and proc.poll() is None else None

    @property
    def pid(self) -> int:
        proc = self._process()
        if proc is None:
            raise LocalClusterError(f"the operator's container in pod {self.namespace}/{self.name} is not running")
        return proc.pid

    def alive(self) -> bool:
        return self._process() is not None

    def exists(self, *, terminating: bool = False) -> bool:
        """The pod is still played (its container may be down); one being deleted counts only with
        ``terminating``."""
        worker = self._worker()
        if worker is None or worker.terminated.is_set():
            return False
        return terminating or not worker.pod["metadata"].get("deletionTimestamp")

    def grace_period(self) -> float:
        worker = self._worker()
        return float(worker.pod["spec"].get("terminationGracePeriodSeconds", 30)) if worker is not None else 0.0

    def signal(self, sig: int) -> None:
        proc = self._process()
        if proc is not None:
            _kill_group(proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL its container, which the runner then does not restart until :meth:`release`."""
        worker = self._worker()
        if worker is None:
            raise LocalClusterError(f"the operator's pod {self.namespace}/{self.name} is not running")
        worker.hold(OPERATOR_CONTAINER)
        # a restart the runner began before the hold may still start a process: kill that one too
        deadline = time.monotonic() + 1.0
        while True:
            proc = worker.container(OPERATOR_CONTAINER).proc
            if proc is not None and proc.poll() is None:
                worker.kill_container(OPERATOR_CONTAINER, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def release(self) -> None:
        worker = self._worker()
        if worker is not None:
            worker.release(OPERATOR_CONTAINER)


# --------------------------------------------------------------------------------------------------
# the cluster


class LocalCluster:
    def __init__(self, *, nodes: int = NODES, names_in: Callable[[str], bool] | None = None,
                 apiserver_args: Iterable[str] = (), controller_manager_args: Iterable[str] = (),
                 operator_in: str = "pod") -> None:
        """``names_in``: the namespaces whose pods and Services the hosts files name (default: all).
        The names of pods no process plays (e.g. on extra kwok-only nodes) then resolve nowhere, and
        thousands of them cost no rewrite of the hosts files. ``apiserver_args``: added to (and, for
        a flag given twice, overriding) the API server's, e.g. a larger --service-cluster-ip-range than
        the 254 ClusterIPs of the default /24; ``controller_manager_args`` likewise for
        kube-controller-manager (e.g. a --kube-api-qps above its default 20 for thousands of pods).
        ``operator_in``: "pod" (the chart installed with Helm, its Deployment's pod played like any
        other; needs helm) or "process" (a process of this machine with the chart's RBAC)."""
        if operator_in not in ("pod", "process"):
            raise ValueError(f"operator_in: 'pod' or 'process', not {operator_in!r}")
        self.operator_in = operator_in
        self.node_names = [f"rmsg-node-{i}" for i in range(nodes)]
        self.names_in = names_in
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.work = Path(tempfile.mkdtemp(prefix="rmsg-local-"))
        self.control_plane: ControlPlane | None = None
        self.network: PodNetwork | None = None
        self._record: RunRecord | None = None  # what a later cluster removes if this one dies (runrecord.py)
        self.scheduler: Process | None = None
        self.kwok: Process | None = None
        self.more_kwok: list[Process] = []  # add_kwok()
        self.hosts: HostsFiles | None = None
        self.provisioner: HostPathProvisioner | None = None
        self.runner: PodRunner | None = None
        self.operator: Process | OperatorPod | None = None
        self._operator_env: dict[str, str] | None = None  # the extra environment of the installed release
        self._operator_logs: list[Path] = []  # every operator pod's container log, oldest first
        self.relay: ApiRelay | None = None
        self._cut_sandboxes: list[int | None] = []  # cut_operator_off(): whose network was cut
        self.operator_kubeconfig: Path | None = None
        self.operator_user: str | None = None  # the operator's user name in the audit log
        self.api: KubeApi | None = None
        self.timings: dict[str, float] = {}
        self._operator_starts = 0
        self._pgids: dict[int, int] = {}  # every process group started here, with its start time (leftovers())
        self._runner_stopped: int | None = None  # when the pod runner stopped (clock ticks since boot)
        self._runner_ever: PodRunner | None = None
        self._bridge: str | None = None
        self._cp_workdir: Path | None = None
        self._system_kubeconfig: Path | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None
        return self.control_plane.admin_kubeconfig

    def start(self) -> LocalCluster:
        begin = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - begin
        log.info("local cluster up in %.1fs (%s)", self.timings["start"], self.work)
        return self

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        began = time.monotonic()
        result = fn()
        self.timings[name] = time.monotonic() - began
        return result

    def _start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise LocalClusterError(reason)
        assets = locate_assets()
        # First of all, what dead clusters left is removed and this one's subnet claimed; from then on
        # everything is recorded before it is made (the control plane's directory once it has one: its
        # processes die with this one).
        self._record = record = self._step("cleanup and claim", RunRecord.claim)
        record.add_path(self.work)
        self._bridge = record.bridge
        self.control_plane = cp = ControlPlane(assets, extra_apiserver_args=self.apiserver_args,
                                                  extra_controller_manager_args=self.controller_manager_args)
        self._step("control plane", cp.start)
        self._cp_workdir = cp.workdir
        record.add_path(cp.workdir)
        if not cp.has_controller_manager:
            raise LocalClusterError("kube-controller-manager is not running")
        self.api = api = KubeApi(cp.server, cp.admin_token, cp.ca_path)
        self._system_kubeconfig = system_kubeconfig = cp.kubeconfig_for_token(cp.admin_token, "local-system")

        self.network = network = PodNetwork(record.bridge, record.subnet)
        network.create()

        logs = self.work / "logs"
        logs.mkdir()
        self.scheduler = self._spawn("kube-scheduler", [
            str(assets / "kube-scheduler"), f"--kubeconfig={system_kubeconfig}", "--leader-elect=false",
            "--secure-port=0", "--v=1",
        ], logs / "kube-scheduler.log")
        self.kwok = self._spawn("kwok", [
            str(kwok_binary()), f"--kubeconfig={system_kubeconfig}",
            f"--manage-nodes-with-label-selector={NODE_LABEL}=true",
            f"--config={HERE / 'kwok.yaml'}", f"--node-ip={network.gateway}",
            "--node-lease-duration-seconds=40",
        ], logs / "kwok.log")
        self._step("nodes", lambda: self._create_nodes(record.subnet))

        port = int(cp.server.rsplit(":", 1)[1])
        self.relay = ApiRelay((network.gateway, API_RELAY_PORT), ("127.0.0.1", port))
        self.hosts = HostsFiles(api, self.work / "dns", include=self.names_in,
                                fixed=[(network.gateway, " ".join(reversed(API_SERVICE_NAMES)))])
        self._step("hosts", self.hosts.start)
        self.provisioner = HostPathProvisioner(api, self.work / "volumes")
        self._step("provisioner", self.provisioner.start)
        self.runner = self._runner_ever = PodRunner(api, nodes=set(self.node_names), network=network,
                                                    work_dir=self.work, dns_dir_for=self.hosts.dir_for,
                                                    repo_root=REPO, api_service=API_SERVICE_NAMES[2],
                                                    exporter=exporter_binary(), engines=engine_dirs())
        self._step("runner", self.runner.start)
        self._step("operator install", self.install_operator)

    def _reflectors(self) -> list[Reflector]:
        out = []
        if self.runner is not None:
            out.append(self.runner.reflector)
        if self.provisioner is not None:
            out += [self.provisioner.claims, self.provisioner.volumes]
        if self.hosts is not None:
            out += [self.hosts.pods, self.hosts.services]
        return out

    def add_kwok(self, label_selector: str, pod_parallelism: int) -> None:
        """One more kwok, for extra nodes (labelled to match ``label_selector``, and not with the label of
        the cluster's own nodes) whose pods no process plays, starting ``pod_parallelism`` pods at once.
        The cluster's own kwok starts one at a time (see kwok.yaml): a pod IP given twice there would
        reach the wrong process. Where nothing runs, an IP given twice to the first pods of a node harms
        nothing, and thousands of pods start in minutes, not in half an hour."""
        assert self.network is not None
        assert self._system_kubeconfig is not None
        config = self.work / f"kwok-{len(self.more_kwok) + 1}.yaml"
        text = (HERE / "kwok.yaml").read_text()
        if "podPlayStageParallelism: 1\n" not in text:
            raise LocalClusterError("kwok.yaml: no 'podPlayStageParallelism: 1' to raise")
        config.write_text(text.replace("podPlayStageParallelism: 1\n", f"podPlayStageParallelism: {pod_parallelism}\n"))
        name = f"kwok-{len(self.more_kwok) + 1}"
        self.more_kwok.append(self._spawn(name, [
            str(kwok_binary()), f"--kubeconfig={self._system_kubeconfig}",
            f"--manage-nodes-with-label-selector={label_selector}",
            f"--config={config}", f"--node-ip={self.network.gateway}", "--node-lease-duration-seconds=40",
        ], self.work / "logs" / f"{name}.log"))

    def _spawn(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, log_path, env)
        self._pgids[process.pid] = started = process_start_time(process.pid)
        if self._record is not None:
            self._record.add_group(process.pid, started)
        return process

    def _create_nodes(self, subnet: ipaddress.IPv4Network) -> None:
        assert self.api is not None
        blocks = list(subnet.subnets(new_prefix=26))[1:]  # .64/26, .128/26, .192/26; .1 is the bridge
        if len(self.node_names) > len(blocks):
            raise LocalClusterError(f"at most {len(blocks)} nodes")
        for i, name in enumerate(self.node_names):
            cidr = str(blocks[i])
            self.api.create("/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    NODE_LABEL: "true", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": f"zone-{i}",
                    "type": "kwok"}, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            })
        deadline = time.monotonic() + STARTUP_TIMEOUT

        def ready(node: Obj) -> bool:
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (node.get("status") or {}).get("conditions") or [])

        while True:
            listing = self.api.request("GET", "/api/v1/nodes", query={"labelSelector": f"{NODE_LABEL}=true"})
            if sum(ready(n) for n in listing["items"]) == len(self.node_names):
                # The node lifecycle controller is not run (ControlPlane disables it): remove the
                # not-ready taint that admission put on the new nodes, as it would once they are Ready.
                for node in listing["items"]:
                    if node["spec"].get("taints"):
                        self.api.patch(f"/api/v1/nodes/{quote(node['metadata']['name'])}",
                                       {"spec": {"taints": None}}, kind="merge-patch")
                return
            for p in (self.kwok, self.scheduler):
                if p is not None and not p.alive():
                    raise LocalClusterError(f"{p.name} exited:\n{p.tail()}")
            if time.monotonic() > deadline:
                raise LocalClusterError(f"nodes not Ready within {STARTUP_TIMEOUT:g}s; kwok log:\n"
                                        f"{self.kwok.tail() if self.kwok else ''}")
            time.sleep(0.1)

    def _stop_runner(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self._runner_stopped = boot_ticks()  # no process of its pods starts later

    def stop(self) -> None:
        """Everything down, in reverse order; each step runs even if an earlier one failed."""
        began = time.monotonic()
        try:  # first, while the pod runner still watches its pods: the operator's pod ends through it
            self.stop_operator()
        except Exception:
            log.exception("stopping the local cluster's operator failed")
        self.timings["stop operator"] = time.monotonic() - began
        for reflector in self._reflectors():  # all at once: each ends at its next watch timeout
            reflector.request_stop()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("runner", self._stop_runner),
            ("provisioner", lambda: self.provisioner.stop() if self.provisioner else None),
            ("hosts", lambda: self.hosts.stop() if self.hosts else None),
            ("kwok", lambda: [k.stop(5) for k in [*self.more_kwok, *([self.kwok] if self.kwok else [])]]),
            ("scheduler", lambda: self.scheduler.stop(5) if self.scheduler else None),
            ("relay", lambda: self.relay.stop() if self.relay else None),
            ("control plane", lambda: self.control_plane.stop() if self.control_plane else None),
            ("network", lambda: self.network.destroy() if self.network else None),
        ]
        for name, step in steps:
            began = time.monotonic()
            try:
                step()
            except Exception:
                log.exception("stopping the local cluster's %s failed", name)
            self.timings[f"stop {name}"] = time.monotonic() - began
        self.runner = self.hosts = self.provisioner = None
        self.kwok = self.scheduler = None
        self.relay = None
        self.more_kwok = []
        self.control_plane = None
        self.network = None
        if os.environ.get("KEEP_LOCAL_CLUSTER") == "1":
            sys.stderr.write(f"\nKEEP_LOCAL_CLUSTER=1: the local cluster's files are kept in {self.work}\n")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        if self._record is not None:  # last: everything it lists is gone
            self._record.release()
            self._record = None

    # ---- kubectl ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> str:
        result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
                                input=input_text, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise LocalClusterError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    # ---- the operator ----------------------------------------------------------------------------

    def install_operator(self) -> None:
        """The CRD (server-side apply of crds/) and the operator's namespace. The operator itself comes
        with :meth:`start_operator`: in a pod, the chart installed with Helm; as a process, the chart's
        ServiceAccount and RBAC (helm template), whose token the process then uses."""
        assert self.control_plane is not None
        assert self.api is not None
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        # the Prometheus Operator's kinds, as a cluster that runs it has them: ServiceMonitors and
        # PrometheusRules are then created, and LocalPrometheus (prometheus.py) follows them
        self.kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps({
            "apiVersion": "v1", "kind": "List",
            "items": [monitoring_crd(kind, plural) for kind, plural in MONITORING_CRDS.items()]}))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": OPERATOR_NAMESPACE}})
        helm = helm_binary()
        if self.operator_in == "pod":
            if helm is None:
                raise LocalClusterError("no helm to install the chart: run `bash .ci/setup.sh`")
            return
        if os.environ.get("E2E_LOCAL_OPERATOR_RBAC", "chart") == "masters":
            log.warning("E2E_LOCAL_OPERATOR_RBAC=masters: the operator runs as system:masters, not the chart's RBAC")
            self.operator_kubeconfig = self.control_plane.operator_kubeconfig
            self.operator_user = OPERATOR_USER
            return
        if helm is None:
            log.warning("no helm: the operator runs with the control plane's operator identity (system:masters)")
            self.operator_kubeconfig = self.control_plane.operator_kubeconfig
            self.operator_user = OPERATOR_USER
            return
        self._helm("template", OPERATOR_RELEASE, str(REPO / "charts" / "redis-messaging-operator"),
                   "--namespace", OPERATOR_NAMESPACE, "--output-dir", str(self.work / "chart"))
        templates = self.work / "chart" / "redis-messaging-operator" / "templates"
        for name in ("serviceaccount.yaml", "rbac.yaml"):
            if (templates / name).exists():
                self.kubectl("apply", "-n", OPERATOR_NAMESPACE, "-f", str(templates / name))
        sa = json.loads(self.kubectl("get", "serviceaccount", "-n", OPERATOR_NAMESPACE, "-o", "json"))["items"]
        names = [s["metadata"]["name"] for s in sa if s["metadata"]["name"] != "default"]
        if len(names) != 1:
            raise LocalClusterError(f"expected one ServiceAccount of the chart, found {names}")
        token = self.control_plane.token_for_service_account(OPERATOR_NAMESPACE, names[0], 48 * 3600)
        self.operator_kubeconfig = self.control_plane.kubeconfig_for_token(token, "chart-operator")
        self.operator_user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{names[0]}"

    def _helm(self, *args: str) -> None:
        helm = helm_binary()
        if helm is None:
            raise LocalClusterError("no helm: run `bash .ci/setup.sh`")
        home = self.work / "helm"
        env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        result = subprocess.run([str(helm), *args, "--kubeconfig", str(self.kubeconfig)], env=env,
                                capture_output=True, text=True, check=False, timeout=180)
        if result.returncode != 0:
            raise LocalClusterError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()}")

    @property
    def operator_log_path(self) -> Path:
        """The log of the operator running now (the container log of its pod, or the process's)."""
        if self._operator_logs:
            return self._operator_logs[-1]
        return self.work / "logs" / "operator.log"

    def start_operator(self, extra_env: dict[str, str] | None = None) -> None:
        """The operator, with ``extra_env`` added to its environment. In a pod: `helm upgrade --install`
        of the chart (the operator image played from the checkout, the environment through
        `operator.extraEnv`), and back when waiting for its pod's container to run. A container that
        :meth:`kill_operator` killed is restarted in its pod, as the kubelet restarts a killed container;
        another environment rolls the Deployment. As a process: see :meth:`_start_operator_process`."""
        if self.operator is not None and self.operator.alive():
            raise LocalClusterError("the operator is already running")
        if self.operator_in == "process":
            self._start_operator_process(extra_env)
            return
        assert self.runner is not None
        env = dict(extra_env or {})
        self._operator_starts += 1
        current = self.operator if isinstance(self.operator, OperatorPod) else None
        if current is not None and current.exists() and env == self._operator_env:
            current.release()
            self.operator = self._wait_operator_pod(same=current.name)
            return
        values = {
            "image": {"repository": "redis-messaging-operator", "tag": OPERATOR_IMAGE_TAG, "pullPolicy": "Never"},
            "operator": {"extraEnv": [{"name": k, "value": v} for k, v in sorted(env.items())]},
            "nodeSelector": {NODE_LABEL: "true"},  # the nodes whose pods run (not kwok-only ones)
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
        values_file = self.work / "operator-values.json"
        values_file.write_text(json.dumps(values, indent=2) + "\n")
        self._helm("upgrade", "--install", OPERATOR_RELEASE, str(REPO / "charts" / "redis-messaging-operator"),
                   "--namespace", OPERATOR_NAMESPACE, "--values", str(values_file))
        self._operator_env = env
        deployment = json.loads(self.kubectl("get", "deployment", OPERATOR_RELEASE, "-n", OPERATOR_NAMESPACE,
                                             "-o", "json"))
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        self.operator_user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"
        if deployment["spec"].get("replicas") == 0:  # stopped by stop_operator()
            self.kubectl("scale", "deployment", OPERATOR_RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=1")
        self.operator = self._wait_operator_pod(not_named=current.name if current is not None else None)

    def _wait_operator_pod(self, *, same: str | None = None, not_named: str | None = None,
                           timeout: float = 120.0) -> OperatorPod:
        """The operator's pod once its container runs: ``same`` (a pod restarting its container), else
        a pod of its namespace (the Deployment's only) not being deleted, other than ``not_named`` (the
        one it replaces). Read from the pod runner, which watches the pods anyway."""
        assert self.runner is not None
        deadline = time.monotonic() + timeout
        while True:
            names = [same] if same is not None else [
                name for name in self.runner.running(OPERATOR_NAMESPACE) if name != not_named]
            for name in names:
                with contextlib.suppress(PodNotFound):
                    pod = OperatorPod(self.runner, OPERATOR_NAMESPACE, name)
                    if pod.exists() and pod.alive():
                        if pod.log_path not in self._operator_logs:
                            self._operator_logs.append(pod.log_path)
                        return pod
            if time.monotonic() > deadline:
                raise LocalClusterError(f"the operator's pod did not start within {timeout:g}s:\n"
                                        + self.kubectl("get", "pods,replicasets,events", "-n", OPERATOR_NAMESPACE,
                                                       check=False))
            time.sleep(0.1)

    def _start_operator_process(self, extra_env: dict[str, str] | None) -> None:
        """The operator as a process: `redis-messaging run --standalone`, the checkout, the project's
        virtualenv, in the host's network namespace and a mount namespace of its own whose /etc/hosts
        is the cluster's."""
        assert self.runner is not None
        assert self.hosts is not None
        assert self.operator_kubeconfig is not None
        self._operator_starts += 1
        cdir = self.work / "operator"
        cdir.mkdir(exist_ok=True)
        resolv = cdir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n")
        spec = cdir / "init.spec"
        binds = "".join(f"bind {here} {there} ro\n" for here, there in self.runner.images.mounts)
        spec.write_text(f"root {cdir}\nfile {resolv} /etc/resolv.conf\ndns {self.hosts.global_dir()}\n"
                        f"{binds}workdir /tmp\n")
        image = dict(self.runner.images.profile("redis-messaging-operator").env)  # type: ignore[union-attr]
        env = {
            **image,  # the operator image's: PATH with the project's virtualenv, PYTHONPATH, HOME
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "KUBECONFIG": str(self.operator_kubeconfig),
            "REDIS_MESSAGING_METRICS_PORT": "0",  # it would listen on every interface
            **(extra_env or {}),
        }
        liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        log_path = self.work / "logs" / "operator.log"
        with log_path.open("a") as f:
            f.write(f"=== local cluster: operator start {self._operator_starts} ===\n")
        if log_path not in self._operator_logs:
            self._operator_logs.append(log_path)
        self.operator = self._spawn("operator", [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", str(HERE / "container-init.sh"), str(spec), "--",
            "redis-messaging", "run", "--standalone", "--liveness", liveness,
        ], log_path, env=env)

    def stop_operator(self, grace: float = 10.0) -> None:
        """The operator stops as on a scale-down: its Deployment scaled to zero (SIGTERM, then SIGKILL
        after the pod's own grace period; waited for up to that period and some), or the process
        stopped (SIGTERM, then SIGKILL after ``grace``)."""
        operator = self.operator
        if isinstance(operator, Process):
            operator.stop(grace)
            self._forget(operator)
            return
        if operator is None or self.runner is None:
            return
        self.kubectl("scale", "deployment", OPERATOR_RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0", check=False)
        wait = operator.grace_period() + 10
        deadline = time.monotonic() + wait
        while operator.exists(terminating=True) and time.monotonic() < deadline:
            time.sleep(0.1)
        if operator.exists(terminating=True):
            log.warning("the operator's pod %s still runs %.0fs after its Deployment was scaled to zero",
                        operator.name, wait)

    def kill_operator(self) -> None:
        """SIGKILL: the operator dies mid-whatever it is doing, and stays down until
        :meth:`start_operator` (in a pod, its container is not restarted until then)."""
        operator = self.operator
        if isinstance(operator, OperatorPod):
            operator.kill()
        elif operator is not None:
            operator.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.popen.wait(10)
            self._forget(operator)

    def delete_operator_pod(self) -> str:
        """`kubectl delete pod --wait=false` of the operator's pod (SIGTERM, as a drain or an eviction
        would): its name; :meth:`await_operator_pod` then waits for the Deployment's next one."""
        operator = self.operator
        if not isinstance(operator, OperatorPod):
            raise LocalClusterError("the operator runs as a process here, not in a pod")
        self.kubectl("delete", "pod", operator.name, "-n", OPERATOR_NAMESPACE, "--wait=false")
        return operator.name

    def await_operator_pod(self, replacing: str) -> None:
        """Back once an operator pod other than ``replacing`` runs its container."""
        self.operator = self._wait_operator_pod(not_named=replacing)

    def _forget(self, process: Process) -> None:
        """A process group of the record that is gone: a later process may get its number."""
        if self._record is not None and not process.alive():
            self._record.drop_group(process.pid)

    def operator_log(self, tail: int = 300) -> str:
        """The last lines the operator wrote, across its restarts and pods."""
        lines: list[str] = []
        for path in self._operator_logs:
            try:
                lines += path.read_text(errors="replace").splitlines()
            except OSError as exc:
                lines.append(f"<{exc}>")
        return "\n".join(lines[-tail:])

    def cut_operator_off(self, namespace: str, names: list[str]) -> tuple[list[str], bool]:
        """Cut the operator off these pods, both ways and silently, while they still reach each other:
        their IPs, and whether both ways are cut (see :meth:`PodNetwork.cut`)."""
        assert self.runner is not None
        sandbox = self._operator_sandbox()
        self._cut_sandboxes.append(sandbox)
        return self.runner.cut_off(namespace, names, sandbox)

    def mend_operator(self) -> None:
        """Undo :meth:`cut_operator_off`, in the network namespaces it cut (its pod may be gone since)."""
        assert self.runner is not None
        cut, self._cut_sandboxes = self._cut_sandboxes, []
        for sandbox in dict.fromkeys(cut):
            self.runner.mend(sandbox)

    def operator_connect(self, ip: str, port: int, timeout: float) -> str:
        """A TCP connection tried from where the operator runs: "reached", "timeout" or the error."""
        sandbox = self._operator_sandbox()
        argv = [sys.executable, "-c", CONNECT_PROBE, ip, str(port), str(timeout)]
        if sandbox is not None:
            argv = ["nsenter", "--target", str(sandbox), "--net", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, check=False)
        return result.stdout.strip() or f"probe failed: {result.stderr.strip()}"

    def _operator_sandbox(self) -> int | None:
        """The process whose network namespace the operator uses: its pod's sandbox; None for the host's."""
        if isinstance(self.operator, OperatorPod):
            assert self.runner is not None
            return self.runner.sandbox_pid(OPERATOR_NAMESPACE, self.operator.name)
        return None

    def leftovers(self) -> list[str]:
        """What of this run still exists (after stop(), this should be nothing): processes in a process
        group it started, in a pod's network namespace or naming one of its directories, its bridge
        and veths (runrecord.py finds what a dead run left the same way)."""
        pgids = dict(self._pgids)
        netns: set[str] = set()
        if self._runner_ever is not None:
            pgids.update(self._runner_ever.all_pids)
            netns |= self._runner_ever.all_netns
        markers = [str(self.work)] + ([str(self._cp_workdir)] if self._cp_workdir else [])
        out = [str(proc) for proc in find_processes(groups=pgids, netns=netns, markers=markers,
                                                    netns_before=self._runner_stopped)]
        if self._bridge:
            out += [f"link {name}" for name in bridge_links(self._bridge)]
        return out


def main() -> int:
    if sys.argv[1:] == ["check"]:  # exit 0 when this machine can host the local cluster, else say why
        reason = missing_requirements()
        print(reason or "the local cluster can run here")
        return 0 if reason is None else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with LocalCluster() as cluster:
        cluster.start_operator()
        print(f"local cluster up in {cluster.timings['start']:.1f}s", flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        print(f"operator log: {cluster.operator_log_path}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
