"""Start the operator: Kopf with its liveness endpoint, watching the configured namespaces."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf

from redis_messaging import handlers


def identity() -> str:
    """Who this operator is in Kopf's logs and peering records: the pod (its hostname) and the process.

    Given to Kopf, so that it does not look it up itself: without POD_ID it asks the user database for
    the process's user name, and the image runs as a UID that has no entry there (10001, or any UID a
    platform assigns), which would stop the operator at start."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}"


def run(*, namespaces: list[str], liveness: str | None, standalone: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A line per probe of the liveness endpoint (every 10 s per kubelet) says nothing worth keeping.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    watched = namespaces or handlers.SETTINGS.namespaces
    own: Any = identity()  # kopf's Identity is a NewType of str
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            clusterwide=not watched,
            namespaces=watched,
            liveness_endpoint=liveness or handlers.SETTINGS.liveness_endpoint,
            identity=own,
        )
    )
    return 0
