"""What one run of bench_train.py measures: its settings, each profile's shape, the token data.

Shared by the parent (bench_train.py) and each profile's subprocess (profile_run.py), and by
both loops: `profile_shape` decides the widths that ours (ours_loop.py) and the plain loop
(plain_loop.py) train, and `write_token_data` the file both read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerwise.config.schema import OptimConfig
from layerwise.data.meta import META_FILE, SplitMeta, TokenMeta, meta_to_json, token_dtype
from layerwise.distributed.parallelize import SpeedOptions
from layerwise.profiles.budget import resolve_shape
from layerwise.profiles.recipes import PRESETS, SHAPES, ProfileSpec, lookup_spec
from layerwise.profiles.shape import ModelShape

DEFAULT_PROFILES = tuple(SHAPES)
"""isotropic first: every other profile is compared with it."""

TINY_BASE = ProfileSpec(
    ffn=(1.0,),
    qkv=(1.0,),
    n_layers=6,
    d_model=128,
    head_dim=32,
    gqa_group=2,
    vocab_size=4096,
    ffn_divisor=64,
)
"""The CPU base (configs/tiny-base.yaml's widths); every profile is matched to isotropic's count."""

OPTIM = OptimConfig(
    lr=6e-4,
    betas=(0.9, 0.95),
    eps=1e-8,
    weight_decay=0.01,
    grad_clip=1.0,
    schedule="constant",
    warmup_steps=0,
)
"""Both loops use the study's AdamW settings at a constant learning rate."""

CPU_BUDGET_S = 160.0
"""The CPU run must take under 3 minutes even on a loaded machine; timing is cut to fit."""

HARD_GRACE_S = 30.0
"""How far past the budget a profile's process may run before it is killed."""

MIN_TIMED_STEPS = 3
"""Timing is never cut below this many steps per loop, whatever the budget."""


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; passed to each profile's subprocess as JSON."""

    device: str
    profiles: tuple[str, ...]
    seq_len: int
    micro_batch: int
    ours_micro_batch: int
    steps: int
    warmup: int
    compile: bool
    time_budget_s: float | None
    threads: int | None
    seed: int = 0
    plain: bool = True
    """Run the plain loop beside ours; off when timing a speed lever against our default."""
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    """The `run.*` speed levers our step runs with (benchmarks/gpu.sh times each alone)."""

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


def cpu_threads(requested: int | None, cuda: bool) -> int | None:
    """The intra-op thread count to set, or None to keep torch's.

    On CPU the default is one thread: when other processes share the cores, OpenMP's barriers
    wait for descheduled threads and a step of the tiny model swings from 0.7 s to 25 s, which
    measures the machine's load rather than either loop. One thread gives both loops the same
    serial work, and the comparison is about the work each loop does.
    """
    if requested is None:
        return None if cuda else 1
    return requested or None


def profile_recipe(name: str, settings: Settings) -> tuple[str, ProfileSpec, str | None]:
    """One profile as a config names it: `model.profile`, its recipe, and `model.match`.

    On GPU the study's presets as they are (the 183M models); on CPU the tiny base with every
    profile rescaled to isotropic's parameter count, as configs/tiny-*.yaml do.
    """
    if name in PRESETS:
        return name, PRESETS[name], None
    if settings.is_cuda:
        return f"paper-18l-{name}", PRESETS[f"paper-18l-{name}"], None
    return name, lookup_spec(name, TINY_BASE), "isotropic"


def profile_shape(name: str, settings: Settings) -> ModelShape:
    """The per-layer widths both loops train for this profile."""
    _, spec, match = profile_recipe(name, settings)
    return resolve_shape(spec, match=match, seq_len=settings.seq_len)[0]


def write_token_data(
    directory: Path, vocab_size: int, n_tokens: int, seed: int, seq_len: int
) -> Path:
    """Uniform random ids in the trainer's on-disk format (meta.json + train.bin + val.bin).

    Content does not change a step's cost, and the format is what `layerwise.data.loader`
    reads, so our step fetches its windows exactly as a training run does; the validation
    split holds at least one window, which the trainer's setup opens.
    """
    dtype = token_dtype(vocab_size)
    rng = np.random.default_rng(seed)
    sizes = {"train": n_tokens, "val": max(4 * 1024, seq_len) + 1}
    for split, size in sizes.items():
        rng.integers(0, vocab_size, size, dtype=np.int64).astype(dtype).tofile(
            directory / f"{split}.bin"
        )
    meta = TokenMeta(
        data_dir=directory,
        tokenizer="synthetic-uniform",
        tokenizer_sha256="0" * 64,
        vocab_size=vocab_size,
        eos_id=vocab_size - 1,
        dtype=dtype.name,
        splits={s: SplitMeta(f"{s}.bin", size, 1) for s, size in sizes.items()},
        seed=seed,
        val_target_tokens=sizes["val"],
        text_bytes=0,
        invalid_utf8_documents=0,
        skipped_bad_records=0,
        empty_documents=0,
    )
    (directory / META_FILE).write_text(meta_to_json(meta), encoding="utf-8")
    return directory


def tokens_needed(settings: Settings) -> int:
    """Enough distinct windows that neither loop wraps around (a wrap costs a reshuffle)."""
    batch = max(settings.micro_batch, settings.ours_micro_batch)
    return int(1.2 * (settings.steps + settings.warmup + 4) * batch * (settings.seq_len + 1))
