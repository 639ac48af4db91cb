"""Checkpoints that survive being killed at any moment, in one format for every parallel layout.

A checkpoint is a directory `checkpoints/step_000123/` holding
- the model and optimizer state, written with torch.distributed.checkpoint (DCP) from
  `get_state_dict`, so the same code saves and loads a plain model, DDP and FSDP2 (sharded, each
  rank writing its own part) and a checkpoint can be loaded under another layout;
- `rng_rank{r}.pt`: every random generator of rank r;
- `trainer.json`: step, tokens seen, the data sampler's position and the elapsed time, written
  last by rank 0.
Everything is written into `step_000123.tmp/` first and renamed when complete, so a directory
with the final name is always whole: a crash during a save costs that save, never the previous
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from layerwise.distributed import DistInfo, barrier
from layerwise.errors import UserError
from layerwise.fsutil import atomic_write_json, fsync_dir

CHECKPOINT_DIR = "checkpoints"
TRAINER_FILE = "trainer.json"
_NAME = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """The loop's position beyond model and optimizer: enough to continue bit for bit, and the
    running figures the summary needs, so a resumed run reports on the whole run."""

    step: int = 0
    tokens: int = 0
    sampler: dict[str, Any] | None = None
    world_size: int = 1
    wall_time_s: float = 0.0
    train_loss: float | None = None
    val_loss: float | None = None
    timed_tokens: int = 0
    timed_seconds: float = 0.0
    peak_memory_mib: float = 0.0


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (unfinished `.tmp` directories are not checkpoints)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator a step might draw from, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    dist: DistInfo,
    keep: int,
) -> Path:
    """Write a checkpoint of `state.step` on every rank; rank 0 publishes it and prunes old ones."""
    root = run_dir / CHECKPOINT_DIR
    final = root / checkpoint_name(state.step)
    tmp = root / f"{final.name}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save(rng_state(dist.device), tmp / f"rng_rank{dist.rank}.pt")
    barrier()
    if dist.is_main:
        atomic_write_json(tmp / TRAINER_FILE, asdict(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(root)
        _prune(run_dir, keep)
    barrier()
    return final


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group: that is the intended case."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove the rest and abandoned `.tmp` ones."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path)
    for path in (run_dir / CHECKPOINT_DIR).glob("*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo
) -> TrainerState:
    """Restore model, optimizer and this rank's generators in place; return the loop's state.

    Model and optimizer load into whatever layout the run has now (DCP reshards), so a run may
    resume on another number of ranks; a rank that did not exist when the checkpoint was written
    keeps its seeded generators.
    """
    try:
        fields = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
        state = TrainerState(**fields)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise UserError(
            f"checkpoint {path} is unreadable ({exc}); delete it to resume from an older one"
        ) from None
    model_state, optim_state = get_state_dict(model, optimizer)
    bundle = {"model": model_state, "optim": optim_state}
    with _quiet_single_process():
        dcp.load(bundle, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"]
    )
    rng_file = path / f"rng_rank{dist.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True), dist.device)
    return state
