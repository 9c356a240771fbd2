"""Pure functions: spec -> Kubernetes objects and Redis configuration, what both modes share (the
mode-specific builders are in :mod:`redis_messaging.modes`)."""

from __future__ import annotations


class UnsupportedSpec(ValueError):
    """A spec the schema accepts but this version of the operator cannot build."""
