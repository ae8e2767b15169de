"""Compiling a bound DAG into a validated, persistable workflow graph.

``compile_dag(root)`` walks the graph from its output node, gives every step a
deterministic task id, replaces upstream nodes in arguments by :class:`Upstream`
placeholders, checks that everything can be pickled, and builds a networkx
``DiGraph`` (edges point from a step to the steps that consume its output). All
rejections happen here, before anything runs, with a message naming the step.

Each step also gets two hashes: of its function's code and of its arguments (upstream
outputs stand in by their step ids). Running an existing workflow id again compares them
with the stored run (:func:`definition_differences`), so a changed DAG or changed inputs
are never mistaken for a resume.

Task ids: the base is the explicit ``workflow.options(task_id=...)``, else the
function's name. As in Ray, the first step with a base gets it as is and later ones get
``_1``, ``_2``, ... in the order a depth-first walk meets them (upstream steps first,
arguments left to right), so ``f.bind(f.bind(...))`` with ``task_id="f"`` has steps
``f`` (the inner) and ``f_1``. A suffixed id never takes one that another step asked
for explicitly. The same code building the same DAG gets the same ids, so a resumed run
maps onto the steps already recorded.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from heliostat.engine.api import get
from heliostat.engine.dag import DAGNode, FunctionNode, map_leaves, map_nodes
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.remote_function import RemoteFunction
from heliostat.engine.serialization import cloudpickle_dumps
from heliostat.exceptions import WorkflowDefinitionError
from heliostat.workflows.options import StepOptions, step_options

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "MAX_ARGUMENT_BYTES",
    "CompiledWorkflow",
    "Placeholder",
    "StepSpec",
    "StoredValue",
    "Upstream",
    "code_hash",
    "compile_dag",
    "definition_differences",
    "upstream_ids",
]

MAX_ARGUMENT_BYTES = 64 << 20
"""Most bytes one step's arguments may pickle to: they are stored in the lineage
database with the DAG, which is no place for data sets."""


class Placeholder:
    """Base of what stands in a stored step's arguments for a value known only later."""

    __slots__ = ()


class Upstream(Placeholder):
    """Placeholder for the output of step ``task_id`` inside another step's arguments."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (Upstream, (self.task_id,))

    def __repr__(self) -> str:
        return f"Upstream({self.task_id!r})"


class StoredValue(Placeholder):
    """The value of an ObjectRef the DAG was built with, stored with the step.

    A ref lives only as long as its driver; its value is what a resume needs. The step
    receives the value if the ref was an argument itself, or a new ref to it if the ref
    was nested in a list, tuple or dict (see ``step.resolve_arguments``).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredValue, (self.value,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredValue) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredValue({self.value!r})"


