"""`data prepare` and its processes (issue 21): SIGTERM during BPE training stops it within
seconds, no child process outlives a `data prepare` killed with SIGKILL, and a later prepare
removes the temporary folder such a run left, but never one whose owner still runs.

Real subprocesses where the fault is about processes; their stderr goes to a file, since a
surviving child would hold a pipe open and hang the test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import layerwise.data.prepare as data
from helpers import SHARED, write_token_dir
from layerwise.data.meta import read_meta
from layerwise.data.prepare import prepare
from layerwise.util.errors import UserError

GPT2_DIR = SHARED / "tokenizers" / "gpt2"
MIX = SHARED / "corpora" / "mix.jsonl.gz"  # 122 MB of text: BPE training takes a minute or more

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
needs_mix = pytest.mark.skipif(not MIX.is_file(), reason=f"shared corpus {MIX} not found")


def write_corpus(path: Path, documents: int = 6, words: int = 20) -> Path:
    text = " ".join(f"word{i} and some ordinary prose" for i in range(words))
    path.write_text("".join(json.dumps({"text": f"{d} {text}"}) + "\n" for d in range(documents)))
    return path


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, theirs, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init, which may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until_gone(pids: set[int], seconds: float) -> list[int]:
    """The pids still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while any(map(is_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(filter(is_running, pids))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture()
def live_pid() -> Iterator[int]:
    """The pid of another process that runs for the whole test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


class Prepare:
    """`python -m layerwise data prepare ...` in `work`, stderr in a file."""

    def __init__(self, work: Path, args: list[str]) -> None:
        self.work = work
        self.log = work.parent / f"{work.name}-stderr.txt"
        command = [sys.executable, "-m", "layerwise", "data", "prepare", *args, "--out", "out"]
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(command, cwd=work, stderr=stderr)
        self.children: set[int] = set()

    def wait_for(self, ready: str, timeout: float = 60) -> None:
        """Until the run is tokenizing (train.bin growing) or training (its folder made)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"not {ready} after {timeout} s"
            tmp = list(self.work.glob(".out.tmp-*"))
            if ready == "tokenizing" and any(
                (d / "train.bin").exists() and (d / "train.bin").stat().st_size for d in tmp
            ):
                break
            if ready == "training" and tmp:
                assert not any((d / "train.bin").exists() for d in tmp), "training is over"
                break
            time.sleep(0.05)
        time.sleep(1.0)  # well into it: workers busy, the trainer in its native code
        assert self.process.poll() is None, self.log.read_text()
        self.children = descendants(self.process.pid)

    def kill_all(self) -> None:
        self.process.kill()
        self.process.wait()
        for pid in filter(is_running, self.children):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@linux_only
@needs_mix
def test_sigterm_during_bpe_training_stops_within_seconds(tmp_path: Path) -> None:
    """The trainer's native merge loop held SIGTERM for as long as it ran (38 s in the report,
    past SLURM's 30 s before SIGKILL): training runs in a child process the parent kills."""
    work = tmp_path / "work"
    work.mkdir()
    run = Prepare(work, ["--input", str(MIX), "--tokenizer", "bpe:32000", "--workers", "1"])
    try:
        run.wait_for("training")
        signalled = time.monotonic()
        run.process.send_signal(signal.SIGTERM)
        try:
            status = run.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            status = None
        seconds = time.monotonic() - signalled
        assert status == 143, run.log.read_text()
        assert seconds < 5, f"took {seconds:.1f} s to stop after SIGTERM"
        assert wait_until_gone(run.children, 5) == [], "the trainer outlived the run"
    finally:
        run.kill_all()
    assert run.log.read_text().splitlines() == [
        "layerwise: SIGTERM received: stopped, and removed the unfinished output"
    ]
    assert os.listdir(work) == []


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("phase", ["tokenizing", "training"])
def test_sigkill_leaves_no_process_and_the_next_prepare_cleans_up(
    tmp_path: Path, phase: str
) -> None:
    """kill -9 of `data prepare`: its workers (or its BPE trainer) end with it, and the next
    prepare to the same --out removes the temporary folder it could not."""
    work = tmp_path / "work"
    work.mkdir()
    if phase == "tokenizing":
        write_corpus(work / "big.jsonl", documents=400, words=2000)
        args = ["--input", "big.jsonl", "--tokenizer", str(GPT2_DIR), "--workers", "2"]
    else:
        if not MIX.is_file():
            pytest.skip(f"shared corpus {MIX} not found")
        args = ["--input", str(MIX), "--tokenizer", "bpe:32000", "--workers", "1"]
    run = Prepare(work, args)
    try:
        run.wait_for(phase)
        assert run.children, "the worker or trainer processes should be running"
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(timeout=10)
        assert wait_until_gone(run.children, 5) == [], "child processes outlived the run"
    finally:
        run.kill_all()
    assert len(list(work.glob(".out.tmp-*"))) == 1  # what SIGKILL gives no chance to remove
    small = write_corpus(work / "small.jsonl")
    prepare([small], str(GPT2_DIR), work / "out", val_tokens=0, workers=1)
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["out", "small.jsonl", *(["big.jsonl"] if phase == "tokenizing" else [])]
    )
    assert read_meta(work / "out").splits["train"].documents == 6


def test_only_folders_of_gone_owners_are_removed(
    tmp_path: Path, live_pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A temporary folder is removed only when its name says it is this output's, made on this
    host by a process that has ended: never one of a prepare that still runs (here or on
    another host sharing the disk), of another output, or one whose owner cannot be told."""
    source = write_corpus(tmp_path / "c.jsonl")
    host, gone = data._HOST, dead_pid()
    names = {
        f".out.tmp-{host}-{gone}-0123abcd": False,
        f".out.old-{host}-{gone}-0123abce": False,
        f".out.tmp-{host}-{live_pid}-0123abcf": True,
        f".out.tmp-{host}x-{gone}-0123abd0": True,
        f".out.tmp-other-node-{gone}-0123abd1": True,
        f".outs.tmp-{host}-{gone}-0123abd2": True,
        f".out.tmp-{host}-{gone}-0123abd": True,
        ".out.tmp-0123abd3": True,
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.bin").write_bytes(b"partial")
    prepare([source], str(GPT2_DIR), tmp_path / "out", val_tokens=0, workers=1)
    kept = sorted(name for name, keep in names.items() if keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.jsonl", "out", *kept])
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning == (
        f"layerwise: warning: left {tmp_path / '.out.tmp-0123abd3'} alone: a temporary folder "
        "of an earlier `data prepare` whose process cannot be told; remove it yourself if no "
        "`data prepare` of this --out still runs"
    )


def test_output_a_killed_replace_moved_aside_is_put_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 between moving the earlier output aside and renaming the new one into place:
    the next prepare puts the earlier one back (it is the user's data), and says so."""
    source = write_corpus(tmp_path / "c.jsonl")
    host, gone = data._HOST, dead_pid()
    trash = tmp_path / f".out.old-{host}-{gone}-0123abcd"
    earlier = write_token_dir(trash / "out", {"train": np.arange(8), "val": np.arange(2)}, 61)
    before = {name: (earlier / name).read_bytes() for name in os.listdir(earlier)}
    (tmp_path / f".out.tmp-{host}-{gone}-0123abce").mkdir()
    with pytest.raises(UserError, match="already exists"):
        prepare([source], str(GPT2_DIR), tmp_path / "out", val_tokens=0, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "out"]
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before
    assert f"put back {tmp_path / 'out'}" in capsys.readouterr().err


def test_bad_input_while_training_bpe_stops_the_trainer(tmp_path: Path) -> None:
    """An error reading the inputs during the training pass: the usual message naming the file
    and line, the trainer process gone, nothing left on disk."""
    source = tmp_path / "c.jsonl"
    source.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(UserError, match=r"c\.jsonl:2"):
        prepare([source], "bpe:300", tmp_path / "out", val_tokens=0, workers=1)
    assert multiprocessing.active_children() == []
    assert os.listdir(tmp_path) == ["c.jsonl"]


@pytest.mark.slow
@linux_only
@needs_mix
def test_trainer_killed_from_outside_is_a_clear_error(tmp_path: Path) -> None:
    """The trainer killed by someone else (the kernel's OOM killer): exit 2, one line."""
    work = tmp_path / "work"
    work.mkdir()
    run = Prepare(work, ["--input", str(MIX), "--tokenizer", "bpe:32000", "--workers", "1"])
    try:
        run.wait_for("training")
        trainers = [
            pid
            for pid in run.children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(trainers) == 1, run.children
        os.kill(trainers[0], signal.SIGKILL)
        assert run.process.wait(timeout=10) == 2
    finally:
        run.kill_all()
    (line,) = run.log.read_text().splitlines()
    assert line.startswith(
        "layerwise: error: the BPE training process stopped unexpectedly (killed by SIGKILL"
    )
    assert os.listdir(work) == []
