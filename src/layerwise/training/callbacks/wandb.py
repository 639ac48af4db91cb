"""Rank 0 logs the run to Weights & Biases (`run.wandb.enabled=true`, the wandb extra).

It hears the channel the metrics log hears (`on_log`): training steps every
`run.log_interval` steps, every validation (per source too) and downstream scores, under the
names TensorBoard uses (`train/loss`, `val/sources/web/loss`, `downstream/tasks/piqa/acc`), at
the run's own step. The resolved config (what config.yaml holds) and its experiment hash are the
W&B run's config; the run's final figures go into its summary.

One run directory is one W&B run: its id is written to RUN_DIR/wandb-run-id when the run first
starts, and every later start (`--resume`, a SLURM requeue, the next rung of a search) continues
that W&B run, so a run killed and resumed is one curve, not several. Steps the W&B run already
holds (those logged after the last checkpoint, before the kill) are not sent again.

`mode=offline` (or WANDB_MODE=offline) needs neither an API key nor a network: the run's files
are written under RUN_DIR/wandb and uploaded later with `wandb sync`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from layerwise.config.loader import config_hash, config_to_dict
from layerwise.config.schema import Config
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.training.callbacks.tensorboard import record_scalars
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text

WANDB_RUN_ID_FILE = "wandb-run-id"
"""In the run directory: the W&B run every start of this run continues."""


def with_wandb_cell(config: Config, group: str, name: str) -> Config:
    """`config` with `run.wandb.group` and `run.wandb.name` set to `group` and `name` where it
    leaves them null (and W&B is enabled): how a comparison, search or ladder names the W&B runs
    of its cells, e.g. group `cmp-tiny`, name `12l/crown/seed0`."""
    wandb = config.run.wandb
    if not wandb.enabled:
        return config
    named = replace(wandb, group=wandb.group or group, name=wandb.name or name)
    return replace(config, run=replace(config.run, wandb=named))


def run_name(config: Config) -> str:
    """`run.wandb.name`, else `PROFILE-seedN`."""
    return config.run.wandb.name or f"{config.model.profile}-seed{config.train.seed}"


def wandb_config(config: Config) -> dict[str, Any]:
    """What the W&B run's config holds: the resolved config and its experiment hash."""
    return {**config_to_dict(config), "config_hash": config_hash(config)}


def run_id(run_dir: Path) -> str:
    """The W&B run id kept in `run_dir`; a new, random one is written there first (48 bits, so
    that the runs of one project do not collide)."""
    path = run_dir / WANDB_RUN_ID_FILE
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept
    created = secrets.token_hex(6)
    atomic_write_text(path, created + "\n")
    return created


class WandbLog(Callback):
    priority: ClassVar[int] = 88  # beside the metrics log, before anything else logs

    def __init__(self, run_dir: Path, config: Config) -> None:
        self.run_dir, self.config = run_dir, config
        self.run: Any = None
        self.first_step = 0
        """The W&B run's step when this process joined it; steps before it are there already."""
        self.exit_code = 0

    def on_train_start(self, trainer: TrainerView) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                "run.wandb.enabled=true needs the wandb package: pip install 'layerwise[wandb]' "
                "(or set run.wandb.enabled=false)"
            ) from None
        settings = self.config.run.wandb
        files = Path(settings.dir) if settings.dir else self.run_dir
        files.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                group=settings.group,
                name=run_name(self.config),
                tags=settings.tags,
                mode=settings.mode,  # None: W&B reads WANDB_MODE, else online
                dir=os.fspath(files),
                id=run_id(self.run_dir),
                resume="allow",
                config=wandb_config(self.config),
            )
        except wandb.errors.Error as exc:
            raise UserError(
                f"run.wandb: W&B could not start ({exc}); log in with `wandb login`, or set "
                "run.wandb.mode=offline to log without a network and `wandb sync` later"
            ) from None
        self.first_step = self.run.step

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        step = record["step"]
        if self.run is None or step < self.first_step:
            return
        is_train = record["type"] == "train"
        if is_train and not (trainer.is_last_step or step % self.config.run.log_interval == 0):
            return
        data = dict(record_scalars(record))
        if data:
            self.run.log(data, step=step)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.run is None:
            return
        state = trainer.state
        self.run.summary.update(
            {
                "steps": state.step,
                "tokens": state.tokens,
                "final_train_loss": state.train_loss,
                "final_val_loss": state.val_loss,
                "wall_time_s": state.wall_time_s,
                "config_hash": config_hash(self.config),
            }
        )

    def on_error(self, trainer: TrainerView, error: BaseException) -> None:
        self.exit_code = 1

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=self.exit_code)
            self.run = None
