"""One idempotent reconcile pass: validate -> ensure children -> check and heal -> status.

Create, update, resume and the periodic timer all run :func:`sync`. A pass that finds nothing to
change sends no write to the API server: children are compared with their live copies before any
apply, and the status is patched only when it differs.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from redis_messaging.api import models
from redis_messaging.builders import UnsupportedSpec, build, names, network, sentinel
from redis_messaging.builders import cluster as build_cluster
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError, needs_apply, with_applied_hash
from redis_messaging.reconcile import acl as acl_step
from redis_messaging.reconcile import cluster_rolling as cluster_rolling_step
from redis_messaging.reconcile import cluster_topology
from redis_messaging.reconcile import conditions as cond
from redis_messaging.reconcile import monitoring as monitoring_step
from redis_messaging.reconcile import rolling as rolling_step
from redis_messaging.reconcile import streams as streams_step
from redis_messaging.reconcile import tls as tls_step
from redis_messaging.reconcile import volumes as volumes_step
from redis_messaging.reconcile.order import PassOrder, generation_of
from redis_messaging.reconcile.streams import StreamsReport, StreamsStep
from redis_messaging.reconcile.topology import Topology, TopologyReport
from redis_messaging.redis.tls import ClientTls

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PASSWORD_ALPHABET = string.ascii_letters + string.digits


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


@dataclass
class Context:
    kube: Kube
    cluster_domain: str = "cluster.local"
    topologies: dict[str, Topology] = field(default_factory=dict)  # by mode
    streams: StreamsStep | None = None  # groups, retention and autoscale conflicts; None: skipped
    acl: acl_step.AclStep | None = None  # ACL users and password rotation on the processes; None: skipped
    rolling: rolling_step.RollingStep | None = None  # ordered replacement of outdated pods; None: skipped
    cluster_rolling: cluster_rolling_step.ClusterRollingStep | None = None  # the same in cluster mode
    tls: tls_step.TlsStep | None = None  # the TLS Secret read, clients told, renewals reloaded; None: skipped
    operator_peer: Obj | None = None  # the operator's pods as a NetworkPolicyPeer (spec.networkPolicy)
    clock: Callable[[], str] = utcnow
    passes: PassOrder = field(default_factory=PassOrder)  # one pass at a time per uid, never an older generation


@dataclass
class Outcome:
    actions: list[str] = field(default_factory=list)
    status_written: bool = False
    retry_after: float | None = None
    invalid: str | None = None
    spec: models.RedisMessagingSpec | None = None
    password: str | None = None
    tls: ClientTls | None = None
    streams: StreamsReport | None = None
    stale: bool = False  # refused: a pass already handled a newer generation; nothing was done


class SpecProblem(Exception):
    """A resource that cannot be reconciled until a human changes something."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def owner_of(body: Obj, cluster_domain: str) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""),
                 cluster_domain=cluster_domain)


def validation_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{where}: {err['msg']}")
    return "; ".join(parts)


def generate_password(length: int = 32) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def ensure_auth(ctx: Context, spec: models.RedisMessagingSpec, owner: Owner, actions: list[str]) -> str | None:
    """The default user's password: from the named Secret, or a generated one created once. The
    exporter user's generated Secret is created here too (the pods mount it)."""
    exporter = sentinel.exporter_secret_name(spec, owner)
    if exporter is not None and ctx.kube.get("Secret", owner.namespace, exporter) is None:
        _create_generated(ctx, owner, exporter, actions)
    name = sentinel.auth_secret_name(spec, owner)
    if name is None:
        return None
    secret = ctx.kube.get("Secret", owner.namespace, name)
    if secret is None:
        if spec.auth.secret_name:
            # looked at again soon: a missing Secret is usually being created right now
            raise SpecProblem("AuthSecretMissing",
                              f"Secret {name} named in spec.auth.secretName does not exist", 5)
        secret = _create_generated(ctx, owner, name, actions)
    import base64

    raw = (secret.get("data") or {}).get("password")
    if not raw:
        raise SpecProblem("AuthSecretInvalid", f"Secret {name} has no key 'password'", 30)
    return base64.b64decode(raw).decode()


def _create_generated(ctx: Context, owner: Owner, name: str, actions: list[str]) -> Obj:
    obj = sentinel.generated_auth_secret(owner, name)
    obj["stringData"] = {"password": generate_password()}
    created = ctx.kube.create(obj)
    actions.append(f"Created Secret {name} with a generated password")
    return created


