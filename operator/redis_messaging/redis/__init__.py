"""Talking to Redis: the only package of the operator that imports the ``redis`` client library."""

from redis.driver_info import DriverInfo

# redis-py reads its own version from the package metadata for each client it builds unless it is given
# one (about a millisecond each: most of a pass's CPU time when it connects to six pods): every client
# of the operator gets this one.
DRIVER_INFO = DriverInfo()
