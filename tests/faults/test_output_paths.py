"""Output paths that cannot be written are refused by every command that writes, before any
work, with a message naming the flag (or config key), the path and why: under a regular file,
on a file system that takes no new files (/proc), or a directory where a file is wanted
(a directory without write permission: tests/cli/test_profile.py, since tests run as root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from layerwise.cli import main

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not (PROC / "self").exists(), reason="no /proc file system")

FILE_OUTPUTS: dict[str, Callable[[Path, str], list[str]]] = {
    "plot": lambda tmp, out: ["plot", str(tmp / "run"), "-o", out],
    "profile plot": lambda tmp, out: ["profile", "plot", "crown", "-o", out],
}
"""Commands writing one file (a PNG), given the tmp dir and the output path."""

DIRECTORY_OUTPUTS: dict[str, Callable[[Path, str], list[str]]] = {
    "train": lambda tmp, out: ["train", str(tmp / "tiny.yaml"), f"run.dir={out}"],
    "compare": lambda tmp, out: ["compare", str(tmp / "tiny.yaml"), "--out", out],
    "analyze": lambda tmp, out: ["analyze", str(tmp / "run"), "--out", out],
    "export": lambda tmp, out: ["export", str(tmp / "run"), "--out", out],
    "import": lambda tmp, out: ["import", str(tmp / "hf"), "--out", out],
    "search": lambda tmp, out: ["search", str(tmp / "tiny.yaml"), "--out", out],
    "learn-shape": lambda tmp, out: ["learn-shape", str(tmp / "tiny.yaml"), "--out", out],
    "demo": lambda tmp, out: ["demo", "--out", out],
}
"""Commands writing a directory; `run.dir` is the config key train writes to."""

FLAG = {"train": "run.dir", "plot": "-o", "profile plot": "-o"}


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    if argv[0] == "search":
        pytest.importorskip("optuna")  # without it, search says so before anything else
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture()
def workspace(tmp_path: Path, tiny_run: Callable[..., Path]) -> Path:
    tiny_run()  # tmp_path / "tiny.yaml", a valid config; no run is trained
    (tmp_path / "notes.txt").write_text("a regular file\n")
    return tmp_path


@pytest.mark.parametrize("command", [*FILE_OUTPUTS, *DIRECTORY_OUTPUTS])
def test_an_output_under_a_regular_file_is_refused(
    command: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {**FILE_OUTPUTS, **DIRECTORY_OUTPUTS}[command]
    out = str(workspace / "notes.txt" / "x.png")
    flag = FLAG.get(command, "--out")
    refused(capsys, argv(workspace, out), f"{flag} {out}", "notes.txt is a file, not a directory")
    assert (workspace / "notes.txt").read_text() == "a regular file\n"


@needs_proc
@pytest.mark.parametrize("command", [*FILE_OUTPUTS, *DIRECTORY_OUTPUTS])
def test_an_output_under_proc_is_refused(
    command: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {**FILE_OUTPUTS, **DIRECTORY_OUTPUTS}[command]
    flag = FLAG.get(command, "--out")
    refused(
        capsys,
        argv(workspace, "/proc/x.png"),
        f"{flag} /proc/x.png",
        "cannot create files in /proc",
    )


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_a_directory_given_for_a_file_is_refused(
    command: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = workspace / "figures"
    folder.mkdir()
    refused(capsys, FILE_OUTPUTS[command](workspace, str(folder)), f"-o {folder} is a directory")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", DIRECTORY_OUTPUTS)
def test_a_regular_file_given_for_a_directory_is_refused(
    command: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = workspace / "notes.txt"
    flag = FLAG.get(command, "--out")
    refused(capsys, DIRECTORY_OUTPUTS[command](workspace, str(notes)), f"{flag} {notes} is a file")
    assert notes.read_text() == "a regular file\n"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_a_device_given_for_a_file_is_refused_not_replaced(
    command: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An atomic write renames over its destination: as root, that would replace the device."""
    refused(capsys, FILE_OUTPUTS[command](workspace, "/dev/null"), "-o /dev/null is not a regular")
    assert Path("/dev/null").is_char_device()
