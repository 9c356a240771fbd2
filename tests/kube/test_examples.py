"""Every example resource is accepted by the real API server, as `kubectl apply` would send it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import GROUP, PLURAL, VERSION, install_crd
from kubernetes import client

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "RedisMessaging"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_resources_are_accepted(kube_api: client.ApiClient, namespace: str, path: Path) -> None:
    install_crd(kube_api)
    found = docs(path)
    assert found, f"{path.name} holds no RedisMessaging"
    custom = client.CustomObjectsApi(kube_api)
    for doc in found:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc,
                                                         field_validation="Strict")
        assert created["spec"]["mode"] == doc["spec"].get("mode", "sentinel")
