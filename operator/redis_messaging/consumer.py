"""A consumer-group worker for applications that read a stream the operator declares and scales.

Contract with the operator
--------------------------
* **Consumer name = pod name.** Give the container the pod's name through the downward API::

      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}

  The operator compares the consumers of a group with the pods that exist: the pending entries of
  a consumer whose pod is gone are claimed back for a live consumer, and the consumer is deleted
  once it has nothing pending. A name that is not the pod name (a random id, a fixed name shared by
  replicas) defeats that: entries would wait for ``XAUTOCLAIM`` or be processed twice in parallel.
* **At-least-once.** An entry is acknowledged only after the handler returned; a worker killed
  mid-work leaves it pending and somebody else processes it again. Handlers must be idempotent.
* **Graceful stop.** On SIGTERM the worker reads no new entries, finishes the entries it holds
  (its own pending entries included), acknowledges them and exits 0.
  ``terminationGracePeriodSeconds`` must cover one batch plus one blocking read (``block_ms``).
* **Claimed entries are picked up.** The worker re-reads its own pending entries at start and then
  every ``pending_every`` seconds, which is how entries the operator claimed for it reach it, and
  takes over entries idle longer than ``claim_idle_ms`` with ``XAUTOCLAIM``.

Environment (each also a command-line option of ``python -m redis_messaging.consumer``):
``REDIS_URL``, ``STREAM``, ``GROUP``, ``POD_NAME``, ``CONSUMER_BATCH``, ``CONSUMER_BLOCK_MS``,
``CONSUMER_CLAIM_IDLE_MS``, ``CONSUMER_PENDING_EVERY``, ``CONSUMER_MAX_SECONDS``; and for the
built-in no-op handler (tests, load generation): ``HANDLER_SLEEP_MS`` (time spent per entry),
``RECORD_FILE`` (append every processed id, one a line, before it is acknowledged) and
``RECORD_SET`` (add every processed id to this Redis set before it is acknowledged).
"""

# This module is the application-side helper, not one of the operator's layers: it runs in the
# users' pods, so it talks to Redis directly and may import the redis client library.

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from redis.client import Redis
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("redis_messaging.consumer")

Handler = Callable[[str, dict[str, str]], None]
"""Called with (entry id, fields) for every entry; raising leaves the entry pending."""
BeforeAck = Callable[[list[str]], None]
"""Called with the ids about to be acknowledged, after their handlers succeeded."""

_MAX_PENDING_ROUNDS = 1000
_MAX_CLAIM_ROUNDS = 100


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """Entries of an XREADGROUP/XAUTOCLAIM reply, whatever the protocol (RESP2 list, RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        per_stream: list[Any] = list(reply.values())
    else:
        per_stream = [item[1] for item in reply]
    out: list[tuple[str, dict[str, str] | None]] = []
    for entries in per_stream:
        if entries and isinstance(entries[0], list):  # RESP3 wraps the entries once more
            entries = entries[0]
        for entry_id, fields in entries:
            decoded = None if fields is None else {_text(k): _text(v) for k, v in fields.items()}
            out.append((_text(entry_id), decoded))
    return out


@dataclass
class ConsumerStats:
    processed: int = 0
    acked: int = 0
    failed: int = 0
    autoclaimed: int = 0
    gone: int = 0
    """Pending entries that no longer exist in the stream (trimmed or deleted); acknowledged."""


class Consumer:
    """Reads one stream through one consumer group as one named consumer.

    ``run()`` loops: own pending entries (at start, then every ``pending_every`` s), ``XAUTOCLAIM``
    of entries idle longer than ``claim_idle_ms`` (every ``claim_idle_ms / 2``), then new entries
    with a blocking read. ``stop()`` (e.g. from a SIGTERM handler) ends the loop after the entries
    in hand are handled and acknowledged.
    """

    def __init__(
        self,
        client: Redis,
        stream: str,
        group: str,
        name: str,
        handler: Handler,
        *,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        pending_every: float = 5.0,
        before_ack: BeforeAck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name:
            raise ValueError("a consumer needs a name (the pod name, from POD_NAME)")
        if batch < 1 or block_ms < 1:
            raise ValueError("batch and block_ms must be positive")
        self.client = client
        self.stream, self.group, self.name = stream, group, name
        self.handler = handler
        self.batch, self.block_ms = batch, block_ms
        self.claim_idle_ms = claim_idle_ms
        self.pending_every = pending_every
        self.before_ack = before_ack
        self.clock = clock
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._next_pending = 0.0  # due at once: own pending entries first
        self._next_claim = clock() + claim_idle_ms / 2000

    def stop(self) -> None:
        """Read no new entries; the entries in hand are still handled and acknowledged."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, max_seconds: float | None = None) -> ConsumerStats:
        """Consume until :meth:`stop` (or ``max_seconds``); Redis errors are retried with backoff."""
        deadline = None if max_seconds is None else self.clock() + max_seconds
        failures = 0
        while not self.stopping and (deadline is None or self.clock() < deadline):
            try:
                self.step()
                failures = 0
            except RedisError as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    log.warning("group %s of stream %s does not exist yet; retrying in %.1fs",
                                self.group, self.stream, delay)
                else:
                    log.warning("redis error (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
        if self.stopping:
            # Entries claimed for this consumer since its last look are in its hands too.
            try:
                self.drain_own_pending()
            except RedisError as exc:
                log.warning("could not finish own pending entries (%s); they stay pending", exc)
        log.info("consumer %s stops: %s", self.name, self.stats)
        return self.stats

    def step(self) -> int:
        """One round of the loop; returns how many entries were handled."""
        handled = 0
        now = self.clock()
        if now >= self._next_pending:
            handled += self.drain_own_pending()
            self._next_pending = self.clock() + self.pending_every
        if self.claim_idle_ms > 0 and now >= self._next_claim:
            handled += self.autoclaim()
            self._next_claim = self.clock() + max(1.0, self.claim_idle_ms / 2000)
        if self.stopping:
            return handled
        reply = self.client.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.batch, block=self.block_ms
        )
        return handled + self._handle(_entries(reply))

    def drain_own_pending(self) -> int:
        """Handle the entries delivered to this consumer and not acknowledged (history, id 0)."""
        cursor, handled = "0", 0
        for _ in range(_MAX_PENDING_ROUNDS):
            entries = _entries(self.client.xreadgroup(
                self.group, self.name, {self.stream: cursor}, count=self.batch
            ))
            if not entries:
                break
            handled += self._handle(entries)
            cursor = entries[-1][0]  # failed entries stay pending but are not retried in a loop
        return handled

    def autoclaim(self) -> int:
        """Take over and handle entries of any consumer idle longer than ``claim_idle_ms``."""
        cursor, handled = "0-0", 0
        for _ in range(_MAX_CLAIM_ROUNDS):
            reply: Any = self.client.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms, cursor, count=self.batch
            )
            cursor = _text(reply[0])
            entries = [(_text(i), None if f is None else {_text(k): _text(v) for k, v in f.items()})
                       for i, f in reply[1]]
            self.stats.autoclaimed += len(entries)
            handled += self._handle(entries)
            if cursor == "0-0":
                break
        return handled

    def _handle(self, entries: list[tuple[str, dict[str, str] | None]]) -> int:
        ok: list[str] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted or trimmed while pending: nothing left to process
                self.stats.gone += 1
                ok.append(entry_id)
                continue
            try:
                self.handler(entry_id, fields)
            except Exception:
                self.stats.failed += 1
                log.exception("handler failed on %s; the entry stays pending", entry_id)
                continue
            self.stats.processed += 1
            ok.append(entry_id)
        if ok:
            if self.before_ack is not None:
                self.before_ack(ok)
            self.stats.acked += int(self.client.xack(self.stream, self.group, *ok))
        return len(entries)


