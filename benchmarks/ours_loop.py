"""Ours: the trainer's own run, built by `setup_run` and stepped as `Trainer._step` steps it.

The benchmark writes a `Config` as a user would (`config_from_dict`: the profile on its base,
the token directory the benchmark wrote, one micro-batch per step, a constant learning rate,
the `run.*` speed levers), and `layerwise.training.trainer.setup_run` builds from it what a
training run trains: the model, parallelized and (with `run.compile`) compiled, the optimizer,
and `DeviceBatches`, the trainer's input path (pinned, prefetched windows on CUDA). Each timed
step is `train_step(run.model, run.optimizer, run.batches.next(), ...)` with the arguments
`Trainer._step` passes; only the callbacks (logging, validation, checkpoints) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerwise.config.loader import config_from_dict
from layerwise.config.schema import Config
from layerwise.distributed.env import init_distributed
from layerwise.profiles.shape import ModelShape
from layerwise.training.build import with_data_vocab
from layerwise.training.optim import lr_at
from layerwise.training.shape import BASE_KEYS
from layerwise.training.step import train_step
from layerwise.training.trainer import setup_run
from timing import StepClock, StepTimes
from train_setup import OPTIM, Settings, profile_recipe


def profile_model(name: str, settings: Settings) -> dict[str, Any]:
    """The `model:` section of one profile: its name, its base and what it is matched to.

    The same choice as `train_setup.profile_shape` (which the plain loop's widths come from),
    written the way configs/*.yaml write it, so `config_shape` resolves it as a run does.
    """
    profile, spec, match = profile_recipe(name, settings)
    return {"profile": profile, **{key: getattr(spec, key) for key in BASE_KEYS}, "match": match}


def explicit_model(shape: ModelShape) -> dict[str, Any]:
    """A `model:` section for any given widths: one anchor per layer, no rounding to speak of.

    With `ffn_divisor` 1 and anchors of width / d_model, the recipe's rounding to the nearest
    multiple gives each layer's widths back exactly (checked by `OursLoop`).
    """
    groups = {layer.n_heads // layer.n_kv_heads for layer in shape.layers}
    if len(groups) != 1:
        raise ValueError(f"every layer needs the same GQA group, got {sorted(groups)}")
    return {
        "profile": "isotropic",
        "n_layers": shape.n_layers,
        "d_model": shape.d_model,
        "head_dim": shape.head_dim,
        "gqa_group": groups.pop(),
        "vocab_size": shape.vocab_size,
        "tie_embeddings": shape.tie_embeddings,
        "ffn_divisor": 1,
        "ffn": [layer.d_ffn / shape.d_model for layer in shape.layers],
        "qkv": [layer.n_heads * shape.head_dim / shape.d_model for layer in shape.layers],
        "frame": False,
    }


def run_config(model: dict[str, Any], settings: Settings, data_dir: Path, run_dir: Path) -> Config:
    """The config of our run: `model` on the benchmark's data, batch, optimizer and levers."""
    batch = settings.ours_micro_batch
    return config_from_dict(
        {
            "model": model,
            "data": {"dir": str(data_dir), "seq_len": settings.seq_len},
            "batch": {"global_batch": batch, "micro_batch": batch},
            "optim": {
                "lr": OPTIM.lr,
                "betas": list(OPTIM.betas),
                "eps": OPTIM.eps,
                "weight_decay": OPTIM.weight_decay,
                "grad_clip": OPTIM.grad_clip,
                "schedule": OPTIM.schedule,
                "warmup_steps": OPTIM.warmup_steps,
            },
            "train": {"steps": settings.warmup + settings.steps + 1, "seed": settings.seed},
            "parallel": {"strategy": "none"},
            "run": {
                "dir": str(run_dir),
                "device": settings.device,
                "precision": "auto",
                "compile": settings.compile,
                "compile_mode": settings.speed.compile_mode,
                "compile_loss": settings.speed.compile_loss,
                "attention": settings.speed.attention,
                "fp8": settings.speed.fp8,
                "progress": False,
            },
        },
        default_source="bench_train.py",
    )


class OursLoop:
    """One optimizer step of the trainer, data fetch included; `shape` is what it must train."""

    name = "ours"

    def __init__(self, config: Config, shape: ModelShape) -> None:
        config = with_data_vocab(config)
        self.run = setup_run(config, init_distributed(config.run.device), checkpoint=None)
        if self.run.shape != shape:
            raise AssertionError(
                f"the config built another shape than the benchmark chose:\n"
                f"  built:  {self.run.shape}\n  chosen: {shape}"
            )
        self.batch = self.run.plan.global_batch
        self.steps_done = 0

    def step(self, times: StepTimes) -> None:
        """`Trainer._step`'s call, timed by the same clock as the plain loop's step."""
        run = self.run
        clock = StepClock(run.dist.device)
        lr = lr_at(self.steps_done, run.steps, run.config.optim)
        windows = run.batches.next()
        clock.fetched()
        result = train_step(
            run.model,
            run.optimizer,
            windows,
            run.plan,
            step=self.steps_done + 1,
            lr=lr,
            grad_clip=run.config.optim.grad_clip,
            dtype=run.dtype,
            stop_requested=lambda: False,
        )
        self.steps_done += 1
        clock.stop(times, result.loss)
