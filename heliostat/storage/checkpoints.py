"""The checkpoint store: step outputs as checksummed files in any fsspec filesystem.

A checkpoint is one file per step attempt, at
``{root}/{workflow}/{task}@{attempt}.{tag}.{ext}`` (see :data:`PATH_TEMPLATE`; ids are
made safe by :func:`safe_segment`). The root is a URL: ``file://`` by default
(``HELIOSTAT_STORAGE``, else ``{HELIOSTAT_HOME}/checkpoints``), ``memory://`` for tests,
``s3://`` or any other fsspec URL for a cluster.

Formats, chosen by the value's type (:data:`FORMATS`):

* ``arrow``: a ``pyarrow.Table``, as an Arrow IPC *stream* (``.arrows``). Reading maps
  the bytes without a copy, and any Arrow reader (DuckDB, Polars) can open it.
* ``parquet``: a ``pandas.DataFrame`` with string column names, via Arrow. Compressed
  and columnar, readable by every data tool. pandas is optional: this module never
  imports it, it only looks in ``sys.modules`` (a DataFrame can only exist if pandas is
  already imported) and imports it to *read* a Parquet checkpoint.
* ``pickle``: everything else, with cloudpickle protocol 5 (numpy arrays go in-band in
  one large frame, written without an extra copy).

Every checkpoint is checksummed (``sha256:<hex>``) while it is written, and the checksum
is verified *before* decoding on read, so corrupt bytes are never unpickled. The
checksum is returned in a :class:`CheckpointRef`, which the caller commits to SQL (the
WAL COMMIT record): the SQL row, not the file, is the source of truth.

A file's name carries a *tag*: an HMAC, with the installation's key
(:mod:`heliostat.storage.signing`), of the workflow, step, attempt, format and checksum.
Reads never need it (they go by a location and checksum from a signed SQL row); it is
for recovery, where :meth:`CheckpointStore.find` adopts a file that no row names yet (its
writer died before the COMMIT). Without the tag, anyone able to write the checkpoint
store could plant a pickle at the predictable path of an interrupted attempt and have
the next resume unpickle it; a file whose tag does not check out is ignored.

Why one file per attempt rather than per step: an attempt that crashed mid-write can
never clobber the output of another attempt, and the location recorded in SQL names
exactly the bytes that were checksummed.

On a local filesystem the store bypasses fsspec's file objects and uses ``os`` calls
directly (``open``, ``fsync``, ``os.replace``): a small write then costs a few
syscalls plus the fsyncs, well under a millisecond without them. What it creates there
is private to the user: files ``0600`` (the mode is passed to ``open``, no extra
syscall), new directories ``0700``; an existing root keeps its mode.

Errors a user must fix are :class:`~heliostat.exceptions.StorageError` naming the path
and the setting to change: a root URL no installed filesystem serves, refused before
anything is written (:func:`validate_storage_url`), and a write that fails because the
disk is full, over quota, read-only or not writable by this user.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import logging
import os
import pickle
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import unquote, urlsplit

import cloudpickle
import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

from heliostat.exceptions import CorruptCheckpointError, StorageError
from heliostat.storage.home import PRIVATE_FILE_MODE, default_home, make_private_dirs

if TYPE_CHECKING:
    from heliostat.storage.signing import Signer

_log = logging.getLogger("heliostat.storage")

__all__ = [
    "ATOMIC_PUT_PROTOCOLS",
    "CHECKSUM_ALGORITHM",
    "EXTENSIONS",
    "FORMATS",
    "INLINE_LIMIT",
    "INLINE_SCHEME",
    "PATH_TEMPLATE",
    "PICKLE_PROTOCOL",
    "STORAGE_ENV",
    "TAG_LEN",
    "TMP_INFIX",
    "CheckpointFormat",
    "CheckpointRef",
    "CheckpointStore",
    "SupportsCheckpoints",
    "checkpoint_path",
    "decode_checkpoint",
    "default_storage_url",
    "inline_ref",
    "safe_segment",
    "validate_storage_url",
]

# --- Formats and layout: the one place that decides where and how bytes are stored. ---

CheckpointFormat = Literal["arrow", "parquet", "pickle"]

FORMATS: Final[tuple[CheckpointFormat, ...]] = ("arrow", "parquet", "pickle")
EXTENSIONS: Final[Mapping[CheckpointFormat, str]] = {
    "arrow": "arrows",  # the registered extension of the Arrow IPC *stream* format
    "parquet": "parquet",
    "pickle": "pkl",
}
PATH_TEMPLATE: Final = "{root}/{workflow}/{task}@{attempt}.{tag}.{ext}"
"""Where a checkpoint lives; ``workflow`` and ``task`` are :func:`safe_segment` ids and
``tag`` is :data:`TAG_LEN` hex digits of the file's signature (see the module docstring).

