"""The redis_exporter that .ci/build-monitoring.sh builds, and the redis tier's monitoring tests run, is
the version of the operator's default exporter image: what the tests prove of its metrics holds for the
sidecar the pods run."""

from __future__ import annotations

from monitoring_tools import BUILD_SCRIPT, binaries_dir, pinned_versions

from redis_messaging.api import models


def test_the_built_exporter_is_the_default_image() -> None:
    image = models.Exporter().image
    name, _, tag = image.rpartition(":")
    assert name == "oliver006/redis_exporter"
    assert pinned_versions()["REDIS_EXPORTER_VERSION"] == tag, (
        f"{BUILD_SCRIPT.name} builds {pinned_versions()['REDIS_EXPORTER_VERSION']}, the pods run {image}")


def test_the_tests_look_where_the_script_builds() -> None:
    versions = pinned_versions()
    assert binaries_dir().name == (f"redis_exporter-{versions['REDIS_EXPORTER_VERSION']}"
                                   f"-prometheus-{versions['PROMETHEUS_VERSION']}")
    assert 'DEST="$CACHE/monitoring/redis_exporter-$REDIS_EXPORTER_VERSION-prometheus-$PROMETHEUS_VERSION"' \
        in BUILD_SCRIPT.read_text()
