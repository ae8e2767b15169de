"""Ray's public names and where a ported program finds them in heliostat.

The "Porting from Ray" page of the documentation shows a table of Ray's commonly used
names with, for each, whether heliostat has it. That table must not drift from the
code, so nothing here *claims* support: :data:`RAY_NAMES` lists Ray's names and notes
on how heliostat's version differs, and :func:`resolve` decides at build time whether
the name exists in heliostat by importing it, exactly as ``import heliostat as ray``
followed by ``ray.util.ActorPool`` would. A name that a later change adds shows up as
supported in the next build; one that is removed shows up as missing.

A unit test keeps the list honest the other way: every public name of ``heliostat``,
``heliostat.exceptions`` and ``heliostat.workflow`` is either the counterpart of a Ray
name listed here or named in :data:`OWN_NAMES`.

This module imports no heliostat code at import time; :func:`resolve` imports lazily
because its whole point is to ask the package, and the docs build is its only caller
besides the tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["OWN_NAMES", "RAY_NAMES", "RayName", "render_table", "resolve", "resolved_path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RayName:
    """One public Ray name and where a port looks for it.

    Attributes:
        ray: the dotted name in Ray, e.g. ``"ray.util.ActorPool"``.
        group: the table section it is shown in.
        note: how heliostat's version differs, or what to use instead; empty when it
            behaves as Ray documents.
        heliostat: where heliostat may provide it, first match wins; by default the
            Ray name with ``ray`` replaced by ``heliostat``.
    """

    ray: str
    group: str
    note: str = ""
    heliostat: tuple[str, ...] = ()

    def candidates(self) -> tuple[str, ...]:
        """The heliostat paths tried for this name, in order."""
        return self.heliostat or ("heliostat" + self.ray.removeprefix("ray"),)


def _names(group: str, entries: Iterable[tuple[str, str] | str]) -> list[RayName]:
    out = []
    for entry in entries:
        name, note = (entry, "") if isinstance(entry, str) else entry
        out.append(RayName(ray=name, group=group, note=note))
    return out


_CORE = "Core API"
_UTIL = "ray.util"
_EXC = "Exceptions"
_WF = "Workflows"
_LIBS = "Libraries"

RAY_NAMES: tuple[RayName, ...] = (
    *_names(
        _CORE,
        [
            ("ray.init", "Starts a local node; joining a cluster by address is not available yet."),
            "ray.shutdown",
            "ray.is_initialized",
            "ray.remote",
            "ray.get",
            "ray.put",
            "ray.wait",
            "ray.cancel",
            "ray.kill",
            "ray.get_actor",
            "ray.method",
            "ray.nodes",
            "ray.cluster_resources",
            "ray.available_resources",
            ("ray.timeline", "Chrome trace of the local node's tasks."),
            "ray.get_runtime_context",
            "ray.get_gpu_ids",
            "ray.ObjectRef",
            ("ray.ObjectID", "Ray's older name for ObjectRef; the same class."),
            "ray.ObjectRefGenerator",
            ("ray.actor", "The module itself."),
            "ray.actor.exit_actor",
            ("ray.client", "Ray Client (ray://) has no counterpart."),
            ("ray.job_config.JobConfig", "Pass init() keywords instead."),
        ],
    ),
    RayName(
        ray="ray.runtime_context.RuntimeContext",
        group=_CORE,
        heliostat=("heliostat.runtime_context.RuntimeContext", "heliostat.RuntimeContext"),
    ),
    RayName(
        ray="ray.actor.ActorHandle",
        group=_CORE,
        heliostat=("heliostat.actor.ActorHandle", "heliostat.ActorHandle"),
    ),
    RayName(
        ray="ray.actor.ActorClass",
        group=_CORE,
        heliostat=("heliostat.actor.ActorClass", "heliostat.ActorClass"),
    ),
    RayName(
        ray="ray.remote_function.RemoteFunction",
        group=_CORE,
        heliostat=("heliostat.remote_function.RemoteFunction", "heliostat.RemoteFunction"),
    ),
    *_names(
        _UTIL,
        [
            ("ray.util", "The module itself."),
            "ray.util.ActorPool",
            ("ray.util.list_named_actors", "Cluster-wide when joined to a cluster."),
            "ray.util.queue.Queue",
            "ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy",
            "ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy",
            ("ray.util.placement_group", "Raises PlacementGroupsNotSupportedError (not yet)."),
            ("ray.util.remove_placement_group", "Raises PlacementGroupsNotSupportedError."),
            ("ray.util.state.list_tasks", "Use `heliostat list tasks` on the command line."),
            ("ray.util.state.list_actors", "Use `heliostat list actors` on the command line."),
            ("ray.util.multiprocessing.Pool", "Use remote functions or ActorPool."),
            ("ray.util.collective", "No collective communication library."),
        ],
    ),
    *_names(
        _EXC,
        [
            ("ray.exceptions.RayError", "heliostat's base class is HeliostatError."),
            ("ray.exceptions.RayTaskError", "heliostat raises TaskError."),
            ("ray.exceptions.RayActorError", "heliostat raises ActorError subclasses."),
            "ray.exceptions.ActorDiedError",
            "ray.exceptions.ActorUnavailableError",
            "ray.exceptions.TaskCancelledError",
            "ray.exceptions.GetTimeoutError",
            "ray.exceptions.ObjectLostError",
            "ray.exceptions.OwnerDiedError",
            "ray.exceptions.ObjectStoreFullError",
            "ray.exceptions.WorkerCrashedError",
            "ray.exceptions.RaySystemError",
            "ray.exceptions.OutOfMemoryError",
            "ray.exceptions.NodeDiedError",
            "ray.exceptions.TaskUnschedulableError",
            "ray.exceptions.ActorUnschedulableError",
            "ray.exceptions.RuntimeEnvSetupError",
            "ray.exceptions.ObjectFetchTimedOutError",
            "ray.exceptions.ObjectReconstructionFailedError",
            "ray.exceptions.ObjectFreedError",
            "ray.exceptions.ReferenceCountingAssertionError",
            "ray.exceptions.AsyncioActorExit",
            "ray.exceptions.PendingCallsLimitExceeded",
            "ray.exceptions.LocalRayletDiedError",
            "ray.exceptions.CrossLanguageError",
            "ray.exceptions.ObjectReconstructionFailedLineageEvictedError",
            "ray.exceptions.ObjectReconstructionFailedMaxAttemptsExceededError",
            "ray.exceptions.OutOfDiskError",
            ("ray.exceptions.ActorPlacementGroupRemoved", "Never raised: no placement groups."),
            ("ray.exceptions.TaskPlacementGroupRemoved", "Never raised: no placement groups."),
        ],
    ),
    *_names(
        _WF,
        [
            "ray.workflow.run",
            "ray.workflow.run_async",
            "ray.workflow.resume",
            "ray.workflow.resume_async",
            "ray.workflow.resume_all",
            "ray.workflow.get_status",
            "ray.workflow.get_output",
            "ray.workflow.get_output_async",
            "ray.workflow.get_metadata",
            "ray.workflow.list_all",
            "ray.workflow.cancel",
            "ray.workflow.delete",
            ("ray.workflow.options", "Adds idempotent=, on_in_doubt= and retry options."),
            "ray.workflow.continuation",
            "ray.workflow.sleep",
            "ray.workflow.wait_for_event",
            "ray.workflow.init",
            "ray.workflow.WorkflowStatus",
            "ray.workflow.EventListener",
        ],
    ),
    RayName(
        ray="ray.workflow.exceptions.WorkflowError",
        group=_WF,
        heliostat=(
            "heliostat.exceptions.WorkflowError",
            "heliostat.workflow.exceptions.WorkflowError",
            "heliostat.workflow.WorkflowError",
        ),
    ),
    RayName(
        ray="ray.workflow.exceptions.WorkflowExecutionError",
        group=_WF,
        heliostat=(
            "heliostat.exceptions.WorkflowExecutionError",
            "heliostat.workflow.exceptions.WorkflowExecutionError",
            "heliostat.workflow.WorkflowExecutionError",
        ),
    ),
    RayName(
        ray="ray.workflow.exceptions.WorkflowCancellationError",
        group=_WF,
        note="heliostat's name is WorkflowCancelledError.",
        heliostat=(
            "heliostat.exceptions.WorkflowCancellationError",
            "heliostat.exceptions.WorkflowCancelledError",
        ),
    ),
    RayName(
        ray="ray.workflow.exceptions.WorkflowNotResumableError",
        group=_WF,
        heliostat=(
            "heliostat.exceptions.WorkflowNotResumableError",
            "heliostat.workflow.exceptions.WorkflowNotResumableError",
            "heliostat.workflow.WorkflowNotResumableError",
        ),
    ),
    RayName(
        ray="ray.workflow.exceptions.WorkflowNotFoundError",
        group=_WF,
        heliostat=(
            "heliostat.exceptions.WorkflowNotFoundError",
            "heliostat.workflow.exceptions.WorkflowNotFoundError",
            "heliostat.workflow.WorkflowNotFoundError",
        ),
    ),
    *_names(
        _LIBS,
        [
            ("ray.data", "Not part of heliostat; pyarrow and pandas work inside tasks."),
            ("ray.train", "Not part of heliostat."),
            ("ray.tune", "Not part of heliostat."),
            ("ray.serve", "Not part of heliostat."),
            ("ray.rllib", "Not part of heliostat."),
            ("ray.dag.InputNode", "Workflows bind plain arguments; there is no InputNode."),
        ],
    ),
)
"""Ray's commonly used public names, grouped as the porting table shows them."""

