"""One process per run directory: a lock file that names its holder, and is taken over safely
when the holder is gone.

Two `train` (or `compare`, `search`) processes writing one directory corrupt each other's
checkpoints and logs, so the second is refused at once with a message naming the first (host,
pid, since when, command). The lock is a small JSON file created with O_EXCL, which is atomic on
local filesystems and on NFS v3+. A lock is stale, and taken over, when its holder is known to
be gone:

- on the same host, its pid no longer runs (kill -9, a crash, a reboot);
- it was taken by an earlier incarnation of the same SLURM job (a requeued job keeps its job
  id, and SLURM never runs one job twice at once), whatever the node;
- its heartbeat is older than `stale_after_s`: the holder refreshes the file's time every
  `heartbeat_s` seconds, so a holder on another host that died without a word is recognised
  after a few minutes.

Taking over replaces the file atomically and then reads it back after a moment: of two
processes taking over at once, the one whose claim was overwritten sees the other's and
refuses, so at most one proceeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text

LOCK_FILE = ".layerwise.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_SETTLE_S = 0.05  # how long a taker waits before reading its claim back
_LENT: set[str] = set()
"""Lock files this process holds with `lend=True`: other locks of them in this process pass."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in the lock file."""

    host: str
    pid: int
    since: str
    command: str
    slurm_job: str | None = None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"pid {self.pid} on {self.host}{job} since {self.since} ({self.command})"


def this_process() -> Holder:
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        since=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        command=" ".join(["layerwise", *sys.argv[1:]]) if sys.argv else "python",
        slurm_job=os.environ.get("SLURM_JOB_ID"),
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def stale_reason(
    holder: Holder, age_s: float, me: Holder, stale_after_s: float = STALE_AFTER_S
) -> str | None:
    """Why `holder` is known to be gone (None: it may still run)."""
    if holder.host == me.host and holder.pid != me.pid and not pid_alive(holder.pid):
        return f"pid {holder.pid} no longer runs on {holder.host}"
    if holder.slurm_job and holder.slurm_job == me.slurm_job and holder.pid != me.pid:
        return f"it was taken by an earlier run of SLURM job {holder.slurm_job}"
    if age_s > stale_after_s:
        return f"its holder has not refreshed it for {age_s:.0f} s"
    return None


def read_holder(path: Path) -> Holder | None:
    """The holder written in `path`; None if the file is gone or unreadable (mid-write)."""
    try:
        return Holder(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def lock_age(path: Path) -> float | None:
    """Seconds since the lock file's last heartbeat; None once it is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


class DirectoryLock:
    """`with DirectoryLock(directory, what="run directory"):` holds `directory` for this process.

    Raises UserError naming the holder when another live process has it. A stale lock is taken
    over with a note on stderr. The lock is released on exit, also after an exception; a
    process killed with SIGKILL leaves it behind, to be taken over as stale.

    With `lend=True`, other `DirectoryLock`s of the same directory in this process pass while
    this one is held: a search trial holds its directory across all its rungs, and each rung's
    `train` locks it again. Without it, a second lock is refused even in the same process.
    """

    def __init__(
        self,
        directory: str | Path,
        what: str = "directory",
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        lend: bool = False,
    ) -> None:
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_FILE
        self._key = os.path.abspath(self.path)
        self.lend = lend
        self._borrowed = False
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.me = this_process()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._depth = 0
        self._created = False

    def __enter__(self) -> DirectoryLock:
        if self._depth == 0 and self._key in _LENT:
            self._borrowed = True  # held by a lender in this process, which releases it
        elif self._depth == 0:
            self._created = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self._acquire()
            except BaseException:
                self._remove_if_created()
                raise
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            if self.lend:
                _LENT.add(self._key)
        self._depth += 1  # re-entrant: a comparison's own helpers may lock again
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth or self._borrowed:
            self._borrowed = self._borrowed and self._depth > 0
            return
        _LENT.discard(self._key)
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if read_holder(self.path) == self.me:
            self.path.unlink(missing_ok=True)
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        """A directory made only to hold the lock goes with it: a refused or failed command
        leaves no trace."""
        if self._created:
            with contextlib.suppress(OSError):  # not empty: the command wrote something
                self.directory.rmdir()

    def _acquire(self) -> None:
        text = json.dumps(asdict(self.me))
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_if_stale(text):
                    return
                continue
            except OSError as exc:
                raise UserError(f"cannot lock {self.directory} ({exc.strerror}): {exc}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        self._refuse(read_holder(self.path))

    def _take_over_if_stale(self, text: str) -> bool:
        holder = read_holder(self.path)
        if holder is None:
            time.sleep(_SETTLE_S)  # a holder in the middle of writing it: look again
            holder = read_holder(self.path)
            if holder is None:
                return False  # gone in between: try to create it again
        age = lock_age(self.path)
        if age is None:
            return False
        reason = stale_reason(holder, age, self.me, self.stale_after_s)
        if reason is None:
            self._refuse(holder)
        atomic_write_text(self.path, text)
        time.sleep(_SETTLE_S)
        if read_holder(self.path) != self.me:
            self._refuse(read_holder(self.path))  # another process took it over first
        print(
            f"layerwise: took over the lock of {self.directory} from {holder.describe()}: {reason}",
            file=sys.stderr,
        )
        return True

    def _refuse(self, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another process"
        raise UserError(
            f"{self.what} {self.directory} is in use by {who}; wait for it to finish or stop it "
            f"(a lock left by a process that is gone is taken over by itself; if you know the "
            f"holder is gone, delete {self.path})"
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return  # the directory went away; the run will say so itself


def abandoned(directory: Path) -> str | None:
    """Why the holder of `directory`'s lock is known to be gone; None when there is no lock
    file or its holder may still run. A lock that was released is no lock file at all: only a
    holder that died holding it leaves one behind."""
    path = directory / LOCK_FILE
    holder, age = read_holder(path), lock_age(path)
    if holder is None or age is None:
        return None
    reason = stale_reason(holder, age, this_process())
    return None if reason is None else f"{holder.describe()} held it and is gone: {reason}"


def is_vacant(directory: Path) -> bool:
    """No directory, or one holding nothing but its lock (what a locked new run looks like)."""
    return not directory.is_dir() or all(p.name == LOCK_FILE for p in directory.iterdir())