def _store_refs(nodes: list[Any]) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments of each node whose ObjectRefs are replaced by their values.

    All refs of the DAG are fetched with one ``get``; nodes without refs are left out.
    """
    refs: list[ObjectRef] = []
    holders = []
    for node in nodes:
        before = len(refs)
        _collect_refs(node.args, refs)
        _collect_refs(node.kwargs, refs)
        if len(refs) > before:
            holders.append(node)
    if not refs:
        return {}
    values = dict(zip((id(r) for r in refs), get(refs), strict=True))
    return {
        node._uid: map_leaves(
            (node.args, node.kwargs), ObjectRef, lambda r: StoredValue(values[id(r)])
        )
        for node in holders
    }


def _collect_refs(value: Any, out: list[ObjectRef]) -> None:
    """Append the ObjectRefs inside ``value`` (lists, tuples, dicts) to ``out``.

    Unlike ``map_leaves`` it builds no copy: most steps hold no ref at all.
    """
    if isinstance(value, ObjectRef):
        out.append(value)
    elif type(value) in (list, tuple):
        for v in value:
            _collect_refs(v, out)
    elif type(value) is dict:
        for v in value.values():
            _collect_refs(v, out)


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
    code_hash: str = ""
    """sha256 of the function's code (bytecode, constants, names), hex."""
    input_hash: str = ""
    """sha256 of the pickled arguments (upstream outputs as their step ids), hex."""


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
        # heliostat's pickler: the stored step functions keep their real file names, so
        # a resumed run's tracebacks name the user's files.
        return cloudpickle_dumps(self)

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
        WorkflowDefinitionError: not a DAG node, a cycle, or an argument that cannot
            be serialized. The message names the step.
    """
    if not isinstance(root, DAGNode):
        raise WorkflowDefinitionError(
            f"A workflow needs a DAG built with .bind(...), not a {type(root).__name__}."
        )
    nodes = list(root.walk())
    ids: dict[int, str] = {}
    used: set[str] = set()
    counts: dict[str, int] = {}
    parsed: dict[int, StepOptions] = {}
    # Steps of one remote function share its (frozen) options: a fan-out of n calls
    # validates them once and keeps one object alive, not n.
    by_function: dict[int, StepOptions] = {}
    for node in nodes:
        if not isinstance(node, FunctionNode):
            raise WorkflowDefinitionError(f"Unsupported node type {type(node).__name__}.")
        opts = by_function.get(id(node.remote_function))
        if opts is None:
            try:
                opts = step_options(node.workflow_options)
            except (TypeError, ValueError) as exc:
                raise WorkflowDefinitionError(f"Step {node.name!r}: {exc}") from exc
            by_function[id(node.remote_function)] = opts
        parsed[node._uid] = opts
    asked = {opts.task_id for opts in parsed.values() if opts.task_id is not None}
    for node in nodes:
        assert isinstance(node, FunctionNode)  # checked in the loop above
        explicit = parsed[node._uid].task_id

        # A step's own explicit id is its to take; any other id someone asked for is not.
        def taken(candidate: str, mine: str | None = explicit) -> bool:
            return candidate in used or (candidate in asked and candidate != mine)

        if explicit is not None and not taken(explicit):
            task_id = explicit
        else:
            base = explicit if explicit is not None else prefix + _safe_name(node.name)
            n = counts.get(base, 0)
            task_id = base if n == 0 else f"{base}_{n}"
            while taken(task_id):
                n += 1
                task_id = f"{base}_{n}"
            counts[base] = n + 1
        used.add(task_id)
        ids[node._uid] = task_id

    import networkx as nx  # workers unpickle this module's Upstream: keep it light

    graph = nx.DiGraph()
    steps: dict[str, StepSpec] = {}
    checked_functions: set[int] = set()
    code_hashes: dict[int, str] = {}
    hasher = _ArgumentHasher()
    stored = _store_refs(nodes)
    for position, node in enumerate(nodes, start=start_position):
        assert isinstance(node, FunctionNode)
        task_id = ids[node._uid]
        node_args, node_kwargs = stored.get(node._uid, (node.args, node.kwargs))
        args = map_nodes(node_args, lambda n: Upstream(ids[n._uid]))
        kwargs = map_nodes(node_kwargs, lambda n: Upstream(ids[n._uid]))
        _check_function_picklable(task_id, node, checked_functions)
        parents = tuple(dict.fromkeys(ids[c._uid] for c in node.children()))
        fn = node.remote_function.underlying_function
        fn_hash = code_hashes.get(id(fn))
        if fn_hash is None:
            fn_hash = code_hashes[id(fn)] = code_hash(fn)
        steps[task_id] = StepSpec(
            task_id=task_id,
            name=node.name,
            function=node.remote_function,
            args=args,
            kwargs=kwargs,
            options=parsed[node._uid],
            parents=parents,
            position=position,
            code_hash=fn_hash,
            input_hash=hasher.hash(task_id, node.name, args, kwargs),
        )
        graph.add_node(task_id)
        for parent in parents:
            graph.add_edge(parent, task_id)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        path = " -> ".join(edge[0] for edge in cycle) + f" -> {cycle[0][0]}"
        raise WorkflowDefinitionError(f"The workflow has a cycle: {path}.")
    return CompiledWorkflow(steps=steps, graph=graph, output=ids[root._uid])


def _safe_name(name: str) -> str:
    return name.replace("<", "").replace(">", "").replace("/", ".")


class _ArgumentHasher:
    """sha256 of each step's pickled arguments; refuses what cannot be stored.

    The arguments are pickled as the stored DAG will pickle them, with cloudpickle,
    unless the standard C pickler can: it is several times faster for the plain data
    most steps take (numbers, strings, paths, upstream placeholders). One pickler of
    each kind serves every step, its memo cleared in between so each step's bytes
    stand alone: making a pickler per step cost more than pickling small arguments.
    """

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._plain = pickle.Pickler(self._buffer, protocol=5)
        self._pickler = cloudpickle.Pickler(self._buffer, protocol=5)

    def hash(self, task_id: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The hex digest of ``(args, kwargs)`` pickled.

        Raises:
            WorkflowDefinitionError: an argument cannot be pickled (the message names
                the step and the argument), or the arguments are larger than
                :data:`MAX_ARGUMENT_BYTES`.
        """
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._plain.clear_memo()
        try:
            self._plain.dump((args, kwargs))
        except Exception:  # a lambda, a local class...: cloudpickle's business
            buffer.seek(0)
            buffer.truncate()
            self._pickler.clear_memo()
            try:
                self._pickler.dump((args, kwargs))
            except Exception as exc:  # pickling raises many types; name the culprit
                self._pickler = cloudpickle.Pickler(buffer, protocol=5)  # a fresh state
                _raise_unpicklable(task_id, args, kwargs, name, exc)
        size = buffer.tell()
        if size > MAX_ARGUMENT_BYTES:
            raise WorkflowDefinitionError(
                f"Step {task_id!r} ({name}): its arguments pickle to "
                f"{size / 2**20:,.1f} MiB; a workflow stores step arguments in its "
                f"lineage database, at most {MAX_ARGUMENT_BYTES >> 20} MiB per step. Pass a "
                "path or URL of the data instead, or produce it in an upstream step (step "
                "outputs are checkpointed to storage, not the database).",
                task_id=task_id,
            )
        return hashlib.sha256(buffer.getbuffer()[:size]).hexdigest()


