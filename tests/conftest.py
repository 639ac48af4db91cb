"""Shared fixtures: the read-only shared data, and tiny learnable token data in the data format."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import MARKOV_VOCAB, SHARED, markov_tokens, tiny_run_config, write_token_dir

# Tiny models only lose from intra-op threads, and on a 2-core machine running subprocess
# tests (two-process runs, killed-and-resumed runs) extra threads oversubscribe the cores and
# make every step many times slower. Subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def markov_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared data directory of 4,000 training and 600 validation Markov-chain tokens."""
    splits = {"train": markov_tokens(4000, 0), "val": markov_tokens(600, 1)}
    return write_token_dir(tmp_path_factory.mktemp("markov"), splits, MARKOV_VOCAB)


@pytest.fixture()
def tiny_config_file(tmp_path: Path, markov_data: Path) -> Callable[[str], Path]:
    """Writes a YAML config (given as text) with data.dir pointing at the Markov data."""

    def write(text: str) -> Path:
        path = tmp_path / "tiny.yaml"
        path.write_text(text.replace("data:\n", f"data:\n  dir: {markov_data}\n", 1))
        return path

    return write


@pytest.fixture()
def tiny_run(tmp_path: Path, markov_data: Path) -> Callable[..., Path]:
    """`tiny_run(changes=None)`: a config file of TINY_RUN writing into tmp_path / "run"."""

    def write(changes: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
        return tiny_run_config(tmp_path / "tiny.yaml", markov_data, tmp_path / "run", changes)

    return write


@pytest.fixture()
def tiny_filesystem(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tiny_filesystem("1M")`: a real filesystem (tmpfs) of that size, so writers meet a full
    disk as they would in use; the test is skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"small{len(mounted)}"
        point.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
        done = subprocess.run(command, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=False)
