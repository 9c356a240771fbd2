"""README's first command ends with e2e/local/demo.py: its steps run here on the e2e session's local
cluster (E2E_BACKEND=local only), in namespaces of their own, so the first run a new user sees cannot
rot. The cluster's start, which the demo does before its steps, is the session fixture's own."""

from __future__ import annotations

import io
import secrets

import demo
import pytest
from e2e_support import LocalBackend


def test_the_demo_shows_the_operator_at_work(cluster: LocalBackend) -> None:
    if not isinstance(cluster, LocalBackend):
        pytest.skip("the demo runs on the local cluster")
    out = io.StringIO()
    showing = demo.Showing(out=out)
    suffix = secrets.token_hex(3)
    sentinel_ns, streams_ns = f"demo-sentinel-{suffix}", f"demo-streams-{suffix}"
    try:
        demo.show(cluster, showing, sentinel_ns=sentinel_ns, streams_ns=streams_ns, burst=300)
    finally:
        print(out.getvalue())
        for ns in (sentinel_ns, streams_ns):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert len(showing.shown) == 4, showing.shown
    assert "every entry delivered and acknowledged" in showing.shown[1]
    assert "1000 of 1000 acknowledged keys" in showing.shown[3]
    print(f"[e2e] demo steps on the session's cluster: {showing.shown}")
