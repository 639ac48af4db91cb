"""`layerwise search`: settings and storages it cannot use are refused by flag before any trial."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from helpers import TINY_COMPARE
from layerwise.cli import main

pytest.importorskip("optuna")


@pytest.fixture()
def search_args(tmp_path: Path, tiny_config_file: Callable[[str], Path]) -> list[str]:
    """A search of the comparison tests' config, 18 steps a trial (rungs of 2, 6 and 18)."""
    config = tiny_config_file(TINY_COMPARE)
    return ["search", str(config), "train.steps=18", "--out", str(tmp_path / "out")]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


def test_an_eta_below_2_is_refused(
    search_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    refused(capsys, [*search_args, "--eta", "1"], "--eta 1", "at least 2")


@pytest.mark.parametrize("trials", ["-1", "0"])
def test_a_trial_count_below_1_is_refused(
    search_args: list[str], trials: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*search_args, f"--trials={trials}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--trials" in err and "at least 1" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content", [b"not a journal\n", b'{"a": 1}\n', b"[1]\n", b"\xff\xfe\x00\n"]
)
def test_a_storage_file_that_is_not_an_optuna_journal_is_refused_and_kept(
    search_args: list[str], tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "notes.txt"
    storage.write_bytes(content)
    refused(capsys, [*search_args, "--storage", str(storage)], f"--storage {storage}", "journal")
    assert storage.read_bytes() == content


def test_a_storage_directory_is_refused(
    search_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    refused(
        capsys,
        [*search_args, "--storage", str(folder)],
        f"--storage {folder} is a directory",
        str(folder / "study.journal"),
    )


def test_cmaes_without_its_package_is_refused_naming_the_extra(
    search_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = importlib.util.find_spec

    def without_cmaes(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "cmaes" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_cmaes)
    refused(
        capsys,
        [*search_args, "--sampler", "cmaes"],
        "--sampler cmaes needs the cmaes package",
        "pip install 'layerwise[search]'",
    )
    assert not (tmp_path / "out" / "study.journal").exists()  # refused before the study
