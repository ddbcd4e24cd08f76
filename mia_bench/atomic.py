"""Atomic file writes for every output: a run that is interrupted never leaves a half-written file behind.

Also the one JSON encoding (numpy scalars and arrays) and the one way a figure is written.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def current_umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class WriteError(OSError):
    """An output that could not be written (a full disk, a missing permission): the message names the file and the
    free space on its file system."""


def write_error(path: Path, err: OSError) -> WriteError:
    where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        free = f"{shutil.disk_usage(where).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    return WriteError(err.errno, f"cannot write {path}: {err.strerror or err} ({free} on its file system)")


def make_dir(path: str | Path) -> Path:
    """``mkdir -p``, raising :class:`WriteError` (path and free space) when it cannot be created."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from None
    return path


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the block completes (temporary file in the same
    directory, fsync, ``os.replace``); on any error the temporary file is removed and ``path`` is untouched. A
    failed write raises :class:`WriteError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private; outputs follow the umask like any file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise write_error(path, err) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any, strict: bool = False) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists (recursively). ``strict``: NaN
    and infinities become None, as strict JSON (and every JSON reader outside Python) requires."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, strict) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return jsonable(obj.tolist(), strict)
    if strict and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any, strict: bool = False, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically (see :func:`jsonable` for ``strict``)."""
    atomic_write_text(path, json.dumps(jsonable(obj, strict), indent=indent, allow_nan=not strict))


def save_figure(fig, path: str | Path, dpi: int = 130) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
