"""The head's gRPC control plane in this process: real sockets, real token checks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from heliostat.cluster import (
    HeadClient,
    HeadServer,
    HeadService,
    NodeIdTaken,
    NodeNotKnown,
    Timing,
)
from heliostat.cluster.agent import NodeAgent
from heliostat.cluster.auth import ensure_token_file, tokens_match
from heliostat.cluster.names import NamedActor
from heliostat.cluster.rpc import Registration
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.cluster.v1 import control_pb2_grpc as pb_grpc
from heliostat.exceptions import ClusterAuthError, ClusterUnreachableError
from heliostat.storage import db
from heliostat.storage.cluster_names import NameTableStore
from heliostat.storage.cluster_nodes import NodeState, NodeTableStore

TOKEN = "t0ken-for-tests"
FAST = Timing(heartbeat_interval=0.05, suspect_after=0.15, dead_after=0.3)


class FixedResources:
    def total(self) -> dict[str, float]:
        return {"CPU": 1.0}

    def available(self) -> dict[str, float]:
        return {"CPU": 1.0}


@pytest.fixture
def make_head(tmp_path: Path) -> Iterator[Callable[..., HeadServer]]:
    servers: list[HeadServer] = []
    engines: list[Any] = []

    def make(url: str | None = None, *, port: int = 0, timing: Timing = FAST) -> HeadServer:
        store = names = None
        if url is not None:
            engine = db.make_engine(url)
            db.ensure_schema(engine)
            engines.append(engine)
            store = NodeTableStore(engine)
            names = NameTableStore(engine)
        service = HeadService(
            cluster_id="c1", version="test", store=store, name_store=names, timing=timing
        )
        server = HeadServer(service, token=TOKEN, port=port)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(grace=0)
    for engine in engines:
        engine.dispose()


def _registration(node_id: str = "n1") -> Registration:
    return Registration(
        node_id=node_id, address="127.0.0.2", hostname="box", pid=1, total={"CPU": 2.0}
    )


def test_register_heartbeat_list_and_resources(make_head: Callable[..., HeadServer]) -> None:
    head = make_head()
    with HeadClient(head.address, TOKEN) as client:
        ack = client.register_node(_registration())
        assert ack.cluster_id == "c1" and ack.incarnation == 1
        assert ack.heartbeat_interval == FAST.heartbeat_interval
        assert client.heartbeat("n1", {"CPU": 0.5}).incarnation == 1
        [node] = client.list_nodes()
        assert node.state is NodeState.ALIVE and node.address == "127.0.0.2"
        assert node.available == {"CPU": 0.5} and node.last_heartbeat_at is not None
        assert client.cluster_resources().total == {"CPU": 2.0}
        assert client.cluster_info().nodes_alive == 1
        job = client.register_job("python etl.py", "box", 7)
        client.finish_job(job)
        [listed] = client.list_jobs()
        assert listed.job_id == job and listed.finished_at is not None


def test_a_silent_node_dies_and_its_heartbeat_gets_not_found(
    make_head: Callable[..., HeadServer], wait_for: Callable[..., Any]
) -> None:
    head = make_head()
    with HeadClient(head.address, TOKEN) as client:
        client.register_node(_registration())
        wait_for(lambda: client.list_nodes()[0].state is NodeState.DEAD, 5, what="the node to die")
        with pytest.raises(NodeNotKnown):
            client.heartbeat("n1", {})
        assert client.register_node(_registration()).incarnation == 2


def test_a_live_nodes_id_is_refused_to_another_process(
    make_head: Callable[..., HeadServer], wait_for: Callable[..., Any]
) -> None:
    slow = Timing(heartbeat_interval=0.05, suspect_after=0.5, dead_after=1.0)
    head = make_head(timing=slow)
    other = Registration(node_id="n1", address="127.0.0.3", hostname="box", pid=2)
    with HeadClient(head.address, TOKEN) as client:
        client.register_node(_registration())
        with pytest.raises(NodeIdTaken, match=r"held by a live node \(127.0.0.2, pid 1 on box\)"):
            client.register_node(other)
        [node] = client.list_nodes()
        assert (node.address, node.pid, node.incarnation) == ("127.0.0.2", 1, 1)
        # The same process may register again (as after a head restart).
        assert client.register_node(_registration()).incarnation == 1
        # Once the holder is dead, the id is free: the other process takes it.
        wait_for(lambda: client.list_nodes()[0].state is NodeState.DEAD, 5, what="n1 to die")
        assert client.register_node(other).incarnation == 2


def test_an_agent_whose_id_was_taken_while_it_was_dead_stops_for_good(
    make_head: Callable[..., HeadServer], wait_for: Callable[..., Any]
) -> None:
    head = make_head()
    fatal: list[Exception] = []
    agent = NodeAgent(
        HeadClient(head.address, TOKEN, timeout=1),
        node_id="n1",
        address="127.0.0.2",
        hostname="box",
        pid=1,
        resources=FixedResources(),
        on_fatal=fatal.append,
    )
    agent.register()  # not heartbeating yet: the head declares it dead
    with HeadClient(head.address, TOKEN) as client:
        wait_for(lambda: client.list_nodes()[0].state is NodeState.DEAD, 5, what="n1 to die")
        taker = Registration(node_id="n1", address="127.0.0.3", hostname="box", pid=2)
        client.register_node(taker)
        agent.start()  # its heartbeat is refused, and so is its registration
        try:
            wait_for(lambda: fatal, 5, what="the agent to give up")
            assert isinstance(fatal[0], NodeIdTaken)
            # The taker's heartbeats keep it alive.
            assert client.heartbeat("n1", {}).incarnation == 2
        finally:
            agent.stop(deregister=False)


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_calls_without_the_right_token_are_refused_and_logged(
    make_head: Callable[..., HeadServer], token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    head = make_head()
    with grpc.insecure_channel(head.address) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        metadata = None if token is None else (("authorization", f"bearer {token}"),)
        with caplog.at_level(logging.WARNING, logger="heliostat"):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListNodes(pb.ListNodesRequest(), metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert any(
        "refused /heliostat.cluster.v1.ControlPlane/ListNodes" in r.message for r in caplog.records
    )
    assert all(TOKEN not in r.message for r in caplog.records)


def test_the_client_names_a_wrong_token_and_an_unreachable_head(
    make_head: Callable[..., HeadServer],
) -> None:
    head = make_head()
    with HeadClient(head.address, "nope") as client, pytest.raises(ClusterAuthError, match="token"):
        client.cluster_info()
    port = head.port
    head.stop(grace=0)
    with HeadClient(f"127.0.0.1:{port}", TOKEN, timeout=1) as client:
        with pytest.raises(ClusterUnreachableError, match="unreachable"):
            client.cluster_info()


def test_a_restarted_head_recovers_its_table_and_the_agent_carries_on(
    make_head: Callable[..., HeadServer], tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    slow = Timing(heartbeat_interval=0.05, suspect_after=1.0, dead_after=2.0)
    head = make_head(url, timing=slow)
    port = head.port
    agent = NodeAgent(
        HeadClient(head.address, TOKEN, timeout=1),
        node_id="n1",
        address="127.0.0.2",
        hostname="box",
        pid=1,
        resources=FixedResources(),
        stored_objects=lambda: {7: 4096},
    )
    agent.register()
    agent.start()
    try:
        wait_for(lambda: agent.heartbeats >= 2, 5, what="heartbeats")
        with HeadClient(head.address, TOKEN) as client:
            places, total = client.locate_objects([7, 8])
            assert [(p.object_id, p.size, p.node_ids) for p in places] == [(7, 4096, ("n1",))]
            assert total == 1
            [node] = client.list_nodes()
            assert (node.objects, node.object_bytes) == (1, 4096)
        head.stop(grace=0)
        restarted = make_head(url, port=port, timing=slow)
        with HeadClient(restarted.address, TOKEN) as client:
            # Recovered from SQL before the node says anything.
            [node] = client.list_nodes()
            assert node.state is NodeState.ALIVE and node.last_heartbeat_at is None
            wait_for(
                lambda: client.list_nodes()[0].last_heartbeat_at is not None,
                10,
                what="the node's heartbeats to reach the restarted head",
            )
            [node] = client.list_nodes()
            assert node.state is NodeState.ALIVE and node.incarnation == 1
            # The restarted head kept no objects: it asked the node for all of them.
            wait_for(
                lambda: client.locate_objects()[1] == 1,
                10,
                what="the node's store to be reported to the restarted head",
            )
            assert client.locate_objects()[0][0].node_ids == ("n1",)
    finally:
        agent.stop()


def _named(name: str, actor_id: int, owner: str, namespace: str = "ns") -> NamedActor:
    return NamedActor(
        namespace=namespace,
        name=name,
        actor_id=actor_id,
        owner=owner,
        class_name="Counter",
        methods={"incr": 1, "stream": -2},
        detached=name.startswith("d"),
    )


def test_actor_names_are_claimed_looked_up_released_and_go_with_their_node(
    make_head: Callable[..., HeadServer], wait_for: Callable[..., Any]
) -> None:
    head = make_head()
    with HeadClient(head.address, TOKEN) as client:
        client.register_node(_registration("n1"))
        client.register_node(_registration("n2"))
        first = _named("c", 7 << 64, "n1")
        assert client.claim_name(first) is None
        assert client.claim_name(_named("c", 9 << 64, "n2")) == first  # taken: the holder
        assert client.claim_name(_named("c", 9 << 64, "n2", namespace="other")) is None
        assert client.lookup_name("ns", "c") == first
        assert client.lookup_name("ns", "nobody") is None
        # The same actor claims its name again from the node it moved to (a hand-over).
        moved = _named("c", 7 << 64, "n2")
        assert client.claim_name(moved) is None and client.lookup_name("ns", "c") == moved
        assert client.claim_name(_named("d1", 8 << 64, "n1")) is None
        assert [e.name for e in client.list_names("ns")] == ["c", "d1"]
        assert [(e.namespace, e.name) for e in client.list_names(None)] == [
            ("ns", "c"),
            ("ns", "d1"),
            ("other", "c"),
        ]
        assert not client.release_name("ns", "c", 1)  # not that actor's name
        assert client.release_name("ns", "c", 7 << 64)
        assert client.lookup_name("ns", "c") is None

        # n1 is silent and dies: its names go with it; n2 (heartbeating) keeps its own.
        def n1_dead() -> bool:
            client.heartbeat("n2", {})
            return {n.node_id: n.state for n in client.list_nodes()}["n1"] is NodeState.DEAD

        wait_for(n1_dead, 5, what="n1 declared dead", interval=0.02)
        assert [(e.namespace, e.name) for e in client.list_names(None)] == [("other", "c")]
        client.deregister_node("n2")  # a node that leaves loses its names too
        assert client.list_names(None) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_restarted_head_keeps_the_names_of_live_owners(
    make_head: Callable[..., HeadServer],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    if backend == "postgresql":
        url = request.getfixturevalue("pg_schema_url")()
    else:
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    slow = Timing(heartbeat_interval=0.05, suspect_after=5.0, dead_after=10.0)
    head = make_head(url, timing=slow)
    port = head.port
    with HeadClient(head.address, TOKEN) as client:
        client.register_node(_registration("n1"))
        client.register_node(_registration("n2"))
        assert client.claim_name(_named("d1", 1 << 64, "n1")) is None
        assert client.claim_name(_named("d2", 2 << 64, "n2")) is None
        assert client.claim_name(_named("gone", 3 << 64, "n1")) is None
        assert client.release_name("ns", "gone", 3 << 64)
        client.deregister_node("n2")
    head.stop(grace=0)  # writes what is queued
    restarted = make_head(url, port=port, timing=slow)
    with HeadClient(restarted.address, TOKEN) as client:
        [kept] = client.list_names(None)
        assert kept == _named("d1", 1 << 64, "n1")  # with its methods and lifetime


def test_the_token_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "cluster" / "token"
    token, created = ensure_token_file(path)
    assert created and len(token) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert ensure_token_file(path) == (token, False)
    assert tokens_match(token, token) and not tokens_match(token, token[:-1])
