"""What tests share besides fixtures: paths, tiny learnable token data, the tiny run config.

Imported as `helpers` (tests/ is on pytest's python path); fixtures stay in conftest.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from layerwise.config.loader import config_from_dict
from layerwise.data.inputs import InputInfo
from layerwise.data.meta import META_FILE, SplitMeta, meta_to_json, new_meta, token_dtype
from layerwise.data.tokenizer import load_tokenizer
from layerwise.distributed.env import DistInfo
from layerwise.hf.importer import write_imported_run_files
from layerwise.nn.model import Transformer
from layerwise.training.build import block_options
from layerwise.training.checkpoint import TrainerState, save_checkpoint
from layerwise.training.optim import build_optimizer
from layerwise.training.shape import config_shape

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED = REPO.parent / "shared"
MARKOV_VOCAB = 61


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

    The files take the dtype the vocabulary implies (`token_dtype`, the rule `data prepare`
    follows).
    """
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, tokens in splits.items():
        data = tokens.astype(token_dtype(vocab)).tobytes()
        (directory / f"{name}.bin").write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    meta = new_meta(
        directory,
        "test-tokens",
        "0" * 64,
        vocab,
        0,
        splits={
            name: SplitMeta(f"{name}.bin", len(t), 1, hashes[name]) for name, t in splits.items()
        },
        val_target_tokens=len(splits.get("val", ())),
        inputs=(InputInfo("test", 0, "0" * 64),),
    )
    (directory / META_FILE).write_text(meta_to_json(meta))
    return directory


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


TINY_COMPARE = """
model:
  n_layers: 4
  d_model: 32
  head_dim: 8
  gqa_group: 2
  ffn_divisor: 16
  vocab_size: null
data:
  seq_len: 16
  val_windows: 8
batch:
  global_batch: 8
  micro_batch: 8
optim:
  lr: 3.0e-3
  warmup_steps: 1
train:
  steps: 12
  val_interval: 4
checkpoint:
  interval: 2
  keep: 1
run:
  device: cpu
  progress: false
"""
"""The comparison tests' base config: 4 layers, 12 steps; data.dir is set by each test."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record in a run's metrics log, in order."""
    from layerwise.runs.files import read_records

    return [
        (r["step"], r["loss"])
        for r in read_records(run_dir / "metrics.jsonl")
        if r["type"] == "train"
    ]


def kill_after_first_checkpoint(command: list[str], env: dict[str, str], run_dir: Path) -> int:
    """Start `command` (a `layerwise train`), SIGKILL it as soon as its first checkpoint is on
    disk, and return the step of the latest checkpoint it left."""
    import signal
    import subprocess
    import time

    from layerwise.training.checkpoint import list_checkpoints

    victim = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list_checkpoints(run_dir) and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    return list_checkpoints(run_dir)[-1][0]


def random_run(
    run_dir: Path, model_settings: dict[str, Any], tokenizer_file: Path, seq_len: int = 64
) -> Transformer:
    """A run directory whose step-5 checkpoint holds an untrained model (norm weights
    randomised, so a misplaced norm shows) and whose tokenizer is `tokenizer_file`;
    `model_settings` must name the vocabulary (`vocab_size`)."""
    cpu = torch.device("cpu")
    values = {
        "model": model_settings,
        "data": {"seq_len": seq_len},
        "batch": {"global_batch": 8},
        "train": {"steps": 10},
        "run": {"dir": str(run_dir)},
    }
    config = config_from_dict(values)
    shape, _ = config_shape(config, model_settings["vocab_size"])
    torch.manual_seed(0)
    model = Transformer(shape, block_options(config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    write_imported_run_files(run_dir, config, load_tokenizer(tokenizer_file), tokenizer_file)
    optimizer = build_optimizer(model, config.optim, cpu)
    state = TrainerState(step=5, sampler={"epoch": 0, "cursor": 0})
    save_checkpoint(run_dir, model, optimizer, state, DistInfo(0, 0, 1, cpu), keep=2)
    return model.eval()