def ensure_children(ctx: Context, owner: Owner, desired: list[Obj], actions: list[str]) -> dict[tuple[str, str], Obj]:
    """Apply every desired object whose live copy differs; return the live objects by (kind, name)."""
    selector = names.instance_selector(owner)
    live: dict[tuple[str, str], Obj] = {}
    for kind in dict.fromkeys(o["kind"] for o in desired):
        for item in ctx.kube.list(kind, owner.namespace, selector):
            live[(kind, item["metadata"]["name"])] = item
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        why = needs_apply(obj, live.get(key))
        if why is None:
            continue
        live[key] = ctx.kube.apply(with_applied_hash(obj))
        verb = "Created" if why == "missing" else "Updated"
        actions.append(f"{verb} {key[0]} {key[1]}" + ("" if why == "missing" else f" ({why})"))
    return live


def move_role_labels(kube: Kube, owner: Owner, pods: list[Obj], roles: dict[str, str]) -> list[tuple[str, str]]:
    """Set the role label each pod should carry; the new master first, so the master Service is
    never left without an endpoint longer than needed. Returns what was changed."""
    current = {p["metadata"]["name"]: ((p["metadata"].get("labels") or {}).get(names.LABEL_ROLE)) for p in pods}
    order = sorted(roles, key=lambda pod: roles[pod] != names.ROLE_MASTER)
    changed = []
    for pod in order:
        if pod in current and current[pod] != roles[pod]:
            kube.label_pod(owner.namespace, pod, {names.LABEL_ROLE: roles[pod]})
            changed.append((pod, f"pod {pod} labelled {names.LABEL_ROLE}={roles[pod]}"))
    return changed


def _ready(sts: Obj | None) -> int:
    return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)


def _pods_ready(spec: models.RedisMessagingSpec, owner: Owner,
                live: dict[tuple[str, str], Obj]) -> tuple[bool, str, int]:
    """Whether every pod the spec asks for is ready, in words, and how many Redis pods are."""
    if spec.mode == "cluster":
        per_shard = 1 + spec.cluster.replicas_per_shard
        ready = [_ready(live.get(("StatefulSet", owner.shard(i)))) for i in range(spec.cluster.shards)]
        full = sum(1 for r in ready if r >= per_shard)
        return (full == spec.cluster.shards,
                f"shards {full}/{spec.cluster.shards} ready ({sum(ready)}/{per_shard * spec.cluster.shards} pods)",
                sum(ready))
    redis_ready = _ready(live.get(("StatefulSet", owner.redis_sts)))
    sentinel_ready = _ready(live.get(("StatefulSet", owner.sentinel_sts)))
    return (redis_ready >= spec.redis.replicas and sentinel_ready >= spec.sentinel.replicas,
            f"redis {redis_ready}/{spec.redis.replicas} ready, "
            f"sentinel {sentinel_ready}/{spec.sentinel.replicas} ready", redis_ready)


def release_shards(kube: Kube, spec: models.RedisMessagingSpec, owner: Owner, release: list[str]) -> list[str]:
    """Delete the StatefulSet and PodDisruptionBudget of shards the topology released (their slots
    moved away, their nodes forgotten); never those of a shard the spec still declares."""
    done = []
    for name in release:
        index = owner.shard_of_object(name)
        if spec.mode != "cluster" or index is None or index < spec.cluster.shards:
            continue
        for kind in ("StatefulSet", "PodDisruptionBudget"):
            if kube.get(kind, owner.namespace, name) is not None:
                kube.delete(kind, owner.namespace, name)
                done.append(f"Deleted {kind} {name}: its slots moved to the other shards and its nodes left")
    return done


