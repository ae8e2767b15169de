"""The head's actor names (pure): claims, hand-over, release, a node's names going."""

from __future__ import annotations

from heliostat.cluster.names import NamedActor, NameRegistry


def _named(name: str, actor_id: int, owner: str, namespace: str = "ns") -> NamedActor:
    return NamedActor(
        namespace=namespace, name=name, actor_id=actor_id, owner=owner, class_name="C"
    )


def test_a_name_is_claimed_once_per_namespace() -> None:
    names = NameRegistry()
    first = _named("c", 1, "n1")
    assert names.claim(first) is None
    assert names.claim(_named("c", 2, "n2")) == first  # the holder, not the claimant
    assert names.claim(_named("c", 2, "n2", namespace="other")) is None
    assert names.lookup("ns", "c") == first and names.lookup("ns", "x") is None
    assert [e.key for e in names.list()] == [("ns", "c"), ("other", "c")]
    assert names.list("other") == [_named("c", 2, "n2", namespace="other")]


def test_the_same_actor_claims_again_when_its_owner_changes() -> None:
    names = NameRegistry([_named("c", 1, "driver")])
    assert names.claim(_named("c", 1, "host")) is None
    assert names.lookup("ns", "c") == _named("c", 1, "host")
    assert names.node_gone("driver") == []  # the driver leaving does not take it


def test_only_the_holder_releases_and_a_gone_node_loses_its_names() -> None:
    names = NameRegistry([_named("a", 1, "n1"), _named("b", 2, "n1"), _named("c", 3, "n2")])
    assert names.release("ns", "a", 9) is None and names.lookup("ns", "a") is not None
    assert names.release("ns", "a", 1) == _named("a", 1, "n1")
    assert names.node_gone("n1") == [_named("b", 2, "n1")]
    assert names.keep_only({"n3"}) == [_named("c", 3, "n2")]
    assert len(names) == 0
