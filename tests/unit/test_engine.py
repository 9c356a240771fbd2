"""What a process runs (Redis or Valkey, which version), what an image's tag names, and the image
changes the data cannot follow: refused, the pods keeping the image they run."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from fake_kube import FakeKube

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import config
from redis_messaging.kube.client import Kube
from redis_messaging.modes.base import engine_status
from redis_messaging.reconcile import sync
from redis_messaging.reconcile.acl import exporter_rules
from redis_messaging.reconcile.sync import Context
from redis_messaging.redis import acl
from redis_messaging.redis.engine import (
    REDIS,
    VALKEY,
    Engine,
    engine_of,
    engine_of_image,
    parse_summary,
    refusal,
    summary,
)


def test_the_engine_is_read_from_info_server() -> None:
    assert engine_of({"redis_version": "7.0.15", "redis_mode": "standalone"}) == Engine(REDIS, (7, 0, 15))
    # Valkey says 7.2.4 in redis_version for the clients that read only that
    valkey = {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.1"}
    assert engine_of(valkey) == Engine(VALKEY, (8, 1, 1))
    assert engine_of({"server_name": "valkey", "redis_version": "7.2.4"}) == Engine(VALKEY, (7, 2, 4))
    assert engine_of({}) is None
    assert engine_of({"redis_version": "unknown"}) is None


@pytest.mark.parametrize(("image", "expected"), [
    ("redis:7.2", Engine(REDIS, (7, 2))),
    ("redis:8", Engine(REDIS, (8,))),
    ("docker.io/library/redis:8.0.2-bookworm", Engine(REDIS, (8, 0, 2))),
    ("redis:8.0.2-alpine@sha256:" + "0" * 64, Engine(REDIS, (8, 0, 2))),
    ("valkey/valkey:8.1-alpine", Engine(VALKEY, (8, 1))),
    ("registry.example:5000/mirror/valkey:9.0.0", Engine(VALKEY, (9, 0, 0))),
    ("bitnami/redis:7.2.5", Engine(REDIS, (7, 2, 5))),
    ("redis", None),  # no tag
    ("registry.example:5000/redis", None),  # a registry's port is no tag
    ("redis:latest", None),
    ("redis@sha256:" + "0" * 64, None),
    ("myorg/cache:7.2", None),  # not an engine's name: not judged
])
def test_what_an_image_names(image: str, expected: Engine | None) -> None:
    assert engine_of_image(image) == expected


def test_status_engine_says_what_runs_and_reads_back() -> None:
    one = Engine(REDIS, (7, 0, 15))
    assert summary([one, one, None]) == "redis 7.0.15"
    mixed = summary([Engine(REDIS, (7, 2, 4)), Engine(VALKEY, (8, 1, 1)), Engine(VALKEY, (8, 1, 1))])
    assert mixed == "redis 7.2.4 (1), valkey 8.1.1 (2)"
    assert parse_summary(mixed) == [Engine(REDIS, (7, 2, 4)), Engine(VALKEY, (8, 1, 1))]
    assert parse_summary("redis 7.0.15") == [one]
    assert summary([None]) is None
    assert engine_status([None, None]) == {}  # nobody answered: the last one seen stays
    assert engine_status([one]) == {"engine": "redis 7.0.15"}


@pytest.mark.parametrize(("running", "image", "refused"), [
    ("redis 7.0.15", "redis:7.2", None),  # an upgrade
    ("redis 7.2.4", "redis:8.0", None),
    ("redis 7.2.4", "redis:7", None),  # "7" is the newest 7.x: not older than 7.2
    ("redis 7.2.4", "redis:7.2.1", None),  # a patch release reads the same files
    ("redis 7.2.4", "redis:7.0", "downgrade"),
    ("redis 8.0.2", "redis:7.2", "downgrade"),
    ("redis 7.2.4", "valkey/valkey:8.1", None),  # Valkey's documented move
    ("redis 7.0.15", "valkey/valkey:9.0", None),
    ("redis 7.4.1", "valkey/valkey:8.1", "RDB version 12"),
    ("redis 8.0.2", "valkey/valkey:9.0", "RDB version 12"),
    ("valkey 8.1.1", "redis:8.0", "supported by neither"),
    ("valkey 8.1.1", "valkey/valkey:8.0", "downgrade"),
    ("valkey 8.1.1", "valkey/valkey:9.0", None),
    ("redis 7.2.4 (1), valkey 8.1.1 (2)", "valkey/valkey:8.1", None),  # half-way through the move
    ("redis 7.2.4 (1), valkey 8.1.1 (2)", "redis:7.2", "supported by neither"),
    ("redis 8.0.2", "myorg/cache:1.0", None),  # nothing to judge by
])
def test_the_image_changes_the_data_can_follow(running: str, image: str, refused: str | None) -> None:
    why = refusal(parse_summary(running), engine_of_image(image))
    if refused is None:
        assert why is None
    else:
        assert why is not None
        assert refused in why


# ---------------------------------------------------------------------------------------------
# In the pass


def rmsg(image: str, generation: int, engine: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "redis-messaging.dev/v1alpha1", "kind": "RedisMessaging",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-orders", "generation": generation},
        "spec": {"mode": "sentinel", "image": image}}
    if engine is not None:
        body["status"] = {"engine": engine, "observedGeneration": generation - 1}
    return body


def redis_image(kube: FakeKube) -> str:
    sts = kube.objects[("StatefulSet", "shop", "orders-redis")]
    return str(next(c["image"] for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "redis"))


def condition(kube: FakeKube, type_: str) -> dict[str, Any] | None:
    status = kube.objects[("RedisMessaging", "shop", "orders")].get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def test_a_downgrade_is_refused_the_pods_keep_their_image_and_the_rest_is_reconciled() -> None:
    kube = FakeKube()
    ctx = Context(kube=cast(Kube, kube), clock=lambda: "2026-01-01T00:00:00Z")
    kube.objects[("RedisMessaging", "shop", "orders")] = rmsg("redis:8.0", 1)
    sync.sync(rmsg("redis:8.0", 1), ctx)
    assert redis_image(kube) == "redis:8.0"

    outcome = sync.sync(rmsg("redis:7.2", 2, engine="redis 8.0.2"), ctx)
    assert outcome.invalid is None  # the pass went on: only the image is held back
    assert redis_image(kube) == "redis:8.0"
    refused = condition(kube, sync.ENGINE_COMPATIBLE)
    assert refused is not None
    assert (refused["status"], refused["reason"]) == ("False", sync.IMAGE_REFUSED)
    assert "redis:7.2" in refused["message"]
    assert "older than the redis 8.0.2 that runs" in refused["message"]
    assert "keep redis:8.0" in refused["message"]
    assert (sync.IMAGE_REFUSED, "Warning") in {(e["reason"], e["type"]) for e in kube.events}
    assert kube.objects[("RedisMessaging", "shop", "orders")]["status"]["engine"] == "redis 8.0.2"

    sync.sync(rmsg("redis:8.2", 3, engine="redis 8.0.2"), ctx)  # an image it can move to
    assert redis_image(kube) == "redis:8.2"
    accepted = condition(kube, sync.ENGINE_COMPATIBLE)
    assert accepted is not None
    assert accepted["status"] == "True"


def test_a_refused_image_with_nothing_running_to_keep_refuses_the_spec() -> None:
    kube = FakeKube()
    ctx = Context(kube=cast(Kube, kube), clock=lambda: "2026-01-01T00:00:00Z")
    kube.objects[("RedisMessaging", "shop", "orders")] = rmsg("redis:8.0", 1)
    outcome = sync.sync(rmsg("valkey/valkey:8.1", 1, engine="redis 8.0.2"), ctx)
    assert outcome.invalid is not None
    assert "RDB version 12" in outcome.invalid
    assert ("StatefulSet", "shop", "orders-redis") not in kube.objects


@pytest.mark.parametrize(("info", "has"), [
    ({"redis_version": "7.0.15"}, False),
    ({"redis_version": "8.0.6"}, False),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.0.2"}, False),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.1"}, True),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"}, True),
    ({}, False),
])
def test_the_exporter_reads_commandlog_only_where_the_engine_has_it(info: dict[str, str], has: bool) -> None:
    engine = engine_of(info)
    user = acl.User(config.EXPORTER_USER, "pw", config.EXPORTER_RULES_REDIS, for_engine=exporter_rules).on(engine)
    assert ("+commandlog|len" in user.rules.split()) is has
    assert user.rules.startswith(config.EXPORTER_RULES_REDIS)
    assert user.for_engine is None
    plain = acl.User("app", "pw", "+@read")
    assert plain.on(engine) is plain


@pytest.mark.parametrize(("version", "added"), [
    ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1", False),
    ("Redis server v=8.0.6 sha=00000000:1 malloc=jemalloc-5.3.0 bits=64 build=1", False),
    ("Valkey server v=8.0.2 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1", False),
    ("Valkey server v=8.1.1 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1", True),
    ("Valkey server v=9.1.2 sha=00000000:1 malloc=jemalloc-5.3.0 bits=64 build=1", True),
    ("Valkey server v=10.0.0 sha=00000000:1 malloc=jemalloc-5.3.0 bits=64 build=1", True),
])
def test_the_start_script_gives_the_exporter_commandlog_only_where_the_server_has_it(
        tmp_path: Path, version: str, added: bool) -> None:
    """The users of redis.conf come from users.acl at start; a COMMANDLOG rule on a server without it
    would stop the server, so the line is added where `redis-server --version` says Valkey 8.1+."""
    spec = RedisMessagingSpec.model_validate({"mode": "sentinel", "auth": {"enabled": True}})
    (tmp_path / "common.sh").write_text(config.COMMON_SH)
    (tmp_path / "users.acl").write_text(config.users_acl(spec))
    users = tmp_path / "users"
    users.mkdir()
    (users / config.EXPORTER_FILE).write_text("exporter-pw")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text(f"#!/bin/sh\necho '{version}'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RMSG_CONFIG_DIR": str(tmp_path), "RMSG_USERS_DIR": str(users),
           "RMSG_AUTH_DIR": str(tmp_path / "none"), "RMSG_SELF_HOST": "pod", "HOME": str(tmp_path)}
    out = subprocess.run(["sh", "-c", f'. "{tmp_path}/common.sh"; acl_users "{tmp_path}/users.acl"'],
                         env=env, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    more = f" {config.EXPORTER_RULES_COMMANDLOG}" if added else ""
    # one line per user: a configuration file that declares a user twice stops the server
    assert out == [f'user {config.EXPORTER_USER} reset on ">exporter-pw" {config.EXPORTER_RULES_REDIS}{more}']
