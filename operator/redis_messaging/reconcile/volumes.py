"""Growing persistent volumes: the step of a pass that runs before the StatefulSets are applied.

A StatefulSet's ``volumeClaimTemplates`` cannot be changed, so a larger ``persistence.storage.size``
is carried out in three idempotent moves, each derived from what exists (an operator restart
resumes where the last pass stopped):

1. every existing claim of the StatefulSet (``<claim>-<sts>-<ordinal>``) smaller than the spec is
   patched to the new size, when its StorageClass allows expansion (the claim's own class, else the
   spec's, else the cluster's default class);
2. a StatefulSet whose claim template is still smaller is deleted with ``propagationPolicy: Orphan``:
   its pods keep running and its claims stay;
3. while it is terminating it is held back from the apply; once gone, the pass creates it again
   with the new template and it adopts the pods it left.

A class without ``allowVolumeExpansion`` changes nothing: the StatefulSet keeps its live claim
template (so the apply is not refused) and the ``VolumesExpanded`` condition plus a Warning Event
say why. Shrinking never reaches here: the CRD refuses it (CEL on ``persistence.storage.size``).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from redis_messaging.api import conditions as cond
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
VOLUMES_EXPANDED = "VolumesExpanded"
NOT_ALLOWED = "VolumeExpansionNotAllowed"
FAILED = "VolumeExpansionFailed"
DEFAULT_CLASS_ANNOTATIONS = ("storageclass.kubernetes.io/is-default-class",
                             "storageclass.beta.kubernetes.io/is-default-class")
TERMINATING_RETRY = 1.0

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(.*)$")


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``8Gi``, ``500M``, ``1.5e9``) as a number of units."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    try:
        value = Decimal(number)
        if suffix in _BINARY:
            return value * _BINARY[suffix]
        if suffix in _DECIMAL:
            return value * _DECIMAL[suffix]
        if suffix[:1] in ("e", "E"):
            return value * Decimal(10) ** int(suffix[1:])
    except (InvalidOperation, ValueError):
        pass
    raise ValueError(f"not a quantity: {text!r}")


def _size(claim: Obj) -> str | None:
    requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    size = requests.get("storage")
    return str(size) if size is not None else None


def _bigger(want: str | None, have: str | None) -> bool:
    if want is None or have is None:
        return False
    return parse_quantity(want) > parse_quantity(have)


@dataclass
class VolumesReport:
    desired: list[Obj]  # the objects to apply, adjusted (held-back or unchanged claim templates)
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    condition: cond.Cond | None = None
    retry_after: float | None = None


@dataclass
class _Claim:
    name: str
    size: str | None
    storage_class: str | None


class VolumesStep:
    """Compare each StatefulSet's claim templates with the spec's, grow what must grow."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    # -- reads --------------------------------------------------------------------------------
    def _claims(self, owner: Owner, sts: Obj, template: str) -> list[_Claim]:
        """The claims the StatefulSet made from ``template``, every ordinal (retained ones included)."""
        sts_name = sts["metadata"]["name"]
        selector = ",".join(f"{k}={v}" for k, v in
                            sorted(((sts.get("spec") or {}).get("selector") or {}).get("matchLabels", {}).items()))
        pattern = re.compile(rf"^{re.escape(template)}-{re.escape(sts_name)}-[0-9]+$")
        found = self.kube.list("PersistentVolumeClaim", owner.namespace, selector or None)
        out = []
        for pvc in found:
            name = pvc["metadata"]["name"]
            if pattern.match(name) and not pvc["metadata"].get("deletionTimestamp"):
                out.append(_Claim(name, _size(pvc), (pvc.get("spec") or {}).get("storageClassName")))
        return sorted(out, key=lambda c: c.name)

    def _expandable(self, storage_class: str | None) -> tuple[bool, str]:
        """Whether claims of ``storage_class`` (None: the default class) may grow, and the class named."""
        if storage_class:
            obj = self.kube.get("StorageClass", "", storage_class)
            if obj is None:
                return False, f"StorageClass {storage_class} does not exist"
            return bool(obj.get("allowVolumeExpansion")), f"StorageClass {storage_class}"
        defaults = [c for c in self.kube.list("StorageClass", "")
                    if any((c["metadata"].get("annotations") or {}).get(a) == "true"
                           for a in DEFAULT_CLASS_ANNOTATIONS)]
        if not defaults:
            return False, "no storageClassName and no default StorageClass"
        chosen = sorted(defaults, key=lambda c: c["metadata"].get("creationTimestamp", ""))[-1]
        return bool(chosen.get("allowVolumeExpansion")), f"default StorageClass {chosen['metadata']['name']}"

    # -- the step -----------------------------------------------------------------------------
    def run(self, owner: Owner, desired: list[Obj], *, persistence: bool) -> VolumesReport:
        report = VolumesReport(desired=list(desired))
        problems: list[tuple[str, str]] = []  # (reason, message)
        grown: list[str] = []
        for index, obj in enumerate(desired):
            if obj["kind"] != "StatefulSet" or not (obj.get("spec") or {}).get("volumeClaimTemplates"):
                continue
            live = self.kube.get("StatefulSet", owner.namespace, obj["metadata"]["name"])
            if live is None:
                continue
            adjusted = self._one(owner, obj, live, report, problems, grown)
            if adjusted is None:
                report.desired[index] = {}  # held back this pass: terminating
            else:
                report.desired[index] = adjusted
        report.desired = [o for o in report.desired if o]
        if not persistence:
            return report
        if problems:
            reason = NOT_ALLOWED if all(r == NOT_ALLOWED for r, _ in problems) else FAILED
            report.condition = cond.Cond(VOLUMES_EXPANDED, False, reason, "; ".join(m for _, m in problems))
        elif report.retry_after is not None or grown:
            report.condition = cond.Cond(VOLUMES_EXPANDED, False, "Expanding", "; ".join(grown) or
                                         "StatefulSet re-created with the new volume size")
        else:
            report.condition = cond.Cond(VOLUMES_EXPANDED, True, "AsDeclared",
                                         "every volume claim has the declared size")
        return report

    def _one(self, owner: Owner, obj: Obj, live: Obj, report: VolumesReport,
             problems: list[tuple[str, str]], grown: list[str]) -> Obj | None:
        name = obj["metadata"]["name"]
        if live["metadata"].get("deletionTimestamp"):
            report.retry_after = TERMINATING_RETRY
            return None
        live_templates = {t["metadata"]["name"]: t for t in live["spec"].get("volumeClaimTemplates") or []}
        # The desired object with the sizes this pass may apply; copied (spec and template list only) the
        # first time one changes: most passes change none, and a deep copy was most of this step's time.
        out = obj
        templates: list[Obj] = obj["spec"]["volumeClaimTemplates"]

        def set_template(i: int, template: Obj) -> None:
            nonlocal out, templates
            if out is obj:
                templates = list(templates)
                out = {**obj, "spec": {**obj["spec"], "volumeClaimTemplates": templates}}
            templates[i] = template

        outdated = False  # the live claim template is smaller than the spec and the claims grew
        for i, template in enumerate(obj["spec"]["volumeClaimTemplates"]):
            claim_name = template["metadata"]["name"]
            live_template = live_templates.get(claim_name)
            if live_template is None:
                continue
            want, have = _size(template), _size(live_template)
            if not _bigger(want, have):
                if want != have:  # never shrink; keep what the StatefulSet was created with
                    set_template(i, _with_size(template, have))
                continue
            claims = self._claims(owner, live, claim_name)
            ok = self._grow(owner, claims, want or "", template, report, problems, grown)
            if ok:
                outdated = True
            else:  # keep the StatefulSet as it is, so the apply is not refused
                set_template(i, _with_size(template, have))
        if not outdated:
            return out
        # 2. the template can only change by re-creating the StatefulSet; its pods and claims stay.
        self.kube.delete("StatefulSet", owner.namespace, name, propagation="Orphan")
        report.actions.append(f"Recreating StatefulSet {name} for the new volume size (pods and claims kept)")
        report.retry_after = TERMINATING_RETRY
        return None

    def _grow(self, owner: Owner, claims: list[_Claim], want: str, template: Obj, report: VolumesReport,
              problems: list[tuple[str, str]], grown: list[str]) -> bool:
        """Patch every claim smaller than ``want``; False (and a problem said) when one cannot grow."""
        smaller = [c for c in claims if _bigger(want, c.size)]
        template_class = (template.get("spec") or {}).get("storageClassName")
        for claim_class in sorted({c.storage_class or template_class or "" for c in smaller}):
            allowed, which = self._expandable(claim_class or None)
            if not allowed:
                names_ = ", ".join(c.name for c in smaller if (c.storage_class or template_class or "") == claim_class)
                problems.append((NOT_ALLOWED, f"{which} does not allow volume expansion (allowVolumeExpansion): "
                                 f"{names_} stay at their size, persistence.storage.size {want} is not applied"))
                report.warnings.append(problems[-1][1])
                return False
        for claim in smaller:
            try:
                self.kube.merge_patch("PersistentVolumeClaim", owner.namespace, claim.name,
                                      {"spec": {"resources": {"requests": {"storage": want}}}})
            except KubeError as exc:
                if exc.status == 404:
                    continue
                if exc.status in (403, 422):  # e.g. an unbound claim, or admission says no
                    problems.append((FAILED, f"PersistentVolumeClaim {claim.name} cannot grow to {want}: "
                                     f"{exc.message}"))
                    report.warnings.append(problems[-1][1])
                    return False
                raise
            report.actions.append(f"Expanded PersistentVolumeClaim {claim.name} from {claim.size} to {want}")
            grown.append(f"{claim.name} {claim.size} -> {want}")
        return True


def _with_size(template: Obj, size: str | None) -> Obj:
    out = copy.deepcopy(template)
    if size is not None:
        out["spec"]["resources"]["requests"]["storage"] = size
    return out

