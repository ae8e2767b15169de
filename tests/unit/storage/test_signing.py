"""The installation key and HMAC signatures: round trips, tampering, key sources."""

from __future__ import annotations

import base64
import multiprocessing
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.exceptions import StorageError, UnauthenticatedDataError
from heliostat.storage import signing
from heliostat.storage.signing import (
    KEY_FILENAME,
    SECRET_KEY_ENV,
    SIGNATURE_PREFIX,
    Signer,
    default_key_file,
    default_signer,
)

KEY = bytes(range(32))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``HELIOSTAT_HOME`` that does not exist yet, and no key in the environment."""
    path = tmp_path / "hs-home"
    monkeypatch.setenv("HELIOSTAT_HOME", str(path))
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    yield path


# --- signatures ---


def test_sign_then_verify_round_trips() -> None:
    signer = Signer(KEY)
    sig = signer.sign("workflow-dag", "etl", b"\x80\x05dag bytes")

    assert sig.startswith(SIGNATURE_PREFIX) and len(sig) == len(SIGNATURE_PREFIX) + 64
    assert signer.verify(sig, "workflow-dag", "etl", b"\x80\x05dag bytes")
    assert signer.sign("workflow-dag", "etl", b"\x80\x05dag bytes") == sig  # deterministic


@pytest.mark.parametrize("index", range(5))
def test_changing_any_part_fails_verification(index: int) -> None:
    signer = Signer(KEY)
    parts: list[bytes | str] = ["step-checkpoint", "etl", "load", "file:///c/x.pkl", "sha256:ab"]
    sig = signer.sign(*parts)
    tampered = list(parts)
    tampered[index] = str(parts[index]) + "x"

    assert not signer.verify(sig, *tampered)


def test_parts_split_differently_sign_differently() -> None:
    signer = Signer(KEY)
    sig = signer.sign("ab", "c")

    assert not signer.verify(sig, "a", "bc")
    assert not signer.verify(sig, "abc")
    assert not signer.verify(sig, "ab", "c", "")
    assert signer.sign("ab", "c") != signer.sign("a", "bc")


def test_another_key_or_a_malformed_signature_fails_verification() -> None:
    sig = Signer(KEY).sign("x")

    assert not Signer(bytes(32)).verify(sig, "x")
    for bad in (None, "", "x", sig.replace(SIGNATURE_PREFIX, "hmac-md5:"), sig[:-1], sig + "0"):
        assert not Signer(KEY).verify(bad, "x")
    assert not Signer(KEY).verify("hmac-sha256:\udcff", "x")  # no crash on odd text


def test_str_parts_sign_as_utf8_and_other_types_are_refused() -> None:
    signer = Signer(KEY)
    assert signer.sign("é") == signer.sign("é".encode()) == signer.sign(memoryview("é".encode()))
    with pytest.raises(TypeError, match="int"):
        signer.sign("attempt", 1)  # type: ignore[arg-type]


def test_signer_never_shows_its_key() -> None:
    signer = Signer(KEY, source="the key file /k")
    assert KEY.hex() not in repr(signer) and "the key file /k" in repr(signer)


def test_a_short_key_is_refused_by_signer() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Signer(b"short")


def test_check_raises_unauthenticated_data_naming_what_where_and_the_key(home: Path) -> None:
    signer = Signer(KEY, source="the key file /elsewhere/secret.key")
    sig = signer.sign("workflow-dag", "etl", b"dag")
    signer.check(sig, "workflow-dag", "etl", b"dag", what="the DAG", origin="db")  # no raise

    with pytest.raises(UnauthenticatedDataError) as info:
        signer.check(
            sig,
            "workflow-dag",
            "etl",
            b"evil",
            what="the compiled DAG of workflow 'etl'",
            origin="the metadata database /db/heliostat.db",
        )
    err = info.value
    message = str(err)
    assert isinstance(err, StorageError)
    assert "the compiled DAG of workflow 'etl'" in message
    assert "/db/heliostat.db" in message
    assert "not signed with this installation's key" in message
    assert SECRET_KEY_ENV in message and str(home / KEY_FILENAME) in message
    assert "share one key" in message
    assert (err.what, err.origin, err.key_source) == (
        "the compiled DAG of workflow 'etl'",
        "the metadata database /db/heliostat.db",
        "the key file /elsewhere/secret.key",
    )
    with pytest.raises(UnauthenticatedDataError, match="carries no signature"):
        signer.check(None, "x", what="the DAG", origin="db")


def test_a_refusal_names_the_key_file_the_key_came_from(home: Path) -> None:
    signer = default_signer()
    assert signer.key_file == home / KEY_FILENAME

    with pytest.raises(UnauthenticatedDataError) as info:
        signer.check(Signer(KEY).sign("x"), "x", what="the DAG", origin="db")
    assert f"the key file {home / KEY_FILENAME}" in str(info.value)
    assert info.value.key_source == f"the key file {home / KEY_FILENAME}"


def test_unauthenticated_data_error_survives_pickling() -> None:
    err = UnauthenticatedDataError("refused", what="w", origin="o", key_source="k")
    back = pickle.loads(pickle.dumps(err))

    assert type(back) is UnauthenticatedDataError and str(back) == "refused"
    assert (back.what, back.origin, back.key_source) == ("w", "o", "k")


# --- the key file ---


def test_key_file_is_created_once_private_and_reused(home: Path) -> None:
    signer = default_signer()
    key_file = home / KEY_FILENAME

    assert default_key_file() == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert len(bytes.fromhex(key_file.read_text())) == 32
    assert signer.source == f"the key file {key_file}"
    assert sorted(p.name for p in home.iterdir()) == [KEY_FILENAME]  # no temporary left
    assert default_signer() is signer  # cached
    assert Signer(bytes.fromhex(key_file.read_text())).verify(signer.sign("x"), "x")


def _sign_after_barrier(
    barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    barrier.wait(timeout=30)
    out.put(default_signer().sign("same key?"))


def test_processes_creating_the_key_at_once_all_get_the_same_key(home: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier = ctx.Barrier(n)
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_sign_after_barrier, args=(barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        signatures = {out.get(timeout=60) for _ in range(n)}
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * n
    assert len(signatures) == 1
    assert signatures == {default_signer().sign("same key?")}
    assert sorted(p.name for p in home.iterdir()) == [KEY_FILENAME]
    assert stat.S_IMODE((home / KEY_FILENAME).stat().st_mode) == 0o600


def test_a_creator_that_loses_the_race_keeps_the_winners_key(home: Path) -> None:
    home.mkdir(mode=0o700)
    key_file = home / KEY_FILENAME
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)

    signing._create_key_file(key_file)  # as if it had found no file a moment ago

    assert key_file.read_text() == KEY.hex() + "\n"
    assert sorted(p.name for p in home.iterdir()) == [KEY_FILENAME]
    assert default_signer().verify(Signer(KEY).sign("x"), "x")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_file_open_to_others_is_refused_with_the_chmod_to_run(home: Path, mode: int) -> None:
    default_signer()
    key_file = home / KEY_FILENAME
    key_file.chmod(mode)

    with pytest.raises(StorageError) as info:
        default_signer()  # the cached key is re-checked: the chmod changed the file
    message = str(info.value)
    assert str(key_file) in message and f"chmod 600 {key_file}" in message
    assert f"{mode:04o}" in message


def test_a_key_file_owned_by_another_user_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_signer()
    key_file = home / KEY_FILENAME
    owner = key_file.stat().st_uid
    monkeypatch.setattr(signing.os, "geteuid", lambda: owner + 1)

    with pytest.raises(StorageError, match=rf"belongs to uid {owner}, not to this user"):
        signing._load_key(key_file)


def test_a_replaced_key_file_is_read_again(home: Path) -> None:
    first = default_signer()
    key_file = home / KEY_FILENAME
    replacement = home / "new.key"
    replacement.write_text(bytes(range(100, 132)).hex())
    replacement.chmod(0o600)
    os.replace(replacement, key_file)

    second = default_signer()
    assert second is not first
    assert second.verify(Signer(bytes(range(100, 132))).sign("x"), "x")


def test_changing_heliostat_home_changes_the_key(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = default_signer()
    monkeypatch.setenv("HELIOSTAT_HOME", str(tmp_path / "other-home"))
    second = default_signer()

    assert second.source == f"the key file {tmp_path / 'other-home' / KEY_FILENAME}"
    assert not second.verify(first.sign("x"), "x")


# --- the key from the environment ---


@pytest.mark.parametrize(
    "encode",
    [
        bytes.hex,
        lambda k: base64.urlsafe_b64encode(k).decode(),
        lambda k: base64.b64encode(k).decode(),
    ],
    ids=["hex", "urlsafe-base64", "base64"],
)
def test_environment_key_is_used_when_set(
    home: Path, monkeypatch: pytest.MonkeyPatch, encode: object
) -> None:
    key = bytes(range(200, 240))  # 40 bytes; base64 with '-' / '+' characters
    monkeypatch.setenv(SECRET_KEY_ENV, encode(key))  # type: ignore[operator]

    signer = default_signer()
    assert signer.source == f"the environment variable {SECRET_KEY_ENV}"
    assert signer.verify(Signer(key).sign("x"), "x")
    assert not home.exists()  # no key file made when the environment has the key


@pytest.mark.parametrize("value", [bytes(31).hex(), base64.b64encode(bytes(16)).decode(), "zz"])
def test_a_short_or_garbled_environment_key_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, value)

    with pytest.raises(StorageError) as info:
        default_signer()
    message = str(info.value)
    assert SECRET_KEY_ENV in message and "token_hex(32)" in message
    assert value not in message  # never echo a secret, even a bad one


def test_environment_key_change_takes_effect_at_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, bytes(32).hex())
    first = default_signer()
    monkeypatch.setenv(SECRET_KEY_ENV, bytes(range(32)).hex())
    second = default_signer()
    monkeypatch.delenv(SECRET_KEY_ENV)
    third = default_signer()

    assert len({first.sign("x"), second.sign("x"), third.sign("x")}) == 3
    assert third.source.startswith("the key file")
