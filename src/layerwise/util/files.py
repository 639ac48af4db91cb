"""Atomic writes: a crash or Ctrl-C never leaves a half-written output behind.

Everything is written to a temporary file in the destination's directory and moved over the
destination with `os.replace`, which is atomic on POSIX file systems. The directory is synced
after the move so that a power loss cannot undo the rename of a file a reader already trusted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from layerwise.util.errors import UserError


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


WRITE_ERRORS = {
    errno.EACCES: "make it writable or choose another output path",
    errno.EPERM: "make it writable or choose another output path",
    errno.EROFS: "the file system is read-only; choose another output path",
    errno.ENOSPC: "the disk is full; free space or choose another output path",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another output path",
}
"""Errors from writing outputs that are the user's to fix, not bugs, and what to do about each:
the CLI prints a message for them instead of a trace, and `check_output` gives the same advice."""


def check_output(
    path: str | Path, what: str, kind: Literal["file", "directory"], example: str = "out.png"
) -> Path:
    """Refuse, before any work, an output path that cannot be written: a UserError naming `what`
    (the flag or config key), the path, why and what to do. Every command that writes checks its
    output with this, so a run is not trained or a figure drawn only to fail at the end.

    A file output must not be a directory (`example` shows the name to give instead) or a
    device; a directory output must not be a file. Neither may lie under a regular file, and the
    nearest existing directory above it must accept new files (checked with a probe file that
    is removed at once; nothing else is created).
    """
    path = existing = Path(path)
    try:
        existing = _writable_place(path, what, kind, example)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".layerwise-probe-")
    except OSError as exc:  # also a directory on the way that cannot be searched
        reason = "it does not accept new files" if exc.errno == errno.ENOENT else exc.strerror
        advice = WRITE_ERRORS.get(exc.errno or 0, "choose another output path")
        raise UserError(
            f"{what} {path}: cannot create files in {existing} ({reason}); {advice}"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _writable_place(path: Path, what: str, kind: str, example: str) -> Path:
    """The nearest existing directory that writing `path` creates things in, after refusing a
    path of the wrong kind or one under a regular file."""
    if kind == "file" and path.is_dir():
        raise UserError(
            f"{what} {path} is a directory; give the path of a file to write, e.g. {path / example}"
        )
    if kind == "file" and path.exists() and not path.is_file():
        raise UserError(f"{what} {path} is not a regular file; choose another output path")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory; choose a directory path")
    existing = path if kind == "directory" and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{what} {path}: {existing} is a file, not a directory, so nothing can be written "
            "under it; choose another output path"
        )
    return existing
