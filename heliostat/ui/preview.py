"""Output previews of step checkpoints, bounded in size and time.

A checkpoint is previewed only if it is at most :data:`PREVIEW_MAX_BYTES` big, after
its checksum is verified. Arrow and Parquet checkpoints (tables, DataFrames) are
decoded in the server: nothing is unpickled. A pickled one is decoded in a short-lived
child process killed after :data:`PREVIEW_TIMEOUT` seconds: unpickling runs arbitrary
constructors, and a slow or hostile value must not hang or bloat the server. The
description: an Arrow table or DataFrame as its first rows with column types, a numpy array by
shape, dtype and first values, anything else as a truncated ``repr``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

from heliostat.storage.checkpoints import CheckpointRef, CheckpointStore

__all__ = ["PREVIEW_MAX_BYTES", "PREVIEW_TIMEOUT", "describe_value", "preview"]

PREVIEW_MAX_BYTES = 32 << 20
PREVIEW_TIMEOUT = 10.0
ROWS = 50
REPR_CHARS = 4000


def describe_value(value: Any) -> dict[str, Any]:
    """A JSON-able description of ``value`` for display (see the module docstring)."""
    mod = type(value).__module__.split(".")[0]
    if mod == "pyarrow" and hasattr(value, "schema") and hasattr(value, "slice"):
        head = value.slice(0, ROWS).to_pylist()
        cols = [(f.name, str(f.type)) for f in value.schema]
        return {
            "kind": "table",
            "shape": [value.num_rows, value.num_columns],
            "columns": [{"name": n, "type": t} for n, t in cols],
            "rows": [[_cell(r.get(n)) for n, _ in cols] for r in head],
        }
    if mod == "pandas" and hasattr(value, "dtypes") and hasattr(value, "head"):
        head = value.head(ROWS)
        return {
            "kind": "table",
            "shape": list(value.shape),
            "columns": [{"name": str(c), "type": str(t)} for c, t in value.dtypes.items()],
            "rows": [[_cell(v) for v in row] for row in head.itertuples(index=False)],
        }
    if mod == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
        flat = value.reshape(-1)[:ROWS]
        return {
            "kind": "array",
            "shape": list(value.shape),
            "dtype": str(value.dtype),
            "text": repr(flat.tolist())[:REPR_CHARS],
        }
    text = repr(value)
    return {
        "kind": "repr",
        "type": f"{type(value).__module__}.{type(value).__qualname__}",
        "text": text[:REPR_CHARS],
        "truncated": len(text) > REPR_CHARS,
    }


def _cell(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 200 else text[:199] + "…"


def preview(ref: CheckpointRef, storage_url: str) -> dict[str, Any]:
    """Describe the checkpoint ``ref`` names, decoded in a bounded child process.

    Returns a description (see :func:`describe_value`) or ``{"kind": "unavailable",
    "reason": ...}`` when it is too big, too slow, or cannot be read.
    """
    if ref.size > PREVIEW_MAX_BYTES:
        return {
            "kind": "unavailable",
            "reason": f"the checkpoint is {ref.size} bytes; previews read at most "
            f"{PREVIEW_MAX_BYTES} (download it instead)",
        }
    if ref.data is None and CheckpointStore(storage_url).path_within(ref.location) is None:
        return {
            "kind": "unavailable",
            "reason": "the checkpoint is outside this UI's checkpoint store",
        }
    if ref.format in ("arrow", "parquet"):
        # Columnar formats are decoded without unpickling anything: here, at once.
        from heliostat.exceptions import CorruptCheckpointError

        try:
            return describe_value(CheckpointStore(storage_url).read(ref))
        except (CorruptCheckpointError, OSError, ValueError) as exc:
            return {"kind": "unavailable", "reason": str(exc).splitlines()[0]}
    request = {
        "storage": storage_url,
        "location": ref.location,
        "checksum": ref.checksum,
        "format": ref.format,
        "size": ref.size,
        "data": base64.b64encode(ref.data).decode() if ref.data is not None else None,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "heliostat.ui.preview"],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=PREVIEW_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"kind": "unavailable", "reason": f"decoding took over {PREVIEW_TIMEOUT:g} s"}
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return {"kind": "unavailable", "reason": lines[-1] if lines else "the reader failed"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _main() -> None:
    req = json.loads(sys.stdin.buffer.read())
    data = base64.b64decode(req["data"]) if req["data"] is not None else None
    ref = CheckpointRef(
        location=req["location"],
        checksum=req["checksum"],
        format=req["format"],
        size=req["size"],
        data=data,
    )
    value = CheckpointStore(req["storage"]).read(ref)
    sys.stdout.write(json.dumps(describe_value(value)))


if __name__ == "__main__":
    _main()
