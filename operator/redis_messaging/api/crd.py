"""Generate the CustomResourceDefinition from the pydantic models.

The models are the only place the schema is written. This module turns pydantic's JSON Schema
into a Kubernetes *structural* OpenAPI v3 schema: references inlined, ``Optional`` unwrapped,
``additionalProperties: false`` dropped (the API server prunes and, with strict field validation,
refuses unknown fields), free-form objects marked ``x-kubernetes-preserve-unknown-fields``, and
``default: {}`` on nested objects so their own defaults are applied by the API server.

Descriptions come from the models too: a field's ``description`` or, for a field whose type is a
model, that model's docstring (the field's own description wins). They are what ``kubectl explain``
prints, so each is folded into one paragraph; a field without one fails ``tests/unit/test_crd.py``.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from redis_messaging.api import models

_DROP = {"title", "additionalProperties", "$defs", "x-optional"}

# The fields every Kubernetes object has.
_API_VERSION_DOC = f"The API group and version of this object: {models.API_VERSION}."
_KIND_DOC = f"The kind of this object: {models.KIND}."


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)  # field-level description, extras
        return _resolve(target, defs)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"unions are not structural: {variants}")
        merged = dict(variants[0])
        merged.update(node)
        if merged.get("default", ...) is None:
            merged.pop("default")
        merged["x-optional"] = True
        return _resolve(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = dict(node.pop("allOf")[0])
        merged.update(node)
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    free_form = node.get("type") == "object" and node.get("additionalProperties") is True
    if node.get("type") == "object" and "properties" not in node and not free_form:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _structural(extra)
    for key, value in node.items():
        if key in _DROP or key == "const":
            continue
        if key == "properties":
            props = {}
            for name, sub in value.items():
                prop = _structural(sub)
                optional = sub.get("x-optional", False) or name in node.get("required", ())
                if prop.get("type") == "object" and "properties" in prop and not optional \
                        and "default" not in prop:
                    prop["default"] = {}
                props[name] = prop
            out["properties"] = props
        elif key == "items":
            out["items"] = _structural(value)
        elif key == "description":
            out[key] = " ".join(str(value).split())  # docstrings wrap: kubectl explain re-wraps
        else:
            out[key] = value
    if "const" in node:
        out["enum"] = [node["const"]]
    if free_form or (node.get("type") == "object" and not node.get("properties") and "additionalProperties"
                     not in out):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def model_schema(model: type[models.Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _structural(_resolve(raw, defs))


def crd() -> dict[str, Any]:
    spec_schema = model_schema(models.RedisMessagingSpec)
    status_schema = model_schema(models.RedisMessagingStatus)
    status_schema["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status_schema["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    spec_schema.pop("default", None)
    status_schema.pop("default", None)
    schema: dict[str, Any] = {
        "type": "object",
        "description": "Highly available Redis for messaging: Sentinel or Cluster mode, declared "
        "streams and consumer groups, lag-driven consumer autoscaling.",
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": "size(self.metadata.name) <= 40",
                "message": "metadata.name must be at most 40 characters: child object names derive from it",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION_DOC},
            "kind": {"type": "string", "description": _KIND_DOC},
            # The API server allows nothing but the type here (a description is refused with 422).
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "redis-messaging-operator"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["redis"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Master", "type": "string", "jsonPath": ".status.master"},
                        {"name": "Shards", "type": "integer", "jsonPath": ".spec.cluster.shards",
                         "priority": 0},
                        {"name": "Engine", "type": "string", "jsonPath": ".status.engine"},
                        {"name": "Reason", "type": "string", "priority": 1,
                         "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from redis_messaging.api.models by `redis-messaging crd`. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
