"""The operator starts as a UID without a user name (the image's 10001, or one a platform assigns):
Kopf is given its identity, and so never asks the user database for one."""

from __future__ import annotations

import getpass
import socket
from typing import Any

import kopf
import pytest

from redis_messaging import runner


@pytest.fixture
def no_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 10001")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.delenv("POD_ID", raising=False)


@pytest.mark.usefixtures("no_user_name")
def test_kopf_is_given_an_identity_that_needs_no_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, Any] = {}

    async def operator(**kwargs: Any) -> None:
        given.update(kwargs)

    monkeypatch.setattr(kopf, "operator", operator)
    assert runner.run(namespaces=[], liveness=None, standalone=True) == 0
    assert given["identity"] == runner.identity()
    assert given["identity"].startswith(f"{socket.gethostname()}-")


def test_identity_is_the_pod_id_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "redis-messaging-operator-5d8f-abcde")
    assert runner.identity() == "redis-messaging-operator-5d8f-abcde"