OWN_NAMES: frozenset[str] = frozenset(
    {
        # the core API
        "heliostat.exceptions",
        "heliostat.schedules",
        "heliostat.workflow",
        # errors of heliostat's own features, or with heliostat's own names
        "heliostat.exceptions.ActorError",
        "heliostat.exceptions.ClusterAuthError",
        "heliostat.exceptions.ClusterError",
        "heliostat.exceptions.ClusterUnreachableError",
        "heliostat.exceptions.CorruptCheckpointError",
        "heliostat.exceptions.HeliostatError",
        "heliostat.exceptions.HeliostatInternalError",
        "heliostat.exceptions.InfeasibleResourcesError",
        "heliostat.exceptions.InvalidScheduleError",
        "heliostat.exceptions.InvalidTransition",
        "heliostat.exceptions.ModuleNotOnNodeError",
        "heliostat.exceptions.NotInitializedError",
        "heliostat.exceptions.PackageError",
        "heliostat.exceptions.PlacementGroupsNotSupportedError",
        "heliostat.exceptions.ScheduleError",
        "heliostat.exceptions.ScheduleExistsError",
        "heliostat.exceptions.ScheduleNotFoundError",
        "heliostat.exceptions.ScheduleTargetError",
        "heliostat.exceptions.SerializationError",
        "heliostat.exceptions.StorageError",
        "heliostat.exceptions.TaskError",
        "heliostat.exceptions.UnauthenticatedDataError",
        "heliostat.exceptions.WorkflowCancelledError",
        "heliostat.exceptions.WorkflowDefinitionError",
        "heliostat.exceptions.WorkflowLeaseError",
        "heliostat.exceptions.WorkflowNeedsAttentionError",
        "heliostat.exceptions.WorkflowOutputFailedError",
        "heliostat.exceptions.WorkflowOutputNotFoundError",
        # durable-workflow additions: lineage, in-doubt steps, inspection
        "heliostat.workflow.RERUN",
        "heliostat.workflow.WorkflowCancelledError",
        "heliostat.workflow.CompiledWorkflow",
        "heliostat.workflow.StepStatus",
        "heliostat.workflow.WorkflowContext",
        "heliostat.workflow.attempts",
        "heliostat.workflow.compile_dag",
        "heliostat.workflow.describe",
        "heliostat.workflow.get_context",
        "heliostat.workflow.list_records",
        "heliostat.workflow.logs",
        "heliostat.workflow.reconcile",
        "heliostat.workflow.resolve",
    }
)
"""Public heliostat names with no Ray counterpart in :data:`RAY_NAMES`."""