One directory per workflow, not per step: a new directory costs a ``mkdir`` and an
fsync of its parent, which doubled the cost of a small checkpoint. ``@`` never occurs in
a safe segment, so the attempt is unambiguous, and the attempt is all digits, so
``{task}@{attempt}.`` starts the names of that attempt's files and no other's."""
TAG_LEN: Final = 32
"""Hex digits of the HMAC kept in a checkpoint's name: 128 bits, beyond guessing."""
_LAYOUT_DEPTH: Final = 2  # path segments PATH_TEMPLATE adds below the root
TMP_INFIX: Final = ".tmp-"
"""A file being written is ``{final path}.tmp-{uuid4 hex}`` until it is renamed."""
CHECKSUM_ALGORITHM: Final = "sha256"
ATOMIC_PUT_PROTOCOLS: Final = frozenset(
    {"memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2"}
)
"""Filesystems where one upload creates an object whole or not at all: written in place
(a temporary name and ``mv`` would be a second full copy there, and no more atomic)."""
PICKLE_PROTOCOL: Final = 5
INLINE_SCHEME: Final = "inline:"
"""Location prefix of a checkpoint kept in the SQL row (``inline:{workflow}/{task}@{n}``)."""
INLINE_LIMIT: Final = 64 * 1024
"""Largest pickled output kept inline in SQL by :meth:`CheckpointStore.write` when the
caller allows it: the COMMIT transaction then makes data and record durable with one
fsync, and a file's create, fsync and directory fsync are saved. Larger values, Arrow
tables and DataFrames always go to files."""

_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_HASHED_PREFIX_LEN = 40
_HASH_LEN = 16  # hex digits of sha256: 64 bits, no accidental collision among ids


def safe_segment(ident: str) -> str:
    """Turn a workflow or task id into one safe path segment, injectively.

    An id made only of ``[A-Za-z0-9_.-]`` (at most 100 characters, not starting with a
    dot) is used as it is, so most paths read like the ids. Any other id becomes a
    readable prefix (unsafe runs replaced by ``_``) plus ``~`` plus 16 hex digits of its
    SHA-256: ``"nightly@2026-11-21T00:00"`` -> ``"nightly_2026-11-21T00_00~3f2a..."``.
    ``~`` never occurs in an id used as is, so two ids never share a segment (on a
    case-insensitive filesystem, ids that differ only in case still collide).

    Args:
        ident: a workflow id or task id.

    Returns:
        A string safe as a path segment on every filesystem and object store.
    """
    if _SAFE_ID.fullmatch(ident) and not ident.startswith("."):
        return ident
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    prefix = _UNSAFE_CHARS.sub("_", ident)[:_HASHED_PREFIX_LEN].lstrip(".")
    return f"{prefix}~{digest}"


def checkpoint_path(
    root: str, workflow_id: str, task_id: str, attempt: int, fmt: CheckpointFormat, tag: str
) -> str:
    """The path of one checkpoint under ``root`` (a path in the store's filesystem)."""
    return PATH_TEMPLATE.format(
        root=root.rstrip("/"),
        workflow=safe_segment(workflow_id),
        task=safe_segment(task_id),
        attempt=int(attempt),
        tag=tag,
        ext=EXTENSIONS[fmt],
    )


def _attempt_prefix(task_id: str, attempt: int) -> str:
    """The start of the file names of one attempt's checkpoints."""
    return f"{safe_segment(task_id)}@{int(attempt)}."


_FORMAT_OF_EXTENSION: Final[Mapping[str, CheckpointFormat]] = {
    ext: fmt for fmt, ext in EXTENSIONS.items()
}
_TAG_AND_EXTENSION = re.compile(rf"([0-9a-f]{{{TAG_LEN}}})\.([a-z]+)")


STORAGE_ENV: Final = "HELIOSTAT_STORAGE"
"""The environment variable naming the checkpoint root URL."""
_ENV_SOURCE: Final = f"the environment variable {STORAGE_ENV}"
_WHERE_TO_CHANGE: Final = f"set {STORAGE_ENV} or pass hs.init(storage=...)"


def default_storage_url() -> str:
    """``HELIOSTAT_STORAGE``, else ``file://{HELIOSTAT_HOME or ~/.heliostat}/checkpoints``."""
    return _default_storage()[0]


def _default_storage() -> tuple[str, str]:
    """The default root URL and where it comes from (for messages)."""
    url = os.environ.get(STORAGE_ENV)
    if url:
        return url, _ENV_SOURCE
    root = (default_home() / "checkpoints").absolute()
    return root.as_uri(), f"the default, under HELIOSTAT_HOME ({STORAGE_ENV} is not set)"


