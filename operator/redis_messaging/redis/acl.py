"""ACL users and the default user's passwords on Redis and Sentinel processes.

Redis keeps several passwords per user (``>pw`` adds one, ``<pw`` removes one, ``resetpass`` all),
which is what makes a rotation without downtime possible: the new password is added next to the old
one, clients move, the old one is removed. Existing connections stay authenticated throughout.

No password ever leaves this module in a message: errors are scrubbed before they are raised, and
nothing here logs a command's arguments. Redis reports passwords as SHA-256 hashes
(``ACL GETUSER``), which is how a password is checked without sending it anywhere.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.backoff import NoBackoff
from redis.client import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from redis_messaging.redis import DRIVER_INFO
from redis_messaging.redis.engine import Engine, engine_of
from redis_messaging.redis.tls import ClientTls
from redis_messaging.redis.tls import options as tls_options

log = logging.getLogger(__name__)

Address = tuple[str, int]


class AclError(RuntimeError):
    """A node refused or could not be reached; the message holds no secret."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def password_hash(password: str) -> str:
    """How Redis stores and reports a password (``ACL GETUSER`` ``passwords``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cmd(client: Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _client(address: Address, password: str | None, timeout: float, tls: ClientTls | None) -> Redis:
    return Redis(host=address[0], port=address[1], password=password, socket_timeout=timeout,
                 socket_connect_timeout=timeout, decode_responses=True, retry=Retry(NoBackoff(), 0),
                 driver_info=DRIVER_INFO, **tls_options(tls))


def connect(address: Address, passwords: Sequence[str | None], *, timeout: float = 2.0,
            tls: ClientTls | None = None) -> Node:
    """The process at ``address``, authenticated with the first of ``passwords`` it accepts.

    Raises :class:`AclError` when none is accepted or the process does not answer.
    """
    refused = 0
    for password in dict.fromkeys(passwords):
        client = _client(address, password, timeout, tls)
        try:
            _cmd(client, "PING")
            return Node(client, password)
        except AuthenticationError:
            client.close()
            refused += 1
        except ResponseError as exc:  # NOAUTH / WRONGPASS come as ResponseError from some servers
            client.close()
            if any(word in str(exc) for word in ("NOAUTH", "WRONGPASS", "invalid password", "invalid username")):
                refused += 1
                continue
            raise AclError(scrub(str(exc), passwords)) from None
        except (RedisError, OSError) as exc:
            client.close()
            raise AclError(f"{address[0]}:{address[1]} does not answer: {type(exc).__name__}",
                           unreachable=True) from None
    raise AclError(f"{address[0]}:{address[1]} accepts none of the {refused} known passwords")


class Node:
    """One authenticated connection to a Redis or Sentinel process (close it when done)."""

    def __init__(self, client: Redis, password: str | None) -> None:
        self.client = client
        self.password = password

    def close(self) -> None:
        self.client.close()

    def default_hashes(self) -> set[str]:
        return default_hashes(self.client)

    def add_password(self, password: str, *, sentinel: bool, master_name: str | None) -> None:
        add_password(self.client, password, sentinel=sentinel, master_name=master_name)

    def keep_only(self, password: str, *, sentinel: bool, master_name: str | None) -> bool:
        return keep_only(self.client, password, sentinel=sentinel, master_name=master_name)

    def users_state(self, declared: Sequence[str]) -> UsersState:
        return users_state(self.client, declared)

    def set_user(self, user: User) -> None:
        set_user(self.client, user)

    def delete_users(self, names: Iterable[str]) -> None:
        delete_users(self.client, names)


# ---------------------------------------------------------------------------------------------
# The default user's password


def default_hashes(client: Redis) -> set[str]:
    """The hashes of every password of the default user."""
    try:
        fields = _pairs(_cmd(client, "ACL", "GETUSER", "default"))
    except (RedisError, OSError) as exc:
        raise AclError(f"{type(exc).__name__}: {exc}") from None
    return {_text(h) for h in fields.get("passwords") or []}


def add_password(client: Redis, password: str, *, sentinel: bool, master_name: str | None) -> None:
    """Make ``password`` valid next to the current one(s), and the one this process uses to talk to
    its peers (masterauth; Sentinel: auth-pass and sentinel-pass). Idempotent."""
    try:
        _cmd(client, "ACL", "SETUSER", "default", "on", f">{password}")
        if sentinel:
            _cmd(client, "SENTINEL", "CONFIG", "SET", "sentinel-pass", password)
            if master_name is not None:
                _sentinel_auth_pass(client, master_name, password)
        else:
            _cmd(client, "CONFIG", "SET", "masterauth", password)
    except (RedisError, OSError) as exc:
        raise AclError(scrub(f"{type(exc).__name__}: {exc}", [password])) from None


def keep_only(client: Redis, password: str, *, sentinel: bool, master_name: str | None) -> bool:
    """Remove every other password of the default user (one atomic ACL SETUSER); True if one was removed."""
    try:
        if default_hashes(client) == {password_hash(password)}:
            return False
        add_password(client, password, sentinel=sentinel, master_name=master_name)  # peers use it first
        _cmd(client, "ACL", "SETUSER", "default", "on", "resetpass", f">{password}")
        return True
    except (RedisError, OSError) as exc:
        raise AclError(scrub(f"{type(exc).__name__}: {exc}", [password])) from None


def _sentinel_auth_pass(client: Redis, master_name: str, password: str) -> None:
    try:
        _cmd(client, "SENTINEL", "SET", master_name, "auth-pass", password)
    except ResponseError as exc:
        if "No such master" not in str(exc):  # a Sentinel not monitoring yet gets it with its monitor
            raise


# ---------------------------------------------------------------------------------------------
# Declared users


@dataclass(frozen=True)
class User:
    name: str
    password: str
    rules: str
    # the rules on a process of a given engine, when they depend on it (commands an engine has)
    for_engine: Callable[[Engine | None], str] | None = None

    @property
    def rules_hash(self) -> str:
        return hashlib.sha256(self.rules.encode()).hexdigest()[:16]

    def on(self, engine: Engine | None) -> User:
        """This user as it is set on a process running ``engine``."""
        return self if self.for_engine is None else replace(self, rules=self.for_engine(engine), for_engine=None)


def _pairs(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    items = list(reply or [])
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


@dataclass(frozen=True)
class UsersState:
    run_id: str
    users: dict[str, dict[str, Any]]  # declared name -> ACL GETUSER fields (absent: no such user)
    others: tuple[str, ...]  # users that exist and were not asked about (default excluded)
    engine: Engine | None = None  # what the process runs (its INFO server)


def users_state(client: Redis, declared: Sequence[str]) -> UsersState:
    """The run id, the ``declared`` users as the process knows them and the names of all others,
    in one round trip."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("INFO", "server")  # type: ignore[no-untyped-call]
        pipe.execute_command("ACL", "USERS")  # type: ignore[no-untyped-call]
        for name in declared:
            pipe.execute_command("ACL", "GETUSER", name)  # type: ignore[no-untyped-call]
        replies = pipe.execute()
    except (RedisError, OSError) as exc:
        raise AclError(f"{type(exc).__name__}: {exc}") from None
    info, all_users, found = replies[0], [_text(n) for n in replies[1] or []], replies[2:]
    run_id = str(info.get("run_id", "")) if isinstance(info, dict) else ""
    users = {n: _pairs(r) for n, r in zip(declared, found, strict=True) if r is not None}
    others = tuple(sorted(set(all_users) - set(declared) - {"default"}))
    return UsersState(run_id, users, others, engine_of(info) if isinstance(info, dict) else None)


def needs_setuser(state: UsersState, user: User, applied_rules: str | None) -> bool:
    """Whether ``user`` must be (re)applied: missing, disabled, another password, or other rules than
    the ones the operator last applied to this process (``applied_rules``: their hash, None unknown)."""
    found = state.users.get(user.name)
    if found is None:
        return True
    flags = {_text(f) for f in found.get("flags") or []}
    hashes = {_text(h) for h in found.get("passwords") or []}
    return "on" not in flags or hashes != {password_hash(user.password)} or applied_rules != user.rules_hash


def set_user(client: Redis, user: User) -> None:
    """``ACL SETUSER <name> reset on ><password> <rules>``: one atomic, declarative change."""
    try:
        _cmd(client, "ACL", "SETUSER", user.name, "reset", "on", f">{user.password}", *user.rules.split())
    except (RedisError, OSError) as exc:
        raise AclError(scrub(f"user {user.name}: {exc}", [user.password])) from None


def delete_users(client: Redis, names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        return
    try:
        _cmd(client, "ACL", "DELUSER", *names)
    except (RedisError, OSError) as exc:
        raise AclError(f"{type(exc).__name__}: {exc}") from None
