"""Start the operator: Kopf with its liveness endpoint, watching the configured namespaces."""

from __future__ import annotations

import asyncio
import logging

import kopf

from redis_messaging import handlers


def run(*, namespaces: list[str], liveness: str | None, standalone: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watched = namespaces or handlers.SETTINGS.namespaces
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            clusterwide=not watched,
            namespaces=watched,
            liveness_endpoint=liveness or handlers.SETTINGS.liveness_endpoint,
        )
    )
    return 0
