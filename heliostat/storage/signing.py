"""The installation's secret key, and HMAC signatures over data heliostat unpickles later.

heliostat pickles some of what it stores (a workflow's compiled DAG in the database,
step outputs whose location and checksum are SQL rows) and unpickles it in the next
driver. Unpickling runs code, so anyone who can write the database could otherwise
make that driver run theirs. Each such record is therefore signed, when it is written,
with a key only this installation's processes hold, and verified before it is loaded;
a record that fails is refused with :class:`~heliostat.exceptions.UnauthenticatedDataError`.

Where the key comes from, first match wins:

1. ``HELIOSTAT_SECRET_KEY``: hex or (URL-safe) base64, at least 32 bytes once decoded.
   For a shared cluster: every driver, worker, scheduler and UI of one database must
   hold the same key.
2. The key file ``$HELIOSTAT_HOME/secret.key``: 32 random bytes, written as hex. It is
   created on first use, mode ``0600``, and refused if another user owns it or can read
   or write it (whoever reads it can forge records; whoever writes it can swap it).

Creating the key file is race-free, so processes that start together end up with one
key:

1. Write 32 random bytes to a temporary file of our own (``O_EXCL``, mode ``0600``),
   fsync it.
2. ``link()`` it to ``secret.key``. ``link`` never replaces an existing name: exactly
   one process wins, and ``secret.key`` only ever names complete content.
3. Remove the temporary name, fsync the directory, and read ``secret.key``: the loser
   reads the winner's key. A crash leaves at most a stray ``.secret.key.tmp-*`` file.

Alternatives: ``O_CREAT|O_EXCL`` on ``secret.key`` itself is also race-free between
creators, but a reader could see the file between its creation and its write (empty);
``rename()`` replaces silently, so two creators would each keep their own key. The
``link`` dance is kept unless the filesystem has no hard links, where creating the key
file directly with ``O_EXCL`` is the fallback.

Signatures are ``"hmac-sha256:<64 hex digits>"`` over the *parts* of a record, each
length-prefixed (8 bytes, big-endian) after a fixed domain string, so
``("ab", "c")`` and ``("a", "bc")`` sign differently. A ``str`` part is signed as its
UTF-8 bytes (``"x"`` and ``b"x"`` sign alike). Name what is signed in the first part
(``sign("workflow-dag", workflow_id, dag_bytes)``) so a signature for one kind of
record is never valid for another.

The key is cached per source in the process (an environment value, or a key file whose
identity and mode are re-checked with one ``stat`` per :func:`default_signer` call), so
changing ``HELIOSTAT_HOME`` or ``HELIOSTAT_SECRET_KEY`` takes effect at once. Hold a
:class:`Signer` on hot paths rather than calling :func:`default_signer` each time.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import os
import re
import secrets
import uuid
from pathlib import Path
from typing import Final

from heliostat.exceptions import StorageError, UnauthenticatedDataError
from heliostat.storage.home import (
    HOME_ENV,
    PRIVATE_FILE_MODE,
    default_home,
    make_private_dirs,
)

__all__ = [
    "KEY_BYTES",
    "KEY_FILENAME",
    "MIN_KEY_BYTES",
    "SECRET_KEY_ENV",
    "SIGNATURE_PREFIX",
    "Signer",
    "default_key_file",
    "default_signer",
]

SECRET_KEY_ENV: Final = "HELIOSTAT_SECRET_KEY"
"""The environment variable that holds a shared key (hex or URL-safe base64)."""
KEY_FILENAME: Final = "secret.key"
"""The key file's name under ``HELIOSTAT_HOME``."""
KEY_BYTES: Final = 32
"""Size of a generated key."""
MIN_KEY_BYTES: Final = 32
"""Shortest key accepted (HMAC-SHA256 gains nothing from more than 64)."""
SIGNATURE_PREFIX: Final = "hmac-sha256:"
"""What every signature starts with, naming the algorithm."""

_DOMAIN: Final = b"heliostat-signature-v1\x00"
_HEX = re.compile(r"[0-9a-fA-F]+")
_NO_HARD_LINKS: Final = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
)
_GENERATE_HINT: Final = (
    'generate one with `python -c "import secrets; print(secrets.token_hex(32))"`'
)


