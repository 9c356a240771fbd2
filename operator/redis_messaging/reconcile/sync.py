"""One idempotent reconcile pass: a flat list of uniform steps, merged into one status.

Every wake-up (a new resource, a spec change, a change of an owned pod, a followed failover, the safety
net) runs :func:`sync`. After the spec is validated and its mode found (:mod:`redis_messaging.modes`),
each step of :data:`STEPS` runs in order and returns a :class:`StepResult`: what it did (each a
:class:`Note`: an Event, Warning or Normal, and a line of the pass's log), the conditions it reports, the
status fields it fills, when it wants the pass to come back, and which of its conditions' reasons are
Warning Events when they appear. A step that finds the spec cannot be served raises :class:`SpecProblem`
(or the TLS step's problem): the pass then writes only that. One place (:func:`_finish`) merges the
results and writes the status, and only when it differs: a pass that finds nothing to change sends no
write (and, reading the children from the operator's indices, no request at all).

Adding a step is adding a function and a line to :data:`STEPS`.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from redis_messaging import modes
from redis_messaging.api import conditions as cond
from redis_messaging.api import models
from redis_messaging.builders import UnsupportedSpec, common, names, network
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError, needs_apply, with_applied_hash
from redis_messaging.modes.base import Action, Mode, Roller, Topology, TopologyReport
from redis_messaging.modes.cluster import topology as cluster_topology
from redis_messaging.reconcile import acl as acl_step
from redis_messaging.reconcile import monitoring as monitoring_step
from redis_messaging.reconcile import streams as streams_step
from redis_messaging.reconcile import tls as tls_step
from redis_messaging.reconcile import volumes as volumes_step
from redis_messaging.reconcile.order import PassOrder, generation_of
from redis_messaging.reconcile.streams import StreamsReport, StreamsStep
from redis_messaging.redis import engine
from redis_messaging.redis.tls import ClientTls

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PASSWORD_ALPHABET = string.ascii_letters + string.digits
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


@dataclass
class Context:
    """What the passes of one resource use: its controller builds one, with one step instance each
    (their connections and caches are this resource's only)."""

    kube: Kube
    cluster_domain: str = "cluster.local"
    topologies: dict[str, Topology] = field(default_factory=dict)  # by mode; a mode without one: unchecked
    rollers: dict[str, Roller] = field(default_factory=dict)  # by mode; a mode without one: no rolling update
    streams: StreamsStep | None = None  # groups, retention and autoscale conflicts; None: skipped
    acl: acl_step.AclStep | None = None  # ACL users and password rotation on the processes; None: skipped
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


@dataclass(frozen=True)
class Note:
    """Something a step did: an Event on the resource (Warning when ``warning``) and a line of the log."""

    reason: str
    message: str
    warning: bool = False
    prefixed: bool = True  # the log line says "<reason>: <message>" (else the message alone)

    @property
    def line(self) -> str:
        return f"{self.reason}: {self.message}" if self.prefixed else self.message

    @classmethod
    def of(cls, action: Action) -> Note:
        return cls(action.reason, action.message, action.warning)


@dataclass
class StepResult:
    notes: list[Note] = field(default_factory=list)
    conditions: list[cond.Cond] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    warn: frozenset[str] = frozenset()  # reasons of its conditions that are a Warning Event when they appear


@dataclass
class Pass:
    """What the steps of one pass share."""

    ctx: Context
    body: Obj
    owner: Owner
    spec: models.RedisMessagingSpec
    mode: Mode
    outcome: Outcome
    password: str | None = None
    rotation: acl_step.Rotation | None = None
    prepared: tls_step.Prepared = field(default_factory=tls_step.Prepared)
    live: dict[tuple[str, str], Obj] = field(default_factory=dict)
    pods: list[Obj] = field(default_factory=list)
    report: TopologyReport | None = None


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


def ensure_auth(ctx: Context, spec: models.RedisMessagingSpec, owner: Owner, notes: list[Note]) -> str | None:
    """The default user's password: from the named Secret, or a generated one created once. The
    exporter user's generated Secret is created here too (the pods mount it)."""
    exporter = common.exporter_secret_name(spec, owner)
    if exporter is not None and ctx.kube.get("Secret", owner.namespace, exporter) is None:
        _create_generated(ctx, owner, exporter, notes)
    name = common.auth_secret_name(spec, owner)
    if name is None:
        return None
    secret = ctx.kube.get("Secret", owner.namespace, name)
    if secret is None:
        if spec.auth.secret_name:
            # looked at again soon: a missing Secret is usually being created right now
            raise SpecProblem("AuthSecretMissing",
                              f"Secret {name} named in spec.auth.secretName does not exist", 5)
        secret = _create_generated(ctx, owner, name, notes)
    raw = (secret.get("data") or {}).get("password")
    if not raw:
        raise SpecProblem("AuthSecretInvalid", f"Secret {name} has no key 'password'", 30)
    return base64.b64decode(raw).decode()


def _create_generated(ctx: Context, owner: Owner, name: str, notes: list[Note]) -> Obj:
    obj = common.generated_auth_secret(owner, name)
    obj["stringData"] = {"password": generate_password()}
    created = ctx.kube.create(obj)
    notes.append(_changed(f"Created Secret {name} with a generated password"))
    return created


def _changed(line: str) -> Note:
    """A child created, updated or deleted: the Event's reason is the verb."""
    return Note(line.split(" ", 1)[0], line, prefixed=False)


def ensure_children(ctx: Context, owner: Owner, desired: list[Obj], notes: list[Note]) -> dict[tuple[str, str], Obj]:
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
        notes.append(_changed(f"{verb} {key[0]} {key[1]}" + ("" if why == "missing" else f" ({why})")))
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


def release_shards(kube: Kube, spec: models.RedisMessagingSpec, owner: Owner, release: list[str]) -> list[str]:
    """Delete the StatefulSet and PodDisruptionBudget of shards the topology released (their slots
    moved away, their nodes forgotten); never those of a shard the spec still declares."""
    done = []
    for name in release:
        index = owner.shard_of_object(name)
        if index is None or spec.mode != "cluster" or index < spec.cluster.shards:
            continue
        for kind in ("StatefulSet", "PodDisruptionBudget"):
            if kube.get(kind, owner.namespace, name) is not None:
                kube.delete(kind, owner.namespace, name)
                done.append(f"Deleted {kind} {name}: its slots moved to the other shards and its nodes left")
    return done


# ---------------------------------------------------------------------------------------------
# The steps, in order


def step_auth(p: Pass) -> StepResult:
    """The default user's password (and the exporter's generated Secret)."""
    out = StepResult()
    p.password = ensure_auth(p.ctx, p.spec, p.owner, out.notes)
    return out


def step_tls(p: Pass) -> StepResult:
    """Before any workload: nothing runs without the TLS Secret it asks for."""
    if p.ctx.tls is not None:
        p.prepared = p.ctx.tls.prepare(p.spec, p.owner)
        p.outcome.tls = p.ctx.tls.addresses.tls(p.owner)
    return StepResult()


def step_rotation(p: Pass) -> StepResult:
    """A changed password is added on every process before the connection Secret carries it."""
    out = StepResult()
    p.rotation = acl_step.Rotation(p.password, p.password)
    if p.ctx.acl is not None:
        p.rotation = p.ctx.acl.before_apply(p.spec, p.owner, p.password)
        p.password = p.rotation.use
        out.notes += [_changed(line) for line in p.rotation.actions]
    return out


def step_children(p: Pass) -> StepResult:
    """Every child object as the spec says: the mode's objects, monitoring, the NetworkPolicy; larger
    volumes grown first (the StatefulSet re-created, held back while it terminates)."""
    ctx, spec, owner = p.ctx, p.spec, p.owner
    out = StepResult(warn=frozenset({monitoring_step.SKIPPED, volumes_step.NOT_ALLOWED, volumes_step.FAILED}))
    assert p.rotation is not None  # set by step_rotation
    desired = p.mode.objects(spec, owner, password=p.rotation.publish, tls_facts=p.prepared.facts)
    monitoring = monitoring_step.plan(ctx.kube, spec, owner)  # CRD kinds only where they are served
    desired += monitoring.objects
    policy = network.network_policy(spec, owner, ctx.operator_peer)
    if policy is not None:
        desired.append(policy)
    volumes = volumes_step.VolumesStep(ctx.kube).run(owner, desired, persistence=spec.persistence.mode != "none")
    out.notes += [_changed(line) for line in volumes.actions]
    p.live = ensure_children(ctx, owner, volumes.desired, out.notes)
    out.notes += [_changed(line) for line in monitoring_step.prune(ctx.kube, owner, volumes.desired, p.live)]
    if policy is None:  # turned off: the resource's NetworkPolicy goes
        for item in ctx.kube.list("NetworkPolicy", owner.namespace, names.instance_selector(owner)):
            ctx.kube.delete("NetworkPolicy", owner.namespace, item["metadata"]["name"])
            out.notes.append(_changed(f"Deleted NetworkPolicy {item['metadata']['name']} (spec.networkPolicy is off)"))
    out.conditions += [c for c in (monitoring.condition, volumes.condition) if c is not None]
    out.retry_after = volumes.retry_after
    return out


def step_users(p: Pass) -> StepResult:
    """ACL users on every process, and the end of a password rotation."""
    out = StepResult(warn=frozenset({acl_step.USER_SECRET_MISSING, acl_step.NOT_APPLIED, acl_step.USER_RULES_REFUSED}))
    if p.ctx.acl is None or p.rotation is None:
        return out
    auth = p.ctx.acl.after_apply(p.spec, p.owner, p.rotation)
    out.notes += [_changed(line) for line in auth.actions]
    out.conditions += [auth.condition] if auth.condition is not None else []
    out.retry_after = auth.retry_after
    return out


def step_topology(p: Pass) -> StepResult:
    """Check and heal the processes (the mode's controller), role labels, shards released."""
    out = StepResult()
    p.outcome.spec, p.outcome.password = p.spec, p.password
    topology = p.ctx.topologies.get(p.mode.name)
    if topology is None:
        return out
    ctx, owner = p.ctx, p.owner
    p.pods = ctx.kube.list("Pod", owner.namespace, names.instance_selector(owner))
    report = p.report = topology.check_and_heal(p.spec, owner, p.pods, p.password)
    out.notes += [Note("RoleLabelMoved", why, prefixed=False)
                  for _, why in move_role_labels(ctx.kube, owner, p.pods, report.labels)]
    out.notes += [Note.of(action) for action in report.actions]
    out.notes += [Note("ShardRemoved", why, prefixed=False)
                  for why in release_shards(ctx.kube, p.spec, owner, report.release)]
    out.retry_after = report.retry_after
    return out


def step_rolling(p: Pass) -> StepResult:
    """Outdated pods replaced one disruption at a time, in the mode's order, only while serving."""
    out = StepResult()
    roller = p.ctx.rollers.get(p.mode.name)
    if roller is None or p.report is None or not p.report.available:
        return out
    statefulsets = {name: obj for (kind, name), obj in p.live.items() if kind == "StatefulSet"}
    roll = roller.run(p.spec, p.owner, statefulsets, p.pods, p.password)
    out.notes += [Note(reason, message) for reason, message in roll.events]
    out.conditions += [roll.condition] if roll.condition is not None else []
    out.retry_after = roll.retry_after
    return out


def step_certificates(p: Pass) -> StepResult:
    """A renewed certificate, served by every redis-server without a restart."""
    out = StepResult()
    if p.ctx.tls is None or p.prepared.leaf is None:
        return out
    reloaded = p.ctx.tls.reload(p.spec, p.owner, p.password, p.prepared, p.mode.redis_pods(p.spec, p.owner))
    out.notes += [Note("CertificateReloaded", why, prefixed=False) for why in reloaded.actions]
    out.retry_after = reloaded.retry_after
    return out


def step_streams(p: Pass) -> StepResult:
    """Declared groups and retention where each stream lives, and who else scales their consumers."""
    out = StepResult(warn=frozenset({"StreamsFailed", streams_step.AUTOSCALE_CONFLICT,
                                     streams_step.DEAD_LETTER_REFUSED}))
    if p.ctx.streams is None:
        return out
    report = p.report
    master = report.master if report is not None and report.available else None
    shards = None
    if p.spec.mode == "cluster":  # every stream on the master of its key's slot
        shards = report.status.get("shards", []) if report is not None and report.available else []
    streams = p.outcome.streams = p.ctx.streams.run(p.spec, p.owner, master, p.password,
                                                    waiting=report.message if report is not None else "",
                                                    shards=shards)
    if streams is not None:
        out.notes += [Note.of(action) for action in streams.actions]
        out.conditions += streams.conditions
    return out


ENGINE_COMPATIBLE = "EngineCompatible"
IMAGE_REFUSED = "ImageRefused"


def step_engine(p: Pass) -> StepResult:
    """A spec.image whose tag the data cannot follow (:mod:`redis_messaging.redis.engine`: a downgrade,
    Valkey to Redis, Redis 7.4 or later to Valkey) is refused: the pods keep the image they were given,
    everything else is reconciled, and ``EngineCompatible`` says why (a Warning Event when it appears).
    What runs is ``status.engine``, from the processes' INFO at the last passes."""
    out = StepResult(warn=frozenset({IMAGE_REFUSED}))
    running = engine.parse_summary(str((p.body.get("status") or {}).get("engine") or ""))
    if not running:
        return out
    why = engine.refusal(running, engine.engine_of_image(p.spec.image))
    if why is None:
        out.conditions.append(cond.Cond(ENGINE_COMPATIBLE, True, "Compatible",
                                        f"spec.image {p.spec.image}; running: {', '.join(map(str, running))}"))
        return out
    kept = _image_in_use(p)
    if kept is None:  # nothing to keep: the whole spec waits for a human
        raise SpecProblem(IMAGE_REFUSED, f"spec.image {p.spec.image} refused: {why}")
    out.conditions.append(cond.Cond(ENGINE_COMPATIBLE, False, IMAGE_REFUSED,
                                    f"spec.image {p.spec.image} refused: {why}; the pods keep {kept} until "
                                    "spec.image names an image they can move to"))
    p.spec = p.spec.model_copy(update={"image": kept})
    return out


def _image_in_use(p: Pass) -> str | None:
    """The Redis container's image in the resource's StatefulSets: what the last accepted spec gave."""
    found = []
    for sts in p.ctx.kube.list("StatefulSet", p.owner.namespace, names.instance_selector(p.owner)):
        containers = ((((sts.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
        found += [c["image"] for c in containers if c.get("name") == "redis" and c.get("image")]
    return sorted(found)[0] if found else None


Step = Callable[[Pass], StepResult]
STEPS: tuple[tuple[str, Step], ...] = (
    ("engine", step_engine),
    ("auth", step_auth),
    ("tls", step_tls),
    ("rotation", step_rotation),
    ("children", step_children),
    ("users", step_users),
    ("topology", step_topology),
    ("rolling update", step_rolling),
    ("certificates", step_certificates),
    ("streams", step_streams),
)
"""The steps of a pass, in order."""


# ---------------------------------------------------------------------------------------------
# The pass


def _conditions(spec: models.RedisMessagingSpec, mode: Mode, owner: Owner, live: dict[tuple[str, str], Obj],
                report: TopologyReport | None, changed: bool) -> tuple[list[cond.Cond], dict[str, Any]]:
    pods_ready, pods_msg, redis_ready = mode.readiness(spec, owner, live)
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


PROBLEM_WARNINGS = frozenset({"InvalidSpec", "AuthSecretMissing", "AuthSecretInvalid", "Unsupported",
                              tls_step.SECRET_MISSING, tls_step.SECRET_INVALID, tls_step.CERT_MANAGER_MISSING})
"""Reasons of a spec that cannot be served: a Warning Event when Ready turns False for them."""

TOPOLOGY_WARNINGS = frozenset({"MastersDiverged", "NoSafeView"})
"""Reasons of a topology wait that needs a human: a Warning Event when Ready turns False for them."""


def _write_status(ctx: Context, body: Obj, new_conditions: list[cond.Cond], extra: dict[str, Any],
                  outcome: Outcome, warn: frozenset[str] = frozenset()) -> None:
    """The status, when it differs from the body's; an Event for each transition worth one: Ready,
    Degraded turning True, and any condition turning to a reason of ``warn`` (a Warning)."""
    meta = body["metadata"]
    old = body.get("status") or {}
    generation = meta.get("generation")
    merged = cond.merge(old.get("conditions") or [], new_conditions, now=ctx.clock(), generation=generation)
    status = {**{k: v for k, v in old.items() if k in ("master", "engine")}, **extra,
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
            warning = (c["type"] == cond.DEGRADED) or (c["status"] == "False" and c["reason"] in warn)
            ctx.kube.event(body, reason=f"{c['type']}{c['status']}" if not warning else c["reason"],
                           message=f"{c['type']}={c['status']} ({c['reason']}): {c['message']}",
                           type_="Warning" if warning else "Normal")
        elif c["type"] in warn and c["status"] == "True":  # a condition that is a problem when True
            ctx.kube.event(body, reason=c["type"], message=c["message"], type_="Warning")
        elif c["reason"] in warn:
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
    try:  # what the schema could not refuse
        spec = models.parse_spec(body.get("spec") or {})
    except pydantic.ValidationError as exc:
        return _problem(ctx, body, outcome, "InvalidSpec", validation_message(exc), None)
    try:
        mode = modes.of(spec)
    except UnsupportedSpec as exc:
        return _problem(ctx, body, outcome, "Unsupported", str(exc), None)
    p = Pass(ctx, body, owner, spec, mode, outcome)
    results: list[StepResult] = []
    for name, step in STEPS:
        try:
            result = step(p)
        except (SpecProblem, tls_step.TlsProblem) as exc:
            return _problem(ctx, body, outcome, exc.reason, exc.message, exc.retry_after)
        except UnsupportedSpec as exc:
            return _problem(ctx, body, outcome, "Unsupported", str(exc), None)
        except KubeError as exc:
            if exc.status == 422:  # the API server refused an object we built from this spec
                return _problem(ctx, body, outcome, "InvalidSpec", f"a child object was refused: {exc.message}",
                                None)
            raise
        for note in result.notes:
            ctx.kube.event(body, reason=note.reason, message=note.message,
                           type_="Warning" if note.warning else "Normal")
            outcome.actions.append(note.line)
        log.debug("%s/%s: step %s: %d notes", owner.namespace, owner.name, name, len(result.notes))
        results.append(result)
    return _finish(p, results)


def _finish(p: Pass, results: list[StepResult]) -> Outcome:
    """One status from every step's result; when to come back: the soonest any step asked for."""
    new_conditions, extra = _conditions(p.spec, p.mode, p.owner, p.live, p.report, bool(p.outcome.actions))
    warn = set(PROBLEM_WARNINGS | TOPOLOGY_WARNINGS)
    for result in results:
        new_conditions += result.conditions
        extra.update(result.status)
        warn |= result.warn
        if result.retry_after is not None:
            p.outcome.retry_after = min(result.retry_after, p.outcome.retry_after or result.retry_after)
    extra["connection"] = p.mode.connection(p.spec, p.owner)
    _write_status(p.ctx, p.body, new_conditions, extra, p.outcome, frozenset(warn))
    return p.outcome
