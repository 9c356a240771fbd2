"""`redis-messaging run | render | crd`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from redis_messaging.api import crd as crd_module
from redis_messaging.api import models
from redis_messaging.builders import UnsupportedSpec, common
from redis_messaging.builders.names import Owner
from redis_messaging.modes import build


def _render(path: str) -> int:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    out = []
    for doc in docs:
        if doc.get("kind") != models.KIND:
            continue
        meta = doc.get("metadata") or {}
        owner = Owner(name=meta.get("name", "example"), namespace=meta.get("namespace", "default"),
                      uid="<uid>")
        try:
            spec = models.parse_spec(doc.get("spec") or {})
            secret = common.auth_secret_name(spec, owner)
            placeholder = f"<password from Secret {secret}>" if secret else None
            objects = build(spec, owner, password=placeholder)
            if spec.auth.enabled and not spec.auth.secret_name:
                objects.insert(1, common.generated_auth_secret(owner))
            exporter = common.exporter_secret_name(spec, owner)
            if exporter:
                objects.insert(1, common.generated_auth_secret(owner, exporter))
        except (ValueError, UnsupportedSpec) as exc:
            print(f"error: {owner.name}: {exc}", file=sys.stderr)
            return 1
        out.extend(objects)
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False, width=110))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="redis-messaging", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", default=[],
                     help="watch only these namespaces (default: all, or REDIS_MESSAGING_NAMESPACES)")
    run.add_argument("--liveness", default=None,
                     help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--standalone", action="store_true", help="no peering with other operators")
    render = sub.add_parser("render", help="print the objects a resource yields, without a cluster")
    render.add_argument("-f", "--filename", required=True, help="RedisMessaging YAML ('-' for stdin)")
    sub.add_parser("crd", help="print the CustomResourceDefinition")
    args = parser.parse_args(argv)

    if args.command == "crd":
        sys.stdout.write(crd_module.crd_yaml())
        return 0
    if args.command == "render":
        return _render(args.filename)
    from redis_messaging import runner  # imports kopf; keep `render` and `crd` light

    return runner.run(namespaces=args.namespace, liveness=args.liveness, standalone=args.standalone)


if __name__ == "__main__":
    raise SystemExit(main())