def validate_storage_url(url: str, *, source: str) -> None:
    """Refuse a checkpoint root URL that no installed filesystem can serve.

    Checked before anything is written: every protocol in ``url`` (``s3://``, or each
    link of a chained ``simplecache::s3://`` URL) must be one fsspec knows, and its
    implementation must import. A plain path needs nothing.

    Args:
        url: the root URL, e.g. ``"s3://bucket/ckpt"``.
        source: where it came from, for the message: ``"the environment variable
            HELIOSTAT_STORAGE"``, ``"hs.init(storage=...)"``.

    Raises:
        StorageError: an unknown protocol (``bogus://x``), or one whose package is
            missing (``s3://`` without s3fs: the message says ``pip install s3fs``);
            the message names the URL (without a password) and ``source``.
    """
    shown = _without_password(url)
    if not url.strip():
        raise StorageError(
            f"The checkpoint storage URL from {source} is empty; {_WHERE_TO_CHANGE} to "
            "a directory or an fsspec URL such as s3://bucket/prefix."
        )
    for link in url.split("::"):
        protocol, _ = fsspec.core.split_protocol(link)
        if protocol is None:
            continue  # a local path
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise StorageError(
                f"The checkpoint storage URL {shown!r} (from {source}) uses the protocol "
                f"{protocol!r}, which no installed filesystem serves. Use a local "
                "directory, file://, memory:// or a URL of a filesystem fsspec knows "
                f"(s3://, gs://, az://, ...): {_WHERE_TO_CHANGE}."
            ) from None
        except ImportError as exc:
            package = _package_of(protocol)
            raise StorageError(
                f"The checkpoint storage URL {shown!r} (from {source}) needs the "
                f"package {package!r} for {protocol}://, which is not installed: run "
                f"`pip install {package}`. To store checkpoints elsewhere, "
                f"{_WHERE_TO_CHANGE}."
            ) from exc


def _package_of(protocol: str) -> str:
    """The package that serves ``protocol`` in fsspec's registry (``s3`` -> ``s3fs``)."""
    known = known_implementations.get(protocol, {})
    return str(known.get("class", protocol)).split(".", 1)[0]


def _without_password(url: str) -> str:
    parts = urlsplit(url) if "://" in url else None
    if parts is None or parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# --- Records and the seam. ---


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRef:
    """Where a checkpoint is and how to check and decode it (what SQL records).

    Attributes:
        location: the checkpoint's full URL (``file:///...``, ``memory://...``).
        checksum: ``"sha256:<64 hex digits>"`` of the file's bytes.
        format: how it is encoded (one of :data:`FORMATS`).
        size: its size in bytes.
        data: the bytes themselves, for an *inline* checkpoint (location
            ``inline:...``): one small enough to be stored in the SQL row of its
            COMMIT rather than in a file (see :data:`INLINE_LIMIT`).
    """

    location: str
    checksum: str
    format: CheckpointFormat
    size: int
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def inline(self) -> bool:
        return self.location.startswith(INLINE_SCHEME)

    def without_data(self) -> CheckpointRef:
        """The same record without the bytes (what to keep once they are committed)."""
        if self.data is None:
            return self
        return CheckpointRef(
            location=self.location, checksum=self.checksum, format=self.format, size=self.size
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain tuple: a slots dataclass's default pickling walks fields() each
        # time, and every step's result carries one of these.
        return (_checkpoint_ref, (self.location, self.checksum, self.format, self.size, self.data))

    @property
    def store_url(self) -> str:
        """The root URL of the store that wrote it (``location`` less the layout's
        ``{workflow}/{task}@{attempt}.{ext}``)."""
        return self.location.rsplit("/", _LAYOUT_DEPTH)[0]


def _checkpoint_ref(
    location: str, checksum: str, fmt: CheckpointFormat, size: int, data: bytes | None
) -> CheckpointRef:
    return CheckpointRef(location=location, checksum=checksum, format=fmt, size=size, data=data)


class SupportsCheckpoints(Protocol):
    """What the workflow executor needs from a checkpoint store (tests pass fakes)."""

    url: str

    @property
    def shared_across_processes(self) -> bool:
        """Whether a worker process sees what this process writes."""
        ...

    def write(
        self,
        workflow_id: str,
        task_id: str,
        attempt: int,
        value: Any,
        *,
        sync_dir: bool = True,
        inline_limit: int = 0,
    ) -> CheckpointRef:
        """Store ``value`` as the output of one attempt; return where and its checksum."""
        ...

    def read(
        self,
        ref_or_location: CheckpointRef | str,
        checksum: str | None = None,
        format: CheckpointFormat | None = None,
    ) -> Any:
        """Load and verify a checkpoint."""
        ...

    def find(self, workflow_id: str, task_id: str, attempt: int) -> CheckpointRef | None:
        """The checkpoint an attempt left behind, if any."""
        ...

    def sync_workflow_dir(self, workflow_id: str) -> None:
        """Make ``write(..., sync_dir=False)`` renames durable."""
        ...

    def delete_workflow(self, workflow_id: str) -> None:
        """Remove every checkpoint of one workflow."""
        ...


# --- Encoding. ---


class _HashingWriter:
    """A write-only file that hashes what passes through, counting bytes."""

    __slots__ = ("_raw", "_hash", "size")

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._raw.flush()

    @property
    def closed(self) -> bool:  # pyarrow's PythonFile asks
        return False

    def checksum(self) -> str:
        return f"{CHECKSUM_ALGORITHM}:{self._hash.hexdigest()}"


def _choose_format(value: Any) -> tuple[CheckpointFormat, Any]:
    """Pick the format for ``value``; returns it and the object the encoder writes.

    pyarrow and pandas are looked up in ``sys.modules``, not imported: a table or
    DataFrame can only exist once its library is, and a worker that checkpoints plain
    values then never pays for importing them.
    """
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        return "arrow", value
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        table = _dataframe_to_arrow(value)
        if table is not None:
            return "parquet", table
    return "pickle", value


def _dataframe_to_arrow(df: Any) -> Any:
    """The DataFrame as an Arrow table, or ``None`` if Parquet would not round-trip it."""
    columns = df.columns
    if getattr(columns, "nlevels", 1) != 1 or not all(isinstance(c, str) for c in columns):
        return None  # Parquet names columns by string: ints, tuples would come back changed
    if len(set(columns)) != len(columns):
        return None
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(df)
    except (pa.ArrowException, TypeError, ValueError):
        return None  # mixed-type object columns and the like: pickle keeps them exact


class _Encoded(bytes):
    """Bytes already encoded in the checkpoint's format (written as they are)."""

    __slots__ = ()


def _pickle_if_small(value: Any, limit: int) -> tuple[bytes | None, _Encoded | None]:
    """``(pickle, None)`` if ``value`` pickles to at most ``limit`` bytes.

    Otherwise ``(None, pickle)`` when the pickle is already made (a value without
    out-of-band buffers, so it is not made twice), or ``(None, None)`` for values with
    large buffers (numpy arrays), which are streamed to the file instead: measuring
    them costs no copy, since protocol 5 hands the buffers out without copying.
    """
    buffers: list[pickle.PickleBuffer] = []
    head = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append)
    if not buffers:
        return (head, None) if len(head) <= limit else (None, _Encoded(head))
    size = len(head) + sum(b.raw().nbytes for b in buffers)
    if size > limit:
        return None, None
    return cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL), None


