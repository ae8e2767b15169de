"""Keeping the cyclic garbage collector off the driver's old heap while a run goes on.

A durable run allocates a few dozen short-lived objects per step in the driver (events,
records, refs, parameter rows). Each one that outlives two young collections is
promoted to the oldest generation, and once those promotions add up to a quarter of
the objects that survived the last full collection, CPython runs a full collection:
a walk over every object the process holds. In a driver with a large heap (the
user's data, imported libraries, a compiled DAG of thousands of steps) that walk took
about 70-100 ms, and a run of a couple of thousand steps met one, so where it fell
decided a benchmark's per-step figure more than the steps did.

While a run goes on, :class:`HeapFreeze` moves the objects that existed when the run
started into the interpreter's permanent generation (:func:`gc.freeze`), and moves
them back when the last run of the process ends (:func:`gc.unfreeze`). Collections
during the run then walk only what the run itself made. Both calls are O(1) (they
splice the collector's lists).

Why this is safe:

1. Nothing is freed that would not have been: frozen objects are only skipped by the
   cyclic collector, never released. Reference counting still frees every acyclic
   object at once, frozen or not.
2. What is delayed: a cycle among objects that existed before the run and became
   garbage during it is collected at the first full collection after the run, instead
   of during it. The delay is bounded by the run's length, and ``unfreeze`` puts
   every object back, so nothing stays uncollectable.
3. Several runs in one process (``run_async``, threads): the freeze is taken by the
   first and given back by the last (a count under a lock), so no run unfreezes the
   heap under another.
4. Someone else's freeze is left alone: if objects are already frozen when the first
   run starts (a pre-forking server calls ``gc.freeze()`` to keep pages shared), the
   runs neither freeze nor unfreeze anything. A ``gc.freeze()`` made by other code
   *during* a run is undone with ours when the last run ends; such code should freeze
   outside workflow runs.
5. With the collector disabled (``gc.disable()``) nothing is done.

Alternatives: raising the thresholds (``gc.set_threshold``) only postpones the full
walk, and changes young collections for the whole process; ``gc.disable()`` during a
run would let the run's own garbage cycles pile up.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["HeapFreeze"]


class HeapFreeze:
    """Freezes the heap while at least one run is going on (see the module docstring).

    One per runtime (:class:`~heliostat.workflows.services.WorkflowServices`); runs
    enter it with :meth:`during_run`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Invariants: _runs is the number of runs inside during_run(); _froze is True
        # only while _runs > 0, and then this object made the freeze and owes the
        # unfreeze.
        self._runs = 0
        self._froze = False

    @property
    def frozen(self) -> bool:
        """Whether this object holds a freeze now."""
        return self._froze

    @contextlib.contextmanager
    def during_run(self) -> Iterator[None]:
        """Hold the freeze for the ``with`` block (the first of nested runs takes it)."""
        with self._lock:
            self._runs += 1
            if self._runs == 1 and gc.isenabled() and gc.get_freeze_count() == 0:
                gc.freeze()
                self._froze = True
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0 and self._froze:
                    self._froze = False
                    gc.unfreeze()