def resolved_path(entry: RayName, exists: Callable[[str], bool] | None = None) -> str | None:
    """The first of ``entry``'s heliostat paths that exists, or ``None``."""
    check = resolve if exists is None else exists
    return next((path for path in entry.candidates() if check(path)), None)


def resolve(path: str) -> bool:
    """Whether the dotted ``path`` names something in heliostat.

    Each part is looked up as an attribute, else imported as a submodule, the way
    ``import heliostat as ray; ray.util.queue.Queue`` would reach it.
    """
    parts = path.split(".")
    try:
        obj: object = importlib.import_module(parts[0])
    except ImportError:
        return False
    for depth, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        try:
            obj = importlib.import_module(".".join(parts[:depth]))
        except ImportError:
            return False
    return True


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(
    names: Iterable[RayName] = RAY_NAMES, exists: Callable[[str], bool] | None = None
) -> str:
    """The porting table as Markdown: one section per group, a row per Ray name.

    Args:
        names: the entries to show.
        exists: decides whether a heliostat path exists (default :func:`resolve`,
            which imports it); tests pass a fake.
    """
    lines: list[str] = []
    group = None
    for entry in names:
        if entry.group != group:
            group = entry.group
            if lines:
                lines.append("")
            lines += [
                f"### {group}",
                "",
                "| Ray | heliostat | Notes |",
                "| --- | --- | --- |",
            ]
        found = resolved_path(entry, exists)
        where = f"yes: `{found}`" if found else "no"
        lines.append(f"| `{entry.ray}` | {where} | {_cell(entry.note)} |")
    return "\n".join(lines) + "\n"
