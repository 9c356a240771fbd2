"""Which body a pass runs on: the newest one known, never one of an older generation."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]


def generation_of(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class _Turn:
    lock: threading.Lock = field(default_factory=threading.Lock)
    handled: int | None = None  # the highest generation a pass of this uid has started on


class PassOrder:
    """Which body a pass of a resource may run on: the newest one known, never an older generation.

    Passes of one resource start from several places, each with the body it got at some moment:
    Kopf's create/update/resume handlers (the body of their event), the periodic loop (the registry),
    a followed failover (a pass asked of the loop). A pass on a body older than one that another pass
    already handled undoes that pass's work: it rolls the pods back to the previous template, puts
    back a removed stream, shrinks what was grown. So a pass

    1. starts from the newest body known when it starts (:meth:`newest`; the periodic loop reads
       the registry right before each pass), and
    2. is refused when its generation is older than the highest one a pass of the same uid has
       already started on (:meth:`turn`, which also runs the passes of one resource one at a time).
       A refused pass writes nothing and asks to come back soon, on the newest body.

    Generations are compared within one uid only (a resource re-created under the same name starts
    again at 1), and an entry is dropped when its resource is deleted (:meth:`forget`). A body
    without a generation (the API server always sets one; hand-made bodies may lack it) cannot be
    ordered: it is admitted and records nothing.

    Kept to this one small object so that a per-resource controller can take over its own entry
    (the turn and the generation) when passes of different resources run concurrently.
    """

    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}
        self._guard = threading.Lock()

    def _turn(self, uid: str) -> _Turn:
        with self._guard:
            return self._turns.setdefault(uid, _Turn())

    @contextlib.contextmanager
    def turn(self, uid: str, generation: int | None) -> Iterator[bool]:
        """Hold the resource's turn (one pass at a time); yields whether a pass may run on
        ``generation``, and records it as handled when it may."""
        turn = self._turn(uid)
        with turn.lock:
            if generation is not None and turn.handled is not None and generation < turn.handled:
                yield False
                return
            if generation is not None:
                turn.handled = generation
            yield True

    def handled(self, uid: str) -> int | None:
        with self._guard:
            turn = self._turns.get(uid)
        return None if turn is None else turn.handled

    def forget(self, uid: str) -> None:
        with self._guard:
            self._turns.pop(uid, None)

    @staticmethod
    def newest(body: Mapping[str, Any], known: Mapping[str, Any] | None) -> dict[str, Any]:
        """Of the body a pass was handed and the newest one the watch delivered (``known``, from
        the registry), the one to run on: ``known`` when it is of the same resource (uid) and of a
        generation at least as high (watch events arrive in order: on a tie it is the later copy)."""
        if known is None or (known.get("metadata") or {}).get("uid") != (body.get("metadata") or {}).get("uid"):
            return dict(body)
        mine, theirs = generation_of(body), generation_of(known)
        if mine is not None and (theirs is None or theirs < mine):
            return dict(body)
        return dict(known)