def _raise_unpicklable(
    task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], name: str, exc: Exception
) -> None:
    for key, value in [*enumerate(args), *kwargs.items()]:
        try:
            cloudpickle_dumps(value)
        except Exception as inner:  # pickling raises many types
            where = f"argument {key}" if isinstance(key, int) else f"argument {key!r}"
            raise WorkflowDefinitionError(
                f"Step {task_id!r} ({name}): {where} cannot be serialized: {inner}",
                task_id=task_id,
            ) from inner
    raise WorkflowDefinitionError(
        f"Step {task_id!r} ({name}): its arguments cannot be serialized: {exc}",
        task_id=task_id,
    ) from exc


def code_hash(fn: Any) -> str:
    """sha256 (hex) of a function's code: bytecode, constants (nested code included),
    names and defaults; stable across processes and runs of the same source.

    A callable without ``__code__`` (a class, a C function) hashes its qualified name.
    """
    h = hashlib.sha256()
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class's __call__
        code = getattr(vars(type(fn)).get("__call__"), "__code__", None)
    if code is None:
        h.update(
            f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}".encode()
        )
        return h.hexdigest()
    stack: list[Any] = [code]
    while stack:
        item = stack.pop()
        if isinstance(item, types.CodeType):
            h.update(item.co_code)
            h.update(repr((item.co_name, item.co_names, item.co_varnames)).encode())
            h.update(b"consts")
            stack.extend(reversed(item.co_consts))
        else:
            h.update(type(item).__name__.encode())
            h.update(repr(item).encode("utf-8", "surrogatepass"))
    defaults = getattr(fn, "__defaults__", None)
    if defaults:
        h.update(repr(defaults).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def definition_differences(stored: CompiledWorkflow, new: CompiledWorkflow) -> list[str]:
    """How ``new`` differs from the ``stored`` DAG of a run, one line per difference.

    Compares the steps, their edges, their functions' code and their arguments. Empty
    when the two are the same workflow (step options may differ: an ``on_in_doubt``
    hook added to settle a stuck step changes no definition).
    """
    out: list[str] = []
    added = sorted(set(new.steps) - set(stored.steps))
    removed = sorted(set(stored.steps) - set(new.steps))
    if added:
        out.append(f"steps added: {', '.join(added[:10])}{' ...' if len(added) > 10 else ''}")
    if removed:
        out.append(f"steps removed: {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
    if new.output != stored.output:
        out.append(f"output step: {stored.output} -> {new.output}")
    for task_id in sorted(set(new.steps) & set(stored.steps)):
        old, cur = stored.steps[task_id], new.steps[task_id]
        if old.parents != cur.parents:
            out.append(f"step {task_id!r}: inputs from {list(old.parents)} -> {list(cur.parents)}")
        old_code = getattr(old, "code_hash", "")
        if old_code and old_code != cur.code_hash:
            out.append(f"step {task_id!r}: the code of {cur.name} changed")
        old_input = getattr(old, "input_hash", "")
        if old_input and old_input != cur.input_hash and not _same_arguments(old, cur):
            out.append(f"step {task_id!r}: its arguments changed")
    return out


def _same_arguments(a: StepSpec, b: StepSpec) -> bool:
    """Equal arguments that pickled differently (a set's order varies between processes)."""
    try:
        return bool(a.args == b.args and a.kwargs == b.kwargs)
    except Exception:  # an argument whose == raises or is ambiguous (numpy arrays)
        return False


def _check_function_picklable(task_id: str, node: FunctionNode, checked: set[int]) -> None:
    if id(node.remote_function) in checked:
        return
    checked.add(id(node.remote_function))
    try:
        cloudpickle_dumps(node.remote_function)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"Step {task_id!r}: its function {node.name!r} cannot be serialized: {exc}",
            task_id=task_id,
        ) from exc
