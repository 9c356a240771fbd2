"""Auth on the running processes: declared ACL users, and password rotation without downtime.

Rotation of the default user's password (the auth Secret changed) goes in three moves, each derived
from what exists, so a restarted operator resumes:

1. *add*: while the connection Secret still carries the old password, the new one is added next to
   it on every Redis and Sentinel process (``ACL SETUSER default >new``), and becomes the one they use
   with their peers (masterauth; Sentinel auth-pass and sentinel-pass). Until every process accepts
   it, the connection Secret keeps the old password;
2. *publish*: the pass applies the connection Secret with the new password (applications move) and
   stamps it with the time (annotation ``redis-messaging.dev/password-published-at``);
3. *remove*: ``auth.rotationGraceSeconds`` later, every other password is removed (``ACL SETUSER
   default resetpass >new``, atomic). Connections already open stay authenticated.

Users of ``spec.auth.users`` get ``ACL SETUSER <name> reset on ><password> <rules>`` on every Redis
process (ACLs are not replicated), the password from their Secret's key ``password``; users that are
no longer declared are deleted. Their rules are :func:`config.declared_rules`: whatever a user's rules
say, it is denied every command that shows a password or hands one out; rules that asked for one (the
CRD refuses them; a resource stored without that check) are reported (``UserRulesRefused``). No
password reaches a log line, an Event or a Condition.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis_messaging import modes
from redis_messaging.api import conditions as cond
from redis_messaging.api import models
from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import config, names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube
from redis_messaging.redis import acl
from redis_messaging.redis.addresses import Address, Addresses
from redis_messaging.redis.engine import Engine, has_commandlog

log = logging.getLogger(__name__)

AUTH_READY = "AuthReady"
USER_SECRET_MISSING = "UserSecretMissing"
USER_RULES_REFUSED = "UserRulesRefused"
NOT_APPLIED = "AclNotApplied"
ROTATING = "PasswordRotation"
PUBLISHED_AT = f"{names.DOMAIN}/password-published-at"
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Process:
    pod: str
    kind: str  # "redis" | "sentinel"
    address: Address

    @property
    def sentinel(self) -> bool:
        return self.kind == "sentinel"


@dataclass
class Rotation:
    use: str | None  # the password the operator connects with in this pass
    publish: str | None  # the password the connection Secret carries
    actions: list[str] = field(default_factory=list)
    waiting: str = ""  # why a new password is not published yet
    published_now: bool = False
    published_at: str | None = None  # the connection Secret's stamp of the last rotation


@dataclass
class AclReport:
    actions: list[str] = field(default_factory=list)
    condition: cond.Cond | None = None
    retry_after: float | None = None


def _decode(secret: dict[str, object] | None, key: str = "password") -> str | None:
    data = (secret or {}).get("data") or {}
    raw = data.get(key) if isinstance(data, dict) else None
    return base64.b64decode(str(raw)).decode() if raw else None


def _iso(ts: float) -> str:
    """Whole seconds, rounded up: a grace period counted from the stamp is never shorter than declared."""
    return dt.datetime.fromtimestamp(math.ceil(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


class AclStep:
    def __init__(self, kube: Kube | None, addresses: Addresses, *, timeout: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.addresses = addresses
        self.timeout = timeout
        self.clock = clock
        # (address, user) -> (run id, rules hash) the operator last applied: rules drift is seen
        # without parsing Redis's normalised form, and a restarted process gets them again.
        self._applied: dict[tuple[Address, str], tuple[str, str]] = {}

    # -- the processes ------------------------------------------------------------------------
    def processes(self, spec: RedisMessagingSpec, owner: Owner) -> list[Process]:
        mode = modes.of(spec)
        out = [Process(p, "redis", self.addresses.redis(owner, p)) for p in mode.redis_pods(spec, owner)]
        out += [Process(p, "sentinel", self.addresses.sentinel(owner, p)) for p in mode.sentinel_pods(spec, owner)]
        return out

    def _each(self, spec: RedisMessagingSpec, owner: Owner, passwords: list[str | None],
              work: Callable[[Process, acl.Node], bool], kinds: tuple[str, ...] = ("redis", "sentinel"),
              unreachable: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """Run ``work`` on every process of ``kinds``; (pods where it changed something, failures).

        Processes that do not answer (not started yet, restarting) are added to ``unreachable``, not
        to the failures: a pod that is not up is no failure of auth, and reads its passwords when it
        starts."""
        changed: list[str] = []
        failed: dict[str, str] = {}
        for proc in self.processes(spec, owner):
            if proc.kind not in kinds:
                continue
            try:
                node = acl.connect(proc.address, passwords, timeout=self.timeout, tls=self.addresses.tls(owner))
            except acl.AclError as exc:
                if exc.unreachable:
                    if unreachable is not None:
                        unreachable.append(proc.pod)
                else:
                    failed[proc.pod] = str(exc)
                continue
            try:
                if work(proc, node):
                    changed.append(proc.pod)
            except acl.AclError as exc:
                failed[proc.pod] = acl.scrub(str(exc), passwords)
            finally:
                node.close()
        return changed, failed

    # -- the default user's password (Redis side; tests drive these directly) -----------------
    def add_everywhere(self, spec: RedisMessagingSpec, owner: Owner, new: str, old: str | None) -> dict[str, str]:
        """Add ``new`` on every process (authenticating with ``new`` or ``old``); the failures."""
        def add(proc: Process, node: acl.Node) -> bool:
            node.add_password(new, sentinel=proc.sentinel, master_name=owner.master_name)
            return True

        down: list[str] = []
        _, failed = self._each(spec, owner, [new, old], add, unreachable=down)
        failed.update({pod: "not reachable" for pod in down})  # it must hold the new one too
        return failed

    def old_passwords_left(self, spec: RedisMessagingSpec, owner: Owner, password: str) -> list[str]:
        """The processes that accept another password than ``password`` too."""
        def other(proc: Process, node: acl.Node) -> bool:
            return node.default_hashes() != {acl.password_hash(password)}

        changed, _ = self._each(spec, owner, [password], other)
        return changed

    def remove_old_everywhere(self, spec: RedisMessagingSpec, owner: Owner,
                              password: str) -> tuple[list[str], dict[str, str]]:
        def keep(proc: Process, node: acl.Node) -> bool:
            return node.keep_only(password, sentinel=proc.sentinel, master_name=owner.master_name)

        return self._each(spec, owner, [password], keep)

    # -- users ---------------------------------------------------------------------------------
    def apply_users(self, spec: RedisMessagingSpec, owner: Owner, password: str | None,
                    users: list[acl.User], *, keep: set[str] | frozenset[str] = frozenset(),
                    unreachable: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """Declared users on every Redis process, undeclared ones deleted; (what was done, failures)."""
        done: list[str] = []

        def ensure(proc: Process, node: acl.Node) -> bool:
            state = self._set_users(proc, node, users, done)
            stale = [name for name in state.others if name not in keep]
            node.delete_users(stale)
            done.extend(f"{name} deleted on {proc.pod}" for name in stale)
            return bool(stale)

        _, failed = self._each(spec, owner, [password], ensure, kinds=("redis",), unreachable=unreachable)
        exporter = next((u for u in users if u.name == config.EXPORTER_USER), None)
        if exporter is not None and spec.mode == "sentinel":  # the Sentinels' exporters log in too
            sentinel_user = acl.User(exporter.name, exporter.password, config.EXPORTER_RULES_SENTINEL)

            def ensure_on_sentinel(proc: Process, node: acl.Node) -> bool:
                self._set_users(proc, node, [sentinel_user], done)
                return False  # other users of a Sentinel are left alone

            _, failed_sentinels = self._each(spec, owner, [password], ensure_on_sentinel, kinds=("sentinel",),
                                             unreachable=unreachable)
            failed.update(failed_sentinels)
        return done, failed

    def _set_users(self, proc: Process, node: acl.Node, users: list[acl.User], done: list[str]) -> acl.UsersState:
        """ACL SETUSER where a user is missing, differs or was set with other rules; what the process has."""
        state = node.users_state([u.name for u in users])
        for declared in users:
            user = declared.on(state.engine)
            applied = self._applied.get((proc.address, user.name))
            rules = applied[1] if applied is not None and applied[0] == state.run_id else None
            if acl.needs_setuser(state, user, rules):
                node.set_user(user)
                done.append(f"{user.name} on {proc.pod}")
            self._applied[(proc.address, user.name)] = (state.run_id, user.rules_hash)
        return state

    # -- the pass (Kubernetes side) -------------------------------------------------------------
    def before_apply(self, spec: RedisMessagingSpec, owner: Owner, desired: str | None) -> Rotation:
        """Which password the connection Secret may carry now: the new one only once every process
        accepts it."""
        if desired is None or self.kube is None:
            return Rotation(desired, desired)
        connection = self.kube.get("Secret", owner.namespace, owner.connection_secret)
        published = _decode(connection)
        stamp = (((connection or {}).get("metadata") or {}).get("annotations") or {}).get(PUBLISHED_AT)
        if published is None or published == desired:
            return Rotation(desired, desired, published_at=stamp)
        failed = self.add_everywhere(spec, owner, desired, published)
        if failed:
            waiting = "new password not accepted yet by " + "; ".join(
                f"{p}: {why}" for p, why in sorted(failed.items()))
            return Rotation(published, published, waiting=waiting)
        return Rotation(desired, desired, published_now=True, actions=[
            f"PasswordAdded the new password of the default user is valid on every process next to the old "
            f"one; Secret {owner.connection_secret} now carries it"])

    def after_apply(self, spec: RedisMessagingSpec, owner: Owner, rotation: Rotation) -> AclReport:
        report = AclReport()
        kube = self.kube
        if rotation.publish is None or kube is None:
            return report
        problems: list[tuple[str, str]] = []  # (reason, message)
        if rotation.waiting:
            problems.append((ROTATING, rotation.waiting))
            report.retry_after = RETRY_SECONDS
        else:
            self._finish_rotation(kube, spec, owner, rotation, report, problems)
        users, missing = self._users(kube, spec, owner)
        if missing:
            problems.append((USER_SECRET_MISSING, "; ".join(m for _, m in missing)))
        refused = refused_rules(spec)
        if refused:
            problems.append((USER_RULES_REFUSED, refused))
        # Users with a missing Secret are left as they are, not deleted.
        down: list[str] = []
        done, failed = self.apply_users(spec, owner, rotation.use, users, keep={n for n, _ in missing},
                                        unreachable=down)
        if done:
            report.actions.append(f"AclUsersApplied {', '.join(done)}")
        if failed:
            problems.append((NOT_APPLIED, "users not applied on " +
                             "; ".join(f"{p}: {why}" for p, why in sorted(failed.items()))))
            report.retry_after = RETRY_SECONDS
        if problems:
            order = (USER_SECRET_MISSING, NOT_APPLIED, USER_RULES_REFUSED, ROTATING)
            reason = min((r for r, _ in problems), key=order.index)
            report.condition = cond.Cond(AUTH_READY, False, reason, "; ".join(m for _, m in problems))
        elif down:
            report.condition = cond.Cond(AUTH_READY, None, "WaitingForPods", f"not reachable yet: {', '.join(down)}")
        else:
            report.condition = cond.Cond(AUTH_READY, True, "AsDeclared",
                                         f"default password and {len(users)} ACL users on every process")
        return report

    def _finish_rotation(self, kube: Kube, spec: RedisMessagingSpec, owner: Owner, rotation: Rotation,
                         report: AclReport, problems: list[tuple[str, str]]) -> None:
        password = rotation.use
        if password is None:
            return
        now, stamp = self.clock(), rotation.published_at
        if rotation.published_now:
            stamp = _iso(now)
            kube.annotate("Secret", owner.namespace, owner.connection_secret, {PUBLISHED_AT: stamp})
        left = self.old_passwords_left(spec, owner, password)
        if not left:
            return
        if stamp is None:  # other passwords, and no rotation on record: the grace starts now
            stamp = _iso(now)
            kube.annotate("Secret", owner.namespace, owner.connection_secret, {PUBLISHED_AT: stamp})
        since = _parse_iso(stamp) or now
        grace = spec.auth.rotation_grace_seconds
        if now - since < grace:
            problems.append((ROTATING, f"the old password stays valid on {', '.join(left)} until {_iso(since + grace)} "
                                       "(clients move to the new one meanwhile)"))
            report.retry_after = max(min(since + grace - now, 30.0), 0.5)
            return
        removed, failed = self.remove_old_everywhere(spec, owner, password)
        if removed:
            report.actions.append(f"OldPasswordRemoved the previous password of the default user no longer works "
                                  f"on {', '.join(removed)}")
        if failed:
            problems.append((NOT_APPLIED, "old password not removed on " +
                             "; ".join(f"{p}: {why}" for p, why in sorted(failed.items()))))
            report.retry_after = RETRY_SECONDS

    def _users(self, kube: Kube, spec: RedisMessagingSpec,
               owner: Owner) -> tuple[list[acl.User], list[tuple[str, str]]]:
        users, missing = [], []
        for declared in spec.auth.users:
            secret = kube.get("Secret", owner.namespace, declared.secret_name)
            password = _decode(secret)
            if password is None:
                missing.append((declared.name, f"user {declared.name}: Secret {declared.secret_name} "
                                f"{'has no key password' if secret is not None else 'does not exist'}"))
                continue
            users.append(acl.User(declared.name, password, config.declared_rules(declared.rules)))
        if config.exporter_user(spec):  # the exporter's own user, its password generated once
            password = _decode(kube.get("Secret", owner.namespace, owner.exporter_secret))
            if password is None:
                missing.append((config.EXPORTER_USER, f"the exporter's Secret {owner.exporter_secret} has no password"))
            else:
                users.append(acl.User(config.EXPORTER_USER, password, config.EXPORTER_RULES_REDIS,
                                      for_engine=exporter_rules))
        return users, missing


def exporter_rules(engine: Engine | None) -> str:
    """The exporter user's rules on a Redis process that runs ``engine``: with COMMANDLOG where it has it."""
    if has_commandlog(engine):
        return f"{config.EXPORTER_RULES_REDIS} {config.EXPORTER_RULES_COMMANDLOG}"
    return config.EXPORTER_RULES_REDIS


def refused_rules(spec: RedisMessagingSpec) -> str:
    """What the rules of spec.auth.users ask for that no declared user gets (the CRD refuses it at apply
    time; a resource stored without that check gets this message): empty when nothing. A password in
    the rules is named as such, never shown."""
    found = []
    for user in spec.auth.users:
        bad = ["a password rule" if config.password_rule(t) else t for t in models.secret_rules(user.rules)]
        if bad:
            found.append(f"user {user.name}: {', '.join(dict.fromkeys(bad))}")
    if not found:
        return ""
    return ("; ".join(found) + " not applied: no declared user may run CONFIG, ACL, MONITOR, DEBUG, MODULE, "
            "REPLICAOF, SLAVEOF, CLUSTER MEET or CLUSTER REPLICATE, which show passwords or hand them out, and a "
            "user's password comes from its Secret; the rest of its rules is applied")
