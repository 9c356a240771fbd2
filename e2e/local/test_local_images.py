"""The operator image on the local cluster (E2E_BACKEND=local only): its containers run the project's
virtualenv, as the image runs its own, whatever interpreter runs the harness and whatever the
machine's base interpreter holds (a fresh machine's has none of the project's dependencies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Cluster, eventually
from podrunner import ENGINE_BIN, IMAGE_VENV, Images, image_engine, operator_image_problem

OPERATOR_IMAGE = "redis-messaging-operator:0.1.0"
REPO = Path(__file__).resolve().parents[2]
REPORT = ("import json, sys, redis, kopf, kubernetes, pydantic, redis_messaging.consumer; "
          "print(json.dumps({'prefix': sys.prefix, 'base_prefix': sys.base_prefix, 'redis': redis.__file__}))")


def test_a_pod_of_the_operator_image_imports_the_projects_dependencies(cluster: Cluster, namespace: str,
                                                                      local_cluster: Any) -> None:
    cluster.apply(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "image-check"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "containers": [
            {"name": "imports", "image": OPERATOR_IMAGE, "command": ["python", "-c", REPORT]},
            # what the consumers run, and the image's own entrypoint
            {"name": "consumer", "image": OPERATOR_IMAGE, "command": ["python", "-m", "redis_messaging.consumer",
                                                                      "--help"]},
            {"name": "entrypoint", "image": OPERATOR_IMAGE, "args": ["--help"]},
        ]},
    })
    def finished() -> str | None:
        phase = cluster.get(namespace, "pod", "image-check")["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = eventually(finished, timeout=120, interval=0.5, what="the pod's containers exited")
    logs = {c: local_cluster.runner.log_path(namespace, "image-check", c).read_text(errors="replace")
            for c in ("imports", "consumer", "entrypoint")}
    assert phase == "Succeeded", "\n".join(f"--- {c}\n{text}" for c, text in logs.items())
    report = json.loads(next(line for line in logs["imports"].splitlines() if line.startswith("{")))
    # the virtualenv's interpreter, its libraries from the virtualenv, not from the base interpreter
    assert report["prefix"] != report["base_prefix"], report
    assert report["redis"].startswith(report["prefix"] + "/"), report


@pytest.fixture
def base_interpreter_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if this harness ran on the base interpreter (outside any virtualenv)."""
    base = getattr(sys, "_base_executable", sys.executable)
    monkeypatch.setattr(sys, "executable", base)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    monkeypatch.setattr(sys, "exec_prefix", sys.base_exec_prefix)


def _python_of(env: dict[str, str]) -> dict[str, str]:
    """sys.prefix and sys.base_prefix of the `python` that ``env``'s PATH finds."""
    out = subprocess.run(["python", "-c", "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    prefix, base = json.loads(out.stdout)
    return {"prefix": prefix, "base_prefix": base}


@pytest.mark.usefixtures("base_interpreter_harness")
def test_the_operator_image_runs_the_checkouts_virtualenv_whatever_runs_the_harness(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    venv.create(checkout / ".venv", with_pip=False)
    images = Images(tmp_path / "bin", checkout)
    profile = images.profile(OPERATOR_IMAGE)
    assert profile is not None
    env = dict(profile.env)
    # the checkout's virtualenv, bound where the image has its own, second on PATH after the entry point
    bound = {there: here for here, there in profile.mounts}
    assert bound[IMAGE_VENV] == str(checkout / ".venv")
    assert env["PATH"].split(os.pathsep)[1] == f"{IMAGE_VENV}/bin"
    # what `python` is in the container: the virtualenv's, with its own prefix
    here = {**env, "PATH": env["PATH"].replace(IMAGE_VENV, bound[IMAGE_VENV])}
    assert _python_of(here) == {"prefix": str(checkout / ".venv"), "base_prefix": sys.base_prefix}
    # a virtualenv without the project's dependencies cannot play the image: the cluster says so
    problem = operator_image_problem(checkout)
    assert problem is not None
    assert "No module named" in problem
    assert ".ci/setup.sh" in problem


@pytest.mark.usefixtures("base_interpreter_harness")
def test_without_a_virtualenv_the_operator_image_is_refused_with_the_reason(tmp_path: Path) -> None:
    problem = operator_image_problem(tmp_path)
    assert problem is not None
    assert ".ci/setup.sh" in problem
    with pytest.raises(RuntimeError, match=r"\.ci/setup\.sh"):
        Images(tmp_path / "bin", tmp_path)


@pytest.mark.parametrize(("image", "engine"), [
    ("redis:7.2", None), ("redis:7.2.4-alpine", None), ("redis", None),  # Debian's Redis 7.0 plays every 7.x
    ("redis:8.0", "redis-8.0"), ("docker.io/library/redis:8.2.1@sha256:0a", "redis-8.0"),
    ("valkey/valkey:8.1-alpine", "valkey-8.1"), ("valkey/valkey:9.0", "valkey-9.1"), ("valkey/valkey", "valkey-9.1"),
    ("registry.local:5000/valkey/valkey:9", "valkey-9.1"),
])
def test_an_engine_image_plays_the_engine_of_its_major_version(image: str, engine: str | None) -> None:
    assert image_engine(image) == engine


def test_an_engine_image_runs_that_engines_binaries_or_waits_for_its_build(tmp_path: Path) -> None:
    built, missing = tmp_path / "valkey-9.1" / "bin", tmp_path / "redis-8.0" / "bin"
    built.mkdir(parents=True)
    (built / "redis-server").write_text("")
    images = Images(tmp_path / "image-bin", REPO, engines={"valkey-9.1": built, "redis-8.0": missing})
    valkey = images.profile("valkey/valkey:9.1")
    assert valkey is not None
    assert dict(valkey.mounts) == {str(built): ENGINE_BIN}  # bound into the container's root
    assert dict(valkey.env)["PATH"].split(os.pathsep)[0] == ENGINE_BIN
    redis8 = images.profile("redis:8.0")
    assert redis8 is not None
    assert "bash .ci/build-engine.sh redis-8.0" in redis8.missing  # its containers wait in ErrImagePull
    debian = images.profile("redis:7.2")
    assert debian is not None
    assert (debian.mounts, debian.missing) == ((), "")
