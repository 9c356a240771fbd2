"""redis/nodes against real redis-servers: provisioning, consumers in one round trip, failures as values."""

from __future__ import annotations

from pathlib import Path

import pytest
from _server import RedisServer, counting_client, free_port, server_fixtures, start_redis
from redis.client import Redis

from redis_messaging.api.models import Stream
from redis_messaging.redis.nodes import NodeUnavailable, Pools, consumers, provision, reclaim
from redis_messaging.redis.streams import StreamsNode, collect_node, node_of

pytestmark = pytest.mark.redis


server, r = server_fixtures("redis-nodes")


def declared(**kw: object) -> Stream:
    return Stream.model_validate({"name": "orders", "groups": [{"name": "billing", "startId": "0"},
                                                               {"name": "audit", "startId": "0"}], **kw})


def test_provision_creates_groups_once_and_trims_only_what_every_group_is_done_with(r: Redis) -> None:
    spec = declared(retention={"maxLen": 10})
    first = provision(node_of(r), spec)
    assert (set(first.created), first.trimmed, first.error) == ({"billing", "audit"}, 0, None)
    for i in range(30):
        r.xadd("orders", {"n": str(i)}, id=f"{i + 1}-0")
    r.xreadgroup("billing", "w-1", {"orders": ">"}, count=25)
    r.xreadgroup("audit", "w-1", {"orders": ">"}, count=15)
    r.xack("orders", "audit", *[f"{i + 1}-0" for i in range(15)])
    r.xack("orders", "billing", *[f"{i + 1}-0" for i in range(25)])
    second = provision(node_of(r), spec)
    assert second.created == ()
    assert second.trimmed == 15  # audit has not been delivered entry 16 yet: the policy's 20 stop there
    assert r.xlen("orders") == 15


def test_provision_on_a_replica_is_an_error_message_not_an_exception(tmp_path: Path) -> None:
    with start_redis(tmp_path, "--replicaof", "127.0.0.1", str(free_port())) as replica:
        client = replica.client(decode_responses=True)
        done = provision(node_of(client), declared())
        client.close()
    assert done.created == ()
    assert done.error is not None
    assert "orders" in done.error
    assert "read only replica" in done.error


def test_consumers_of_every_group_come_in_one_round_trip(server: RedisServer, r: Redis) -> None:
    for name in ("orders", "refunds"):
        provision(node_of(r), Stream.model_validate({"name": name, "groups": [{"name": "billing", "startId": "0"}]}))
        r.xadd(name, {"n": "1"})
    r.xreadgroup("billing", "w-1", {"orders": ">"})
    r.xreadgroup("billing", "w-2", {"refunds": ">"})
    client, trips = counting_client(server)
    node = node_of(client)
    client.ping()
    before = trips.count
    found = consumers(node, [("orders", "billing"), ("refunds", "billing"), ("orders", "nope"), ("gone", "g")])
    assert trips.count - before == 1
    assert {k: {n: c.pending for n, c in v.items()} for k, v in found.items()} == {
        ("orders", "billing"): {"w-1": 1}, ("refunds", "billing"): {"w-2": 1},
        ("orders", "nope"): {}, ("gone", "g"): {}}
    client.close()


def test_an_unreachable_node_raises_node_unavailable() -> None:
    pools = Pools(timeout=0.5)
    node = pools.node(("ns", "orders"), None, ("127.0.0.1", free_port()))
    with pytest.raises(NodeUnavailable):
        consumers(node, [("orders", "billing")])
    with pytest.raises(NodeUnavailable):
        reclaim(node, "orders", "billing", set(), None)
    assert provision(node, declared()).error is not None
    pools.close_all()


def test_pools_reuse_clients_and_renew_them_with_a_new_password(server: RedisServer) -> None:
    pools = Pools()
    address = (server.host, server.port)
    a = pools.node(("ns", "orders"), None, address)
    assert pools.node(("ns", "orders"), None, address) is a
    assert pools.node(("ns", "other"), None, address) is not a
    assert pools.node(("ns", "orders"), "changed", address) is not a
    pools.forget(("ns", "orders"))
    pools.close_all()


def test_queues_and_channels_are_measured_in_the_same_round_trip(server: RedisServer, r: Redis) -> None:
    client = r
    client.lpush("jobs", *range(42))
    client.xadd("orders", {"n": "1"})
    client.xgroup_create("orders", "billing", id="0")
    listener = server.client().pubsub()
    listener.subscribe("news")
    node = StreamsNode(client)
    collect_node(node, ["orders"])  # learn the version first: later ticks are one round trip
    calls = []
    original = client.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    client.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:
        measured = collect_node(node, ["orders"], queues=["jobs", "empty"],
                                channels=[("news", False), ("nobody", False)])
    finally:
        listener.close()
    assert len(calls) == 1
    assert [(q.queue, q.length) for q in measured.queues] == [("jobs", 42), ("empty", 0)]
    assert {c.channel: c.subscribers for c in measured.channels} == {"news": 1, "nobody": 0}
    assert measured.streams[0].groups[0].lag == 1
