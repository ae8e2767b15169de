"""Turning values into bytes and back, with out-of-band buffers.

Values are pickled with protocol 5 by cloudpickle (so closures, lambdas and classes
defined in ``__main__`` travel too). Large contiguous buffers (numpy arrays, Arrow
buffers, bytes-likes that support ``PickleBuffer``) are taken *out of band*: the pickle
stream keeps only a placeholder, and the raw memory is laid out next to it, aligned to
64 bytes. A reader that maps that layout from shared memory hands the buffers back to
``pickle.loads`` as read-only memoryviews, so numpy arrays come back as views on the
shared memory: zero-copy.

The packed layout (used both for shared-memory segments and for small values that
carry buffers)::

    offset 0   b"HSO1"                      magic
           4   uint32  number of buffers
           8   uint64  length of the pickle stream
          16   n * (uint64 offset, uint64 length)   one entry per buffer
     aligned   pickle stream
     aligned   buffer 0, buffer 1, ...                  each at a 64-byte boundary

A small value without buffers is sent as the bare pickle stream (it starts with the
protocol-5 opcode ``0x80 0x05``, never with the magic), which saves the header.

While a value is pickled, every ``ObjectRef`` inside it reports its id to the active
capture list, so the runtime learns which refs a value contains (they must stay alive
while the value does).

Real file names in code: cloudpickle (3.1) writes every code object it pickles by value
with ``co_filename = "<dynamic-code>"``, so a task defined in a user's script would fail
with ``File "<dynamic-code>", line 8, in bad``. Heliostat pickles through
:class:`Pickler`, a ``cloudpickle.Pickler`` whose dispatch table sends code objects to
cloudpickle's own code reducer and then puts the real file name back into its output.
Nothing of cloudpickle is patched, so other users of cloudpickle in the process see its
usual behaviour. The payload stays deterministic: the file name is copied into a fresh
string per code object (as cloudpickle does with ``co_name``), so memoization cannot
depend on string interning. :func:`cloudpickle_dumps` is the drop-in replacement for
``cloudpickle.dumps`` that every layer of heliostat should use to ship code.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle

from heliostat.exceptions import SerializationError

__all__ = [
    "ALIGNMENT",
    "INLINE_THRESHOLD",
    "Pickler",
    "SerializedValue",
    "capture_refs",
    "cloudpickle_dumps",
    "deserialize",
    "dumps_function",
    "loads_function",
    "note_ref",
    "serialize",
]

ALIGNMENT = 64
# Values whose serialized size is at most this travel inside messages; larger ones
# go to shared memory. Ray uses the same figure (max_direct_call_object_size).
INLINE_THRESHOLD = 100 * 1024
# Buffers smaller than this stay in the pickle stream: a separate aligned slot would
# cost more than the copy it saves.
_MIN_OUT_OF_BAND = 2048

_MAGIC = b"HSO1"
_HEADER = struct.Struct("<4sIQ")
_ENTRY = struct.Struct("<QQ")

_capture = threading.local()

# cloudpickle's reducer for code objects, taken from its pickler's (public) dispatch
# table rather than by its private name.
_cloudpickle_reduce_code: Callable[[types.CodeType], tuple[Any, tuple[Any, ...]]] = (
    cloudpickle.Pickler.dispatch_table[types.CodeType]
)


def _filename_position() -> int | None:
    """Where cloudpickle's code reduction puts ``co_filename`` (None: it keeps it).

    Found once by reducing a probe, so the layout of the constructor arguments (which
    changes between Python versions) is cloudpickle's business, not ours.
    """
    probe = compile("pass", "heliostat-probe.py", "exec")
    _ctor, args = _cloudpickle_reduce_code(probe)
    for i, arg in enumerate(args):
        if type(arg) is str and arg == "<dynamic-code>":
            return i
    return None


_FILENAME_AT = _filename_position()


def _reduce_code(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    """cloudpickle's code reduction, with the real ``co_filename`` put back."""
    ctor, args = _cloudpickle_reduce_code(code)
    at = _FILENAME_AT
    if at is None:
        return ctor, args
    # A fresh string each time: pickle memoizes by identity, and whether two code
    # objects share one filename object depends on interning (see cloudpickle).
    filename = "".join(code.co_filename)
    return ctor, (*args[:at], filename, *args[at + 1 :])