class Signer:
    """Signs and verifies records with one secret key.

    Args:
        key: the secret, at least :data:`MIN_KEY_BYTES` bytes.
        source: where the key came from, for messages (``"the environment variable
            HELIOSTAT_SECRET_KEY"``, ``"the key file /home/ann/.heliostat/secret.key"``).
        key_file: the key file it was read from, if any (named in messages).

    Example::

        signer = default_signer()
        sig = signer.sign("workflow-dag", "etl", dag_bytes)     # stored next to the DAG
        signer.check(sig, "workflow-dag", "etl", dag_bytes,
                     what="the compiled DAG of workflow 'etl'", origin=db_name)
        dag = pickle.loads(dag_bytes)                           # only after check()
    """

    __slots__ = ("_key", "key_file", "source")

    def __init__(
        self,
        key: bytes,
        *,
        source: str = "a key given to Signer()",
        key_file: Path | None = None,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes; got {len(key)}")
        self._key = bytes(key)
        self.source = source
        self.key_file = key_file

    def __repr__(self) -> str:  # never the key
        return f"Signer(source={self.source!r})"

    def export_key(self) -> bytes:
        """The key itself, for a process that must share it: a cluster head hands it
        to the drivers that join it (they hold the cluster token). Never log it."""
        return self._key

    def sign(self, *parts: bytes | str) -> str:
        """The signature of ``parts``: ``"hmac-sha256:<hex>"``.

        Args:
            *parts: the record's fields, in a fixed order; ``str`` is signed as UTF-8.

        Raises:
            TypeError: a part is neither ``bytes`` nor ``str`` (convert numbers
                yourself, so that ``1`` and ``"1"`` cannot be confused).
        """
        # One message, one C call: hmac.digest is several times faster than feeding
        # an HMAC object part by part, and a record is signed at every step.
        chunks: list[bytes | memoryview] = [_DOMAIN]
        for part in parts:
            if isinstance(part, str):
                data: bytes | memoryview = part.encode("utf-8", "surrogatepass")
            elif isinstance(part, (bytes, bytearray, memoryview)):
                data = memoryview(part).cast("B")
            else:
                raise TypeError(f"can only sign bytes and str parts, not {type(part).__name__}")
            chunks.append(len(data).to_bytes(8, "big"))
            chunks.append(data)
        return SIGNATURE_PREFIX + hmac.digest(self._key, b"".join(chunks), "sha256").hex()

    def verify(self, signature: str | None, *parts: bytes | str) -> bool:
        """Whether ``signature`` is this key's signature of ``parts`` (constant time).

        A missing (``None``, empty) or malformed signature is simply not valid.
        """
        if not signature or not isinstance(signature, str):
            return False
        expected = self.sign(*parts)
        return hmac.compare_digest(
            signature.encode("utf-8", "surrogatepass"), expected.encode("ascii")
        )

    def check(self, signature: str | None, *parts: bytes | str, what: str, origin: str) -> None:
        """Raise unless ``signature`` is valid for ``parts``; call before unpickling.

        Args:
            signature: the stored signature (``None`` if the record has none).
            *parts: the record's fields, as passed to :meth:`sign`.
            what: the data, for the message (``"the compiled DAG of workflow 'etl'"``).
            origin: where it was read from (``"the metadata database
                /home/ann/.heliostat/heliostat.db"``).

        Raises:
            UnauthenticatedDataError: the signature is missing or does not match.
        """
        if self.verify(signature, *parts):
            return
        problem = "it carries no signature" if not signature else "its signature does not match"
        key_file = self.key_file or default_key_file()
        raise UnauthenticatedDataError(
            f"Refused to load {what} from {origin}: {problem}, so it was not signed with "
            f"this installation's key (this process's key comes from {self.source}). "
            "heliostat never unpickles data it cannot authenticate: it was written under "
            "another key, or changed by someone who can write that storage. All drivers, "
            "workers and schedulers of one database must share one key: set "
            f"{SECRET_KEY_ENV} to the same value for all of them, or copy one key file "
            f"({key_file}) into each one's {HOME_ENV}. To read data written under another "
            "key on purpose, run with that key.",
            what=what,
            origin=origin,
            key_source=self.source,
        )


def default_key_file() -> Path:
    """``$HELIOSTAT_HOME/secret.key`` (whether or not it exists)."""
    return default_home() / KEY_FILENAME


_Stamp = tuple[int, int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size
_env_signers: dict[str, Signer] = {}
_file_signers: dict[str, tuple[_Stamp, Signer]] = {}


def default_signer() -> Signer:
    """The signer of this installation, from the environment as it is now.

    ``HELIOSTAT_SECRET_KEY`` if set (and not empty), else the key file under
    ``HELIOSTAT_HOME``, created if missing (see the module docstring). Cached per
    source; a key file is re-checked with one ``stat``, so a replaced or loosened
    file is noticed.

    Raises:
        StorageError: the key is too short or not hex/base64, or the key file is
            another user's or readable by others, or it cannot be created; the
            message names the variable or path and what to do.
    """
    env = os.environ.get(SECRET_KEY_ENV)
    if env:
        signer = _env_signers.get(env)
        if signer is None:
            key = _decode_key(env, source=f"the environment variable {SECRET_KEY_ENV}")
            signer = _env_signers[env] = Signer(
                key, source=f"the environment variable {SECRET_KEY_ENV}"
            )
        return signer
    path = default_key_file()
    cache_key = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        cached = _file_signers.get(cache_key)
        if cached is not None and cached[0] == _stamp(st):
            return cached[1]
    key, stamp = _load_key(path)
    signer = Signer(key, source=f"the key file {path}", key_file=path)
    _file_signers[cache_key] = (stamp, signer)
    return signer


def _load_key(path: Path) -> tuple[bytes, _Stamp]:
    """The key in the key file at ``path`` (created first if missing), and the file's
    identity stamp when read."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    _create_key_file(path)
    return _read_key_file(path)


def _decode_key(text: str, *, source: str) -> bytes:
    """Decode a key written as hex (tried first) or base64 (URL-safe or standard).

    Raises:
        StorageError: it is neither, or shorter than :data:`MIN_KEY_BYTES` bytes; the
            message names ``source`` but never the key.
    """
    value = text.strip()
    key: bytes | None = None
    if _HEX.fullmatch(value) and len(value) % 2 == 0:
        key = bytes.fromhex(value)
    else:
        try:
            standard = value.replace("-", "+").replace("_", "/")
            key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None:
        raise StorageError(
            f"The secret key in {source} is neither hex nor base64; {_GENERATE_HINT}."
        )
    if len(key) < MIN_KEY_BYTES:
        raise StorageError(
            f"The secret key in {source} is too short: it decodes to {len(key)} bytes, and "
            f"heliostat needs at least {MIN_KEY_BYTES}; {_GENERATE_HINT}."
        )
    return key


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _read_key_file(path: Path) -> tuple[bytes, _Stamp]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(
            f"Cannot read the secret key file {path}: {exc.strerror}. Make it readable by "
            f"this user, set {HOME_ENV} to a directory of your own, or set "
            f"{SECRET_KEY_ENV}."
        ) from exc
    try:
        st = os.fstat(fd)  # of what was opened: no swap between the check and the read
        _check_key_file(path, st)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    source = f"the key file {path}"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise StorageError(
            f"The secret key in {source} is neither hex nor base64; {_GENERATE_HINT}, "
            "or remove the file to have heliostat make a new one (data signed with the "
            "old key will then be refused)."
        ) from None
    return _decode_key(text, source=source), _stamp(st)


def _check_key_file(path: Path, st: os.stat_result) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StorageError(
            f"The secret key file {path} belongs to uid {st.st_uid}, not to this user "
            f"(uid {uid}); heliostat only uses a key file that nobody else controls. Make "
            f"it yours (`chown {uid} {path}`, as root) and run `chmod 600 {path}`, or set "
            f"{HOME_ENV} to a directory of your own, or set {SECRET_KEY_ENV}."
        )
    if st.st_mode & 0o077:
        raise StorageError(
            f"The secret key file {path} is open to other users (mode "
            f"{st.st_mode & 0o777:04o}): whoever can read it can forge data this "
            f"installation would unpickle. Run `chmod 600 {path}`."
        )


def _create_key_file(path: Path) -> None:
    """Create the key file race-free (see the module docstring); a loser keeps quiet."""
    content = (secrets.token_bytes(KEY_BYTES).hex() + "\n").encode("ascii")
    try:
        make_private_dirs(path.parent)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        _write_new_file(tmp, content)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: everyone reads its key
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _write_new_file(path, content, exist_ok=True)
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(
            f"Cannot create the secret key file {path}: {exc.strerror}. Set {HOME_ENV} to "
            f"a directory you can write, or set {SECRET_KEY_ENV} (hex, at least "
            f"{MIN_KEY_BYTES} bytes)."
        ) from exc


def _write_new_file(path: Path, content: bytes, *, exist_ok: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        if exist_ok:
            return
        raise
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a umask may have taken the owner's bits
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
