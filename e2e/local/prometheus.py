"""Prometheus on the local cluster, configured as the Prometheus Operator would configure it.

The ServiceMonitors and PrometheusRules of the given namespaces are read from the API server and
translated the way the Prometheus Operator translates them: scrape jobs for each ServiceMonitor endpoint
that find the pods behind the Services its selector matches (Kubernetes service discovery against the
local cluster's API server; see :func:`scrape_configs` for why by pods and not by Endpoints), with the
target labels the Prometheus Operator gives (namespace, service, pod, container, endpoint, job = the
Service's name, each podTargetLabel sanitised) and honorLabels as the endpoint says; the rule groups of
every PrometheusRule as rule files. Prometheus runs as a process
of this machine, which reaches every pod IP from the bridge.

Two things differ from production, for a test to finish in seconds, and only when asked: the scrape and
evaluation intervals (``interval``), and every rule's ``for`` (``rule_for``).

The translation supports what the operator and its chart render (matchLabels selectors, named ports,
namespaceSelector matchNames / any, podTargetLabels, jobLabel, honorLabels, path, scheme); anything
else in a ServiceMonitor raises, rather than scraping something else than the Prometheus Operator would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from kubeapi import KubeApi, quote, selector_matches
from monitoring_tools import Prometheus, binaries

Obj = dict[str, Any]
GROUP = "/apis/monitoring.coreos.com/v1"
SUPPORTED_ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels"}
SUPPORTED_SPEC_KEYS = {"selector", "namespaceSelector", "endpoints", "podTargetLabels", "jobLabel"}


def sanitised(label: str) -> str:
    """A Kubernetes label name as Prometheus's service discovery writes it in a label name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def keep_labels(prefix: str, selector: dict[str, str]) -> list[Obj]:
    """Relabel rules keeping the targets whose (service or pod) labels ``selector`` matches."""
    return [{"source_labels": [f"__meta_kubernetes_{prefix}_label_{sanitised(key)}",
                               f"__meta_kubernetes_{prefix}_labelpresent_{sanitised(key)}"],
             "regex": f"({re.escape(value)});true", "action": "keep"} for key, value in sorted(selector.items())]


