"""Cluster mode: objects, configuration and scripts, healing and resharding, rolling updates."""
