"""A real control plane for the `kube` test tier: etcd plus kube-apiserver, started envtest-style.

No controller-manager, no scheduler, no kubelet: objects are stored and validated, admission and RBAC
run, but nothing reconciles them (a deleted namespace stays Terminating, Pods stay Pending, no
ServiceAccount tokens are minted by controllers). Tests drive the operator against this API and read
the audit log to see exactly which writes it made.

Binaries come from `KUBEBUILDER_ASSETS` (a directory holding `etcd` and `kube-apiserver`, as
setup-envtest gives) or from the cache directory `.ci/control-plane.sh` builds into.

Two identities are configured through a static token file, both in `system:masters`:
`admin` (what the tests use) and `operator` (what the operator under test uses), so the audit log can
tell their requests apart. ServiceAccount tokens (TokenRequest API) exercise RBAC.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

# Mirrors the defaults of .ci/control-plane.sh (tests/kube/test_controlplane.py checks they agree).
DEFAULT_K8S_VERSION = "v1.34.4"
DEFAULT_ETCD_VERSION = "v3.5.35"
BINARIES = ("etcd", "kube-apiserver")

ADMIN_USER = "admin"
OPERATOR_USER = "operator"
CONTROLLER_MANAGER_USER = "controller-manager"
MASTERS_GROUP = "system:masters"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
SERVICE_ACCOUNT_ISSUER = "https://127.0.0.1"
# The names of the `kubernetes` Service, which the serving certificate also carries: pods of the local
# cluster (e2e/local) reach the API server by them, as pods do in a cluster (Kopf's ServiceAccount login
# asks for https://kubernetes.default.svc).
API_SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                     "kubernetes.default.svc.cluster.local")
# The Prometheus Operator's kinds the operator renders (kind -> plural), served by :func:`monitoring_crd`.
MONITORING_CRDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """A stand-in for the Prometheus Operator's CRD: same group, version and names, open schema."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


_KEEP_HINT = " (KEEP_CONTROLPLANE=1 keeps the work directory with all logs)"

_T = TypeVar("_T")

PkiBackend = Literal["auto", "cryptography", "openssl"]


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (or a request to it failed unexpectedly)."""


class AssetsNotFoundError(LookupError):
    """Neither KUBEBUILDER_ASSETS nor the default cache directory holds the binaries."""


# --------------------------------------------------------------------------------------------------
# Locating binaries


def default_assets_dir() -> Path:
    """The directory `.ci/control-plane.sh` builds into, computed exactly as the script does."""
    env = os.environ
    cache_root = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    cache = Path(env.get("RMSG_CACHE") or f"{cache_root}/redis-messaging-operator")
    k8s = env.get("K8S_VERSION") or DEFAULT_K8S_VERSION
    etcd = env.get("ETCD_VERSION") or DEFAULT_ETCD_VERSION
    return cache / "control-plane" / f"k8s-{k8s}-etcd-{etcd}"


def expected_k8s_version() -> str:
    return os.environ.get("K8S_VERSION") or DEFAULT_K8S_VERSION


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def locate_assets() -> Path:
    """KUBEBUILDER_ASSETS if it holds both binaries, else the script's cache directory.

    Raises AssetsNotFoundError (with a message fit for pytest.skip) when neither does.
    """
    candidates: list[tuple[str, Path]] = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(("KUBEBUILDER_ASSETS", Path(os.environ["KUBEBUILDER_ASSETS"])))
    candidates.append(("default", default_assets_dir()))
    for _, directory in candidates:
        if _has_binaries(directory):
            return directory
    searched = ", ".join(f"{label} {directory}" for label, directory in candidates)
    raise AssetsNotFoundError(
        f"no executable {' and '.join(BINARIES)} found (searched {searched}); "
        "build them with .ci/control-plane.sh (or point KUBEBUILDER_ASSETS at a directory holding them)"
    )


# --------------------------------------------------------------------------------------------------
# PKI


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def generate_pki(directory: Path, backend: PkiBackend = "auto") -> Pki:
    """A CA, a serving cert for 127.0.0.1/localhost signed by it, and a ServiceAccount RSA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    if backend == "auto":
        backend = "cryptography" if importlib.util.find_spec("cryptography") is not None else "openssl"
    if backend == "cryptography":
        _pki_with_cryptography(pki)
    else:
        _pki_with_openssl(pki, directory)
    for key in (pki.ca_key, pki.serving_key, pki.sa_key):
        key.chmod(0o600)
    return pki


