"""Ray's exception names in ``heliostat.exceptions``: aliases and catchable subclasses."""

from __future__ import annotations

import pickle

import pytest

from heliostat import exceptions as ex

# Every name of Ray's ray.exceptions that a ported program may catch.
RAY_NAMES = [
    "RayError",
    "RayTaskError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "GetTimeoutError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "RaySystemError",
    "LocalRayletDiedError",
    "OwnerDiedError",
    "ObjectLostError",
    "ObjectFetchTimedOutError",
    "ReferenceCountingAssertionError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "TaskCancelledError",
    "TaskUnschedulableError",
    "WorkerCrashedError",
    "OutOfMemoryError",
    "NodeDiedError",
    "PendingCallsLimitExceeded",
    "RuntimeEnvSetupError",
    "CrossLanguageError",
    "TaskPlacementGroupRemoved",
    "ActorPlacementGroupRemoved",
]


@pytest.mark.parametrize("name", RAY_NAMES)
def test_every_ray_name_is_an_exported_heliostat_error(name: str) -> None:
    cls = getattr(ex, name)
    assert name in ex.__all__
    assert issubclass(cls, ex.RayError)
    assert issubclass(cls, ex.HeliostatError)


def test_aliases_are_heliostats_own_classes() -> None:
    assert ex.RayError is ex.HeliostatError
    assert ex.RayTaskError is ex.TaskError
    assert ex.RayActorError is ex.ActorError


def test_ray_hierarchy_holds_for_except_clauses() -> None:
    assert issubclass(ex.ActorDiedError, ex.RayActorError)
    assert issubclass(ex.ActorUnavailableError, ex.RayActorError)
    assert issubclass(ex.GetTimeoutError, TimeoutError)
    assert issubclass(ex.OwnerDiedError, ex.ObjectLostError)
    assert issubclass(ex.ObjectReconstructionFailedMaxAttemptsExceededError, ex.ObjectLostError)
    assert issubclass(ex.ReferenceCountingAssertionError, AssertionError)
    assert issubclass(ex.PlacementGroupsNotSupportedError, NotImplementedError)


def test_a_heliostat_actor_death_is_caught_as_ray_actor_error() -> None:
    with pytest.raises(ex.RayActorError):
        raise ex.ActorDiedError("gone", actor_id="a1", class_name="C")


@pytest.mark.parametrize("name", [n for n in RAY_NAMES if n not in {"RayTaskError"}])
def test_ray_named_classes_survive_pickling(name: str) -> None:
    cls = getattr(ex, name)
    err = cls("message")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "message"
