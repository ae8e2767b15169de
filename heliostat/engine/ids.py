"""Identifiers for objects, tasks, actors and processes.

Every id is a plain ``int``: hashing, comparing and pickling an int costs a fraction
of what a bytes or a UUID costs, and ids sit on the hottest paths (every submit
creates one, every result looks one up). Uniqueness across the cluster comes from the
layout, so processes can mint ids without asking anyone::

    bits 64..79  node index     (0 on a single machine)
    bits 40..63  process index  (0 is the driver; workers are numbered by the node)
    bits  0..39  counter        (per process, starts at 1)

One counter serves every kind of id in a process, so an object id never equals a task
or actor id minted by the same process. ``format_id`` renders an id as fixed-width hex
for logs and the UI.
"""

from __future__ import annotations

import itertools

__all__ = [
    "IdMinter",
    "format_id",
]

_COUNTER_BITS = 40
_PROCESS_BITS = 24


class IdMinter:
    """Mints process-unique ids; thread-safe because ``itertools.count`` is atomic."""

    __slots__ = ("_base", "_counter", "process_index", "node_index")

    def __init__(self, node_index: int, process_index: int) -> None:
        if not 0 <= process_index < (1 << _PROCESS_BITS):
            raise ValueError(f"process index {process_index} out of range")
        self.node_index = node_index
        self.process_index = process_index
        self._base = (node_index << (_COUNTER_BITS + _PROCESS_BITS)) | (
            process_index << _COUNTER_BITS
        )
        self._counter = itertools.count(1)

    def next(self) -> int:
        """Return a new id, never returned before by any minter in the cluster."""
        return self._base | next(self._counter)

    def next_block(self, n: int) -> list[int]:
        """Return ``n`` new ids (used for a task's several return values)."""
        return [self._base | next(self._counter) for _ in range(n)]


def format_id(ident: int) -> str:
    """Fixed-width hex form of an id, as shown in logs and the UI."""
    return f"{ident:020x}"
