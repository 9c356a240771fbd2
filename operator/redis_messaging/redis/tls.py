"""TLS for the operator's own Redis and Sentinel clients, and what a process serves.

The operator verifies every server against the resource's CA (``ca.crt`` of its TLS Secret). Like
Redis's own replication and Sentinel links it does not check host names: it reaches pods by their
stable names or, in tests, by loopback addresses, and the chain of trust is what matters. With
``spec.tls.authClients`` it presents the resource's own key pair, written once to a private
directory (0700, files 0600) since the TLS library reads key pairs only from files.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

Address = tuple[str, int]

_files_lock = threading.Lock()
_dirs: dict[str, Path] = {}  # key pair fingerprint -> its private directory
_holders: dict[str, int] = {}  # key pair fingerprint -> resources that use it (hold/release)


def hold(tls: ClientTls) -> None:
    """A resource uses ``tls``: its key pair files stay until every holder released them."""
    if tls.cert and tls.key:
        with _files_lock:
            _holders[tls.fingerprint] = _holders.get(tls.fingerprint, 0) + 1


def release(tls: ClientTls) -> None:
    """A resource no longer uses ``tls``: the last holder removes its key pair files."""
    if not (tls.cert and tls.key):
        return
    with _files_lock:
        left = _holders.get(tls.fingerprint, 0) - 1
        if left > 0:
            _holders[tls.fingerprint] = left
            return
        _holders.pop(tls.fingerprint, None)
        directory = _dirs.pop(tls.fingerprint, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def key_pair_dirs() -> int:
    """How many key pairs have files on disk now (tests: nothing left behind)."""
    with _files_lock:
        return len(_dirs)


def _private_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="rmsg-tls-"))
    directory.chmod(0o700)
    atexit.register(shutil.rmtree, directory, True)
    return directory


@dataclass(frozen=True)
class ClientTls:
    """The client side of a resource's TLS: the CA to verify servers with, and the key pair to
    present when servers ask for one (None: no client certificate)."""

    ca: str
    cert: str | None = None
    key: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        raw = "\0".join((self.ca, self.cert or "", self.key or "")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def _key_pair_files(self) -> tuple[str, str] | None:
        if not (self.cert and self.key):
            return None
        with _files_lock:
            directory = _dirs.get(self.fingerprint)
            if directory is None:
                directory = _dirs[self.fingerprint] = _private_dir()
                for name, text in (("tls.crt", self.cert), ("tls.key", self.key)):
                    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(text)
        return str(directory / "tls.crt"), str(directory / "tls.key")

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py client."""
        options: dict[str, Any] = {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": False,
            "ssl_ca_data": self.ca,
        }
        pair = self._key_pair_files()
        if pair is not None:
            options["ssl_certfile"], options["ssl_keyfile"] = pair
        return options

    def context(self) -> ssl.SSLContext:
        """An SSL context with the same trust and key pair (for looking at what a server serves)."""
        ctx = ssl.create_default_context(cadata=self.ca)
        ctx.check_hostname = False
        pair = self._key_pair_files()
        if pair is not None:
            ctx.load_cert_chain(*pair)
        return ctx


def options(tls: ClientTls | None) -> dict[str, Any]:
    return tls.redis_options() if tls is not None else {}


def served_certificate(address: Address, tls: ClientTls, *, timeout: float = 2.0) -> bytes:
    """The certificate (DER) a process presents on a new connection right now.

    Raises OSError (ssl.SSLError included) when it cannot be reached or is not trusted."""
    with socket.create_connection(address, timeout=timeout) as raw, \
            tls.context().wrap_socket(raw, server_hostname=None) as conn:
        der = conn.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{address[0]}:{address[1]} presented no certificate")
    return der


def first_certificate_der(pem: str) -> bytes:
    """The DER form of the first certificate of a PEM bundle (the leaf of tls.crt)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate found")
    return ssl.PEM_cert_to_DER_cert(pem[start:stop + len(end)] + "\n")


TLS_FILE_SETTINGS = ("tls-cert-file", "tls-key-file", "tls-ca-cert-file")


class ReloadError(Exception):
    """The process refused or did not answer the reload."""


def reload_certificate(client: Any) -> None:
    """Make a running redis-server read its key pair and CA files again, for new connections (open
    ones keep theirs): Redis re-reads them whenever the settings are set, even to the paths they
    already have, and a mounted Secret keeps its paths across renewals. Raises :class:`ReloadError`."""
    try:
        _reload(client)
    except (RedisError, OSError) as exc:
        raise ReloadError(f"{type(exc).__name__}: {exc}") from None


def _reload(client: Any) -> None:
    current = client.execute_command("CONFIG", "GET", "tls-*-file")
    if not isinstance(current, dict):  # a flat list without redis-py's reply parsing
        current = dict(zip(current[::2], current[1::2], strict=True))
    values = {(k.decode() if isinstance(k, bytes) else k): v for k, v in current.items()}
    args: list[Any] = []
    for name in TLS_FILE_SETTINGS:
        if values.get(name):
            args += [name, values[name]]
    if args:
        client.execute_command("CONFIG", "SET", *args)
