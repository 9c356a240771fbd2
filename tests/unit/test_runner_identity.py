"""The operator starts as a UID without a user name (the image's 10001, or one a platform assigns)."""

from __future__ import annotations

import getpass
import socket

import pytest

from redis_messaging import runner


def test_identity_needs_no_user_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 10001")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.delenv("POD_ID", raising=False)
    assert runner.identity().startswith(f"{socket.gethostname()}-")


def test_identity_is_the_pod_id_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "redis-messaging-operator-5d8f-abcde")
    assert runner.identity() == "redis-messaging-operator-5d8f-abcde"