def scrape_configs(monitor: Obj, index: int, services: list[Obj], kubeconfig: Path,
                   interval: str | None = None) -> list[Obj]:
    """The scrape jobs of endpoint ``index`` of a ServiceMonitor: one per Service it selects among
    ``services``, whose targets are the pods behind that Service's port, with the target labels the
    Prometheus Operator gives.

    The Prometheus Operator discovers them through the Services' Endpoints; the local cluster has none
    (the API server refuses its loopback pod IPs in Endpoints and EndpointSlices), so they are
    discovered as pods, kept by the Service's selector and the container port its port targets: the
    pods the Endpoints would list, ready or not, as the Prometheus Operator scrapes them."""
    meta, spec = monitor["metadata"], monitor["spec"]
    where = f"ServiceMonitor {meta['namespace']}/{meta['name']}"
    unsupported = set(spec) - SUPPORTED_SPEC_KEYS
    endpoint = spec["endpoints"][index]
    unsupported |= {f"endpoints[{index}].{k}" for k in set(endpoint) - SUPPORTED_ENDPOINT_KEYS}
    selector = spec.get("selector") or {}
    if selector.get("matchExpressions"):
        unsupported.add("selector.matchExpressions")
    if unsupported:
        raise ValueError(f"{where}: not translated here: {', '.join(sorted(unsupported))}")
    if "port" not in endpoint:
        raise ValueError(f"{where}: endpoint {index} names no port")
    port = str(endpoint["port"])
    namespaces = spec.get("namespaceSelector") or {}
    allowed = None if namespaces.get("any") else set(namespaces.get("matchNames") or [meta["namespace"]])
    every = interval or endpoint.get("interval") or "30s"
    jobs = []
    for service in services:
        sm = service["metadata"]
        wanted = selector.get("matchLabels")
        if (allowed is not None and sm["namespace"] not in allowed) \
                or (wanted and not selector_matches(wanted, sm.get("labels"))):  # an empty selector: all
            continue
        ports = [p for p in service["spec"].get("ports") or [] if p.get("name") == port]
        if not ports or not service["spec"].get("selector"):
            continue  # no such port, or no pods behind it: nothing the Endpoints would list
        target = ports[0].get("targetPort", ports[0]["port"])
        by_port = ({"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": re.escape(target)}
                   if isinstance(target, str) else
                   {"source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": str(target)})
        job = sm["name"]
        if spec.get("jobLabel") and (sm.get("labels") or {}).get(spec["jobLabel"]):
            job = sm["labels"][spec["jobLabel"]]
        relabel = [
            *keep_labels("pod", service["spec"]["selector"]),
            {**by_port, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"target_label": "service", "replacement": sm["name"]},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            *({"source_labels": [f"__meta_kubernetes_pod_label_{sanitised(label)}"],
               "target_label": sanitised(label)} for label in spec.get("podTargetLabels") or []),
            {"target_label": "job", "replacement": job},
            {"target_label": "endpoint", "replacement": port},
        ]
        jobs.append({
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}/{sm['name']}",
            "honor_labels": bool(endpoint.get("honorLabels")),
            "scrape_interval": every,
            "scrape_timeout": every if interval else endpoint.get("scrapeTimeout", "10s"),
            "metrics_path": endpoint.get("path", "/metrics"),
            "scheme": endpoint.get("scheme", "http"),
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                       "namespaces": {"names": [sm["namespace"]]}}],
            "relabel_configs": relabel,
        })
    return jobs


def rule_groups(rules: list[Obj], rule_for: str | None = None) -> list[Obj]:
    """The groups of these PrometheusRules, named uniquely as the Prometheus Operator's rule files make
    them; with ``rule_for``, every alert's ``for`` replaced by it."""
    out = []
    for rule in rules:
        for group in rule["spec"].get("groups") or []:
            group = {**group, "name": f"{rule['metadata']['namespace']}/{rule['metadata']['name']}/{group['name']}"}
            if rule_for is not None:
                group["rules"] = [{**r, "for": rule_for} if "alert" in r else r for r in group.get("rules") or []]
            out.append(group)
    return out


class LocalPrometheus:
    """Prometheus following the ServiceMonitors and PrometheusRules of ``namespaces`` as they are when
    :meth:`start` runs."""

    def __init__(self, api: KubeApi, kubeconfig: Path, workdir: Path, namespaces: list[str], *,
                 interval: str | None = None, rule_for: str | None = None) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.namespaces = namespaces
        self.interval = interval
        self.rule_for = rule_for
        self.server: Prometheus | None = None

    def _list(self, plural: str) -> list[Obj]:
        out: list[Obj] = []
        for namespace in self.namespaces:
            listing = self.api.request("GET", f"{GROUP}/namespaces/{quote(namespace)}/{plural}")
            out += listing["items"]
        return out

    def render(self) -> tuple[list[Obj], str]:
        """The scrape jobs and the rule file."""
        services = [svc for namespace in self.namespaces for svc in self.api.request(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/services")["items"]]
        jobs = [job for monitor in self._list("servicemonitors") for i in range(len(monitor["spec"]["endpoints"]))
                for job in scrape_configs(monitor, i, services, self.kubeconfig, self.interval)]
        rules = yaml.safe_dump({"groups": rule_groups(self._list("prometheusrules"), self.rule_for)}, sort_keys=False)
        return jobs, rules

    def start(self) -> Prometheus:
        jobs, rules = self.render()
        self.server = Prometheus(binaries().prometheus, self.workdir, rules, targets=[],
                                 interval=self.interval or "30s", scrape_configs=jobs)
        return self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
