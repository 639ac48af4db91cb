"""`data prepare` and its output directory: what --overwrite may replace, failed writes, SIGTERM.

The output is built in a hidden sibling directory and renamed into place, so whatever stops a
run (a refusal, a full disk, a batch scheduler's SIGTERM) must leave the parent directory as
it was: no `.OUT.tmp-*` folder, no half-written OUT, no worker processes.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import re
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
from layerwise.cli import main
from layerwise.data.meta import read_meta
from layerwise.data.prepare import prepare
from layerwise.util.errors import UserError

GPT2_DIR = SHARED / "tokenizers" / "gpt2"


def write_corpus(path: Path, documents: int = 6, words: int = 20) -> Path:
    text = " ".join(f"word{i} and some ordinary prose" for i in range(words))
    path.write_text("".join(json.dumps({"text": f"{d} {text}"}) + "\n" for d in range(documents)))
    return path


def listing(directory: Path) -> list[str]:
    """Every path under `directory`, hidden ones included, relative to it."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def no_reading(*args: object) -> None:
    raise AssertionError("the inputs were read before the output directory was checked")


EARLIER = "<an earlier output>"  # a layout entry: write_token_dir's train.bin, val.bin, meta.json


def make_layout(root: Path, layout: dict[str, str]) -> None:
    """Files (a corpus, or the given text) and earlier `data prepare` outputs under root."""
    for name, content in layout.items():
        path = root / name
        if content == EARLIER:
            write_token_dir(path, {"train": np.arange(8), "val": np.arange(2)}, 61)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if content:
            path.write_text(content)
        else:
            write_corpus(path)


FOREIGN_META = '{"format": "other-tool/3", "splits": {}}'


@pytest.mark.parametrize(
    ("layout", "inputs", "tokenizer", "out", "message"),
    [
        ({"data/corpus.jsonl": "", "data/meta.json": ""}, ["data/corpus.jsonl"], None, "data",
         "input data/corpus.jsonl lies inside"),
        ({"data/raw/c.jsonl": "", "data/meta.json": ""}, ["data/raw"], None, "data",
         "input data/raw/c.jsonl lies inside"),
        ({"c.jsonl": "", "meta.json": ""}, ["c.jsonl"], None, ".",
         "is (or contains) the current directory"),
        ({"c.jsonl": "", "work/meta.json": ""}, ["c.jsonl"], None, "work/..",
         "the current directory"),
        ({"c.jsonl": "", "notes/todo.txt": ""}, ["c.jsonl"], None, "notes",
         "holds no prepared data"),
        # issue 21: a tokenizer inside OUT is an input too, file or GPT-2 directory
        ({"c.jsonl": "", "data": EARLIER, "data/tokenizer.json": "{}"}, ["c.jsonl"],
         "data/tokenizer.json", "data", "tokenizer data/tokenizer.json lies inside"),
        ({"c.jsonl": "", "data": EARLIER, "data/gpt2/vocab.bpe": "", "data/gpt2/encoder.json": ""},
         ["c.jsonl"], "data/gpt2", "data", "tokenizer data/gpt2 lies inside"),
        # issue 21: a meta.json that `data prepare` did not write makes nothing a dataset
        ({"c.jsonl": "", "configs/meta.json": "{}", "configs/a.yaml": "x: 1",
          "configs/b.yaml": "y: 2"}, ["c.jsonl"], None, "configs",
         "holds no prepared data (no meta.json written by `data prepare`; it holds a.yaml, "
         "b.yaml, meta.json)"),
        ({"c.jsonl": "", "configs/meta.json": FOREIGN_META, "configs/a.yaml": "x: 1"},
         ["c.jsonl"], None, "configs", "holds no prepared data"),
        ({"c.jsonl": "", "configs/meta.json": "not json", "configs/a.yaml": "x: 1"},
         ["c.jsonl"], None, "configs", "holds no prepared data"),
        # issue 21: what a user added to an earlier output is named, not deleted
        ({"c.jsonl": "", "data": EARLIER, "data/notes.txt": "mine"}, ["c.jsonl"], None, "data",
         "holds an earlier `data prepare` output but also what it did not write: notes.txt;"),
        ({"c.jsonl": "", "data": EARLIER, "data/extra/run.log": "", "data/.hidden": "",
          "data/z1": "", "data/z2": "", "data/z3": "", "data/z4": ""}, ["c.jsonl"], None,
         "data", "did not write: .hidden, extra, z1, z2, z3 and 1 more;"),
    ],
    ids=[
        "input-inside-out", "out-holds-input-dir", "out-is-cwd", "out-is-cwd-dotdot", "not-ours",
        "tokenizer-json-inside-out", "tokenizer-dir-inside-out", "meta-json-not-ours",
        "meta-json-other-format", "meta-json-not-json", "user-file-in-earlier-output",
        "user-files-and-dir-in-earlier-output",
    ],
)  # fmt: skip
def test_overwrite_refuses_to_delete_what_it_did_not_write(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: dict[str, str],
    inputs: list[str],
    tokenizer: str | None,
    out: str,
    message: str,
) -> None:
    """--overwrite replaces only an earlier output (meta.json of our format, and only the files
    it wrote) or an empty directory, checked up front: before a tokenizer is loaded or an input
    read, and before anything is deleted."""
    make_layout(tmp_path, layout)
    before = listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "unique_sources", no_reading)
    monkeypatch.setattr(data, "load_tokenizer", no_reading)
    with pytest.raises(UserError, match=re.escape(message)) as error:
        prepare(inputs, tokenizer or str(GPT2_DIR), out, val_tokens=0, overwrite=True, workers=1)
    assert str(Path(os.path.normpath(out))) in str(error.value)
    assert listing(tmp_path) == before


