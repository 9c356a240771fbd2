"""Talking to the Kubernetes API (the only package importing the kubernetes client)."""
