"""Compiling a bound DAG into a validated, persistable workflow graph.

``compile_dag(root)`` walks the graph from its output node, gives every step a
deterministic task id, replaces upstream nodes in arguments by :class:`Upstream`
placeholders, checks that everything can be pickled, and builds a networkx
``DiGraph`` (edges point from a step to the steps that consume its output). All
rejections happen here, before anything runs, with a message naming the step.

Task ids: an explicit ``workflow.options(task_id=...)`` wins; otherwise the function's
name, suffixed ``_1``, ``_2``, ... in the order a depth-first walk meets the steps
(arguments left to right). The same code building the same DAG gets the same ids, so a
resumed run maps onto the steps already recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from heliostat.engine.dag import DAGNode, FunctionNode, map_nodes
from heliostat.engine.remote_function import RemoteFunction
from heliostat.exceptions import WorkflowDefinitionError
from heliostat.workflows.options import StepOptions, step_options

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["CompiledWorkflow", "StepSpec", "Upstream", "compile_dag", "upstream_ids"]


class Upstream:
    """Placeholder for the output of step ``task_id`` inside another step's arguments."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (Upstream, (self.task_id,))

    def __repr__(self) -> str:
        return f"Upstream({self.task_id!r})"


def _walk_values(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in (list, tuple):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
        else:
            yield item


def upstream_ids(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Task ids referenced by ``Upstream`` placeholders, in argument order."""
    return [v.task_id for v in _walk_values((args, kwargs)) if isinstance(v, Upstream)][::-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSpec:
    """One step of a compiled workflow."""

    task_id: str
    name: str
    function: RemoteFunction
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: StepOptions
    parents: tuple[str, ...]
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledWorkflow:
    """A validated workflow: steps by id, the dependency graph, the output step."""

    steps: dict[str, StepSpec]
    graph: nx.DiGraph
    output: str

    def order(self) -> list[str]:
        """Task ids in a deterministic topological order."""
        import networkx as nx  # only the driver compiles and orders graphs (slow import)

        return list(nx.lexicographical_topological_sort(self.graph, key=self._position))

    def _position(self, task_id: str) -> int:
        return self.steps[task_id].position

    def to_bytes(self) -> bytes:
        return bytes(cloudpickle.dumps(self, protocol=5))

    @staticmethod
    def from_bytes(data: bytes) -> CompiledWorkflow:
        value = cloudpickle.loads(data)
        if not isinstance(value, CompiledWorkflow):
            raise WorkflowDefinitionError("stored workflow graph is not a CompiledWorkflow")
        return value


def compile_dag(root: Any, *, prefix: str = "", start_position: int = 0) -> CompiledWorkflow:
    """Validate and compile the DAG that ends in ``root``.

    Args:
        root: a node built with ``f.bind(...)``.
        prefix: prepended to derived task ids (continuations use the parent step's id).
        start_position: first position number (continuations continue the parent's).

    Raises:
        WorkflowDefinitionError: not a DAG node, a cycle, a duplicate task id, or an
            argument that cannot be serialized. The message names the step.
    """
    if not isinstance(root, DAGNode):
        raise WorkflowDefinitionError(
            f"A workflow needs a DAG built with .bind(...), not a {type(root).__name__}."
        )
    nodes = list(root.walk())
    ids: dict[int, str] = {}
    used: set[str] = set()
    counts: dict[str, int] = {}
    explicit: dict[str, str] = {}
    parsed: dict[int, StepOptions] = {}
    for node in nodes:
        if not isinstance(node, FunctionNode):
            raise WorkflowDefinitionError(f"Unsupported node type {type(node).__name__}.")
        try:
            opts = step_options(node.workflow_options)
        except ValueError as exc:
            raise WorkflowDefinitionError(f"Step {node.name!r}: {exc}") from exc
        parsed[node._uid] = opts
        if opts.task_id is not None:
            task_id = opts.task_id
            if task_id in explicit:
                raise WorkflowDefinitionError(
                    f"Duplicate task_id {task_id!r}: used by step {explicit[task_id]!r} and "
                    f"step {node.name!r}. Task ids must be unique within a workflow.",
                    task_id=task_id,
                )
            explicit[task_id] = node.name
    for node in nodes:
        assert isinstance(node, FunctionNode)  # checked in the loop above
        opts = parsed[node._uid]
        if opts.task_id is not None:
            task_id = opts.task_id
        else:
            base = prefix + _safe_name(node.name)
            n = counts.get(base, 0)
            task_id = base if n == 0 else f"{base}_{n}"
            while task_id in used or task_id in explicit:
                n += 1
                task_id = f"{base}_{n}"
            counts[base] = n + 1
        used.add(task_id)
        ids[node._uid] = task_id

    import networkx as nx  # workers unpickle this module's Upstream: keep it light

    graph = nx.DiGraph()
    steps: dict[str, StepSpec] = {}
    checked_functions: set[int] = set()
    for position, node in enumerate(nodes, start=start_position):
        assert isinstance(node, FunctionNode)
        task_id = ids[node._uid]
        args = map_nodes(node.args, lambda n: Upstream(ids[n._uid]))
        kwargs = map_nodes(node.kwargs, lambda n: Upstream(ids[n._uid]))
        _check_function_picklable(task_id, node, checked_functions)
        parents = tuple(dict.fromkeys(ids[c._uid] for c in node.children()))
        steps[task_id] = StepSpec(
            task_id=task_id,
            name=node.name,
            function=node.remote_function,
            args=args,
            kwargs=kwargs,
            options=parsed[node._uid],
            parents=parents,
            position=position,
        )
        graph.add_node(task_id)
        for parent in parents:
            graph.add_edge(parent, task_id)
    _check_arguments_picklable(steps, {ids[n._uid]: n for n in nodes})
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        path = " -> ".join(edge[0] for edge in cycle) + f" -> {cycle[0][0]}"
        raise WorkflowDefinitionError(f"The workflow has a cycle: {path}.")
    return CompiledWorkflow(steps=steps, graph=graph, output=ids[root._uid])


def _safe_name(name: str) -> str:
    return name.replace("<", "").replace(">", "").replace("/", ".")


def _check_arguments_picklable(steps: dict[str, StepSpec], nodes: dict[str, Any]) -> None:
    """Raise naming the step and argument that cannot be pickled, if any.

    One pickle of every step's arguments together is the fast path (a 10,000-step
    fan-out would otherwise pay one pickler per argument); only when it fails are the
    arguments tried one by one, to name the culprit.
    """
    try:
        cloudpickle.dumps([(spec.args, spec.kwargs) for spec in steps.values()], protocol=5)
        return
    except Exception:  # pickling raises many types; find out where below
        pass
    for task_id, spec in steps.items():
        for key, value in [*enumerate(spec.args), *spec.kwargs.items()]:
            try:
                cloudpickle.dumps(value, protocol=5)
            except Exception as exc:  # pickling raises many types
                where = f"argument {key}" if isinstance(key, int) else f"argument {key!r}"
                raise WorkflowDefinitionError(
                    f"Step {task_id!r} ({nodes[task_id].name}): {where} cannot be "
                    f"serialized: {exc}",
                    task_id=task_id,
                ) from exc


def _check_function_picklable(task_id: str, node: FunctionNode, checked: set[int]) -> None:
    if id(node.remote_function) in checked:
        return
    checked.add(id(node.remote_function))
    try:
        cloudpickle.dumps(node.remote_function, protocol=5)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"Step {task_id!r}: its function {node.name!r} cannot be serialized: {exc}",
            task_id=task_id,
        ) from exc
