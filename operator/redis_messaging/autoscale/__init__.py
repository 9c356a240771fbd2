"""Lag-driven consumer autoscaling: pure decisions (:mod:`.decide`) and the loop that applies them.

This package never imports the Redis or the Kubernetes client; measurements come from
:mod:`redis_messaging.redis.streams` and scale patches go through :mod:`redis_messaging.kube`.
"""
