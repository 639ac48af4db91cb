"""Checkpoints that survive being killed at any moment, in one format for every parallel layout.

A checkpoint is a directory `checkpoints/step_000123/` holding
- the model and optimizer state, written with torch.distributed.checkpoint (DCP) from
  `get_state_dict`, so the same code saves and loads a plain model, DDP and FSDP2 (sharded, each
  rank writing its own part) and a checkpoint can be loaded under another layout;
- `rng_rank{r}.pt`: every random generator of rank r;
- `trainer.json`: step, tokens seen, the data sampler's position and the elapsed time;
- `manifest.json`, written last by rank 0: every other file with its size and SHA-256.
Everything is written into `step_000123.tmp/` first and renamed when complete, so a crash
during a save costs that save, never the previous checkpoint; a save that fails (a full disk)
removes its temporary directory and says so. Files can still be damaged after the fact (a
truncated copy, a bad disk), so a checkpoint is verified against its manifest before a run
resumes from it, and the newest one that verifies is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import shutil
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from layerwise.distributed.env import DistInfo, barrier
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json, fsync_dir, write_failure

CHECKPOINT_DIR = "checkpoints"
TRAINER_FILE = "trainer.json"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step_(\d+)$")
_HASH_CHUNK = 1 << 22


@dataclass
class TrainerState:
    """The loop's position beyond model and optimizer: enough to continue bit for bit, and the
    running figures the summary needs, so a resumed run reports on the whole run."""

    step: int = 0
    tokens: int = 0
    sampler: dict[str, Any] | None = None
    wall_time_s: float = 0.0
    train_loss: float | None = None
    val_loss: float | None = None
    peak_memory_mib: float = 0.0
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each callback's `state_dict()`, by callback name (layerwise.callbacks)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every `step_N` directory, whole or not, oldest first (`.tmp` saves are not listed)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints whose save completed (their manifest exists), oldest first; not yet verified."""
    return [
        (step, path) for step, path in checkpoint_dirs(run_dir) if (path / MANIFEST_FILE).is_file()
    ]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: Path) -> None:
    """Record every file of the checkpoint directory `path`; written last, so it marks it whole."""
    files = {
        str(file.relative_to(path)): {"bytes": file.stat().st_size, "sha256": _sha256(file)}
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != MANIFEST_FILE
    }
    atomic_write_json(path / MANIFEST_FILE, {"files": files})


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint in `path` cannot be trusted, or None when every file matches."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        if not any(path.iterdir()):
            return "the directory is empty"
        return f"no {MANIFEST_FILE}: the save did not finish (or predates manifests)"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_FILE} is unreadable ({exc})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, {expected['bytes']:,} were written"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    if TRAINER_FILE not in files:
        return f"{TRAINER_FILE} is missing"
    return None


@dataclass
class CheckpointChoice:
    """The checkpoint to resume from, and the newer ones passed over with the reason for each."""

    path: Path | None = None
    step: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def choose_checkpoint(
    run_dir: Path, unusable: Callable[[int], str | None] = lambda step: None
) -> CheckpointChoice:
    """The newest checkpoint that verifies and that `unusable(step)` does not rule out.

    Unfinished saves (`.tmp`) and damaged checkpoints are reported in `skipped`, so a resumed
    run can say what it passed over instead of silently going back in time.
    """
    choice = CheckpointChoice()
    root = run_dir / CHECKPOINT_DIR
    if root.is_dir():
        choice.skipped += [(tmp, "an unfinished save") for tmp in sorted(root.glob("*.tmp"))]
    for step, path in reversed(checkpoint_dirs(run_dir)):
        reason = verify_checkpoint(path) or unusable(step)
        if reason is None:
            choice.path, choice.step = path, step
            return choice
        choice.skipped.append((path, reason))
    return choice


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator a step might draw from, in a form `torch.load(weights_only=True)` accepts."""
    # legacy=True (the default) gives the tuple form: the global generator is an MT19937
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = state
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
    protect: Collection[int] = (),
) -> Path:
    """Write a checkpoint of `state.step` on every rank; rank 0 publishes it and prunes old ones.

    Checkpoints at the steps in `protect` are never pruned (a schedule's branch point). A save
    that fails removes its temporary directory and raises a UserError naming the cause; the
    checkpoints written before it are untouched.
    """
    root = run_dir / CHECKPOINT_DIR
    final = root / checkpoint_name(state.step)
    tmp = root / f"{final.name}.tmp"
    try:
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
            write_manifest(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            fsync_dir(root)
    except (Exception, CheckpointException) as exc:  # DCP's exception is a BaseException
        cause = _cause(exc, root)  # before the partial save is removed and frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"; {previous.name} is intact" if previous else ""
        raise UserError(
            f"could not save checkpoint {final}: {cause}. Free disk space or make {root} "
            f"writable, then continue with --resume{kept}"
        ) from None
    if dist.is_main:
        _prune(run_dir, keep, protect)
    barrier()
    return final


def _cause(exc: BaseException, where: Path | None = None) -> str:
    """What went wrong, in one line; DCP wraps each rank's error in a CheckpointException."""
    nested = (
        [failure for failure, _ in exc.failures.values()]
        if isinstance(exc, CheckpointException)
        else []
    )
    return write_failure(exc, where, nested)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group: that is the intended case."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def _prune(run_dir: Path, keep: int, protect: Collection[int] = ()) -> None:
    """Keep the newest `keep` complete checkpoints and the protected ones; remove the rest and
    abandoned `.tmp` ones."""
    for step, path in list_checkpoints(run_dir)[:-keep]:
        if step not in protect:
            shutil.rmtree(path)
    for path in (run_dir / CHECKPOINT_DIR).glob("*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Load only the model's weights from the checkpoint in `path` (no optimizer, no state):
    for evaluation, analysis, export, or a new run that starts from trained weights.

    `model` is whole (not sharded), so each process reads every tensor it needs by itself
    (`no_dist`): rank 0 alone may load it (`run.export_at_end` after the other ranks are done)
    without waiting on collectives no other rank joins."""
    state = get_model_state_dict(model)
    try:
        with _quiet_single_process():
            dcp.load({"model": state}, checkpoint_id=path, no_dist=True)
    except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
        raise UserError(
            f"checkpoint {path} could not be loaded into this model ({_cause(exc)}); was it "
            "written by another config?"
        ) from None
    set_model_state_dict(model, state)


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
    bundle: dict[str, Any] = {"model": model_state, "optim": optim_state}
    try:
        with _quiet_single_process():
            dcp.load(bundle, checkpoint_id=path)
    except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
        raise UserError(
            f"checkpoint {path} could not be loaded into this model ({_cause(exc)}); was it "
            "written by another config?"
        ) from None
    set_state_dict(
        model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"]
    )
    rng_file = path / f"rng_rank{dist.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True), dist.device)
    return state