def _pki_with_cryptography(pki: Pki) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=7)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    no_encryption = serialization.NoEncryption()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis-messaging-operator test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                 *(x509.DNSName(name) for name in API_SERVICE_NAMES)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(serving_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.ca_key.write_bytes(ca_key.private_bytes(pem, pkcs8, no_encryption))
    pki.serving_cert.write_bytes(serving_cert.public_bytes(pem))
    pki.serving_key.write_bytes(serving_key.private_bytes(pem, pkcs8, no_encryption))
    pki.sa_key.write_bytes(sa_key.private_bytes(pem, pkcs8, no_encryption))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _pki_with_openssl(pki: Pki, directory: Path) -> None:
    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec_key, "-keyout", str(pki.ca_key), "-out", str(pki.ca_cert), "-days", "7",
        "-subj", "/CN=redis-messaging-operator test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    csr = directory / "apiserver.csr"
    openssl("req", "-new", *ec_key, "-keyout", str(pki.serving_key), "-out", str(csr),
            "-subj", "/CN=kube-apiserver")  # fmt: skip
    extensions = directory / "apiserver.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:127.0.0.1,DNS:localhost,{','.join(f'DNS:{n}' for n in API_SERVICE_NAMES)}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "7", "-sha256",
        "-extfile", str(extensions), "-out", str(pki.serving_cert),
    )  # fmt: skip
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key))
    openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    csr.unlink()
    extensions.unlink()


