"""What the monitoring tests share: the binaries of .ci/build-monitoring.sh, the rendered rules and
dashboard queries, what a PromQL expression reads (metric names and labels), the Prometheus text format,
redis_exporter run from the container the pod builder renders, and a Prometheus server on loopback.

The binaries are looked up in the cache the build script fills, at the versions it pins (read from the
script itself); a test that needs them skips, with the command that builds them, when they are missing:
a skip that RMSG_REQUIRE_TIERS turns into a failure for the tiers CI requires.

Series the exporter does not export but the alerts and panels select on come from the scrape itself:
``up`` (Prometheus writes it for every target) and the target labels the Prometheus Operator gives
every series of a ServiceMonitor's endpoints (:data:`TARGET_LABELS`; ``podTargetLabels`` sanitised).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import monitoring, names
from redis_messaging.builders.names import Owner

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / ".ci" / "build-monitoring.sh"
Obj = dict[str, Any]


# -- the binaries ------------------------------------------------------------------------------------
def pinned_versions() -> dict[str, str]:
    """REDIS_EXPORTER_VERSION and PROMETHEUS_VERSION as .ci/build-monitoring.sh pins them (the
    environment overrides them there, and so here)."""
    text = BUILD_SCRIPT.read_text()
    out = {}
    for var in ("REDIS_EXPORTER_VERSION", "PROMETHEUS_VERSION"):
        found = re.search(rf'^{var}="\$\{{{var}:-(v[0-9.]+)\}}"$', text, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"{BUILD_SCRIPT} pins no {var}")
        out[var] = os.environ.get(var) or found.group(1)
    return out


def cache_dir() -> Path:
    if os.environ.get("RMSG_CACHE"):
        return Path(os.environ["RMSG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "redis-messaging-operator"


def binaries_dir() -> Path:
    v = pinned_versions()
    return (cache_dir() / "monitoring"
            / f"redis_exporter-{v['REDIS_EXPORTER_VERSION']}-prometheus-{v['PROMETHEUS_VERSION']}")


@dataclass(frozen=True)
class Binaries:
    redis_exporter: Path
    promtool: Path
    prometheus: Path


def binaries() -> Binaries:
    """The built binaries; skips (saying how to build them) when any is missing."""
    where = binaries_dir()
    found = Binaries(where / "redis_exporter", where / "promtool", where / "prometheus")
    missing = [p.name for p in (found.redis_exporter, found.promtool, found.prometheus) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"monitoring binaries missing in {where} ({', '.join(missing)}): bash .ci/build-monitoring.sh")
    return found


def redis_server_or_skip() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found: apt-get install -y redis-server redis-tools")


# -- what the operator renders -----------------------------------------------------------------------
def rule_groups(spec: RedisMessagingSpec, owner: Owner) -> list[Obj]:
    """spec.groups of the rendered PrometheusRule: a Prometheus rules file's groups."""
    groups: list[Obj] = monitoring.prometheus_rule(spec, owner)["spec"]["groups"]
    return groups


def rules_yaml(spec: RedisMessagingSpec, owner: Owner) -> str:
    return yaml.safe_dump({"groups": rule_groups(spec, owner)}, sort_keys=False, allow_unicode=True)


def alert_rules(spec: RedisMessagingSpec, owner: Owner) -> list[Obj]:
    return [r for g in rule_groups(spec, owner) for r in g["rules"]]


@dataclass(frozen=True)
class Query:
    """An alert's expression or a dashboard target's, with the templates that read its output labels."""

    where: str  # "alert X" or "panel Y"
    expr: str
    templates: tuple[str, ...]  # annotations ({{ $labels.x }}) or the legend ({{x}})


def queries(spec: RedisMessagingSpec, owner: Owner) -> list[Query]:
    out = [Query(f"alert {r['alert']}", r["expr"], tuple(r["annotations"].values()))
           for r in alert_rules(spec, owner)]
    cm = monitoring.dashboard(spec, owner)
    (board,) = (json.loads(text) for text in cm["data"].values())
    for panel in board["panels"]:
        for target in panel["targets"]:
            out.append(Query(f"panel {panel['title']!r}", target["expr"], (target.get("legendFormat", ""),)))
    return out


_ALERT_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def template_labels(query: Query) -> set[str]:
    """The labels the annotations ($labels.x) or the legend ({{x}}) of a query print."""
    pattern = _ALERT_LABEL if query.where.startswith("alert ") else _LEGEND_LABEL
    return {m for t in query.templates for m in pattern.findall(t)}


