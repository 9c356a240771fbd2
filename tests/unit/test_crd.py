"""The CRD is generated from the models and is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from redis_messaging.api import crd, models

CRD_FILE = Path(__file__).parents[2] / "crds" / "redismessagings.redis-messaging.dev.yaml"


def _schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.crd_yaml(), (
        "crds/ drifted from the models: run `redis-messaging crd > crds/redismessagings.redis-messaging.dev.yaml`"
    )


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "const", "$defs"):
            assert forbidden not in node, f"{forbidden} at {path}"
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path


def test_metadata_is_only_an_object_as_the_api_server_requires() -> None:
    # kube-apiserver: "properties[metadata]: Forbidden: must not specify anything other than name and
    # generateName" (and the type)
    assert _schema()["properties"]["metadata"] == {"type": "object"}


def test_every_property_has_a_type() -> None:
    for path, node in _walk(_schema()):
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations") or ".x-kubernetes" in path:
            continue
        if path.rsplit(".", 2)[-2:-1] == ["properties"]:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


def _described(node: dict[str, Any], path: str):  # type: ignore[no-untyped-def]
    """(path, node) of every schema node that needs a description for `kubectl explain`: the object, each
    of its properties, and the objects an array (path ``[]``) or a map (path ``{}``) holds. Scalar items
    and values go without: the field that holds them describes them."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        if path == models.KIND and name == "metadata":
            continue  # the API server refuses anything but its type there
        yield from _described(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        sub = node.get(key)
        if isinstance(sub, dict) and sub.get("type") == "object":
            yield from _described(sub, f"{path}[]" if key == "items" else f"{path}{{}}")


@pytest.mark.parametrize("source", ["generated", "committed"])
def test_every_field_has_a_description(source: str) -> None:
    doc = crd.crd() if source == "generated" else yaml.safe_load(CRD_FILE.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [path for path, node in _described(schema, models.KIND)
               if not str(node.get("description") or "").strip()]
    assert not missing, (
        f"{len(missing)} fields of the {source} CRD have no description (Field(description=...) in "
        "redis_messaging/api/models.py, or a docstring for a model):\n  " + "\n  ".join(missing))


def test_descriptions_are_one_paragraph() -> None:
    for path, node in _described(_schema(), models.KIND):
        text = node.get("description", "")
        assert text == " ".join(text.split()), f"{path}: description with line breaks or stray blanks: {text!r}"


def test_every_model_has_a_docstring() -> None:
    undocumented = [name for name, cls in vars(models).items()
                    if isinstance(cls, type) and issubclass(cls, models.Model) and not cls.__dict__.get("__doc__")]
    assert not undocumented, f"models without a docstring: {undocumented}"


def test_names_status_subresource_and_printer_columns() -> None:
    doc = crd.crd()
    assert doc["metadata"]["name"] == "redismessagings.redis-messaging.dev"
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["rmsg"]
    assert names["kind"] == "RedisMessaging"
    assert doc["spec"]["scope"] == "Namespaced"
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Mode", "Ready", "Master", "Shards", "Engine"]
    assert columns[-1] == "Age"


def test_defaults_reach_nested_objects() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["mode"]["default"] == "sentinel"
    assert spec["redis"]["default"] == {}
    assert spec["redis"]["properties"]["replicas"]["default"] == 3
    assert spec["persistence"]["properties"]["storage"]["default"] == {}
    # optional objects must not be defaulted into existence (autoscale needs a target)
    group = spec["streams"]["items"]["properties"]["groups"]["items"]["properties"]
    assert "default" not in group["autoscale"]
    assert "default" not in spec["tls"]["properties"]["issuerRef"]


@pytest.mark.parametrize(
    ("where", "rule_part"),
    [
        (("mode",), "self == oldSelf"),
        (("sentinel",), "self.quorum <= self.replicas"),
        (("persistence", "storage", "size"), "quantity(self).compareTo(quantity(oldSelf)) >= 0"),
        (("redis", "config"), "requirepass"),
        (("tls",), "secretName"),
    ],
)
def test_cel_rules_are_in_the_schema(where: tuple[str, ...], rule_part: str) -> None:
    node = _schema()["properties"]["spec"]
    for key in where:
        node = node["properties"][key]
    rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
    assert rule_part in rules


def test_free_form_pod_fields_keep_unknown_fields() -> None:
    pod = _schema()["properties"]["spec"]["properties"]["pod"]["properties"]
    assert pod["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert pod["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_the_committed_file_is_valid_yaml_with_one_document() -> None:
    docs = list(yaml.safe_load_all(CRD_FILE.read_text()))
    assert len(docs) == 1
    assert docs[0]["kind"] == "CustomResourceDefinition"


def test_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        models.parse_spec({"mode": "sentinel", "sentinels": 3})
