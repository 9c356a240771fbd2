"""A pass never runs on a generation older than one already handled for the same resource, and it
starts from the newest body known."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from redis_messaging.kube.client import Kube
from redis_messaging.reconcile.order import PassOrder
from redis_messaging.reconcile.sync import STALE_RETRY_SECONDS, Context, sync


class RecordingKube:
    """Every call to the API server, recorded; each answers nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*_: Any, **__: Any) -> None:
            self.calls.append(name)

        return call


def rmsg(generation: int | None, uid: str = "uid-1") -> dict[str, Any]:
    """A resource whose spec can never work: an admitted pass writes an InvalidSpec status at once."""
    meta: dict[str, Any] = {"name": "orders", "namespace": "shop", "uid": uid}
    if generation is not None:
        meta["generation"] = generation
    return {"metadata": meta, "spec": {"mode": "bogus"}}


@pytest.fixture
def kube() -> RecordingKube:
    return RecordingKube()


@pytest.fixture
def ctx(kube: RecordingKube) -> Context:
    return Context(kube=cast(Kube, kube), clock=lambda: "2026-01-01T00:00:00Z")


def ran(ctx: Context, kube: RecordingKube, body: dict[str, Any]) -> bool:
    """Whether a pass ran on ``body`` (it wrote the status), as opposed to being refused."""
    kube.calls.clear()
    outcome = sync(body, ctx)
    if outcome.stale:
        assert kube.calls == [], "a refused pass sends nothing to the API server"
        assert not outcome.status_written
        assert outcome.actions == []
        assert outcome.retry_after == STALE_RETRY_SECONDS  # back soon, on the newest body
        return False
    assert "patch_status" in kube.calls
    return True


def test_a_body_older_than_one_already_handled_is_refused(
        ctx: Context, kube: RecordingKube, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert ran(ctx, kube, rmsg(2))
    assert not ran(ctx, kube, rmsg(1))
    assert any("generation 1" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_the_same_generation_again_and_a_newer_one_are_accepted(ctx: Context, kube: RecordingKube) -> None:
    assert ran(ctx, kube, rmsg(2))
    assert ran(ctx, kube, rmsg(2))  # periodic passes on an unchanged spec
    assert ran(ctx, kube, rmsg(3))
    assert not ran(ctx, kube, rmsg(2))


def test_generations_are_compared_within_one_uid_and_forgotten_on_deletion(
        ctx: Context, kube: RecordingKube) -> None:
    assert ran(ctx, kube, rmsg(5, uid="uid-1"))
    assert ran(ctx, kube, rmsg(1, uid="uid-2"))  # deleted and created again under the same name
    ctx.passes.forget("uid-1")
    assert ran(ctx, kube, rmsg(1, uid="uid-1"))


def test_a_body_without_a_generation_cannot_be_ordered_and_is_admitted(ctx: Context, kube: RecordingKube) -> None:
    assert ran(ctx, kube, rmsg(None))
    assert ran(ctx, kube, rmsg(3))
    assert ran(ctx, kube, rmsg(None))  # admitted, and it lowers nothing:
    assert ctx.passes.handled("uid-1") == 3
    assert not ran(ctx, kube, rmsg(2))


def test_the_newest_body_known_is_the_one_a_pass_takes() -> None:
    handed = {"metadata": {"uid": "u", "generation": 2}, "spec": {"image": "redis:7.0"}}
    newer = {"metadata": {"uid": "u", "generation": 3}, "spec": {"image": "redis:7.2"}}
    same_later = {"metadata": {"uid": "u", "generation": 2, "resourceVersion": "9"}, "spec": {"image": "redis:7.0"}}
    older = {"metadata": {"uid": "u", "generation": 1}, "spec": {"image": "redis:6.2"}}
    other = {"metadata": {"uid": "v", "generation": 7}, "spec": {"image": "redis:7.4"}}
    assert PassOrder.newest(handed, newer) == newer
    assert PassOrder.newest(handed, same_later) == same_later  # the watch's copy is the later one
    assert PassOrder.newest(handed, older) == handed
    assert PassOrder.newest(handed, other) == handed  # another resource of that name
    assert PassOrder.newest(handed, None) == handed