def _conditions(spec: models.RedisMessagingSpec, owner: Owner, live: dict[tuple[str, str], Obj],
                report: TopologyReport | None, changed: bool) -> tuple[list[cond.Cond], dict[str, Any]]:
    pods_ready, pods_msg, redis_ready = _pods_ready(spec, owner, live)
    extra: dict[str, Any] = {"readyReplicas": redis_ready}
    out = []
    if report is None or report.available is None:
        available = cond.Cond(cond.AVAILABLE, False if report is None else None,
                              report.reason if report else "WaitingForPods",
                              report.message if report else pods_msg)
    else:
        available = cond.Cond(cond.AVAILABLE, report.available, report.reason, report.message)
    healthy = report is not None and report.healthy
    ready = pods_ready and healthy
    if ready:
        out.append(cond.Cond(cond.READY, True, "Ready", pods_msg))
    elif not pods_ready:
        out.append(cond.Cond(cond.READY, False, "WaitingForPods", pods_msg))
    else:
        out.append(cond.Cond(cond.READY, False, report.reason if report else "TopologyUnchecked",
                             report.message if report else "no topology controller for this mode"))
    out.append(available)
    # Work the topology is doing on purpose (bootstrap, resharding): in progress, not degraded.
    moving = report is not None and report.reason in cluster_topology.PROGRESSING_REASONS
    progressing = changed or not pods_ready or moving
    if moving and report is not None:
        out.append(cond.Cond(cond.PROGRESSING, True, report.reason, report.message))
    else:
        out.append(cond.Cond(cond.PROGRESSING, progressing,
                             "Applying" if changed else ("RollingOut" if not pods_ready else "Stable"),
                             "child objects changed in this pass" if changed else pods_msg))
    # Serving, but not as declared: pods missing or the topology needs attention.
    degraded = bool(report and report.available and (not pods_ready or not (report.healthy or moving)))
    out.append(cond.Cond(cond.DEGRADED, degraded, "Degraded" if degraded else "AsExpected",
                         (report.message if report else "") if degraded else ""))
    if report is not None:
        if report.master is not None:
            extra["master"] = report.master
        extra.update(report.status)
    return out, extra


def _write_status(ctx: Context, body: Obj, new_conditions: list[cond.Cond], extra: dict[str, Any],
                  outcome: Outcome) -> None:
    meta = body["metadata"]
    old = body.get("status") or {}
    generation = meta.get("generation")
    merged = cond.merge(old.get("conditions") or [], new_conditions, now=ctx.clock(), generation=generation)
    status = {**{k: v for k, v in old.items() if k in ("master",)}, **extra,
              "observedGeneration": generation, "conditions": merged}
    comparable = {k: old.get(k) for k in status}
    if comparable == status:
        return
    if log.isEnabledFor(logging.DEBUG):
        changed = sorted(k for k in status if comparable.get(k) != status[k])
        log.debug("%s/%s: status changed: %s; conditions %s -> %s", meta["namespace"], meta["name"], changed,
                  [(c.get("type"), c.get("status"), c.get("reason")) for c in old.get("conditions") or []],
                  [(c.get("type"), c.get("status"), c.get("reason")) for c in merged])
    for c in cond.transitions(old.get("conditions") or [], merged):
        if c["type"] == cond.READY or (c["type"] == cond.DEGRADED and c["status"] == "True"):
            warn = (c["type"] == cond.DEGRADED) or (c["status"] == "False" and c["reason"] in
                                                    ("InvalidSpec", "AuthSecretMissing", "AuthSecretInvalid",
                                                     "MastersDiverged", "NoSafeView",
                                                     "Unsupported", tls_step.SECRET_MISSING,
                                                     tls_step.SECRET_INVALID, tls_step.CERT_MANAGER_MISSING))
            ctx.kube.event(body, reason=f"{c['type']}{c['status']}" if not warn else c["reason"],
                           message=f"{c['type']}={c['status']} ({c['reason']}): {c['message']}",
                           type_="Warning" if warn else "Normal")
        elif c["type"] == streams_step.AUTOSCALE_CONFLICT and c["status"] == "True":
            ctx.kube.event(body, reason=c["type"], message=c["message"], type_="Warning")
        elif (c["type"], c["reason"]) in ((streams_step.STREAMS_READY, "StreamsFailed"),
                                          (monitoring_step.MONITORING_READY, monitoring_step.SKIPPED),
                                          (volumes_step.VOLUMES_EXPANDED, volumes_step.NOT_ALLOWED),
                                          (volumes_step.VOLUMES_EXPANDED, volumes_step.FAILED),
                                          (acl_step.AUTH_READY, acl_step.USER_SECRET_MISSING),
                                          (acl_step.AUTH_READY, acl_step.NOT_APPLIED)):
            ctx.kube.event(body, reason=c["reason"], message=c["message"], type_="Warning")
    try:
        ctx.kube.patch_status(models.KIND, meta["namespace"], meta["name"], status)
    except KubeError as exc:
        if exc.status == 404:  # deleted while the pass ran: nothing left to report on
            log.info("%s/%s was deleted during the pass", meta["namespace"], meta["name"])
            return
        raise
    outcome.status_written = True