def test_overwrite_replaces_an_earlier_output_it_recognises(tmp_path: Path) -> None:
    """What an earlier output may hold: meta.json of our format and the files it names (the
    splits, the tokenizer), whatever their names, nothing else; it is replaced whole."""
    source = write_corpus(tmp_path / "c.jsonl")
    out = write_token_dir(tmp_path / "out", {"train": np.arange(8), "dev": np.arange(2)}, 61)
    (out / "tokenizer.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["dev.bin", "meta.json", "tokenizer.json", "train.bin"]
    prepare([source], str(GPT2_DIR), out, val_tokens=0, overwrite=True, workers=1)
    assert sorted(os.listdir(out)) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert read_meta(out).splits["train"].documents == 6
    assert sorted(os.listdir(tmp_path)) == ["c.jsonl", "out"]


def test_cli_out_dot_overwrite_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: `--out . --overwrite` gave a traceback and left a `..old-*` folder."""
    write_corpus(tmp_path / "c.jsonl")
    monkeypatch.chdir(tmp_path)
    argv = ["data", "prepare", "--input", "c.jsonl", "--tokenizer", str(GPT2_DIR)]
    assert main([*argv, "--out", ".", "--overwrite", "--workers", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("layerwise: error: output . is (or contains) the current directory")
    assert listing(tmp_path) == ["c.jsonl"]


def test_cli_overwrite_of_a_folder_with_a_foreign_meta_json_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: a config folder holding some other tool's meta.json lost its 18
    YAML files to `--overwrite`; now one line naming the folder and what is in it, exit 2."""
    write_corpus(tmp_path / "c.jsonl")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "meta.json").write_text('{"name": "sweep"}')
    for i in range(18):
        (configs / f"run{i:02d}.yaml").write_text(f"seed: {i}\n")
    before = listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["data", "prepare", "--input", "c.jsonl", "--tokenizer", str(GPT2_DIR)]
    assert main([*argv, "--out", "configs", "--overwrite", "--workers", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "layerwise: error: output directory configs is not empty and holds no prepared data "
        "(no meta.json written by `data prepare`; it holds meta.json, run00.yaml, run01.yaml, "
        "run02.yaml, run03.yaml and 14 more)"
    )
    assert listing(tmp_path) == before


class FullDiskFile(io.FileIO):
    """A file on a disk that has just filled up: every write fails as a real one would."""

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture()
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token files cannot be written (ENOSPC); everything else can."""
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: object, **kwargs: object) -> io.IOBase:
        if self.suffix == ".bin" and "w" in mode:
            return FullDiskFile(self, "wb")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)


@pytest.fixture(params=["chmod", "patched"])
def read_only_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A directory nothing can be created in: really (not as root, who may write anyway), or
    by making every mkdir in it fail as it would there."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    if request.param == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only directories")
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    yield directory


def test_unwritable_output_is_a_user_error(
    tmp_path: Path, read_only_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_corpus(tmp_path / "c.jsonl")
    out = read_only_dir / "out"
    argv = ["data", "prepare", "--input", str(source), "--tokenizer", str(GPT2_DIR)]
    assert main([*argv, "--out", str(out), "--val-tokens", "0", "--workers", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"layerwise: error: cannot write the output {out} (Permission denied)")
    assert (
        f"choose --out in a directory you can write to, or fix the rights on {read_only_dir}"
        in line
    )
    assert listing(read_only_dir) == []


@pytest.mark.usefixtures("full_disk")
@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_is_a_user_error_and_keeps_the_old_output(tmp_path: Path, workers: int) -> None:
    """ENOSPC while writing tokens: a message naming OUT, the earlier output left intact, and
    (with workers) no worker left running."""
    source = write_corpus(tmp_path / "c.jsonl", documents=40, words=2000)
    out = tmp_path / "out"
    out.mkdir()
    # an earlier output, as far as --overwrite can tell: our format marker, nothing else
    (out / "meta.json").write_text('{"format": "layerwise-tokens/1"}')
    with pytest.raises(UserError) as error:
        prepare([source], str(GPT2_DIR), out, val_tokens=0, overwrite=True, workers=workers)
    message = str(error.value)
    assert message.startswith(f"cannot write the output {out} (No space left on device)")
    assert f"free space on the disk holding {tmp_path}, or choose --out on another" in message
    assert listing(tmp_path) == ["c.jsonl", "out", "out/meta.json"]
    assert multiprocessing.active_children() == []


def test_sigterm_handler_is_put_back(tmp_path: Path) -> None:
    """prepare() handles SIGTERM only while it runs, and never overrides a caller's handler."""
    source = write_corpus(tmp_path / "c.jsonl")
    before = signal.getsignal(signal.SIGTERM)
    prepare([source], str(GPT2_DIR), tmp_path / "a", val_tokens=0, workers=1)
    assert signal.getsignal(signal.SIGTERM) is before

    def caller_handler(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, caller_handler)
    try:
        prepare([source], str(GPT2_DIR), tmp_path / "b", val_tokens=0, workers=1)
        assert signal.getsignal(signal.SIGTERM) is caller_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert read_meta(tmp_path / "b").splits["train"].documents == 6


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from /proc (psutil is not a dependency)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init, which may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_stops_workers_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM (a SLURM time limit) mid-tokenizing: exit 143 with one line, workers gone, and
    neither a temporary folder nor a half-written output left.

    stderr goes to a file: surviving workers would hold a pipe open and hang the test.
    """
    work = tmp_path / "work"
    work.mkdir()
    write_corpus(work / "big.jsonl", documents=400, words=2000)
    command = [sys.executable, "-m", "layerwise", "data", "prepare", "--input", "big.jsonl"]
    command += ["--tokenizer", str(GPT2_DIR), "--out", "out", "--workers", "2"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=work, stderr=stderr)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not any(f.stat().st_size for f in work.glob(".out.tmp-*/train.bin")):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        children = child_pids(process.pid)
        assert len(children) >= 2, "the worker processes should be running"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143, log.read_text()
        deadline = time.monotonic() + 10
        while any(map(is_running, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if is_running(pid)], "workers outlived the run"
    finally:
        process.kill()
        for pid in filter(is_running, children):
            os.kill(pid, signal.SIGKILL)
    assert log.read_text().splitlines() == [
        "layerwise: SIGTERM received: stopped, and removed the unfinished output"
    ]
    assert listing(work) == ["big.jsonl"]
