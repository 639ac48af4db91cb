"""Shared fixtures: the read-only shared data, and tiny learnable token data in the data format."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from layerwise.data.inputs import InputInfo
from layerwise.data.meta import SplitMeta, TokenMeta, meta_to_json

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Tiny models only lose from intra-op threads, and on a 2-core machine running subprocess
# tests (two-process runs, killed-and-resumed runs) extra threads oversubscribe the cores and
# make every step many times slower. Subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
MARKOV_VOCAB = 61


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def markov_tokens(n: int, seed: int, vocab: int = MARKOV_VOCAB) -> np.ndarray:
    """A learnable stream: each token mostly follows from the previous one."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(vocab)
    tokens = np.empty(n, dtype=np.uint16)
    tokens[0] = 1
    for i in range(1, n):
        tokens[i] = successor[tokens[i - 1]] if rng.random() < 0.8 else rng.integers(vocab)
    return tokens


def write_token_dir(directory: Path, splits: dict[str, np.ndarray], vocab: int) -> Path:
    """train.bin / val.bin / meta.json exactly as `layerwise data prepare` lays them out.

    The arrays' own dtype (uint16 or uint32) is the files' dtype.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, tokens in splits.items():
        tokens.tofile(directory / f"{name}.bin")
    meta = TokenMeta(
        data_dir=directory,
        tokenizer="test-tokens",
        tokenizer_sha256="0" * 64,
        vocab_size=vocab,
        eos_id=0,
        dtype=next(iter(splits.values())).dtype.name,
        splits={name: SplitMeta(f"{name}.bin", len(t), 1) for name, t in splits.items()},
        seed=0,
        val_target_tokens=len(splits.get("val", ())),
        text_bytes=0,
        invalid_utf8_documents=0,
        skipped_bad_records=0,
        empty_documents=0,
        inputs=(InputInfo("test", 0, "0" * 64),),
    )
    (directory / "meta.json").write_text(meta_to_json(meta))
    return directory


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


TINY_RUN: dict[str, dict[str, Any]] = {
    "model": {
        "profile": "crown",
        "n_layers": 3,
        "d_model": 32,
        "head_dim": 8,
        "gqa_group": 2,
        "ffn_divisor": 16,
        "vocab_size": None,
    },
    "data": {"seq_len": 16, "val_windows": 10},
    "batch": {"global_batch": 8, "micro_batch": 4},
    "optim": {"lr": 3.0e-3, "warmup_steps": 2},
    "train": {"steps": 12, "seed": 3, "val_interval": 5},
    "checkpoint": {"interval": 4, "keep": 2},
    "run": {"device": "cpu", "progress": False},
}
"""The tests' run: a 3-layer Crown model on the Markov data, 12 steps of 8 x 16 tokens,
validation every 5 steps, checkpoints every 4; a test changes what it needs."""


def tiny_run_config(
    path: Path,
    data_dir: Path,
    run_dir: Path,
    changes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write TINY_RUN with `changes` merged per section, reading `data_dir`, into `run_dir`."""
    sections = {name: dict(body) for name, body in TINY_RUN.items()}
    for name, body in (changes or {}).items():
        sections.setdefault(name, {}).update(body)
    sections["data"]["dir"] = str(data_dir)
    sections["run"]["dir"] = str(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture()
def tiny_run(tmp_path: Path, markov_data: Path) -> Callable[..., Path]:
    """`tiny_run(changes=None)`: a config file of TINY_RUN writing into tmp_path / "run"."""

    def write(changes: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
        return tiny_run_config(tmp_path / "tiny.yaml", markov_data, tmp_path / "run", changes)

    return write
