"""Run-directory policy: start, continue, extend or start over, and never by accident.

A run directory is reused only when asked: `run.resume=auto` (`--resume`) continues from the
newest checkpoint that verifies, and only if the experiment is the same; `run.overwrite=true`
(`--overwrite`) clears an earlier run's files first. Changing only the run's length
(`train.steps` or `train.tokens`) while resuming extends (or shortens) it from the newest
checkpoint that lies on both the old and the new learning-rate schedule: any checkpoint with
a constant schedule, one from before the decay with WSD (whose decay start is kept for this
reason), none with cosine, whose every step depends on the length.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerwise.config.loader import experiment_differences, load_config
from layerwise.config.schema import Config, OptimConfig, data_sources, total_steps
from layerwise.data.meta import META_FILE, data_differences, read_meta
from layerwise.runs.files import (
    CONFIG_FILE,
    METRICS_FILE,
    SOURCES_DIR,
    SUMMARY_FILE,
    TOKENIZER_DIR,
)
from layerwise.runs.lock import is_vacant
from layerwise.training.callbacks.wandb import WANDB_RUN_ID_FILE
from layerwise.training.checkpoint import CHECKPOINT_DIR, choose_checkpoint, list_checkpoints
from layerwise.training.optim import lr_at
from layerwise.util.errors import UserError

RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    CHECKPOINT_DIR,
    "tensorboard",
    WANDB_RUN_ID_FILE,
)
"""What a run writes into its directory: all that `--overwrite` removes (other files stay).
Without its W&B run id the run starts over as a new W&B run; the W&B files (RUN_DIR/wandb)
stay, since an offline run's may not have been synced yet."""
LENGTH_KEYS = frozenset({"train.steps", "train.tokens"})
SUPERSEDED_DIR = "superseded"


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: a checkpoint (None: step 0) and what to tell the user about it."""

    checkpoint: Path | None = None
    step: int = 0
    notes: list[str] = field(default_factory=list)


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


def prepare_run_dir(run_dir: Path, config: Config) -> ResumePoint:
    """Check that `run_dir` may be used as the config asks, clear it for `--overwrite`, and
    choose the checkpoint to continue from. Call on one rank (it may delete files)."""
    if config.run.overwrite and config.run.resume == "auto":
        raise UserError("give --resume or --overwrite, not both: continue the run or start over")
    if config.run.overwrite:
        return ResumePoint(notes=clear_run(run_dir))
    if config.run.resume == "never":
        if holds_run(run_dir):
            raise UserError(
                f"run.dir {run_dir} already holds a run; pass --resume (run.resume=auto) to "
                "continue or extend it, --overwrite (run.overwrite=true) to start it over, or "
                "choose another run.dir"
            )
        return ResumePoint()
    return resume(run_dir, config)


def moved_run_dir(config_file: Path, config: Config) -> Path | None:
    """The run directory `config_file` sits in, when it is a run's own config.yaml whose
    run.dir names another directory: the run was copied or moved, and its recorded (absolute)
    run.dir would act on the original."""
    parent = config_file.parent
    if config_file.name != CONFIG_FILE or not holds_run(parent):
        return None
    return None if Path(config.run.dir).resolve() == parent.resolve() else parent


def clear_run(run_dir: Path) -> list[str]:
    """Remove an earlier run's files; refuse a directory that holds something else."""
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise UserError(f"run.dir {run_dir} is a file, not a directory")
    if not holds_run(run_dir):
        if not is_vacant(run_dir):
            raise UserError(
                f"--overwrite: {run_dir} is not empty and holds no run ({CONFIG_FILE}, "
                f"{METRICS_FILE}, {CHECKPOINT_DIR}/); refusing to delete it. Choose another run.dir"
            )
        return []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return [f"--overwrite: removed the earlier run's files from {run_dir}"]