# The labels a ServiceMonitor's scrape gives every series (Prometheus Operator): the target's namespace,
# Service, pod, container and endpoint port name, job and instance, and the pod labels of podTargetLabels,
# sanitised as Prometheus sanitises label names.
def sanitised(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


TARGET_LABELS = frozenset({"namespace", "service", "pod", "container", "endpoint", "job", "instance",
                           sanitised(names.LABEL_COMPONENT), sanitised(names.LABEL_ROLE)})
SYNTHETIC = {"up": frozenset()}  # written by Prometheus for every target, no exporter exports it


# -- PromQL: what an expression reads ----------------------------------------------------------------
def _promql() -> Any:
    return pytest.importorskip("promql_parser", reason="dev dependency promql-parser (pip install promql-parser)")


def references(expr: str) -> dict[str, set[str]]:
    """metric name -> the labels the expression reads on it: its matchers, and the labels of every
    ``by``/``without`` and ``on``/``ignoring`` over it."""
    out: dict[str, set[str]] = {}

    def walk(node: Any, around: frozenset[str]) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            out.setdefault(node.name, set()).update(around, (m.name for m in node.matchers.matchers))
        elif kind == "MatrixSelector":
            walk(node.vector_selector, around)
        elif kind == "AggregateExpr":
            labels = frozenset(node.modifier.labels) if node.modifier is not None else frozenset()
            walk(node.expr, around | labels)
            if node.param is not None:
                walk(node.param, around)
        elif kind == "BinaryExpr":
            matching = node.modifier.matching if node.modifier is not None else None
            labels = frozenset(matching.labels) if matching is not None else frozenset()
            walk(node.lhs, around | labels)
            walk(node.rhs, around | labels)
        elif kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
            walk(node.expr, around)
        elif kind == "Call":
            for arg in node.args:
                walk(arg, around)

    walk(_promql().parse(expr), frozenset())
    return out


def equal_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every ``label="value"`` matcher of the expression."""
    out: list[tuple[str, str, str]] = []

    def visit(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            out.extend((node.name, m.name, m.value) for m in node.matchers.matchers if str(m.op) == "MatchOp.Equal")

    promql = _promql()
    promql.walk(promql.parse(expr), visit)
    return out


LabelsOf = Callable[[str], frozenset[str]]
_KEEP_LABELS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "clamp", "clamp_min", "clamp_max", "abs",
                "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "max_over_time", "min_over_time",
                "avg_over_time", "sum_over_time", "count_over_time", "last_over_time", "sort", "sort_desc"}


def _scalar(node: Any) -> bool:
    kind = type(node).__name__
    if kind in ("NumberLiteral", "StringLiteral"):
        return True
    if kind in ("ParenExpr", "UnaryExpr"):
        return _scalar(node.expr)
    if kind == "Call":
        return bool(node.func.name in ("scalar", "time", "pi"))
    if kind == "BinaryExpr":
        return _scalar(node.lhs) and _scalar(node.rhs)
    return False


def _labels(node: Any, labels_of: LabelsOf, mismatches: list[str]) -> frozenset[str]:
    kind = type(node).__name__
    if kind == "VectorSelector":
        return labels_of(node.name)
    if kind == "MatrixSelector":
        return _labels(node.vector_selector, labels_of, mismatches)
    if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return _labels(node.expr, labels_of, mismatches)
    if kind == "Call":
        if node.func.name == "vector":
            return frozenset()
        if node.func.name not in _KEEP_LABELS:
            raise ValueError(f"output_labels does not know {node.func.name}()")
        return _labels(node.args[0], labels_of, mismatches)
    if kind == "AggregateExpr":
        inner = _labels(node.expr, labels_of, mismatches)
        if str(node.op) in ("topk", "bottomk", "limitk"):
            return inner
        if node.modifier is None:
            return frozenset()
        chosen = frozenset(node.modifier.labels)
        return inner - chosen if "Without" in str(node.modifier.type) else inner & chosen
    if kind == "BinaryExpr":
        if _scalar(node.lhs):
            return _labels(node.rhs, labels_of, mismatches)
        left = _labels(node.lhs, labels_of, mismatches)
        if _scalar(node.rhs):
            return left
        right = _labels(node.rhs, labels_of, mismatches)
        op = str(node.op)
        if op == "or":
            return left & right
        if op in ("and", "unless"):
            return left
        modifier = node.modifier
        if modifier is not None and "OneToOne" not in str(modifier.card):
            raise ValueError("output_labels does not know group_left/group_right")
        matching = modifier.matching if modifier is not None else None
        if matching is None:
            if left != right:  # matched on every label: sides with different label names never match
                mismatches.append(f"{node.prettify()}: {sorted(left ^ right)} on one side only")
            return left
        if "Include" in str(matching.type):
            return left & frozenset(matching.labels)
        return left - frozenset(matching.labels)
    raise ValueError(f"output_labels does not know {kind}")


def output_labels(expr: str, labels_of: LabelsOf) -> frozenset[str]:
    """The labels every series of the expression's result carries, given the label names of each
    metric's series (``labels_of``), by Prometheus's rules: aggregations keep their ``by`` labels; a
    binary operation between vectors keeps the left side's labels (only the ``on`` ones when it matches
    one to one on some: resultMetric), an operation with a scalar the vector's; ``or`` what both sides
    carry."""
    return _labels(_promql().parse(expr), labels_of, [])


def one_to_one_mismatches(expr: str, labels_of: LabelsOf) -> list[str]:
    """Binary operations between two vectors matched on every label (no on/ignoring) whose sides carry
    different label names: they never match, and the result is always empty."""
    found: list[str] = []
    _labels(_promql().parse(expr), labels_of, found)
    return found


# -- the text format ---------------------------------------------------------------------------------
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:\\.|[^"\\])*)"\s*,?')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


@dataclass
class Scrape:
    """One /metrics page: name -> the label sets of its samples, and each sample's value."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls()
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            brace = line.find("{")
            space = line.find(" ")
            labels: dict[str, str] = {}
            if brace != -1 and (space == -1 or brace < space):
                name = line[:brace]
                rest = line[brace + 1:]
                while True:
                    rest = rest.lstrip()
                    if rest.startswith("}"):
                        rest = rest[1:]
                        break
                    m = _LABEL.match(rest)
                    if m is None:
                        raise ValueError(f"not the text format: {line!r}")
                    labels[m.group(1)] = _unescape(m.group(2))
                    rest = rest[m.end():]
            else:
                name, rest = line[:space], line[space:]
            value = rest.split()[0]
            out.samples.setdefault(name, []).append((labels, float(value)))
        return out

    def names(self) -> set[str]:
        return set(self.samples)

    def labels(self, name: str) -> frozenset[str]:
        return frozenset(k for labels, _ in self.samples.get(name, []) for k in labels)

    def values(self, name: str, **match: str) -> list[float]:
        return [v for labels, v in self.samples.get(name, []) if all(labels.get(k) == x for k, x in match.items())]

    def merge(self, other: Scrape) -> Scrape:
        out = Scrape({k: list(v) for k, v in self.samples.items()})
        for name, samples in other.samples.items():
            out.samples.setdefault(name, []).extend(samples)
        return out


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (loopback URLs the test builds)
        return str(reply.read().decode())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            found = check()
            if found:
                return found
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last error: {last})")
        time.sleep(interval)


