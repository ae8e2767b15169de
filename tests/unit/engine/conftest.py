"""Fixtures for driving the node manager's pure state (no processes, no sockets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heliostat.engine.node_state import NodeState
from heliostat.engine.records import ActorOptions, TaskKind, TaskSpec, WorkerRecord
from heliostat.scheduler import ResourceSet

ONE_CPU = ResourceSet.from_request(1, None, default_cpus=1)
NO_CPU = ResourceSet.from_request(0, None, default_cpus=0)


class Node:
    """A ``NodeState`` and helpers to play its workers: events in, instructions out."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self._next_pid = 1000

    def add_worker(self) -> WorkerRecord:
        """A worker that was spawned and registered (its process exists only here)."""
        worker = self.state.registry.spawn(None)
        self._next_pid += 1
        registered = self.state.worker_registered(worker.index, self._next_pid)
        assert registered is worker
        return worker

    def sent(self, worker: WorkerRecord) -> list[Any]:
        """The instructions queued for ``worker`` since last asked (then cleared)."""
        out = self.state.out
        messages, worker.outbox = worker.outbox, []
        if worker in out.dirty:
            out.dirty.remove(worker)
        return messages

    def effects(self) -> list[Any]:
        effects, self.state.out.effects = self.state.out.effects, []
        return effects

    def reset(self) -> None:
        for worker in list(self.state.out.dirty):
            self.sent(worker)
        self.effects()


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., Node]:
    def make(num_cpus: float = 1, max_workers: int = 2, **kwargs: Any) -> Node:
        state = NodeState(
            session="0-000000",
            node_index=0,
            num_cpus=num_cpus,
            resources={},
            object_store_memory=1 << 20,
            spill_dir=str(tmp_path / "spill"),
            max_workers=max_workers,
            driver_pid=1,
            **kwargs,
        )
        return Node(state)

    return make


_ids = iter(range(1, 1 << 30))


def _make_spec(
    *,
    args: tuple[int, ...] = (),
    max_retries: int = 0,
    kind: TaskKind = TaskKind.NORMAL,
    actor_id: int = 0,
    resources: ResourceSet = ONE_CPU,
    name: str = "",
    fn_id: bytes = b"fn",
    max_calls: int = 0,
) -> TaskSpec:
    task_id = next(_ids)
    return TaskSpec(
        task_id=task_id,
        kind=kind,
        name=name or f"t{task_id}",
        fn_id=fn_id,
        args_payload=b"",
        ref_positions=(),
        arg_ids=args,
        contained=(),
        return_ids=(task_id << 8,),
        resources=resources,
        max_retries=max_retries,
        retry_exceptions=False,
        owner=0,
        actor_id=actor_id,
        method="m" if kind is TaskKind.ACTOR_CALL else "",
        max_calls=max_calls,
    )


def _make_options(**overrides: Any) -> ActorOptions:
    fields: dict[str, Any] = dict(
        name="",
        namespace="ns",
        class_name="Counter",
        max_restarts=0,
        max_concurrency=1,
        detached=False,
        methods={"m": 1},
        max_task_retries=0,
    )
    fields.update(overrides)
    return ActorOptions(**fields)


@pytest.fixture
def make_options() -> Callable[..., ActorOptions]:
    """``make_options(name=..., max_restarts=..., methods=..., ...)``: an actor's options."""
    return _make_options


@pytest.fixture
def make_spec() -> Callable[..., TaskSpec]:
    """``make_spec(args=..., max_retries=..., kind=..., actor_id=..., resources=...,
    fn_id=..., max_calls=...)``."""
    return _make_spec