def _dispatch_table() -> ChainMap[Any, Any]:
    """cloudpickle's dispatch table with our code reducer, as flat as cloudpickle's.

    The pickler looks up the table for every object that is not a builtin (a numpy
    array, say), and a ChainMap lookup walks its maps in Python: one more map costs
    about 5% on a value of small arrays. So cloudpickle's own (static) map is copied
    with our entry added, and the maps after it (copyreg's table, which users extend
    at run time) stay live.
    """
    base = cloudpickle.Pickler.dispatch_table
    if isinstance(base, ChainMap):
        first, *rest = base.maps
        return ChainMap({**first, types.CodeType: _reduce_code}, *rest)
    return ChainMap({types.CodeType: _reduce_code}, base)


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no types
    """cloudpickle's pickler, except that code keeps its real ``co_filename``."""

    dispatch_table = _dispatch_table()


def cloudpickle_dumps(
    obj: Any, *, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None
) -> bytes:
    """``cloudpickle.dumps(obj, protocol=5)``, but functions keep their real file names.

    Use it wherever heliostat pickles something that may hold code (task functions,
    actor classes, workflow DAGs): a traceback from the unpickled code then names the
    user's file and line instead of ``<dynamic-code>``. Loading needs nothing special:
    ``pickle.loads`` (or ``cloudpickle.loads``) reads the result.

    Args:
        obj: anything cloudpickle can pickle.
        buffer_callback: as for :class:`pickle.Pickler` (out-of-band buffers).

    Raises:
        Whatever pickling raises (``TypeError``, ``pickle.PicklingError``, ...).
    """
    with io.BytesIO() as file:
        Pickler(file, protocol=5, buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (a call may write less than asked)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


_ZEROS = bytes(ALIGNMENT)


def _pad(fd: int, end: int) -> None:
    """Zero the alignment padding after a piece that ends at ``end``."""
    gap = _align(end) - end
    if gap:
        _pwrite_all(fd, _ZEROS[:gap], end)


class SerializedValue:
    """A pickled value: the stream, its out-of-band buffers, and the refs it holds."""

    __slots__ = ("data", "buffers", "contained", "total_size")

    def __init__(self, data: bytes, buffers: list[memoryview], contained: list[int]) -> None:
        self.data = data
        self.buffers = buffers
        self.contained = contained
        if buffers:
            size = _align(_HEADER.size + _ENTRY.size * len(buffers)) + _align(len(data))
            for buf in buffers:
                size += _align(buf.nbytes)
            self.total_size = size
        else:
            self.total_size = len(data)

    def to_bytes(self) -> bytes:
        """The value as one bytes object: the bare stream, or the packed layout."""
        if not self.buffers:
            return self.data
        out = bytearray(self.total_size)
        self.write_into(memoryview(out))
        return bytes(out)

    def write_to_file(self, fd: int) -> None:
        """Write the value at the start of the open file ``fd``, as ``write_into`` lays
        it out, with ``pwrite``: on tmpfs that fills the pages in the kernel, several
        times faster than copying into a fresh mapping (no page fault per 4 KiB). Every
        byte of ``[0, total_size)`` is written, alignment padding included, so a file
        that held other bytes before shows none of them.
        """
        buffers = self.buffers
        if not buffers:
            _pwrite_all(fd, self.data, 0)
            return
        header_end = _HEADER.size + _ENTRY.size * len(buffers)
        data_offset = _align(header_end)
        offset = _align(data_offset + len(self.data))
        header = bytearray(data_offset)
        _HEADER.pack_into(header, 0, _MAGIC, len(buffers), len(self.data))
        placed = []
        for i, buf in enumerate(buffers):
            _ENTRY.pack_into(header, _HEADER.size + i * _ENTRY.size, offset, buf.nbytes)
            placed.append((offset, buf))
            offset = _align(offset + buf.nbytes)
        _pwrite_all(fd, header, 0)
        _pwrite_all(fd, self.data, data_offset)
        _pad(fd, data_offset + len(self.data))
        for at, buf in placed:
            _pwrite_all(fd, buf, at)
            _pad(fd, at + buf.nbytes)

    def write_into(self, target: memoryview) -> None:
        """Write the value into ``target`` (at least ``total_size`` bytes).

        Without out-of-band buffers that is the bare pickle stream, as in ``to_bytes``.
        """
        buffers = self.buffers
        if not buffers:
            target[: len(self.data)] = self.data
            return
        header_end = _HEADER.size + _ENTRY.size * len(buffers)
        offset = _align(header_end)
        _HEADER.pack_into(target, 0, _MAGIC, len(buffers), len(self.data))
        data_offset = offset
        offset = _align(offset + len(self.data))
        for i, buf in enumerate(buffers):
            _ENTRY.pack_into(target, _HEADER.size + i * _ENTRY.size, offset, buf.nbytes)
            target[offset : offset + buf.nbytes] = buf
            offset = _align(offset + buf.nbytes)
        target[data_offset : data_offset + len(self.data)] = self.data


def serialize(value: Any, *, what: str = "value") -> SerializedValue:
    """Pickle ``value`` with out-of-band buffers, recording the refs it contains.

    Args:
        value: anything cloudpickle can pickle.
        what: how to name the value in an error ("argument 'x' of 'load'").

    Raises:
        SerializationError: the value (or something inside it) cannot be pickled.
    """
    buffers: list[memoryview] = []

    def take(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:
            return True  # not contiguous: let pickle copy it in band
        if raw.nbytes < _MIN_OUT_OF_BAND:
            return True
        buffers.append(raw)
        return False

    if _is_plain(value):  # builtin scalars only: C pickle, a tenth of cloudpickle's cost
        return SerializedValue(pickle.dumps(value, protocol=5), buffers, [])
    contained: list[int] = []
    previous = getattr(_capture, "refs", None)
    _capture.refs = contained
    try:
        data = cloudpickle_dumps(value, buffer_callback=take)
    except Exception as exc:  # pickling raises all sorts: TypeError, PicklingError, ...
        raise SerializationError(
            f"Could not serialize {what} of type {type(value).__qualname__}: {exc}"
        ) from exc
    finally:
        _capture.refs = previous
    return SerializedValue(data, buffers, contained)


_SCALARS = frozenset({int, float, bool, type(None), complex})
_PLAIN_ITEMS = 64  # values looked at, at most, before giving the value to cloudpickle


def _is_plain(value: Any) -> bool:
    """Whether ``value`` holds only builtin scalars and short strings and bytes, in
    tuples, lists and dicts (few of them): then plain ``pickle`` pickles it exactly as
    cloudpickle would (no code, no refs, nothing out of band), only faster."""
    stack = [value]
    budget = _PLAIN_ITEMS
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is str or kind is bytes:
            if len(item) >= _MIN_OUT_OF_BAND:
                return False
        elif kind is tuple or kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return False
    return True


def note_ref(object_id: int) -> None:
    """Called by ``ObjectRef.__reduce__``: record a ref pickled into the current value."""
    refs = getattr(_capture, "refs", None)
    if refs is not None:
        refs.append(object_id)


def capture_refs() -> list[int] | None:
    """The capture list of the pickling in progress on this thread, if any."""
    return getattr(_capture, "refs", None)


def deserialize(payload: bytes | memoryview) -> Any:
    """Rebuild a value from a bare pickle stream or a packed layout.

    With a packed layout the out-of-band buffers are handed to pickle as slices of
    ``payload``: pass a read-only memoryview over shared memory and numpy arrays come
    back as read-only views on it.
    """
    view = memoryview(payload)
    if view[:4] != _MAGIC:
        return pickle.loads(view)
    _magic, n_buffers, data_len = _HEADER.unpack_from(view, 0)
    data_offset = _align(_HEADER.size + _ENTRY.size * n_buffers)
    buffers = []
    for i in range(n_buffers):
        off, length = _ENTRY.unpack_from(view, _HEADER.size + i * _ENTRY.size)
        buffers.append(view[off : off + length])
    return pickle.loads(view[data_offset : data_offset + data_len], buffers=buffers)


def dumps_function(fn: Callable[..., Any] | type, *, what: str) -> bytes:
    """Pickle a function or class for shipping to workers (once per worker).

    Code pickled by value keeps its real file name (see :func:`cloudpickle_dumps`).
    """
    try:
        return cloudpickle_dumps(fn)
    except Exception as exc:
        raise SerializationError(f"Could not serialize {what}: {exc}") from exc


def loads_function(data: bytes) -> Any:
    """Inverse of :func:`dumps_function`."""
    return pickle.loads(data)
