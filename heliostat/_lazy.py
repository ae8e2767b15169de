"""Package attributes imported on first use (PEP 562 module ``__getattr__``).

``heliostat.workflows`` and ``heliostat.storage`` re-export names whose modules bring
SQLAlchemy, Alembic, networkx or pyarrow. A worker process that runs a workflow step
imports those packages (the step's code lives in them) but needs none of that, and
would pay up to 0.7 s for it on its first step. Such a package lists its exports once,
by module, in the shape of the import statements they replace; static type checkers
read the same names from an ``if TYPE_CHECKING:`` block of real imports, which a test
keeps in step with the list.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose ``exports`` load on first use.

    Args:
        namespace: the package's ``globals()``; a loaded name is stored there, so each
            is imported once and later lookups do not reach ``__getattr__``.
        exports: module name -> the names it provides.
    """
    package = namespace["__name__"]
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
