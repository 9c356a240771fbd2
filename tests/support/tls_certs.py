"""Certificates for TLS tests, made with the openssl command line: a CA and the leaf certificates it
signs, in the layout of a cert-manager Secret (``ca.crt``, ``tls.crt``, ``tls.key``).

:func:`mount` and :func:`renew` lay a pod's TLS volume out like the kubelet does (files are links into
a ``..data`` link that is swapped atomically), so a renewal is seen by a running process exactly as
in a pod: same paths, new content.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from redis_messaging.redis.tls import ClientTls


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Authority:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    def issue(self, name: str, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ("localhost",),
              days: int = 2) -> KeyPair:
        """A leaf for server and client use, signed by this CA."""
        out = self.directory / name
        out.mkdir(parents=True, exist_ok=True)
        sans = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)])
        (out / "ext.cnf").write_text(
            f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={name}", cwd=out)
        _openssl("x509", "-req", "-in", "tls.csr", "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", "tls.crt", "-days", str(days), "-extfile", "ext.cnf", cwd=out)
        return KeyPair(ca=self.cert, cert=out / "tls.crt", key=out / "tls.key")


def authority(directory: Path, name: str = "test-ca") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", f"/CN={name}", cwd=directory)
    return Authority(directory)


@dataclass(frozen=True)
class KeyPair:
    """The three files of a TLS Secret."""

    ca: Path
    cert: Path
    key: Path

    def files(self) -> dict[str, str]:
        return {"ca.crt": self.ca.read_text(), "tls.crt": self.cert.read_text(), "tls.key": self.key.read_text()}

    def client_tls(self, *, with_key_pair: bool = False) -> ClientTls:
        f = self.files()
        if with_key_pair:
            return ClientTls(f["ca.crt"], f["tls.crt"], f["tls.key"])
        return ClientTls(f["ca.crt"])

    def redis_kwargs(self) -> dict[str, object]:
        """A redis-py client that verifies the servers and presents this pair (tls-auth-clients yes)."""
        return self.client_tls(with_key_pair=True).redis_options()


def mount(volume: Path, pair: KeyPair) -> None:
    """Lay ``pair`` out in ``volume`` as the kubelet mounts a Secret: ``tls.crt -> ..data/tls.crt``."""
    volume.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "tls.crt", "tls.key"):
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    renew(volume, pair)


def renew(volume: Path, pair: KeyPair) -> None:
    """Swap the content of a mounted TLS volume atomically, as the kubelet does on a Secret change."""
    stamp = volume / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, text in pair.files().items():
        (stamp / name).write_text(text)
        (stamp / name).chmod(0o400)
    tmp = volume / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp.name)
    old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
    os.replace(tmp, volume / "..data")
    if old is not None and old != stamp:
        shutil.rmtree(old, ignore_errors=True)
