"""Resource sets and per-node resource accounting, in fixed-point units.

A task asks for resources (``num_cpus=0.5, resources={"db": 1}``); a node has a total
and an amount available. This module holds the two types the rest of heliostat uses for
that arithmetic: :class:`ResourceSet`, an immutable request or capacity, and
:class:`NodeResources`, the mutable ledger of one node.

Why fixed point. Quantities are stored as integers counting 1/10000 of a unit (as Ray
does), not as floats. With floats, acquiring and releasing ``0.1`` CPU a million times
leaves ``available`` at ``0.9999999999`` or ``1.0000000001``: a task asking for one
full CPU then never fits, or a node seems to have more than it owns. Integer arithmetic
is exact, so any sequence of acquires and releases that cancels out restores the exact
starting value, and equality and hashing are exact too. The alternatives were
``fractions.Fraction`` (exact but slow, several microseconds per operation on the
dispatch path) and ``decimal.Decimal`` (exact for what users type, also slow). The price
of fixed point is a granularity: quantities finer than 1/10000 are rejected at the
boundary rather than rounded silently.

Like Ray, a quantity above 1 must be a whole number (``0.5`` and ``2`` are valid, ``1.5``
is not): a fractional share is a share of one unit, and several units are whole.

Validation happens once, when a request or a node total enters (:meth:`ResourceSet.
from_request`, :meth:`ResourceSet.from_dict`); arithmetic between sets never
re-validates, which keeps :meth:`ResourceSet.is_subset_of` (called per dispatch) a tight
loop over the request's few entries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from heliostat.exceptions import HeliostatInternalError

__all__ = ["CPU", "NodeResources", "ResourceSet"]

CPU = "CPU"
"""The name of the CPU resource (set by ``num_cpus``)."""

_UNITS_PER_WHOLE = 10_000
"""Fixed-point scale: one unit of a resource is 10 000 internal units."""

# Floating-point noise allowed when scaling a user's float: 0.0003 * 10000 is
# 2.9999999999999996, which is exactly 3 internal units, not a finer quantity.
_SCALE_TOLERANCE = 1e-6


def _to_units(name: str, value: object, source: str) -> int:
    """Convert one user-supplied quantity to fixed-point units, validating it.

    Args:
        name: The resource name, for the error message.
        value: The quantity as the user gave it.
        source: How the user spelled it (``"num_cpus"``, ``"resources"``), for messages.

    Returns:
        The quantity in units of 1/10000.

    Raises:
        ValueError: If the value is not a finite, non-negative real number, is finer than
            1/10000, or is above 1 without being a whole number.
    """
    prefix = f"Resource {name!r} ({source}) has invalid quantity {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # ValueError, not TypeError: callers catch one error type for any bad quantity.
        raise ValueError(f"{prefix}: it must be a number, e.g. 1, 2 or 0.5.")
    quantity = float(value)
    if math.isnan(quantity) or math.isinf(quantity):
        raise ValueError(f"{prefix}: it must be a finite number.")
    if quantity < 0:
        raise ValueError(f"{prefix}: quantities must be non-negative.")
    if quantity > 1:
        if not quantity.is_integer():
            raise ValueError(
                f"{prefix}: a quantity above 1 must be a whole number "
                "(fractions are allowed only below 1, e.g. 0.5)."
            )
        return int(quantity) * _UNITS_PER_WHOLE
    scaled = quantity * _UNITS_PER_WHOLE
    units = round(scaled)
    if abs(scaled - units) > _SCALE_TOLERANCE or (units == 0 and quantity > 0):
        raise ValueError(
            f"{prefix}: quantities are counted in steps of 1/{_UNITS_PER_WHOLE} "
            f"(0.0001); round it to at most 4 decimal places."
        )
    return units


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Resource names must be non-empty strings, got {name!r}.")
    return name


def _format_quantity(units: int) -> float:
    return units / _UNITS_PER_WHOLE


class ResourceSet:
    """An immutable set of resource quantities, such as ``{"CPU": 0.5, "db": 1}``.

    Quantities are held as integers in units of 1/10000 (see the module docstring), so
    adding and subtracting sets is exact. A missing name means a quantity of 0, and
    entries whose quantity is 0 are dropped, so ``ResourceSet({"GPU": 0})`` equals the
    empty set.

    Build sets from user input with :meth:`from_request` (a task's ``num_cpus`` and
    ``resources``) or :meth:`from_dict` / the constructor (a node's totals); both
    validate. Sets produced by ``+`` and ``-`` are not re-validated, and subtraction
    may produce negative quantities: the engine oversubscribes a node on purpose when a
    worker that was blocked in ``get`` takes its CPU back while another task holds it,
    and the node's available CPU is negative until one of them finishes.

    The object is immutable by convention (its attributes are private and no method
    changes them); it is hashable and safe to share between threads.

    Example:
        >>> req = ResourceSet.from_request(0.5, {"db": 1}, default_cpus=1)
        >>> req.is_subset_of(ResourceSet({"CPU": 4, "db": 1}))
        True
        >>> req.to_dict()
        {'CPU': 0.5, 'db': 1.0}
    """

    __slots__ = ("_hash", "_units")

    # Invariant: no value in _units is 0; names are non-empty strings.
    _units: dict[str, int]
    # Lazily computed hash; never pickled (str hashes differ between processes).
    _hash: int | None

    def __init__(self, quantities: Mapping[str, float] | None = None) -> None:
        """Build a validated set from ``{name: quantity}``.

        Args:
            quantities: Resource quantities; ``None`` or empty gives the empty set.

        Raises:
            ValueError: If a name is not a non-empty string or a quantity is invalid
                (negative, not finite, not a number, finer than 1/10000, or above 1
                without being whole). The message names the resource and the value.
        """
        units: dict[str, int] = {}
        if quantities:
            for name, value in quantities.items():
                amount = _to_units(_check_name(name), value, "resources")
                if amount:
                    units[name] = amount
        self._units = units
        self._hash = None

    @classmethod
    def _from_units(cls, units: dict[str, int]) -> ResourceSet:
        """Wrap an already-valid units dict without copying or validating it.

        The caller gives up ownership of ``units`` and guarantees it has no zero values.
        """
        rs = object.__new__(cls)
        rs._units = units
        rs._hash = None
        return rs

    @classmethod
    def from_request(
        cls,
        num_cpus: float | None,
        resources: Mapping[str, float] | None,
        *,
        default_cpus: float,
    ) -> ResourceSet:
        """Build the set a task or actor asks for, from its ``num_cpus`` and ``resources``.

        Args:
            num_cpus: CPUs requested; ``None`` means ``default_cpus`` unless
                ``resources`` names ``"CPU"`` itself.
            resources: Other resources requested, ``{name: quantity}``.
            default_cpus: CPUs to use when neither argument names a CPU quantity
                (Ray uses 1 for tasks and 0 for actors' lifetime).

        Returns:
            The validated request; zero quantities are dropped.

        Raises:
            ValueError: If a quantity is invalid (negative, not a finite number, finer
                than 1/10000, or above 1 without being whole), a name is not a
                non-empty string, or ``"CPU"`` is given both as ``num_cpus`` and inside
                ``resources``. The message names the resource and the value.
        """
        units: dict[str, int] = {}
        if resources:
            if num_cpus is not None and CPU in resources:
                raise ValueError(
                    f"Resource {CPU!r} was given twice: num_cpus={num_cpus!r} and "
                    f"resources[{CPU!r}]={resources[CPU]!r}; pass it once, as num_cpus."
                )
            cpus_in_resources = CPU in resources
        else:
            cpus_in_resources = False
        if not cpus_in_resources:
            if num_cpus is None:
                cpu_units = _to_units(CPU, default_cpus, "default_cpus")
            else:
                cpu_units = _to_units(CPU, num_cpus, "num_cpus")
            if cpu_units:
                units[CPU] = cpu_units
        if resources:
            for name, value in resources.items():
                amount = _to_units(_check_name(name), value, "resources")
                if amount:
                    units[name] = amount
        return cls._from_units(units)

    @classmethod
    def from_dict(cls, quantities: Mapping[str, float]) -> ResourceSet:
        """Build a validated set from ``{name: quantity}``, with no CPU default.

        Same as ``ResourceSet(quantities)``; used for node totals.

        Raises:
            ValueError: As for the constructor.
        """
        return cls(quantities)

    def to_dict(self) -> dict[str, float]:
        """Return ``{name: quantity}`` as floats, names sorted (``{'CPU': 2.0}``)."""
        return {name: _format_quantity(self._units[name]) for name in sorted(self._units)}

    def get(self, name: str) -> float:
        """Return the quantity of ``name``, 0.0 if the set does not name it."""
        return _format_quantity(self._units.get(name, 0))

    def names(self) -> frozenset[str]:
        """Return the names with a non-zero quantity."""
        return frozenset(self._units)

    def is_subset_of(self, other: ResourceSet) -> bool:
        """Return whether this set fits in ``other``: every quantity is <= other's.

        A name missing from ``other`` counts as 0 there, so a request for ``{"GPU": 1}``
        does not fit a node without GPUs. A negative quantity in ``other`` (an
        oversubscribed node) fits nothing that names that resource.

        This is on the dispatch hot path: a loop over this set's few entries.
        """
        available = other._units
        for name, units in self._units.items():
            if units > available.get(name, 0):
                return False
        return True

    def __add__(self, other: ResourceSet) -> ResourceSet:
        if not isinstance(other, ResourceSet):
            return NotImplemented
        units = dict(self._units)
        for name, amount in other._units.items():
            total = units.get(name, 0) + amount
            if total:
                units[name] = total
            else:
                del units[name]
        return ResourceSet._from_units(units)

    def __sub__(self, other: ResourceSet) -> ResourceSet:
        """Subtract quantities; the result may be negative (oversubscription)."""
        if not isinstance(other, ResourceSet):
            return NotImplemented
        units = dict(self._units)
        for name, amount in other._units.items():
            rest = units.get(name, 0) - amount
            if rest:
                units[name] = rest
            else:
                del units[name]
        return ResourceSet._from_units(units)

    def minimum(self, other: ResourceSet) -> ResourceSet:
        """The smaller quantity of each resource (a name missing from either set counts
        as 0 there, so it is missing from the result unless the other is negative)."""
        mine, theirs = self._units, other._units
        units = {}
        for name in mine.keys() | theirs.keys():
            least = min(mine.get(name, 0), theirs.get(name, 0))
            if least:
                units[name] = least
        return ResourceSet._from_units(units)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResourceSet):
            return NotImplemented
        return self._units == other._units

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash(frozenset(self._units.items()))
        return h

    def __bool__(self) -> bool:
        return bool(self._units)

    def __repr__(self) -> str:
        return f"ResourceSet({self.to_dict()!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickle the units only: a cached str hash is wrong in another process.
        return (_unpickle_resource_set, (tuple(self._units.items()),))


# Unpickled sets by their items: every task spec carries one, and a node receives
# thousands a second of the same few shapes. Sharing one immutable set per shape saves
# building it, and its cached hash saves rehashing it in every dict it is looked up in.
_UNPICKLED: dict[tuple[tuple[str, int], ...], ResourceSet] = {}
_UNPICKLED_MAX = 4096  # shapes kept; past that the cache starts over


def _unpickle_resource_set(items: tuple[tuple[str, int], ...]) -> ResourceSet:
    found = _UNPICKLED.get(items)
    if found is None:
        if len(_UNPICKLED) >= _UNPICKLED_MAX:
            _UNPICKLED.clear()
        found = _UNPICKLED[items] = ResourceSet._from_units(dict(items))
    return found


class NodeResources:
    """The resource ledger of one node: its total and what is available now.

    ``available`` starts equal to ``total``. :meth:`try_acquire` takes a request only
    if it fits; :meth:`acquire_force` takes it regardless, which can drive quantities
    negative (used when a worker blocked in ``get`` takes its CPU back); :meth:`release`
    gives a request back. Internally the ledger is a mutable dict of fixed-point units,
    so the hot path allocates nothing; :attr:`available` returns a snapshot.

    Not thread-safe: the node manager owns one instance and serialises calls to it.

    Invariant: for every name, available <= total (a missing name counts as 0).
    :meth:`release` raises :class:`~heliostat.exceptions.HeliostatInternalError` rather
    than break it, since that can only mean a request was released twice or released
    without being acquired.
    """

    __slots__ = ("_available", "_total")

    def __init__(self, total: ResourceSet) -> None:
        """Start a ledger with everything in ``total`` available.

        Args:
            total: The node's capacity (validated, e.g. by :meth:`ResourceSet.from_dict`).
        """
        self._total = total
        # May hold zeros and negative values; never a value above the total's.
        self._available: dict[str, int] = dict(total._units)

    @property
    def total(self) -> ResourceSet:
        """The node's capacity."""
        return self._total

    @property
    def available(self) -> ResourceSet:
        """A snapshot of what is available now; quantities may be negative."""
        return ResourceSet._from_units({n: u for n, u in self._available.items() if u})

    def fits(self, request: ResourceSet) -> bool:
        """Return whether ``request`` fits in what is available now."""
        available = self._available
        for name, units in request._units.items():
            if units > available.get(name, 0):
                return False
        return True

    def is_feasible(self, request: ResourceSet) -> bool:
        """Return whether ``request`` could ever fit on this node (fits its total)."""
        return request.is_subset_of(self._total)

    def try_acquire(self, request: ResourceSet) -> bool:
        """Take ``request`` from the available resources if it fits.

        Returns:
            True if acquired; False (and nothing changed) if it does not fit now.
        """
        available = self._available
        items = request._units.items()
        for name, units in items:
            if units > available.get(name, 0):
                return False
        for name, units in items:
            available[name] = available.get(name, 0) - units
        return True

    def acquire_force(self, request: ResourceSet) -> None:
        """Take ``request`` even if it does not fit; availability may go negative.

        Used when a worker that gave back its CPU while blocked in ``get`` resumes and
        takes it back: the node is oversubscribed until some task finishes.
        """
        available = self._available
        for name, units in request._units.items():
            available[name] = available.get(name, 0) - units

    def release(self, request: ResourceSet) -> None:
        """Give ``request`` back.

        Raises:
            HeliostatInternalError: If this would make any quantity available exceed the
                node's total (a double release, or a release of something never
                acquired). Nothing is changed in that case.
        """
        available = self._available
        total = self._total._units
        items = request._units.items()
        for name, units in items:
            after = available.get(name, 0) + units
            if after > total.get(name, 0):
                raise HeliostatInternalError(
                    f"Releasing {request!r} would make {name!r} available "
                    f"{_format_quantity(after)}, above the node total "
                    f"{_format_quantity(total.get(name, 0))}: a request was released "
                    "twice or released without being acquired."
                )
        for name, units in items:
            available[name] = available.get(name, 0) + units

    def __repr__(self) -> str:
        return f"NodeResources(total={self._total!r}, available={self.available!r})"
