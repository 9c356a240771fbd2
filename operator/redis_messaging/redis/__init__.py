"""Talking to Redis: the only package of the operator that imports the ``redis`` client library."""
