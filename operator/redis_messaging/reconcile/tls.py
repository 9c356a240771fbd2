"""spec.tls in the reconcile pass: the TLS Secret read, the operator's clients told, renewals served.

Before any workload is applied, :meth:`TlsStep.prepare` reads the TLS Secret (or, with
``issuerRef``, applies the cert-manager Certificate and waits for the Secret it fills). Nothing is
built without it: a pod mounting a missing Secret would not start, and running without TLS where TLS
was asked for is not an option. From the Secret it records the client settings of every component
that connects (on the shared :class:`~redis_messaging.redis.addresses.Addresses`) and gives the
builders the CA (for the connection Secret) and a revision of the certificate (for Sentinel, which
cannot reload one: a renewal rolls the Sentinels).

After the topology step, :meth:`TlsStep.reload` serves renewals without a restart: each redis-server
whose certificate on a new connection differs from the Secret's is told to read its files again
(``CONFIG SET tls-*-file``); open connections keep theirs. The kubelet refreshes a mounted Secret
within a minute or so of its change, so a process still serving the old certificate after the
reload is looked at again a little later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import tls as tls_build
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, with_applied_hash
from redis_messaging.redis import acl
from redis_messaging.redis import tls as rtls
from redis_messaging.redis.addresses import Address, Addresses

log = logging.getLogger(__name__)

SECRET_MISSING = "TLSSecretMissing"
SECRET_INVALID = "TLSSecretInvalid"
CERT_MANAGER_MISSING = "CertManagerMissing"
RELOAD_RETRY_SECONDS = 15.0


class TlsProblem(Exception):
    """The pass cannot go on until the TLS Secret (or cert-manager) is there and well-formed."""

    def __init__(self, reason: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass
class Prepared:
    facts: tls_build.Facts | None = None
    leaf: bytes | None = None  # the DER certificate the processes should serve
    actions: list[str] = field(default_factory=list)


@dataclass
class Reloaded:
    actions: list[str] = field(default_factory=list)
    retry_after: float | None = None


def _decode(secret: dict[str, object], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)  # type: ignore[attr-defined]
    if not raw:
        return None
    try:
        return base64.b64decode(str(raw)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


class TlsStep:
    def __init__(self, kube: Kube | None, addresses: Addresses, *, timeout: float = 2.0) -> None:
        self.kube = kube
        self.addresses = addresses
        self.timeout = timeout

    def prepare(self, spec: RedisMessagingSpec, owner: Owner) -> Prepared:
        """Read the TLS Secret and record the client settings; raises :class:`TlsProblem`."""
        out = Prepared()
        name = tls_build.secret_name(spec, owner)
        if name is None:
            self.addresses.set_tls(owner, None)
            return out
        if self.kube is None:
            raise RuntimeError("TlsStep.prepare reads the TLS Secret: it needs the Kubernetes API")
        certificate = tls_build.certificate(spec, owner)
        if certificate is not None and "Certificate" not in self.kube.served_kinds(tls_build.CERTIFICATE_API):
            raise TlsProblem(CERT_MANAGER_MISSING,
                             f"spec.tls.issuerRef needs cert-manager: the API server does not serve "
                             f"{tls_build.CERTIFICATE_API} Certificate; install cert-manager or name a "
                             f"Secret in spec.tls.secretName", 60.0)
        secret = self.kube.get("Secret", owner.namespace, name)
        if secret is None:
            if certificate is None:
                raise TlsProblem(SECRET_MISSING, f"Secret {name} named in spec.tls.secretName does not exist", 10.0)
            # The Certificate first: cert-manager fills the Secret, then the workloads can mount it.
            self.kube.apply(with_applied_hash(certificate))
            raise TlsProblem(SECRET_MISSING, f"waiting for cert-manager to issue Secret {name} "
                                             f"(Certificate {certificate['metadata']['name']})", 5.0)
        found = {key: _decode(secret, key) for key in tls_build.FILES}
        files = {key: value for key, value in found.items() if value}
        if len(files) < len(found):
            missing = sorted(set(found) - set(files))
            raise TlsProblem(SECRET_INVALID, f"Secret {name} has no {', '.join(missing)} "
                                             f"(spec.tls needs {', '.join(tls_build.FILES)})", 10.0)
        cert, key, ca = files[tls_build.CERT_FILE], files[tls_build.KEY_FILE], files[tls_build.CA_FILE]
        try:
            out.leaf = rtls.first_certificate_der(cert)
            ssl.create_default_context(cadata=ca)
        except (ValueError, ssl.SSLError) as exc:
            raise TlsProblem(SECRET_INVALID, f"Secret {name}: tls.crt or ca.crt is not a PEM certificate "
                                             f"({type(exc).__name__})", 10.0) from None
        client = rtls.ClientTls(ca, cert, key) if spec.tls.auth_clients else rtls.ClientTls(ca)
        self.addresses.set_tls(owner, client)
        out.facts = tls_build.Facts(ca=ca, revision=hashlib.sha256(cert.encode()).hexdigest()[:16])
        return out

    def reload(self, spec: RedisMessagingSpec, owner: Owner, password: str | None, prepared: Prepared,
               pods: Sequence[str]) -> Reloaded:
        """Have every redis-server of ``pods`` serve the Secret's certificate (see the module doc)."""
        out = Reloaded()
        client_tls = self.addresses.tls(owner)
        if prepared.leaf is None or client_tls is None:
            return out
        for pod in pods:
            address = self.addresses.redis(owner, pod)
            served = self._served(address, client_tls)
            if served is None or served == prepared.leaf:
                continue
            try:
                node = acl.connect(address, [password], timeout=self.timeout, tls=client_tls)
            except acl.AclError as exc:
                log.info("%s/%s: certificate reload of %s deferred: %s", owner.namespace, owner.name, pod, exc)
                out.retry_after = RELOAD_RETRY_SECONDS
                continue
            try:
                rtls.reload_certificate(node.client)
            except rtls.ReloadError as exc:  # the next pass tries again
                log.info("%s/%s: certificate reload of %s failed: %s", owner.namespace, owner.name, pod, exc)
                out.retry_after = RELOAD_RETRY_SECONDS
                continue
            finally:
                node.close()
            if self._served(address, client_tls) == prepared.leaf:
                out.actions.append(f"pod {pod} serves the renewed TLS certificate (reloaded without a restart)")
            else:  # the kubelet has not refreshed the mounted Secret yet
                out.retry_after = RELOAD_RETRY_SECONDS
        return out

    def _served(self, address: Address, client_tls: rtls.ClientTls) -> bytes | None:
        try:
            return rtls.served_certificate(address, client_tls, timeout=self.timeout)
        except OSError:
            return None  # not up, restarting, or serving a certificate the CA does not sign: not ours to fix