# -- redis_exporter as the pod builder renders it ----------------------------------------------------
def pod_template(objects: Iterable[Obj], statefulset: str) -> Obj:
    for obj in objects:
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == statefulset:
            template: Obj = obj["spec"]["template"]
            return template
    raise KeyError(f"no StatefulSet {statefulset}")


@dataclass
class ExporterPod:
    """A pod's exporter sidecar as a process: the container's own command, arguments and environment
    (downward API and $(VAR) expanded like the kubelet does), its mounts at the pod's directories, and
    the pod's network: its own loopback address stands for the pod's (127.0.0.1 in the container's
    addresses, the metrics port on the pod's address)."""

    pod: str
    ip: str
    port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}/metrics"

    @property
    def log(self) -> Path:
        return self.root / "exporter.log"

    def scrape(self) -> Scrape:
        return Scrape.parse(http_get(self.url))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """$(VAR) references to variables defined before, as the kubelet expands them ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(container: Obj, *, pod: str, namespace: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
            continue
        ref = item["valueFrom"]["fieldRef"]["fieldPath"]
        env[item["name"]] = {"metadata.name": pod, "metadata.namespace": namespace}[ref]
    return env


class PodNetwork:
    """Paths and addresses of one container, translated to the pod's directories and loopback address."""

    def __init__(self, container: Obj, root: Path, ip: str) -> None:
        self.mounts = {m["mountPath"]: root / m["name"] for m in container.get("volumeMounts", [])}
        self.ip = ip

    def translate(self, value: str) -> str:
        for mount, local in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount):]
        return re.sub(r"(?<=://)(127\.0\.0\.1|localhost)(?=[:/]|$)", self.ip, value)