# A body refused as older than one already handled is followed by a pass on the newest one this soon.
STALE_RETRY_SECONDS = 0.5


def sync(body: Obj, ctx: Context) -> Outcome:
    """Run one pass over the resource ``body`` (as the API server returned it), unless a pass of the
    same resource already ran on a newer generation (see :class:`PassOrder`): then nothing is done,
    nothing is written, and the outcome asks for a pass on the newest body soon."""
    owner = owner_of(body, ctx.cluster_domain)
    generation = generation_of(body)
    with ctx.passes.turn(owner.uid or f"{owner.namespace}/{owner.name}", generation) as admitted:
        if not admitted:
            log.debug("%s/%s: not reconciled on generation %s, older than one already handled",
                      owner.namespace, owner.name, generation)
            return Outcome(stale=True, retry_after=STALE_RETRY_SECONDS)
        return _sync(body, ctx, owner)


def _problem(ctx: Context, body: Obj, outcome: Outcome, reason: str, message: str,
             retry_after: float | None) -> Outcome:
    outcome.invalid = message
    outcome.retry_after = retry_after
    conds = [
        cond.Cond(cond.READY, False, reason, message),
        cond.Cond(cond.AVAILABLE, None, reason, message),
        cond.Cond(cond.PROGRESSING, False, reason, message),
        cond.Cond(cond.DEGRADED, True, reason, message),
    ]
    _write_status(ctx, body, conds, {}, outcome)
    return outcome