def _encode(fmt: CheckpointFormat, obj: Any, sink: _HashingWriter) -> None:
    if isinstance(obj, _Encoded):
        sink.write(obj)
    elif fmt == "pickle":
        cloudpickle.dump(obj, sink, protocol=PICKLE_PROTOCOL)
    elif fmt == "arrow":
        import pyarrow as pa

        with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), obj.schema) as writer:
            writer.write_table(obj)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(obj, pa.PythonFile(sink, mode="w"))


def _decode(fmt: str, data: bytes) -> Any:
    if fmt == "pickle":
        return cloudpickle.loads(data)
    if fmt == "arrow":
        import pyarrow as pa

        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(data)).to_pandas()
    raise ValueError(f"unknown checkpoint format {fmt!r} (known: {', '.join(FORMATS)})")


def _format_of_location(location: str) -> str:
    ext = location.rsplit(".", 1)[-1]
    for fmt, known in EXTENSIONS.items():
        if ext == known:
            return fmt
    raise ValueError(f"cannot tell the format of {location!r} from its extension")


# --- The store. ---


class CheckpointStore:
    """Checkpoints in one fsspec filesystem under one root URL.

    Safe to use from many threads and processes at once: every write goes to its own
    temporary file, and distinct attempts have distinct final paths. Invariant: a final
    (non-``.tmp-``) path only ever holds complete bytes, as one writer wrote them.

    Args:
        url: the root, e.g. ``"file:///data/ckpt"``, ``"memory://ckpt"``,
            ``"s3://bucket/prefix"``; ``None`` for :func:`default_storage_url`.
        fsync: make each checkpoint durable before :meth:`write` returns (local
            filesystems; object stores are durable once the upload completes). Turn it
            off only for checkpoints you can afford to recompute after a power cut.
        storage_options: passed to the fsspec filesystem (credentials, endpoints).
        source: where ``url`` came from, for error messages (``"hs.init(storage=...)"``);
            by default the environment variable or the default under HELIOSTAT_HOME
            when ``url`` is ``None``, else "the URL given to CheckpointStore".
        signer: tags file names (see the module docstring); by default the
            installation's key (:func:`~heliostat.storage.signing.default_signer`),
            as it is when a file is written or looked for.

    Raises:
        StorageError: the URL names no usable filesystem (see
            :func:`validate_storage_url`), or a local root cannot be created.

    Files and directories the store creates on a local filesystem are private to the
    user (``0600`` / ``0700``, whatever the umask); an existing root keeps its mode.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        fsync: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        source: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self._signer = signer
        if url is None:
            url, default_source = _default_storage()
        else:
            default_source = "the URL given to CheckpointStore"
        self.url = url
        self.source = source or default_source
        self.fsync = fsync
        self._storage_options = dict(storage_options or {})
        validate_storage_url(url, source=self.source)
        fs, root = fsspec.core.url_to_fs(self.url, **self._storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/") or root
        self._local = isinstance(fs, LocalFileSystem)
        self._atomic_put = bool(set(_protocols(fs)) & ATOMIC_PUT_PROTOCOLS)
        if self._local:
            try:
                make_private_dirs(self.root)
            except OSError as exc:
                what = f"the checkpoint root directory {self.root}"
                raise self._storage_error(what, exc, always=True) from exc
            self._root_url = Path(self.root).as_uri()
        else:
            self._root_url = str(fs.unstrip_protocol(self.root))

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r}, fsync={self.fsync})"

    @property
    def shared_across_processes(self) -> bool:
        """Whether another process (a worker) sees what this one writes.

        False only for ``memory://``, which lives in one process's memory.
        """
        return "memory" not in _protocols(self.fs)

    # -- paths

    def path(
        self, workflow_id: str, task_id: str, attempt: int, fmt: CheckpointFormat, checksum: str
    ) -> str:
        """The filesystem path of the checkpoint of this attempt with these bytes."""
        tag = self._tag(workflow_id, task_id, attempt, fmt, checksum)
        return checkpoint_path(self.root, workflow_id, task_id, attempt, fmt, tag)

    def _tag(
        self, workflow_id: str, task_id: str, attempt: int, fmt: CheckpointFormat, checksum: str
    ) -> str:
        signer = self._signer
        if signer is None:
            from heliostat.storage.signing import default_signer

            # Not cached: it follows HELIOSTAT_HOME / HELIOSTAT_SECRET_KEY as the lineage
            # store does (one stat per call), and a file write costs far more.
            signer = default_signer()
        signature = signer.sign(
            "checkpoint-file", workflow_id, task_id, str(int(attempt)), fmt, checksum
        )
        return signature.rsplit(":", 1)[1][:TAG_LEN]

    def _draft(self, workflow_id: str, task_id: str, attempt: int, fmt: CheckpointFormat) -> str:
        """The untagged name a file is written under before its checksum is known."""
        directory = f"{self.root}/{safe_segment(workflow_id)}"
        return f"{directory}/{_attempt_prefix(task_id, attempt)}{EXTENSIONS[fmt]}"

    def _location(self, path: str) -> str:
        # Paths below the root are made of safe segments: no URL quoting needed.
        assert path.startswith(self.root)
        return self._root_url + path[len(self.root) :]

    def path_within(self, location: str) -> str | None:
        """The path of ``location`` in this store's filesystem if it names a file under
        this store's root, else ``None``: another store, a ``..`` or empty segment, or
        (local stores) a file whose real path, symbolic links followed, is elsewhere.

        For readers that serve files to others (the web UI's checkpoint download): a
        location read from the database must not open anything outside the store.
        """
        prefix = self._root_url.rstrip("/") + "/"
        if not location.startswith(prefix):
            return None
        rel = location[len(prefix) :]
        if any(part in ("", ".", "..") for part in rel.split("/")):
            return None
        path = self.root.rstrip("/") + "/" + rel
        if self._local:
            root = os.path.realpath(self.root)
            if os.path.commonpath([root, os.path.realpath(path)]) != root:
                return None
        return path

    def _resolve(self, location: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem and path a location names (ours, unless another protocol)."""
        if self._local and location.startswith("file://"):
            return self.fs, _file_url_to_path(location)
        protocols = _protocols(self.fs)
        scheme = location.split("://", 1)[0] if "://" in location else None
        if scheme is None or scheme in protocols:
            return self.fs, self.fs._strip_protocol(location)
        fs, path = fsspec.core.url_to_fs(location, **self._storage_options)
        return fs, path

    # -- write

    def write(
        self,
        workflow_id: str,
        task_id: str,
        attempt: int,
        value: Any,
        *,
        sync_dir: bool = True,
        inline_limit: int = 0,
    ) -> CheckpointRef:
        """Store ``value`` as the output of one attempt of one step, atomically.

        With ``inline_limit > 0``, a value that pickles to at most that many bytes
        (and is not an Arrow table or DataFrame) is not written anywhere: the returned
        ref is *inline*, carrying the bytes in ``data`` for the caller to commit in the
        SQL row itself. That is only safe where losing an uncommitted output is
        harmless, i.e. for idempotent steps: nothing is left to find after a crash.

        Crash safety, in order:

        1. Encode the value (format by type, see the module docstring) into
           ``{path}.tmp-{uuid}``, hashing the bytes as they are written. If encoding
           raises, the temporary file is removed and the error propagates.
        2. Local filesystem: ``fsync`` the temporary file (if ``fsync``).
        3. Rename it to the final path (``os.replace`` locally, atomic). Other
           filesystems: the value is encoded to memory first, then uploaded to the
           temporary name and ``fs.mv``-ed; on object stores (and ``memory://``, see
           :data:`ATOMIC_PUT_PROTOCOLS`) it is uploaded straight to the final name in
           one atomic PUT, so steps 1-3 collapse into one.
        4. Local filesystem: ``fsync`` the directory, so the rename survives a power
           cut (if ``fsync``). With ``sync_dir=False`` the caller promises to call
           :meth:`sync_workflow_dir` before it commits the ref: the workflow executor
           does that once per group commit, so a fan-out of many steps pays one
           directory fsync, not one each.
        5. Return the :class:`CheckpointRef`; the *caller* commits it to SQL (the WAL
           COMMIT record). Only then is the checkpoint part of the workflow.

        A crash before step 3 leaves at most a ``.tmp-`` file, never a final file with
        partial content; it is garbage (no SQL row names it) and
        :meth:`delete_workflow` removes it. A crash between 3 and 5 leaves a complete
        final file that no COMMIT names: a resume re-runs the attempt (idempotent
        steps) or treats it as in doubt, and a new attempt writes a new path. A reader
        only ever reads locations from COMMIT records, and verifies the checksum
        recorded there before decoding.

        Args:
            workflow_id: the workflow's id (any string; made path-safe here).
            task_id: the step's task id.
            attempt: the attempt number (distinct attempts never share a file).
            value: the step's output.
            sync_dir: fsync the directory after the rename (see step 4).
            inline_limit: keep values pickled this small in the ref (0: never).

        Returns:
            The location, checksum, format and size of the checkpoint.

        Raises:
            StorageError: the storage is full, over quota, read-only or not writable
                by this user (ENOSPC, EDQUOT, EROFS, EACCES, EPERM); the message names
                the checkpoint's path and ``HELIOSTAT_STORAGE`` / ``hs.init(storage=)``.
                The temporary file is removed.
            Exception: whatever encoding the value raised (e.g. a pickling error);
                nothing is left behind in that case.
        """
        fmt, obj = _choose_format(value)
        if fmt == "pickle" and inline_limit > 0:
            small, encoded = _pickle_if_small(value, inline_limit)
            if small is not None:
                return inline_ref(workflow_id, task_id, attempt, small)
            if encoded is not None:
                obj = encoded
        draft = self._draft(workflow_id, task_id, attempt, fmt)

        def final_path(checksum: str) -> str:
            return self.path(workflow_id, task_id, attempt, fmt, checksum)

        if self._local:
            final, checksum, size = self._write_local(fmt, obj, draft, final_path, sync_dir)
        else:
            final, checksum, size = self._write_fsspec(fmt, obj, draft, final_path)
        return CheckpointRef(
            location=self._location(final), checksum=checksum, format=fmt, size=size
        )

    def _storage_error(
        self, what: str, exc: OSError, *, always: bool = False
    ) -> StorageError | OSError:
        """A :class:`StorageError` for ``exc`` if a user must fix it (full, read-only,
        permissions; any error with ``always``), else ``exc`` itself."""
        words = _USER_FIXABLE_ERRNOS.get(exc.errno or 0)
        if words is None and always:
            words = exc.strerror or type(exc).__name__
        if words is None:
            return exc
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return StorageError(
            f"Cannot write {what}: {words} ({name}). Checkpoints go to {self.url} "
            f"(from {self.source}); free space or fix permissions there, or "
            f"{_WHERE_TO_CHANGE} to store them elsewhere."
        )

    def _write_local(
        self,
        fmt: CheckpointFormat,
        obj: Any,
        draft: str,
        final_path: Callable[[str], str],
        sync_dir: bool,
    ) -> tuple[str, str, int]:
        try:
            return self._write_local_file(fmt, obj, draft, final_path, sync_dir)
        except OSError as exc:
            err = self._storage_error(f"the checkpoint {draft}", exc)
            if err is exc:
                raise
            raise err from exc

    def _write_local_file(
        self,
        fmt: CheckpointFormat,
        obj: Any,
        draft: str,
        final_path: Callable[[str], str],
        sync_dir: bool,
    ) -> tuple[str, str, int]:
        tmp = f"{draft}{TMP_INFIX}{uuid.uuid4().hex}"
        # O_EXCL: the name is ours alone; 0o600 whatever the umask: private to the user.
        try:
            fd = os.open(tmp, _TMP_FLAGS, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            # First checkpoint of this workflow: make its directories, then try again.
            _makedirs_durable(os.path.dirname(tmp), fsync=self.fsync)
            fd = os.open(tmp, _TMP_FLAGS, PRIVATE_FILE_MODE)
        try:
            with open(fd, "wb") as raw:
                sink = _HashingWriter(raw)
                _encode(fmt, obj, sink)
                if self.fsync:
                    raw.flush()
                    os.fsync(fd)
            checksum = sink.checksum()
            final = final_path(checksum)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync and sync_dir:
            _fsync_dir(os.path.dirname(final))
        return final, checksum, sink.size

    def sync_workflow_dir(self, workflow_id: str) -> None:
        """Make the renames of this workflow's checkpoints durable (one directory fsync).

        The other half of ``write(..., sync_dir=False)``: call it before committing
        the refs those writes returned. A no-op off the local filesystem.
        """
        if not (self._local and self.fsync):
            return
        directory = os.path.join(self.root, safe_segment(workflow_id))
        if os.path.isdir(directory):
            _fsync_dir(directory)

    def _write_fsspec(
        self, fmt: CheckpointFormat, obj: Any, draft: str, final_path: Callable[[str], str]
    ) -> tuple[str, str, int]:
        # Encode fully in memory first: an fsspec file that sees an exception inside its
        # ``with`` block still closes, i.e. *uploads*, the partial content.
        buffer = io.BytesIO()
        sink = _HashingWriter(buffer)
        _encode(fmt, obj, sink)
        data = buffer.getvalue()
        checksum = sink.checksum()
        final = final_path(checksum)
        tmp = f"{draft}{TMP_INFIX}{uuid.uuid4().hex}"
        fs = self.fs
        try:
            if self._atomic_put:
                fs.pipe_file(final, data)  # one PUT: the object appears whole or not at all
                return final, checksum, sink.size
            try:
                fs.pipe_file(tmp, data)
                fs.mv(tmp, final)
            except BaseException:
                with contextlib.suppress(Exception):
                    fs.rm(tmp)
                raise
        except OSError as exc:
            err = self._storage_error(f"the checkpoint {self._location(final)}", exc)
            if err is exc:
                raise
            raise err from exc
        return final, checksum, sink.size

    # -- read

    def read(
        self,
        ref_or_location: CheckpointRef | str,
        checksum: str | None = None,
        format: CheckpointFormat | None = None,
    ) -> Any:
        """Load a checkpoint, verifying its checksum before decoding it.

        Args:
            ref_or_location: a :class:`CheckpointRef`, or a location (URL) as recorded
                in SQL; with a bare location pass ``checksum`` too.
            checksum: the expected ``sha256:<hex>`` (overrides the ref's). Required:
                an unverified checkpoint is never decoded.
            format: how it is encoded (default: the ref's, else by extension).

        Returns:
            The value, as written (a DataFrame comes back as a DataFrame).

        Raises:
            CorruptCheckpointError: the file is missing, its checksum differs from the
                expected one, or it cannot be decoded. The message names the location
                and both checksums.
            ValueError: no checksum was given.
        """
        if isinstance(ref_or_location, CheckpointRef):
            location = ref_or_location.location
            checksum = checksum or ref_or_location.checksum
            fmt: str = format or ref_or_location.format
            data = ref_or_location.data
        else:
            location = ref_or_location
            if location.startswith(INLINE_SCHEME):
                raise ValueError(f"{location} is kept in SQL: read it from its CheckpointRef")
            fmt = format or _format_of_location(location)
            data = None
        if not checksum:
            raise ValueError(f"read({location!r}) needs the checksum recorded when it was written")
        if data is None:
            data = self._read_bytes(location, checksum)
        return decode_checkpoint(location, checksum, fmt, data)

    def _read_bytes(self, location: str, checksum: str) -> bytes:
        fs, path = self._resolve(location)
        try:
            if fs is self.fs and self._local:
                with open(path, "rb") as f:
                    return f.read()
            data = fs.cat_file(path)
            assert isinstance(data, bytes)
            return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise CorruptCheckpointError(
                f"Checkpoint {location} is missing (expected checksum {checksum}, actual: "
                "none). It was deleted or the storage root moved; re-run the step that "
                "produced it.",
                location=location,
                expected_checksum=checksum,
                actual_checksum="",
            ) from exc

    def find(self, workflow_id: str, task_id: str, attempt: int) -> CheckpointRef | None:
        """The checkpoint an attempt wrote, if its final file exists; else ``None``.

        For recovery: an attempt whose process died after :meth:`write` renamed the
        file (step 3) but before the COMMIT record was written left a complete file
        that no SQL row names. A final file is only ever created whole (rename or
        atomic PUT), so it is safe to adopt once its name's tag proves that a process
        holding this installation's key wrote exactly these bytes; its checksum is
        computed here, from the bytes found. A file whose tag does not match is
        ignored (and logged): it was planted or damaged, and adopting it would unpickle
        bytes nobody vouches for. Temporary (``.tmp-``) files are never returned.

        Args:
            workflow_id: the workflow's id.
            task_id: the step's task id.
            attempt: the attempt whose output is looked for.

        Returns:
            A reference to the checkpoint (to be committed by the caller), or ``None``.
        """
        prefix = _attempt_prefix(task_id, attempt)
        directory = f"{self.root}/{safe_segment(workflow_id)}"
        for name in sorted(self._names_in(directory)):
            if not name.startswith(prefix) or TMP_INFIX in name:
                continue
            parsed = _TAG_AND_EXTENSION.fullmatch(name[len(prefix) :])
            fmt = _FORMAT_OF_EXTENSION.get(parsed.group(2)) if parsed else None
            if parsed is None or fmt is None:
                continue
            location = self._location(f"{directory}/{name}")
            try:
                data = self._read_bytes(location, "")
            except CorruptCheckpointError:
                continue
            checksum = f"{CHECKSUM_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"
            expected = self._tag(workflow_id, task_id, attempt, fmt, checksum)
            if not hmac.compare_digest(parsed.group(1), expected):
                _log.warning(
                    "Ignoring checkpoint %s of step %r of workflow %r: its name's tag does "
                    "not match its bytes under this installation's key (written with "
                    "another key, altered, or planted); the step is treated as having "
                    "left no output.",
                    location,
                    task_id,
                    workflow_id,
                )
                continue
            return CheckpointRef(location=location, checksum=checksum, format=fmt, size=len(data))
        return None

    def _names_in(self, directory: str) -> list[str]:
        """The names of the files in one directory of the store (none if it is absent)."""
        try:
            if self._local:
                return os.listdir(directory)
            return [str(p).rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- housekeeping

    def exists(self, location: str) -> bool:
        """Whether a file is at ``location`` (says nothing about its checksum)."""
        fs, path = self._resolve(location)
        if fs is self.fs and self._local:
            return os.path.isfile(path)
        return bool(fs.isfile(path))

    def delete_workflow(self, workflow_id: str) -> None:
        """Remove every checkpoint of one workflow (and stray temporary files); idempotent."""
        path = f"{self.root}/{safe_segment(workflow_id)}"
        if self._local:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)
            return
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)


# --- Local filesystem helpers. ---


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return tuple(protocol) if isinstance(protocol, (tuple, list)) else (str(protocol),)


def _file_url_to_path(location: str) -> str:
    return unquote(urlsplit(location).path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_USER_FIXABLE_ERRNOS: Final[Mapping[int, str]] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "this user's disk quota is used up",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.EACCES: "permission denied (this user may not write there)",
    errno.EPERM: "operation not permitted (this user may not write there)",
}
"""OS errors a user fixes by freeing space, fixing permissions or moving the storage:
turned into :class:`StorageError` by the writers. Others propagate as they are."""


def _makedirs_durable(path: str, *, fsync: bool) -> None:
    """``mkdir -p path`` (new directories ``0700``), fsyncing each parent that gained
    an entry (if ``fsync``), also when a concurrent writer made the directory."""
    for d in make_private_dirs(path):
        if fsync:
            _fsync_dir(os.path.dirname(d))


def _checksum(expected: str, data: bytes) -> str:
    algorithm = expected.split(":", 1)[0]
    if algorithm != CHECKSUM_ALGORITHM:
        return f"unsupported:{algorithm}"
    return f"{CHECKSUM_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def inline_ref(workflow_id: str, task_id: str, attempt: int, data: bytes) -> CheckpointRef:
    """The ref of a pickled output kept in SQL (see :data:`INLINE_LIMIT`)."""
    return CheckpointRef(
        location=f"{INLINE_SCHEME}{workflow_id}/{task_id}@{attempt}",
        checksum=f"{CHECKSUM_ALGORITHM}:{hashlib.sha256(data).hexdigest()}",
        format="pickle",
        size=len(data),
        data=data,
    )


def decode_checkpoint(location: str, checksum: str, fmt: str, data: bytes) -> Any:
    """Verify ``data`` against ``checksum``, then decode it (see ``CheckpointStore.read``).

    Raises:
        CorruptCheckpointError: the checksum differs, or the bytes cannot be decoded.
    """
    actual = _checksum(checksum, data)
    if actual != checksum:
        raise CorruptCheckpointError(
            f"Checkpoint {location} is corrupt: its checksum is {actual}, but "
            f"{checksum} was recorded when it was written. Re-run the step that "
            "produced it.",
            location=location,
            expected_checksum=checksum,
            actual_checksum=actual,
        )
    try:
        return _decode(fmt, data)
    except ImportError:
        raise  # e.g. a Parquet checkpoint read where pandas is not installed
    except Exception as exc:
        raise CorruptCheckpointError(
            f"Checkpoint {location} matches its checksum {checksum} but cannot be "
            f"decoded as {fmt}: {exc!r}. It was probably written by an incompatible "
            "version of a library; re-run the step that produced it.",
            location=location,
            expected_checksum=checksum,
            actual_checksum=actual,
        ) from exc
