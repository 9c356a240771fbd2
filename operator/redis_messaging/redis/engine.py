"""Which engine a process runs (Redis or Valkey, and its version), and which image changes its data
can follow.

Each process says what it is in ``INFO server``: Redis gives ``redis_version``; Valkey gives
``server_name:valkey`` and ``valkey_version``, and a ``redis_version`` of 7.2.4 for the clients that
read only that. The operator reports what its processes run (``status.engine``) and, before it rolls
a new image, compares what the image's tag names with what runs, so that no pod is restarted on an
image that cannot read the data the others wrote:

* the same engine, a lower major or minor version: refused (a downgrade: RDB and AOF files are
  written in the newest format their server knows, which an older one refuses to load);
* Redis up to 7.2 to Valkey: the move Valkey documents (Valkey reads Redis 7.2's RDB version 11, and
  a Valkey replica follows a Redis 7.2 master during the roll);
* Redis 7.4 or later to Valkey: refused (RDB version 12, which Valkey refuses: "Can't handle RDB
  format version 12");
* Valkey to Redis: refused (neither project supports it).

An image whose name or tag says nothing the operator can read (a digest, ``latest``, a private
build's name) is not judged: it rolls, as before.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

REDIS, VALKEY = "redis", "valkey"
LAST_REDIS_VALKEY_READS = (7, 2)  # the last Redis whose files Valkey reads


@dataclass(frozen=True, order=True)
class Engine:
    name: str  # REDIS | VALKEY
    version: tuple[int, ...]  # what is known of it: (8,) from a tag "8", (7, 0, 15) from INFO

    def __str__(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"

    @property
    def release(self) -> tuple[int, int]:
        """Major and minor: what a file format follows."""
        padded = (*self.version, 0, 0)
        return padded[0], padded[1]


def parse_version(text: str) -> tuple[int, ...] | None:
    """``7.0.15`` -> (7, 0, 15), ``8.1-alpine`` -> (8, 1), ``v9`` -> (9,); None: no version first."""
    found = re.match(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if not found:
        return None
    return tuple(int(part) for part in found.groups() if part is not None)


def engine_of(info: Mapping[str, Any]) -> Engine | None:
    """What a process runs, from its ``INFO server`` fields (None: it did not say)."""
    fields = {str(k): str(v) for k, v in info.items()}
    if "valkey_version" in fields or fields.get("server_name") == VALKEY:
        version = parse_version(fields.get("valkey_version", fields.get("redis_version", "")))
        return Engine(VALKEY, version) if version else None
    version = parse_version(fields.get("redis_version", ""))
    return Engine(REDIS, version) if version else None


def engine_of_image(image: str) -> Engine | None:
    """What an image's name and tag say: ``redis:7.2``, ``docker.io/valkey/valkey:8.1-alpine``,
    ``redis:8.0.2-bookworm@sha256:...``; None when they do not say both the engine and its version."""
    reference = image.split("@", 1)[0]
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag (a registry's port is no tag)
        return None
    repository = name.rsplit("/", 1)[-1]
    engine = {"redis": REDIS, "valkey": VALKEY}.get(repository)
    version = parse_version(tag)
    return Engine(engine, version) if engine and version else None


def summary(engines: Iterable[Engine | None]) -> str | None:
    """``status.engine``: "redis 7.0.15", or every engine and how many processes run it while they
    differ (a rolling update between versions): "redis 7.2.4 (1), valkey 8.1.1 (2)"."""
    counted = Counter(str(e) for e in engines if e is not None)
    if not counted:
        return None
    if len(counted) == 1:
        return next(iter(counted))
    return ", ".join(f"{name} ({count})" for name, count in sorted(counted.items()))


def parse_summary(text: str) -> list[Engine]:
    """The engines a ``status.engine`` names (what the last pass saw running)."""
    out = []
    for part in text.split(","):
        name, _, rest = part.strip().partition(" ")
        version = parse_version(rest)
        if name in (REDIS, VALKEY) and version:
            out.append(Engine(name, version))
    return out


def refusal(running: Iterable[Engine], target: Engine | None) -> str | None:
    """Why pods must not restart on the image that says ``target`` while processes run ``running``
    (None: they may, or the image says too little to judge)."""
    if target is None:
        return None
    for now in sorted(set(running)):
        if now.name == target.name:
            given = min(len(target.version), 2)  # "redis:8" is the newest 8.x: its minor is not known
            if target.version[:given] < now.version[:given]:
                return (f"the image names {target}, older than the {now} that runs: a {target.name} downgrade "
                        f"cannot read what {now} wrote")
        elif now.name == REDIS and target.name == VALKEY:
            if now.release > LAST_REDIS_VALKEY_READS:
                return (f"the image names {target} and {now} runs: Valkey reads the files of Redis up to "
                        f"{'.'.join(map(str, LAST_REDIS_VALKEY_READS))} only (Redis 7.4 writes RDB version 12)")
        else:
            return (f"the image names {target} and {now} runs: moving from Valkey to Redis is supported by "
                    "neither")
    return None


def cannot_load_from(master: Engine | None, replica: Engine | None) -> bool:
    """Whether a replica running ``replica`` cannot load the snapshot a master running ``master`` sends it
    (an older engine under a newer one: Redis 7.0 under Redis 8.0 or Valkey 9), both known."""
    return master is not None and replica is not None and refusal([master], replica) is not None


def has_commandlog(engine: Engine | None) -> bool:
    """Whether the engine has ``COMMANDLOG`` (Valkey 8.1 and later: the slow log, and the logs of
    large requests and replies), which redis_exporter reads where the server has it."""
    return engine is not None and engine.name == VALKEY and engine.release >= (8, 1)


ATOMIC_SLOT_MIGRATION_SINCE = (9, 0)


def has_atomic_slot_migration(engine: Engine | None) -> bool:
    """Whether the engine moves slots itself, atomically (``CLUSTER MIGRATESLOTS``: Valkey 9.0 and
    later). Redis 8.4's ``CLUSTER MIGRATION IMPORT`` is another protocol, not driven here."""
    return engine is not None and engine.name == VALKEY and engine.release >= ATOMIC_SLOT_MIGRATION_SINCE


def replicates_setslot(engine: Engine | None) -> bool:
    """Whether ``CLUSTER SETSLOT`` answers only once the node's replicas acknowledged it (Valkey 8.0 and
    later): one command after the other on a connection, so a batch is worth spreading over several."""
    return engine is not None and engine.name == VALKEY and engine.release >= (8, 0)
