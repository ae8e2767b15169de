"""Lazy task graphs: ``f.bind(...)`` builds a node instead of running a task.

A :class:`FunctionNode` records a remote function, its options and its arguments;
arguments may themselves be nodes (anywhere inside lists, tuples and dicts), which is
how a graph is formed. Nothing runs until either

* ``node.execute()`` submits the whole graph to the engine as ordinary tasks (no
  durability: a parent's ObjectRef is passed straight to its children), or
* the durable workflow executor (``heliostat.workflows``) compiles it, persists it and
  runs it step by step.

Nodes are immutable once built, so a graph made with ``bind`` cannot contain a cycle;
the workflow compiler still checks, because graphs can also be assembled by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from heliostat.engine.object_ref import ObjectRef

if TYPE_CHECKING:
    from heliostat.engine.remote_function import RemoteFunction

__all__ = ["DAGNode", "FunctionNode", "map_leaves", "map_nodes"]

_node_ids = itertools.count(1)


class DAGNode:
    """Base class of graph nodes."""

    __slots__ = ("_uid",)

    def __init__(self) -> None:
        self._uid = next(_node_ids)

    def children(self) -> list[DAGNode]:
        """The nodes this node's arguments refer to (its upstream nodes), in order."""
        raise NotImplementedError

    def execute(self) -> ObjectRef:
        """Run the graph as plain tasks; returns the ref of this node's result."""
        return self._execute({})

    def _execute(self, done: dict[int, ObjectRef]) -> ObjectRef:
        raise NotImplementedError

    def walk(self) -> Iterator[DAGNode]:
        """Every node reachable from this one, each once, parents before children."""
        seen: set[int] = set()
        order: list[DAGNode] = []
        stack: list[tuple[DAGNode, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node._uid in seen:
                continue
            seen.add(node._uid)
            stack.append((node, True))
            for child in reversed(node.children()):
                if child._uid not in seen:
                    stack.append((child, False))
        return iter(order)


def map_leaves(value: Any, leaf: type, fn: Callable[[Any], Any]) -> Any:
    """Replace every instance of ``leaf`` inside ``value`` (lists, tuples, dicts) by
    ``fn(instance)``; other values are kept as they are."""
    if isinstance(value, leaf):
        return fn(value)
    if type(value) is list:
        return [map_leaves(v, leaf, fn) for v in value]
    if type(value) is tuple:
        return tuple(map_leaves(v, leaf, fn) for v in value)
    if type(value) is dict:
        return {k: map_leaves(v, leaf, fn) for k, v in value.items()}
    return value


def map_nodes(value: Any, fn: Callable[[DAGNode], Any]) -> Any:
    """Replace every node inside ``value`` (lists, tuples, dicts) by ``fn(node)``."""
    return map_leaves(value, DAGNode, fn)


def _collect(value: Any, out: list[DAGNode]) -> None:
    if isinstance(value, DAGNode):
        out.append(value)
    elif type(value) in (list, tuple):
        for v in value:
            _collect(v, out)
    elif type(value) is dict:
        for v in value.values():
            _collect(v, out)


class FunctionNode(DAGNode):
    """A bound call of a remote function: ``f.bind(*args, **kwargs)``."""

    __slots__ = ("remote_function", "args", "kwargs", "_children")

    def __init__(
        self, remote_function: RemoteFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        super().__init__()
        self.remote_function = remote_function
        self.args = args
        self.kwargs = kwargs
        children: list[DAGNode] = []
        _collect(args, children)
        _collect(kwargs, children)
        self._children = children

    def children(self) -> list[DAGNode]:
        return self._children

    @property
    def name(self) -> str:
        return self.remote_function.task_name

    @property
    def workflow_options(self) -> dict[str, Any]:
        """The options given through ``workflow.options(...)`` (empty if none)."""
        return dict(self.remote_function.task_options.workflow)

    def _execute(self, done: dict[int, ObjectRef]) -> ObjectRef:
        # Iterative post-order so deep chains do not hit the recursion limit.
        for node in self.walk():
            if node._uid in done:
                continue
            assert isinstance(node, FunctionNode)
            args = map_nodes(node.args, lambda n: done[n._uid])
            kwargs = map_nodes(node.kwargs, lambda n: done[n._uid])
            done[node._uid] = node.remote_function.remote(*args, **kwargs)
        return done[self._uid]

    def __repr__(self) -> str:
        return f"FunctionNode({self.name}, {len(self._children)} upstream)"
