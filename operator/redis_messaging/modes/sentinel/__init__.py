"""Sentinel mode: objects, configuration and scripts, healing, rolling updates, failover follow-up."""
