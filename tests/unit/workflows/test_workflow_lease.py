"""Lease decisions and the keeper, on a fake clock: expiry without waiting."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from heliostat.workflows.clock import FakeClock
from heliostat.workflows.lease import (
    Lease,
    LeaseHolder,
    LeaseKeeper,
    LeaseOwner,
    Refuse,
    Take,
    decide_takeover,
    holder_is_live,
    lease_timeout,
)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
ME = LeaseOwner(owner="here:10:me", host="here", pid=10)


def _holder(
    owner: str | None = "there:20:x",
    host: str = "there",
    pid: int = 20,
    *,
    expires: float = 6.0,
    generation: int = 3,
) -> LeaseHolder:
    return LeaseHolder(
        owner=owner,
        host=host,
        pid=pid,
        acquired_at=T0,
        heartbeat_at=T0,
        expires_at=T0 + dt.timedelta(seconds=expires) if owner else None,
        generation=generation,
    )


def _alive(pid: int) -> bool:
    return True


def _dead(pid: int) -> bool:
    return False


def test_a_live_lease_of_another_owner_is_refused_until_it_expires() -> None:
    holder = _holder()
    decision = decide_takeover(holder, ME, T0 + dt.timedelta(seconds=5), 6, pid_exists=_alive)
    assert decision == Refuse(holder=holder)
    later = T0 + dt.timedelta(seconds=6)
    decision = decide_takeover(holder, ME, later, 6, pid_exists=_alive)
    assert isinstance(decision, Take)
    assert decision.generation == 4  # the fencing token only grows
    assert decision.expires_at == later + dt.timedelta(seconds=6)
    assert not decision.previous_live


def test_a_holder_on_this_host_whose_process_is_gone_is_not_live() -> None:
    holder = _holder(owner="here:99:old", host="here", pid=99)
    assert holder_is_live(holder, T0, this_host="here", pid_exists=_alive)
    assert not holder_is_live(holder, T0, this_host="here", pid_exists=_dead)
    # Another host's pid cannot be checked from here: only the expiry counts.
    assert holder_is_live(_holder(), T0, this_host="here", pid_exists=_dead)


def test_two_runs_in_one_process_exclude_each_other() -> None:
    first = LeaseOwner.new()
    second = LeaseOwner.new()
    assert first.owner != second.owner and first.pid == second.pid
    holder = _holder(owner=first.owner, host=first.host, pid=first.pid)
    assert isinstance(decide_takeover(holder, second, T0, 6, pid_exists=_alive), Refuse)


def test_a_released_lease_is_taken_with_the_next_generation() -> None:
    released = _holder(owner=None, generation=7)
    decision = decide_takeover(released, ME, T0, 6, pid_exists=_alive)
    assert isinstance(decision, Take) and decision.generation == 8


def test_lease_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOSTAT_LEASE_TIMEOUT", "2.5")
    assert lease_timeout() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("HELIOSTAT_LEASE_TIMEOUT", bad)
        with pytest.raises(ValueError, match="HELIOSTAT_LEASE_TIMEOUT"):
            lease_timeout()


class _Store:
    """Renews leases in memory; ``taken`` are the workflows another driver took."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.renewals: list[tuple[str, dt.datetime]] = []
        self.renewed = threading.Condition()

    def renew_leases(self, leases: list[Lease], now: dt.datetime) -> list[str]:
        with self.renewed:
            self.renewals.extend((lease.workflow_id, now) for lease in leases)
            self.renewed.notify_all()
        return [lease.workflow_id for lease in leases if lease.workflow_id in self.taken]


def test_the_keeper_beats_every_third_of_the_timeout_and_reports_a_lost_lease() -> None:
    clock = FakeClock(T0)
    keeper = LeaseKeeper(clock)
    store = _Store()
    lost = threading.Event()
    kept = Lease(workflow_id="kept", owner=ME, generation=1, timeout=6)
    taken = Lease(workflow_id="taken", owner=ME, generation=1, timeout=6)
    try:
        keeper.hold(kept, store, lambda: pytest.fail("kept lost"))
        keeper.hold(taken, store, lost.set)
        clock.wait_for_sleepers(1)
        assert clock.deadlines == [T0 + dt.timedelta(seconds=2)]
        store.taken.add("taken")
        clock.advance(2)
        assert lost.wait(10)
        with store.renewed:
            assert store.renewed.wait_for(lambda: len(store.renewals) >= 2, 10)
        assert {w for w, _ in store.renewals} == {"kept", "taken"}
        assert keeper.held() == [kept]  # a lost lease is forgotten
    finally:
        keeper.close()


def test_a_failed_renewal_is_retried_at_the_next_beat() -> None:
    calls = []

    class Flaky:
        def renew_leases(self, leases: list[Lease], now: dt.datetime) -> list[str]:
            calls.append(now)
            if len(calls) == 1:
                raise ConnectionError("database restarting")
            return []

    keeper = LeaseKeeper(FakeClock(T0))
    keeper.hold(Lease(workflow_id="w", owner=ME, generation=1, timeout=6), Flaky(), lambda: None)
    try:
        keeper.beat()
        keeper.beat()
        assert len(calls) == 2
        assert keeper.held() != []
    finally:
        keeper.close()