def start_exporter(binary: Path, objects: Iterable[Obj], statefulset: str, *, pod: str, namespace: str, ip: str,
                   root: Path, users_dir: Path, timeout: float = 20.0) -> ExporterPod:
    """Run the exporter sidecar of ``pod`` (of ``statefulset``): first its init containers (the password
    file), then the exporter, listening on the pod's address at the container's metrics port."""
    template = pod_template(objects, statefulset)
    spec = template["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "exporter"]
    for init in spec.get("initContainers", []):
        net = PodNetwork(init, root, ip)
        for local in net.mounts.values():
            local.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {k: net.translate(v) for k, v in container_env(init, pod=pod, namespace=namespace).items()}
        # the users volume as the pod's start scripts see it (RMSG_USERS_DIR, the scripts' mount override)
        env.update({"PATH": os.environ.get("PATH", os.defpath), "RMSG_USERS_DIR": str(users_dir)})
        done = subprocess.run([net.translate(a) for a in init["command"] + init.get("args", [])], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"init container {init['name']} of {pod} failed: {done.stderr}")
    net = PodNetwork(container, root, ip)
    env = {k: net.translate(v) for k, v in container_env(container, pod=pod, namespace=namespace).items()}
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == monitoring.METRICS_PORT_NAME]
    if "REDIS_EXPORTER_WEB_LISTEN_ADDRESS" in env:
        raise RuntimeError("the container sets its listen address: the harness would override it")
    env["REDIS_EXPORTER_WEB_LISTEN_ADDRESS"] = f"{ip}:{port}"  # the pod's own address (":9121" in the pod)
    command = [str(binary)] if not container.get("command") else [net.translate(a) for a in container["command"]]
    args = [net.translate(a) for a in container.get("args", [])]
    exporter = ExporterPod(pod, ip, port, root)
    with exporter.log.open("ab") as log:
        exporter.process = subprocess.Popen([*command, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=root)

    def answers() -> bool:
        if exporter.process is not None and exporter.process.poll() is not None:
            raise RuntimeError(f"the exporter of {pod} exited:\n{exporter.log.read_text()}")
        return "redis_up" in http_get(exporter.url, timeout=2)

    wait_for(answers, timeout=timeout, what=f"the exporter of {pod} serving /metrics")
    return exporter


# -- Prometheus on loopback --------------------------------------------------------------------------
@dataclass
class Prometheus:
    """A Prometheus server with the rendered rules, scraping the exporters as a ServiceMonitor would
    (static targets with the target labels the Prometheus Operator gives) and the operator (honor_labels)."""

    binary: Path
    workdir: Path
    rules: str
    targets: list[tuple[str, dict[str, str]]]  # (host:port, target labels)
    operator_target: str | None = None
    interval: str = "1s"
    scrape_configs: list[Obj] = field(default_factory=list)  # more jobs, as they are (e2e/local/prometheus.py)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rules.yaml").write_text(self.rules)
        scrape: list[Obj] = [{
            "job_name": "redis-exporters",
            "static_configs": [{"targets": [t], "labels": labels} for t, labels in self.targets],
        }] if self.targets else []
        if self.operator_target:
            scrape.append({"job_name": "operator", "honor_labels": True,
                           "static_configs": [{"targets": [self.operator_target]}]})
        scrape += self.scrape_configs
        config = {"global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
                  "rule_files": [str(self.workdir / "rules.yaml")], "scrape_configs": scrape}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)
        log.close()
        wait_for(lambda: http_get(f"{self.base}/-/ready", timeout=2), timeout=timeout, what="Prometheus ready")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        reply = json.loads(http_get(url, timeout=10))
        if reply.get("status") != "success":
            raise ValueError(f"{path}: {reply}")
        return reply["data"]

    def query(self, expr: str) -> list[Obj]:
        data = self.api("query", query=expr)
        result: list[Obj] = data["result"]
        return result

    def alert_states(self) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """alert name -> (state, labels) of each of its alerts (pending or firing), [] when inactive."""
        out: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                out.setdefault(rule["name"], []).extend((a["state"], a["labels"]) for a in rule.get("alerts", []))
        return out

    def rules_evaluated(self) -> bool:
        """Every rule evaluated at least once, none with an error."""
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                if rule.get("health") != "ok":
                    if rule.get("lastError"):
                        raise AssertionError(f"rule {rule['name']}: {rule['lastError']}")
                    return False
        return True

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        expected = len(self.targets) + (1 if self.operator_target else 0)
        return len(active) == expected and all(t["health"] == "up" for t in active)

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextlib.contextmanager
def running(prometheus: Prometheus) -> Iterator[Prometheus]:
    try:
        yield prometheus.start()
    finally:
        prometheus.stop()


