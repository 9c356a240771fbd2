"""The pass is a flat list of uniform steps: each returns what it did, its conditions and when to
come back, and one place merges them. Adding a step is adding a function and a line."""

from __future__ import annotations

from typing import Any, cast

import pytest
from fake_kube import FakeKube

from redis_messaging.api import conditions as cond
from redis_messaging.kube.client import Kube
from redis_messaging.reconcile import sync
from redis_messaging.reconcile.sync import Context, Note, Pass, StepResult


def rmsg() -> dict[str, Any]:
    body = {"apiVersion": "redis-messaging.dev/v1alpha1", "kind": "RedisMessaging",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-orders", "generation": 1},
            "spec": {"mode": "sentinel"}}
    return body


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    fake.objects[("RedisMessaging", "shop", "orders")] = rmsg()
    return fake


def test_a_step_added_to_the_list_is_merged_like_every_other(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def step_backup(p: Pass) -> StepResult:
        seen.append(p.mode.name)
        return StepResult(notes=[Note("BackupTaken", "a backup of orders", warning=False)],
                          conditions=[cond.Cond("BackupReady", False, "BackupMissing", "no backup yet")],
                          status={"lastBackup": None}, retry_after=7.0, warn=frozenset({"BackupMissing"}))

    monkeypatch.setattr(sync, "STEPS", (*sync.STEPS, ("backup", step_backup)))
    ctx = Context(kube=cast(Kube, kube), clock=lambda: "2026-01-01T00:00:00Z")
    outcome = sync.sync(rmsg(), ctx)
    assert seen == ["sentinel"]
    assert "BackupTaken: a backup of orders" in outcome.actions
    assert outcome.retry_after == 7.0  # the soonest any step asked for
    status = kube.objects[("RedisMessaging", "shop", "orders")]["status"]
    backup = next(c for c in status["conditions"] if c["type"] == "BackupReady")
    assert backup["reason"] == "BackupMissing"
    assert "lastBackup" in status
    events = {(e["reason"], e["type"]) for e in kube.events}
    assert ("BackupTaken", "Normal") in events
    assert ("BackupMissing", "Warning") in events  # its own warn: a Warning Event when it appears


def test_a_step_that_finds_the_spec_cannot_be_served_ends_the_pass_with_that_alone(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    def step_refuse(p: Pass) -> StepResult:
        raise sync.SpecProblem("BackupStoreMissing", "spec.backup names no store", 15)

    later: list[str] = []

    def step_later(p: Pass) -> StepResult:
        later.append(p.mode.name)
        return StepResult()

    monkeypatch.setattr(sync, "STEPS", (("refuse", step_refuse), ("later", step_later)))
    outcome = sync.sync(rmsg(), Context(kube=cast(Kube, kube), clock=lambda: "2026-01-01T00:00:00Z"))
    assert later == []
    assert outcome.invalid == "spec.backup names no store"
    assert outcome.retry_after == 15
    ready = next(c for c in kube.objects[("RedisMessaging", "shop", "orders")]["status"]["conditions"]
                 if c["type"] == "Ready")
    assert ready["reason"] == "BackupStoreMissing"