def _sync(body: Obj, ctx: Context, owner: Owner) -> Outcome:
    outcome = Outcome()
    # 1. validate: what the schema could not refuse.
    try:
        spec = models.parse_spec(body.get("spec") or {})
    except pydantic.ValidationError as exc:
        return _problem(ctx, body, outcome, "InvalidSpec", validation_message(exc), None)

    # 2. ensure children, in order.
    prepared = tls_step.Prepared()
    try:
        password = ensure_auth(ctx, spec, owner, outcome.actions)
        if ctx.tls is not None:  # before any workload: nothing runs without the TLS Secret it asks for
            prepared = ctx.tls.prepare(spec, owner)
            outcome.tls = ctx.tls.addresses.tls(owner)
        # A changed password is added on every process before the connection Secret carries it.
        rotation = acl_step.Rotation(password, password)
        if ctx.acl is not None:
            rotation = ctx.acl.before_apply(spec, owner, password)
            password, outcome.actions = rotation.use, outcome.actions + rotation.actions
        desired = build(spec, owner, password=rotation.publish, tls_facts=prepared.facts)
        monitoring = monitoring_step.plan(ctx.kube, spec, owner)  # CRD kinds only where they are served
        desired += monitoring.objects
        policy = network.network_policy(spec, owner, ctx.operator_peer)
        if policy is not None:
            desired.append(policy)
        # Larger volumes: claims grown, StatefulSet re-created (held back while it terminates).
        volumes = volumes_step.VolumesStep(ctx.kube).run(owner, desired, persistence=spec.persistence.mode != "none")
        desired, outcome.actions = volumes.desired, outcome.actions + volumes.actions
        live = ensure_children(ctx, owner, desired, outcome.actions)
        outcome.actions += monitoring_step.prune(ctx.kube, owner, desired, live)
        if policy is None:  # turned off: the resource's NetworkPolicy goes
            for item in ctx.kube.list("NetworkPolicy", owner.namespace, names.instance_selector(owner)):
                ctx.kube.delete("NetworkPolicy", owner.namespace, item["metadata"]["name"])
                outcome.actions.append(f"Deleted NetworkPolicy {item['metadata']['name']} (spec.networkPolicy is off)")
        auth = ctx.acl.after_apply(spec, owner, rotation) if ctx.acl is not None else acl_step.AclReport()
        outcome.actions += auth.actions
    except (SpecProblem, tls_step.TlsProblem) as exc:
        return _problem(ctx, body, outcome, exc.reason, exc.message, exc.retry_after)
    except UnsupportedSpec as exc:
        return _problem(ctx, body, outcome, "Unsupported", str(exc), None)
    except KubeError as exc:
        if exc.status == 422:  # the API server refused an object we built from this spec
            return _problem(ctx, body, outcome, "InvalidSpec", f"a child object was refused: {exc.message}", None)
        raise
    for action in outcome.actions:
        ctx.kube.event(body, reason=action.split(" ", 1)[0], message=action)

    # 3. check and heal the topology.
    roll = rolling_step.RollReport()
    outcome.spec, outcome.password = spec, password
    report: TopologyReport | None = None
    topology = ctx.topologies.get(spec.mode)
    if topology is not None:
        pods = ctx.kube.list("Pod", owner.namespace, names.instance_selector(owner))
        report = topology.check_and_heal(spec, owner, pods, password)
        for _pod, why in move_role_labels(ctx.kube, owner, pods, report.labels):
            outcome.actions.append(why)
            ctx.kube.event(body, reason="RoleLabelMoved", message=why)
        for act in report.actions:
            ctx.kube.event(body, reason=act.reason, message=act.message,
                           type_="Warning" if act.warning else "Normal")
            outcome.actions.append(f"{act.reason}: {act.message}")
        outcome.retry_after = report.retry_after
        for why in release_shards(ctx.kube, spec, owner, report.release):
            outcome.actions.append(why)
            ctx.kube.event(body, reason="ShardRemoved", message=why)
        statefulsets = {name: obj for (kind, name), obj in live.items() if kind == "StatefulSet"}
        if ctx.rolling is not None and spec.mode == "sentinel" and report.available:
            # Outdated pods: Sentinels, replicas, a switch-over, the old master; one at a time.
            roll = ctx.rolling.run(spec, owner, statefulsets, pods, password)
        elif ctx.cluster_rolling is not None and spec.mode == "cluster" and report.available:
            # Outdated shard pods: replicas, a CLUSTER FAILOVER per master, the old masters; one at a time.
            roll = ctx.cluster_rolling.run(spec, owner, statefulsets, pods, password)
        for reason, message in roll.events:
            ctx.kube.event(body, reason=reason, message=message)
        outcome.actions += roll.actions

    if ctx.tls is not None and prepared.leaf is not None:  # a renewed certificate, served without a restart
        redis_pods = (build_cluster.all_pods(spec, owner) if spec.mode == "cluster"
                      else [owner.redis_pod(i) for i in range(spec.redis.replicas)])
        reloaded = ctx.tls.reload(spec, owner, password, prepared, redis_pods)
        for why in reloaded.actions:
            outcome.actions.append(why)
            ctx.kube.event(body, reason="CertificateReloaded", message=why)
        if reloaded.retry_after is not None:
            outcome.retry_after = min(reloaded.retry_after, outcome.retry_after or reloaded.retry_after)

    # 4. streams: declared groups and retention on the master, and who else scales their consumers.
    if ctx.streams is not None:
        master = report.master if report is not None and report.available else None
        shards = None
        if spec.mode == "cluster":  # every stream on the master of its key's slot
            shards = report.status.get("shards", []) if report is not None and report.available else []
        outcome.streams = ctx.streams.run(spec, owner, master, password,
                                          waiting=report.message if report is not None else "", shards=shards)
        for act in outcome.streams.actions if outcome.streams is not None else ():
            ctx.kube.event(body, reason=act.reason, message=act.message,
                           type_="Warning" if act.warning else "Normal")
            outcome.actions.append(f"{act.reason}: {act.message}")

    # 5. status.
    new_conditions, extra = _conditions(spec, owner, live, report, bool(outcome.actions))
    if outcome.streams is not None:
        new_conditions += outcome.streams.conditions
    if monitoring.condition is not None:
        new_conditions.append(monitoring.condition)
    if volumes.condition is not None:
        new_conditions.append(volumes.condition)
    if auth.condition is not None:
        new_conditions.append(auth.condition)
    if roll.condition is not None:
        new_conditions.append(roll.condition)
    for later in (volumes.retry_after, auth.retry_after, roll.retry_after):
        if later is not None:
            outcome.retry_after = min(later, outcome.retry_after or later)
    extra["connection"] = {
        "secretName": owner.connection_secret,
        "host": owner.service_host(owner.master_service),
        "port": names.REDIS_PORT,
        "sentinelHost": owner.service_host(owner.sentinel_service),
        "sentinelPort": names.SENTINEL_PORT,
        "masterName": owner.master_name,
    } if spec.mode == "sentinel" else {
        "secretName": owner.connection_secret,
        "host": owner.service_host(owner.cluster_service),
        "port": names.REDIS_PORT,
    }
    _write_status(ctx, body, new_conditions, extra, outcome)
    return outcome