# -- what the real scrapes must hold -----------------------------------------------------------------
@dataclass
class Verified:
    """What the alerts and panels of one spec read, checked against real scrapes."""

    problems: list[str] = field(default_factory=list)
    # metric -> (labels its series carry in the scrape, labels the scrape's target gives) it is read by
    read: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)

    def table(self) -> str:
        lines = []
        for metric in sorted(self.read):
            exported, target = self.read[metric]
            where = ", ".join(sorted(exported)) or "-"
            extra = f"; from the scrape target: {', '.join(sorted(target))}" if target else ""
            lines.append(f"  {metric}: {where}{extra}")
        return "\n".join(lines)


def verify(spec: RedisMessagingSpec, owner: Owner, exporters: Scrape, operator: Scrape) -> Verified:
    """Every metric the rendered alerts and dashboard read is in the real scrapes (``redis_*`` in the
    exporters', ``redis_messaging_*`` in the operator's; ``up`` Prometheus writes), with every label
    they select on, group by, match on or print (exported, or given by the ServiceMonitor's target for
    ``redis_*``), and every label value they select (``role="master"``) among the values seen; no two
    vectors matched on every label carry different ones; annotations and legends print only labels
    their result carries."""
    found = Verified()

    def source(metric: str) -> Scrape:
        return operator if metric.startswith(f"{monitoring.OPERATOR_METRICS_PREFIX}_") else exporters

    def target(metric: str) -> frozenset[str]:
        # the operator is scraped with honor_labels: its own namespace/resource labels, nothing it relies on added
        return frozenset() if source(metric) is operator else TARGET_LABELS

    def labels_of(metric: str) -> frozenset[str]:
        if metric in SYNTHETIC:
            return SYNTHETIC[metric] | TARGET_LABELS
        return source(metric).labels(metric) | target(metric)

    for q in queries(spec, owner):
        for metric, labels in references(q.expr).items():
            if metric not in SYNTHETIC and metric not in source(metric).names():
                found.problems.append(f"{q.where}: {metric} is in no real scrape")
                continue
            exported = source(metric).labels(metric)
            missing = labels - labels_of(metric)
            if missing:
                found.problems.append(f"{q.where}: {metric} carries no label {sorted(missing)} "
                                      f"(it carries {sorted(exported)})")
            seen = found.read.setdefault(metric, (set(), set()))
            seen[0].update(labels & exported)
            seen[1].update(labels - exported)
        for metric, label, value in equal_matchers(q.expr):
            if label in target(metric) or metric in SYNTHETIC or metric not in source(metric).names():
                continue
            values = {labels.get(label) for labels, _ in source(metric).samples[metric]}
            if value not in values:
                found.problems.append(f"{q.where}: {metric}{{{label}={value!r}}} selects a value never seen "
                                      f"(seen: {sorted(v for v in values if v is not None)})")
        try:
            carried = output_labels(q.expr, labels_of)
        except ValueError as exc:
            found.problems.append(f"{q.where}: {exc}")
            continue
        uncarried = template_labels(q) - carried
        if uncarried:
            found.problems.append(f"{q.where}: prints {sorted(uncarried)}, which its result does not carry "
                                  f"({sorted(carried)})")
        found.problems += [f"{q.where}: {m}" for m in one_to_one_mismatches(q.expr, labels_of)]
        for metric in references(q.expr):  # the labels printed, on the metrics that carry them
            if metric in found.read:
                printed = template_labels(q)
                found.read[metric][0].update(printed & source(metric).labels(metric))
                found.read[metric][1].update((printed & target(metric)) - source(metric).labels(metric))
    return found
