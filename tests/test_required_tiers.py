"""RMSG_REQUIRE_TIERS (tests/support/required_tiers.py): where CI requires a tier, a test of it that
skips fails, saying why it skipped; everything else keeps its outcome. The cases run pytest on a
small project of their own, registered as tests/conftest.py and e2e/conftest.py register it, then
on this repository's own tiers on a machine made to lack their binaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"

INI = """[pytest]
markers =
    redis: real redis-server processes
    kube: a real control plane
    e2e: a whole cluster
"""
CONFTEST = """
import json
from pathlib import Path

import required_tiers

OUTCOMES = {}


def pytest_configure(config):
    required_tiers.register(config)


def pytest_runtest_logreport(report):
    outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    name = report.nodeid.rsplit("::", 1)[-1]
    if outcome != "passed" or report.when == "call":
        OUTCOMES.setdefault(name, f"{outcome} at {report.when}")


def pytest_sessionfinish(session):
    Path("outcomes.json").write_text(json.dumps(OUTCOMES))
"""
REDIS_TESTS = """
import pytest

pytestmark = pytest.mark.redis


@pytest.fixture
def server():
    pytest.skip("redis-server not found: apt-get install -y redis-server")


def test_skipped_by_its_fixture(server):
    pass


def test_skipped_in_its_body():
    pytest.skip("redis-sentinel not found")


@pytest.mark.skip(reason="no redis-server here")
def test_skipped_by_a_mark():
    pass


def test_skipped_for_a_reason_about_the_run():
    pytest.skip("another test of this session left monitoring.coreos.com/v1 served")


@pytest.mark.xfail(reason="a known bug")
def test_expected_to_fail():
    assert False


def test_passing():
    pass


def test_failing():
    assert False
"""
UNIT_TESTS = """
import pytest


def test_of_the_unit_tier_skipped():
    pytest.skip("an optional tool is missing")
"""


def run(project: Path, required: str | None, *args: str) -> tuple[int, dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if k != "RMSG_REQUIRE_TIERS"}
    if required is not None:
        env["RMSG_REQUIRE_TIERS"] = required
    env["PYTHONPATH"] = str(SUPPORT)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    outcomes_file = project / "outcomes.json"
    outcomes = json.loads(outcomes_file.read_text()) if outcomes_file.exists() else {}
    outcomes_file.unlink(missing_ok=True)
    return done.returncode, outcomes, done.stdout + done.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "tests" / "redis").mkdir(parents=True)
    (tmp_path / "tests" / "redis" / "test_redis_tier.py").write_text(REDIS_TESTS)
    (tmp_path / "tests" / "unit").mkdir()
    (tmp_path / "tests" / "unit" / "test_unit_tier.py").write_text(UNIT_TESTS)
    return tmp_path


def test_a_required_tier_that_skips_for_a_missing_binary_fails(project: Path) -> None:
    code, outcomes, output = run(project, "redis,kube")
    assert outcomes == {
        "test_skipped_by_its_fixture": "failed at setup",
        "test_skipped_in_its_body": "failed at call",
        "test_skipped_by_a_mark": "failed at setup",
        "test_skipped_for_a_reason_about_the_run": "skipped at call",
        "test_expected_to_fail": "xfailed at call",
        "test_passing": "passed at call",
        "test_failing": "failed at call",
        "test_of_the_unit_tier_skipped": "skipped at call",
    }, output
    assert code == 1
    # the failure says which tier, and why the test skipped
    assert "the redis tier must run here (RMSG_REQUIRE_TIERS=kube,redis)" in output
    assert "redis-server not found: apt-get install -y redis-server" in output
    assert "redis-sentinel not found" in output


def test_without_required_tiers_skips_stay_skips(project: Path) -> None:
    code, outcomes, output = run(project, None)
    assert outcomes["test_skipped_by_its_fixture"] == "skipped at setup", output
    assert outcomes["test_skipped_in_its_body"] == "skipped at call"
    assert outcomes["test_skipped_by_a_mark"] == "skipped at setup"
    assert outcomes["test_failing"] == "failed at call"
    assert code == 1  # the failing test, as before
    code, outcomes, output = run(project, "kube,e2e")  # another tier required: redis skips stay skips
    assert outcomes["test_skipped_by_its_fixture"] == "skipped at setup", output
    (project / "tests" / "redis" / "test_redis_tier.py").unlink()
    code, outcomes, _ = run(project, "")
    assert code == 0


def test_nothing_collected_is_no_failure(project: Path) -> None:
    code, _, output = run(project, "redis,kube,e2e", "-k", "no_test_has_this_name")
    assert code == 5, output  # pytest's "no tests collected"; .ci/test takes it for a success


def test_a_module_of_a_required_tier_that_skips_whole_fails_its_collection(project: Path) -> None:
    (project / "tests" / "redis" / "test_redis_tier.py").write_text(
        "import pytest\n\npytest.importorskip('no_such_module_here', reason='redis-py is not installed')\n")
    code, _, output = run(project, "redis")
    assert code != 0
    assert "the redis tier must run here" in output
    assert "redis-py is not installed" in output
    code, _, output = run(project, None)
    assert code == 0, output


def test_an_unknown_tier_is_a_usage_error(project: Path) -> None:
    code, _, output = run(project, "redis,e2ee")
    assert code == 4
    assert "unknown tier e2ee" in output


# -- this repository's tiers ----------------------------------------------------------------------------

def path_without(tmp_path: Path, prefix: str) -> str:
    """A PATH that finds every program of this one but those whose names start with ``prefix``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            link = bin_dir / program.name
            if not program.name.startswith(prefix) and not link.exists() and os.access(program, os.X_OK):
                link.symlink_to(program)
    return str(bin_dir)


@pytest.mark.parametrize("tier", ["redis", "kube", "e2e"])
def test_this_repositorys_tiers_fail_without_their_binaries_where_required(tmp_path: Path, tier: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RMSG_REQUIRE_TIERS", "KUBEBUILDER_ASSETS",
                                                            "E2E_BACKEND", "E2E_KUBECONFIG")}
    if tier == "redis":
        env["PATH"] = path_without(tmp_path, "redis-")
        args = ["tests/redis/test_sentinel_env.py"]
    elif tier == "kube":
        env["RMSG_CACHE"] = str(tmp_path / "empty-cache")  # where .ci/control-plane.sh would have built them
        args = ["tests/kube/test_operator.py"]
    else:
        env["RMSG_CACHE"] = str(tmp_path / "empty-cache")
        env["E2E_BACKEND"] = "local"
        args = ["e2e/local/test_local_network.py"]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *args]

    skipped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert " skipped" in skipped.stdout

    env["RMSG_REQUIRE_TIERS"] = "redis,kube,e2e"
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert failed.returncode == 1, failed.stdout[-3000:]
    assert f"the {tier} tier must run here" in failed.stdout