def resume(run_dir: Path, config: Config) -> ResumePoint:
    """The checkpoint to continue from, after checking the experiment did not change."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.exists():
        if (run_dir / CHECKPOINT_DIR).exists():
            raise UserError(
                f"{run_dir} has checkpoints but no {CONFIG_FILE}; it cannot be resumed safely. "
                "Start over with --overwrite or choose another run.dir"
            )
        if is_vacant(run_dir):
            return ResumePoint()  # a new run: nothing to say (compare starts every cell so)
        return ResumePoint(notes=[f"--resume: no earlier run in {run_dir}; starting at step 0"])
    saved = load_config(saved_path)
    changed = experiment_differences(saved, config)
    if set(changed) - LENGTH_KEYS:
        raise UserError(
            f"cannot resume {run_dir}: the config differs from {saved_path} in "
            f"{', '.join(changed)}; resume with the same settings (only the run's length may "
            "change), or start a new run in another run.dir"
        )
    data = recorded_data_differences(run_dir, config)
    if data:
        raise UserError(
            f"cannot resume {run_dir}: {data_name(config)} is not the data it was trained on "
            f"({'; '.join(data)}); resume with that data (or data of the same tokenizer, for an "
            "imported checkpoint), or start a new run in another run.dir"
        )
    old, new = total_steps(saved), total_steps(config)
    choice = choose_checkpoint(run_dir, schedule_check(config.optim, old, new))
    notes = [f"skipped {path.name}: {reason}" for path, reason in choice.skipped]
    if choice.path is None:
        unfinished = [path for path, reason in choice.skipped if path.name.endswith(".tmp")]
        if choice.skipped and len(unfinished) == len(choice.skipped):
            # killed during its first save: nothing was lost but that save, so start over
            for path in unfinished:
                shutil.rmtree(path)
            names = ", ".join(path.name for path in unfinished)
            return ResumePoint(
                notes=[
                    f"--resume: removed {names}, a save that never finished; {run_dir} has no "
                    "finished checkpoint, starting at step 0"
                ]
            )
        if choice.skipped:
            raise UserError(
                f"no usable checkpoint in {run_dir / CHECKPOINT_DIR}: {grouped(choice.skipped)}. "
                "Start over with --overwrite or choose another run.dir"
            )
        notes.append(f"--resume: {run_dir} has no checkpoint yet; starting at step 0")
        return ResumePoint(notes=notes)
    if old != new:
        notes.append(f"the run's length changes from {old:,} to {new:,} steps")
        notes += set_aside_later(run_dir, choice.step)
    notes.append(f"resuming {run_dir} from step {choice.step:,} ({choice.path.name})")
    return ResumePoint(choice.path, choice.step, notes)


def recorded_data_differences(run_dir: Path, config: Config) -> list[str]:
    """How `config`'s data differs from the data the run in `run_dir` recorded (its
    tokenizer/meta.json, and with data.sources each source's tokenizer/sources/NAME/meta.json);
    nothing for a run that recorded none."""
    recorded = run_dir / TOKENIZER_DIR
    if not (recorded / META_FILE).is_file():
        return []
    if config.data.sources is None:
        return data_differences(read_meta(recorded), read_meta(config.data.dir))
    differences = []
    for source in data_sources(config.data):
        kept = recorded / SOURCES_DIR / source.name
        old = read_meta(kept if (kept / META_FILE).is_file() else recorded)
        lines = data_differences(old, read_meta(source.dir))
        differences += [f"source {source.name!r}: {line}" for line in lines]
    return differences


def data_name(config: Config) -> str:
    """The data a config reads, for messages: its data.dir, or its sources' directories."""
    if config.data.sources is None:
        return config.data.dir
    return ", ".join(source.dir for source in data_sources(config.data))


def grouped(skipped: list[tuple[Path, str]]) -> str:
    """`step_2, step_1: reason; step_0: other reason`, each reason said once."""
    names: dict[str, list[str]] = {}
    for path, reason in skipped:
        names.setdefault(reason, []).append(path.name)
    return "; ".join(f"{', '.join(paths)}: {reason}" for reason, paths in names.items())


def schedule_check(
    optim: OptimConfig, old_steps: int, new_steps: int
) -> Callable[[int], str | None]:
    """Rules out checkpoints whose past learning rates differ under the new run length."""
    if old_steps == new_steps:
        return lambda step: None
    agree = first_divergence(optim, old_steps, new_steps)
    why = ""
    if (
        optim.warmup_fraction is not None
        and agree < max(old_steps, new_steps) * optim.warmup_fraction
    ):
        why = " (optim.warmup_fraction makes the warmup change with the length; give warmup in "
        why += "optim.warmup_steps for runs you will extend)"

    def unusable(step: int) -> str | None:
        if step > new_steps:
            return f"beyond the new length of {new_steps:,} steps"
        if step > agree:
            return (
                f"its learning rates differ from a {new_steps:,}-step {optim.schedule} schedule "
                f"after step {agree:,}{why}"
            )
        return None

    return unusable


def first_divergence(optim: OptimConfig, old_steps: int, new_steps: int) -> int:
    """Number of leading steps whose learning rate is the same for both run lengths."""
    for step in range(min(old_steps, new_steps)):
        if lr_at(step, old_steps, optim) != lr_at(step, new_steps, optim):
            return step
    return min(old_steps, new_steps)


def set_aside_later(run_dir: Path, step: int) -> list[str]:
    """Move whole checkpoints newer than the branch point `step` out of the way, so a later
    `--resume` cannot mistake the old schedule's checkpoints for the new run's."""
    moved = []
    target = run_dir / CHECKPOINT_DIR / SUPERSEDED_DIR
    for later, path in list_checkpoints(run_dir):
        if later > step:
            target.mkdir(exist_ok=True)
            destination = target / path.name
            shutil.rmtree(destination, ignore_errors=True)
            path.rename(destination)
            moved.append(f"moved {path.name} (the earlier schedule's) to {destination}")
    return moved