# --------------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Identity:
    """A static-token identity of the apiserver, with a kubeconfig that uses it."""

    user: str
    token: str
    kubeconfig: Path


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open at once, so they differ from each other)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child if the test process dies without stopping it (Linux only)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(content[-lines:])


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class _Process:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except BaseException:
            self._log.close()
            raise

    def exited(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not exit %.0fs after SIGTERM; killing it", self.name, timeout)
                    self.popen.kill()
                    self.popen.wait(timeout=timeout)
        finally:
            self._log.close()


# --------------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with generated PKI, tokens and kubeconfigs.

    Use as a context manager, or call start() and stop(). Everything lives in a temporary directory
    (removed on stop() unless KEEP_CONTROLPLANE=1) that holds the logs (etcd.log, kube-apiserver.log),
    the audit log (audit.log), the PKI (pki/) and the kubeconfigs (admin.kubeconfig,
    operator.kubeconfig).
    """

    def __init__(
        self,
        assets_dir: Path | None = None,
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
        pki_backend: PkiBackend = "auto",
        extra_apiserver_args: Iterable[str] = (),
        with_controller_manager: bool = True,
        extra_controller_manager_args: Iterable[str] = (),
    ) -> None:
        self.with_controller_manager = with_controller_manager
        self._controller_manager: _Process | None = None
        self.assets_dir = assets_dir if assets_dir is not None else locate_assets()
        self.startup_timeout = startup_timeout
        self.pki_backend: PkiBackend = pki_backend
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.startup_seconds: float | None = None
        self._workdir: Path | None = None
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._server: str | None = None
        self._etcd_url: str | None = None
        self._identities: dict[str, Identity] = {}
        self._ssl: ssl.SSLContext | None = None
        self._audit_lock = threading.Lock()
        self._audit_offset = 0
        self._audit_events: list[dict[str, Any]] = []

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._workdir is not None:
            raise ControlPlaneError("control plane already started")
        begin = time.monotonic()
        self._workdir = workdir = Path(tempfile.mkdtemp(prefix="rmsg-controlplane-"))
        try:
            self._prepare_files()
            attempts = 3
            for attempt in range(1, attempts + 1):
                try:
                    self._start_processes()
                    break
                except _PortInUseError as exc:
                    self._stop_processes()
                    if attempt == attempts:
                        raise ControlPlaneError(str(exc)) from None
                    log.info("port collision (%s); retrying with new ports", exc)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - begin
        log.info("control plane up at %s in %.1fs (workdir %s)", self.server, self.startup_seconds, workdir)
        return self

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; remove the work directory unless KEEP_CONTROLPLANE=1."""
        self._stop_processes()
        workdir, self._workdir = self._workdir, None
        if workdir is None:
            return
        if os.environ.get("KEEP_CONTROLPLANE") == "1":
            sys.stderr.write(f"\nKEEP_CONTROLPLANE=1: control-plane files kept in {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def _stop_processes(self) -> None:
        for attr in ("_controller_manager", "_apiserver", "_etcd"):
            process: _Process | None = getattr(self, attr)
            setattr(self, attr, None)
            if process is not None:
                try:
                    process.stop()
                except Exception:  # still stop etcd if stopping the apiserver failed
                    log.exception("stopping %s failed", process.name)

    # ---- public properties -----------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self._require(self._workdir, "workdir")

    @property
    def server(self) -> str:
        """The apiserver URL, https://127.0.0.1:PORT."""
        return self._require(self._server, "server")

    @property
    def etcd_url(self) -> str:
        return self._require(self._etcd_url, "etcd_url")

    @property
    def ca_path(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def admin(self) -> Identity:
        return self._identity(ADMIN_USER)

    @property
    def operator(self) -> Identity:
        return self._identity(OPERATOR_USER)

    @property
    def admin_token(self) -> str:
        return self.admin.token

    @property
    def operator_token(self) -> str:
        return self.operator.token

    @property
    def admin_kubeconfig(self) -> Path:
        return self.admin.kubeconfig

    @property
    def operator_kubeconfig(self) -> Path:
        return self.operator.kubeconfig

    @property
    def audit_log_path(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def apiserver_log_path(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @property
    def etcd_log_path(self) -> Path:
        return self.workdir / "etcd.log"

    def _identity(self, user: str) -> Identity:
        if user not in self._identities:
            raise ControlPlaneError("control plane not started")
        return self._identities[user]

    @staticmethod
    def _require(value: _T | None, what: str) -> _T:
        if value is None:
            raise ControlPlaneError(f"control plane not started ({what} unavailable)")
        return value

    # ---- setup -----------------------------------------------------------------------------------

    def _prepare_files(self) -> None:
        workdir = self.workdir
        generate_pki(workdir / "pki", self.pki_backend)
        (workdir / "cert-dir").mkdir()
        (workdir / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY, indent=2) + "\n")
        tokens = {user: secrets.token_urlsafe(32) for user in (ADMIN_USER, OPERATOR_USER, CONTROLLER_MANAGER_USER)}
        # token,user,uid,"group1,group2"
        token_file = workdir / "tokens.csv"
        token_file.write_text(
            "".join(f'{token},{user},{user}-uid,"{MASTERS_GROUP}"\n' for user, token in tokens.items())
        )
        token_file.chmod(0o600)
        for user, token in tokens.items():
            self._identities[user] = Identity(user, token, workdir / f"{user}.kubeconfig")
        self._ssl = ssl.create_default_context(cafile=str(self.ca_path))

    def _start_processes(self) -> None:
        workdir = self.workdir
        etcd_client, etcd_peer, secure_port = _free_ports(3)
        self._etcd_url = f"http://127.0.0.1:{etcd_client}"
        self._server = f"https://127.0.0.1:{secure_port}"
        for identity in self._identities.values():
            self.write_kubeconfig(identity.kubeconfig, identity.token, identity.user)

        peer_url = f"http://127.0.0.1:{etcd_peer}"
        data_dir = workdir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        self._etcd = _Process(
            "etcd",
            [
                str(self.assets_dir / "etcd"),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.etcd_log_path,
        )
        self._wait_for_etcd()

        pki = workdir / "pki"
        self._apiserver = _Process(
            "kube-apiserver",
            [
                str(self.assets_dir / "kube-apiserver"),
                f"--etcd-servers={self._etcd_url}",
                f"--cert-dir={workdir / 'cert-dir'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--secure-port={secure_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                f"--audit-policy-file={workdir / 'audit-policy.json'}",
                f"--audit-log-path={self.audit_log_path}",
                "--audit-log-maxsize=4096",
                *self.extra_apiserver_args,
            ],
            self.apiserver_log_path,
        )
        self._wait_for_apiserver()
        self._start_controller_manager()

    def _start_controller_manager(self) -> None:
        """kube-controller-manager, when its binary is there: StatefulSet and Deployment controllers,
        garbage collection through owner references, namespace deletion. No kubelet runs, so the
        pods it creates stay Pending."""
        binary = self.assets_dir / "kube-controller-manager"
        if not self.with_controller_manager or not binary.exists():
            return
        pki = self.workdir / "pki"
        self._controller_manager = _Process(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self._identities[CONTROLLER_MANAGER_USER].kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
                "--concurrent-gc-syncs=5",
                *self.extra_controller_manager_args,
            ],
            self.workdir / "kube-controller-manager.log",
        )

    @property
    def has_controller_manager(self) -> bool:
        return self._controller_manager is not None and self._controller_manager.exited() is None

    def _wait_until(self, process: _Process, check: Callable[[], bool], what: str, deadline: float) -> None:
        while True:
            code = process.exited()
            if code is not None:
                tail = _tail(process.log_path)
                if "address already in use" in tail:
                    raise _PortInUseError(f"{process.name}: address already in use")
                raise ControlPlaneError(
                    f"{process.name} exited with code {code} before {what}; "
                    f"last lines of {process.log_path.name}{_KEEP_HINT}:\n{tail}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not reached within {self.startup_timeout:g}s; "
                    f"last lines of {process.log_path.name}{_KEEP_HINT}:\n{_tail(process.log_path)}"
                )
            time.sleep(0.1)

    def _wait_for_etcd(self) -> None:
        assert self._etcd is not None
        host_port = urllib.parse.urlsplit(self.etcd_url).netloc

        def healthy() -> bool:
            conn = http.client.HTTPConnection(host_port, timeout=2)
            try:
                conn.request("GET", "/health")
                response = conn.getresponse()
                return response.status == 200 and b'"health":"true"' in response.read()
            except OSError:
                return False
            finally:
                conn.close()

        self._wait_until(self._etcd, healthy, "etcd /health", time.monotonic() + self.startup_timeout)

    def _wait_for_apiserver(self) -> None:
        assert self._apiserver is not None

        def ready() -> bool:
            try:
                return self.request("GET", "/readyz", timeout=5).status == 200
            except (OSError, http.client.HTTPException):
                return False

        self._wait_until(
            self._apiserver, ready, "kube-apiserver /readyz", time.monotonic() + self.startup_timeout
        )

    # ---- kubeconfigs and HTTP --------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, token: str, user: str, namespace: str | None = None) -> Path:
        """A kubeconfig for this apiserver authenticating with a bearer token (JSON, which is YAML)."""
        context: dict[str, str] = {"cluster": "envtest", "user": user}
        if namespace is not None:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_path.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": context}],
            "current-context": user,
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def kubeconfig_for_token(self, token: str, name: str, namespace: str | None = None) -> Path:
        """Write workdir/<name>.kubeconfig for a token (e.g. a ServiceAccount's) and return its path."""
        return self.write_kubeconfig(self.workdir / f"{name}.kubeconfig", token, name, namespace)

    def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A kubernetes ApiClient from a kubeconfig (the admin one by default); close() it after use."""
        from kubernetes import config

        # Through a typed variable: kubernetes ships type hints only in some versions.
        new_client: Callable[..., ApiClient] = config.new_client_from_config
        path = kubeconfig if kubeconfig is not None else self.admin_kubeconfig
        return new_client(config_file=str(path), persist_config=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> HttpResult:
        """One HTTPS request to the apiserver (as admin unless another token is given)."""
        context = self._require(self._ssl, "ssl context")
        url = urllib.parse.urlsplit(self.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port, timeout=timeout, context=context
        )
        headers = {
            "Authorization": f"Bearer {token if token is not None else self.admin_token}",
            "Accept": "application/json",
        }
        payload: bytes | None = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return HttpResult(response.status, response.read())
        finally:
            conn.close()

    def token_for_service_account(self, namespace: str, name: str, expiration_seconds: int = 3600) -> str:
        """A bound token for an existing ServiceAccount, minted with the TokenRequest API as admin."""
        path = (
            f"/api/v1/namespaces/{urllib.parse.quote(namespace)}"
            f"/serviceaccounts/{urllib.parse.quote(name)}/token"
        )
        result = self.request(
            "POST",
            path,
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if result.status != 201:
            raise ControlPlaneError(
                f"TokenRequest for {namespace}/{name} failed: HTTP {result.status}: {result.text}"
            )
        token = result.json()["status"]["token"]
        assert isinstance(token, str)
        return token

    # ---- audit log -------------------------------------------------------------------------------

    def _read_audit_log(self) -> list[dict[str, Any]]:
        """All events so far; reads only what was appended since the last call."""
        with self._audit_lock:
            try:
                with self.audit_log_path.open("rb") as f:
                    f.seek(self._audit_offset)
                    chunk = f.read()
            except FileNotFoundError:
                return list(self._audit_events)
            end = chunk.rfind(b"\n") + 1  # a partly written last line waits for the next call
            for line in chunk[:end].splitlines():
                if line.strip():
                    try:
                        self._audit_events.append(json.loads(line))
                    except json.JSONDecodeError:
                        log.warning("unparseable audit log line: %r", line[:200])
            self._audit_offset += end
            return list(self._audit_events)

    def audit_events(
        self,
        since: float | None = None,
        user: str | None = None,
        namespace: str | None = None,
        verbs: Iterable[str] | None = None,
        *,
        resource: str | None = None,
        stage: str | None = "ResponseComplete",
    ) -> list[dict[str, Any]]:
        """Audit events (audit.k8s.io/v1 Event dicts) matching every filter given.

        since: epoch seconds (time.time()); keeps events whose request was received at or after it.
        user: user.username, e.g. OPERATOR_USER, ADMIN_USER or system:serviceaccount:NS:NAME.
        namespace: objectRef.namespace (a Namespace object itself has none: filter on resource).
        verbs: e.g. WRITE_VERBS; None keeps every verb.
        resource: objectRef.resource, e.g. "configmaps".
        stage: defaults to ResponseComplete, one event per request (watches also log
            ResponseStarted); None keeps every stage.
        The response code is in event["responseStatus"]["code"].
        """
        verb_set = frozenset(verbs) if verbs is not None else None
        matches = []
        for event in self._read_audit_log():
            ref = event.get("objectRef") or {}
            if stage is not None and event.get("stage") != stage:
                continue
            if user is not None and (event.get("user") or {}).get("username") != user:
                continue
            if verb_set is not None and event.get("verb") not in verb_set:
                continue
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if resource is not None and ref.get("resource") != resource:
                continue
            if since is not None:
                received = _timestamp(event.get("requestReceivedTimestamp") or event.get("stageTimestamp"))
                if received is None or received < since:
                    continue
            matches.append(event)
        return matches

    def wait_for_audit_events(
        self,
        since: float | None = None,
        user: str | None = None,
        namespace: str | None = None,
        verbs: Iterable[str] | None = None,
        *,
        resource: str | None = None,
        stage: str | None = "ResponseComplete",
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """audit_events(...) once at least `count` match, polling; the last result after `timeout`.

        The apiserver writes an event as the request completes, so a client can see its response a
        moment before the event is in the file.
        """
        verb_list = list(verbs) if verbs is not None else None
        deadline = time.monotonic() + timeout
        while True:
            events = self.audit_events(since, user, namespace, verb_list, resource=resource, stage=stage)
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.1)

    def operator_writes(
        self, since: float | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Writes (create/update/patch/delete/deletecollection) made with the operator identity."""
        return self.audit_events(since, OPERATOR_USER, namespace, WRITE_VERBS)


class _PortInUseError(ControlPlaneError):
    pass


def iter_event_summaries(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One readable line per audit event, for assertion messages."""
    for event in events:
        ref = event.get("objectRef") or {}
        target = "/".join(p for p in (ref.get("namespace"), ref.get("resource"), ref.get("name")) if p)
        code = (event.get("responseStatus") or {}).get("code")
        user = (event.get("user") or {}).get("username")
        yield f"{event.get('verb')} {target or event.get('requestURI')} by {user} -> {code}"
