"""Workers' output (``print`` in a task) as a driver shows it.

A worker sends the lines its task writes to its node; the node prints them where the
task's job can see them: at the driver that runs on the node, at a driver attached
to it, or (a task of another node's job) at that node, which goes on the same way
(``NodeState.worker_output``). Each line is printed after who wrote it, as Ray does:
``(task pid=123)``, with the node when it ran on another one.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["from_node", "print_worker_output"]


def print_worker_output(stream: str, task_name: str, pid: int, text: str) -> None:
    """Print lines a worker wrote, each after who wrote them: ``(task pid=N)``, as Ray
    prefixes them (``task_name`` may name another node: :func:`from_node`)."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    prefix = f"({task_name} pid={pid}) " if task_name else f"(pid={pid}) "
    with contextlib.suppress(Exception):
        out.write("".join(prefix + line + "\n" for line in text.split("\n")))
        out.flush()


def from_node(task_name: str, origin: str) -> str:
    """The name to print for output of ``task_name`` that ran on node ``origin``."""
    return f"{task_name or 'worker'}, node {origin}" if origin else task_name