# ---------------------------------------------------------------------------------------------
# Command line: a worker with a configurable no-op handler, for tests and load generation.


def install_signal_handlers(consumer: Consumer) -> None:
    """SIGTERM and SIGINT stop the consumer gracefully."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the entries in hand, then exiting", signum)
        consumer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m redis_messaging.consumer", description="Consume a stream as one consumer of a group."
    )
    p.add_argument("--url", default=env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--stream", default=env("STREAM"))
    p.add_argument("--group", default=env("GROUP"))
    p.add_argument("--name", default=env("POD_NAME"), help="consumer name; the pod name (POD_NAME)")
    p.add_argument("--batch", type=int, default=_env_int("CONSUMER_BATCH", 100))
    p.add_argument("--block-ms", type=int, default=_env_int("CONSUMER_BLOCK_MS", 1000))
    p.add_argument("--claim-idle-ms", type=int, default=_env_int("CONSUMER_CLAIM_IDLE_MS", 60_000),
                   help="XAUTOCLAIM entries idle this long (0: never)")
    p.add_argument("--pending-every", type=float, default=float(env("CONSUMER_PENDING_EVERY") or 5.0))
    p.add_argument("--max-seconds", type=float, default=float(env("CONSUMER_MAX_SECONDS") or 0) or None)
    p.add_argument("--sleep-ms", type=float, default=float(env("HANDLER_SLEEP_MS") or 0))
    p.add_argument("--record-file", default=env("RECORD_FILE"))
    p.add_argument("--record-set", default=env("RECORD_SET"))
    p.add_argument("--create-group", action="store_true",
                   help="create the group (at id 0, with the stream) when missing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.stream or not args.group:
        log.error("STREAM and GROUP (or --stream and --group) are required")
        return 2
    name = args.name
    if not name:
        name = socket.gethostname()
        log.warning("POD_NAME is not set; using the host name %s as consumer name", name)

    client = Redis.from_url(args.url, decode_responses=True, socket_timeout=args.block_ms / 1000 + 10)
    if args.create_group:
        try:
            client.xgroup_create(args.stream, args.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    sleep_s = args.sleep_ms / 1000
    record_set: str | None = args.record_set
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        record: TextIO | None = None
        if args.record_file:
            record = stack.enter_context(open(args.record_file, "a", encoding="utf-8"))

        def handler(entry_id: str, _fields: dict[str, str]) -> None:
            if sleep_s > 0:
                time.sleep(sleep_s)
            if record is not None:
                record.write(entry_id + "\n")

        def before_ack(ids: list[str]) -> None:
            if record is not None:
                record.flush()  # in the kernel before the ack: survives a SIGKILL of this process
            if record_set:
                client.sadd(record_set, *ids)

        consumer = Consumer(
            client, args.stream, args.group, name, handler,
            batch=args.batch, block_ms=args.block_ms, claim_idle_ms=args.claim_idle_ms,
            pending_every=args.pending_every, before_ack=before_ack,
        )
        install_signal_handlers(consumer)
        consumer.run(max_seconds=args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
