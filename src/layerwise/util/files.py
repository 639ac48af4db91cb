"""Atomic writes: a crash or Ctrl-C never leaves a half-written output behind.

Everything is written to a temporary file in the destination's directory and moved over the
destination with `os.replace`, which is atomic on POSIX file systems. The directory is synced
after the move so that a power loss cannot undo the rename of a file a reader already trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_file_mode() -> int:
    """The permissions `open()` would give a new file: mkstemp's private 0600 would hide
    reports and figures from the user's group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


DISK_FULL_BYTES = 1 << 20
"""Free space below which a failed write is put down to a full disk: some writers report it as
"unexpected pos" (torch's zip writer) or a short write rather than as ENOSPC."""


def write_failure(
    exc: BaseException, where: Path | None = None, nested: Iterable[BaseException] = ()
) -> str:
    """Why a write failed, in one line: the innermost OS error behind `exc` (or behind the
    `nested` errors a wrapper carries), else a full disk when `where`'s filesystem has next to no
    space left, else `exc`'s own last line."""
    for error in (exc, *nested):
        seen: BaseException | None = error
        while seen is not None:
            if isinstance(seen, OSError) and seen.strerror:
                at = f" ({seen.filename})" if seen.filename else ""
                return f"{seen.strerror}{at}"
            seen = seen.__cause__ or seen.__context__
    if where is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(where).free
            if free < DISK_FULL_BYTES:
                return f"no space left on the device of {where} ({free:,} bytes free)"
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
