"""One process per directory: the second is refused naming the first; a lock whose holder is
gone (killed, requeued by SLURM, silent for too long) is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from layerwise.runs.lock import LOCK_FILE, DirectoryLock, Holder, abandoned, this_process
from layerwise.util.errors import UserError


def write_holder(directory: Path, holder: Holder, age_s: float = 0.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    path.write_text(json.dumps(asdict(holder)))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def other_host(**changes: object) -> Holder:
    me = this_process()
    return replace(me, host=f"not-{me.host}", pid=12345, **changes)  # type: ignore[arg-type]


def test_a_second_holder_is_refused_with_the_first_named(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path / "run", what="run directory"):
        with pytest.raises(UserError) as refused:
            DirectoryLock(tmp_path / "run").__enter__()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "since" in message and "in use by" in message
    with DirectoryLock(tmp_path / "run"):  # released on exit
        pass
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_lock_is_released_after_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), DirectoryLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    write_holder(tmp_path, replace(this_process(), pid=int(gone.stdout)))
    with DirectoryLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "no longer runs" in capsys.readouterr().err


def test_a_live_holder_on_another_host_is_respected_until_its_heartbeat_stops(
    tmp_path: Path,
) -> None:
    write_holder(tmp_path, other_host(slurm_job=None), age_s=10)
    with pytest.raises(UserError, match="pid 12345 on not-"):
        DirectoryLock(tmp_path, stale_after_s=60).__enter__()
    write_holder(tmp_path, other_host(slurm_job=None), age_s=120)
    with DirectoryLock(tmp_path, stale_after_s=60):
        pass


def test_a_requeued_slurm_job_takes_over_its_own_lock_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_holder(tmp_path, other_host(slurm_job="4242"))
    with DirectoryLock(tmp_path):
        pass
    write_holder(tmp_path, other_host(slurm_job="999"))
    with pytest.raises(UserError, match="SLURM job 999"):
        DirectoryLock(tmp_path).__enter__()


def test_the_holder_refreshes_its_heartbeat(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path, heartbeat_s=0.05):
        path = tmp_path / LOCK_FILE
        past = time.time() - 1000
        os.utime(path, (past, past))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


HOLD = """
import sys, time
from layerwise.runs.lock import DirectoryLock
with DirectoryLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_holder_killed_with_sigkill_leaves_a_lock_that_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        DirectoryLock(tmp_path).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with DirectoryLock(tmp_path):
        pass


def test_a_lending_lock_lets_this_process_lock_again_and_keeps_others_out(
    tmp_path: Path,
) -> None:
    """A search trial holds its directory across its rungs; each rung's `train` locks it too."""
    with DirectoryLock(tmp_path / "trial", lend=True):
        with DirectoryLock(tmp_path / "trial", what="run directory"):
            assert (tmp_path / "trial" / LOCK_FILE).exists()
        assert (tmp_path / "trial" / LOCK_FILE).exists(), "the borrower does not release it"
        holder = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "trial")],
                                capture_output=True, text=True)  # fmt: skip
        assert holder.returncode != 0 and f"pid {os.getpid()}" in holder.stderr
    assert not (tmp_path / "trial").exists()
    with DirectoryLock(tmp_path / "run"), pytest.raises(UserError, match="in use by"):
        DirectoryLock(tmp_path / "run").__enter__()  # without lend, even this process is refused


def test_a_lock_left_by_a_dead_holder_is_recognised_as_abandoned(tmp_path: Path) -> None:
    assert abandoned(tmp_path) is None  # no lock file: released, or never taken
    with DirectoryLock(tmp_path):
        assert abandoned(tmp_path) is None  # a live holder
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    write_holder(tmp_path, replace(this_process(), pid=int(gone.stdout)))
    reason = abandoned(tmp_path)
    assert (
        reason is not None and f"pid {gone.stdout.strip()}" in reason and "no longer runs" in reason
    )
    write_holder(tmp_path, other_host(slurm_job=None), age_s=10)
    assert abandoned(tmp_path) is None  # another host, heartbeat fresh: it may still run
