"""The run configuration users read and write: one typed dataclass per YAML section.

A config file holds sections (`model:`, `data:`, ...) whose keys are the fields below; the
docstring under each field is its documentation. Field metadata carries the checks the loader
(layerwise.config.loader) applies: bounds, counts written as "180M", and whether a setting is
operational (how a run executes) rather than part of the experiment (what it learns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layerwise.profiles.recipes import PRESETS
from layerwise.profiles.shape import BlockOptions, NormOrder
from layerwise.util.errors import UserError


def _bounds(
    low: float | None = None, *, above: float | None = None, high: float | None = None
) -> dict:
    """Field metadata: inclusive lower bound `low`, exclusive lower bound `above`, inclusive `high`."""
    return {"low": low, "above": above, "high": high}


_COUNT = {"count": True}
"""Field metadata for integers users write as budgets ("180M", "5.1B")."""

_OPERATIONAL = {"operational": True}
"""Field metadata for settings that change how or where a run executes but not what it learns.

Decided per field, not per section: a run may resume, or join a comparison, with these changed
(another device, micro-batch, parallel layout, checkpoint cadence), and the config hash ignores
them. Everything else (including `run.precision`, which changes the numbers) is the experiment.
"""


_BASE = PRESETS["paper-18l-isotropic"]
_BLOCK = BlockOptions()
"""The defaults of the model section: the study's 18-layer base and OLMo2's block choices."""


@dataclass
class ModelConfig:
    """The profile and the base it is applied to; the defaults are the study's 18-layer base."""

    profile: str = "isotropic"
    n_layers: int = field(default=_BASE.n_layers, metadata=_bounds(1))
    d_model: int = field(default=_BASE.d_model, metadata=_bounds(1))
    head_dim: int = field(default=_BASE.head_dim, metadata=_bounds(2))
    gqa_group: int = field(default=_BASE.gqa_group, metadata=_bounds(1))
    ffn_divisor: int = field(default=_BASE.ffn_divisor, metadata=_bounds(1))
    vocab_size: int | None = field(default=_BASE.vocab_size, metadata=_bounds(1))
    tie_embeddings: bool = _BASE.tie_embeddings
    ffn: list[float] | None = None
    qkv: list[float] | None = None
    frame: bool | None = None
    target_params: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    match: str | None = None
    match_by: Literal["params", "flops"] = "params"
    norm_order: NormOrder = _BLOCK.norm_order
    rope_theta: float = field(default=_BLOCK.rope_theta, metadata=_bounds(above=0))
    norm_eps: float = field(default=_BLOCK.norm_eps, metadata=_bounds(above=0))
    init_std: float = field(default=_BLOCK.init_std, metadata=_bounds(above=0))


_HASHED_WHEN_SET = {"hashed_when_set": True}
"""Field metadata for experiment keys added after runs were hashed: left out of the config hash
while null, so those runs keep their hashes (and stay comparable and resumable)."""


@dataclass
class DataConfig:
    """One `data prepare` directory (`dir`), or a weighted mixture of several (`sources`)."""

    dir: str = "data/python-docs"
    seq_len: int = field(default=1024, metadata=_bounds(1))
    val_windows: int = field(default=512, metadata=_bounds(1))
    """Validation windows per source: each source is validated on its own first windows."""
    sources: list[dict[str, Any]] | None = field(default=None, metadata=_HASHED_WHEN_SET)
    """Instead of `dir`: [{dir, weight, name}, ...]; each step's windows come from each source
    at its share of the weights. `name` (default: the directory's name) labels its metrics."""
    max_epochs: float | None = field(
        default=None, metadata={**_HASHED_WHEN_SET, **_bounds(above=0)}
    )
    """The most passes a run may make over any source's training windows; a run that would
    need more is refused before it starts. Null: no limit (repeats are noted on stderr)."""


SOURCE_KEYS = ("dir", "weight", "name")


@dataclass(frozen=True)
class DataSource:
    """One source of the training mixture, its weight normalised so that all sum to 1."""

    name: str
    dir: str
    weight: float


def data_sources(data: DataConfig) -> list[DataSource]:
    """The run's sources: `data.sources` as checked by the loader, or `data.dir` alone."""
    if data.sources is None:
        return [DataSource(name=Path(data.dir).name or "data", dir=data.dir, weight=1.0)]
    total = math.fsum(float(source["weight"]) for source in data.sources)
    return [
        DataSource(
            name=source.get("name") or Path(source["dir"]).name,
            dir=source["dir"],
            weight=float(source["weight"]) / total,
        )
        for source in data.sources
    ]


@dataclass
class BatchConfig:
    """Global batch in sequences or in tokens (one of the two); per-device micro-batch."""

    global_batch: int | None = field(default=None, metadata=_bounds(1))
    global_batch_tokens: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    micro_batch: int = field(default=8, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (`cosine`, `constant` or `wsd`, all after warmup)."""

    lr: float = field(default=6e-4, metadata=_bounds(above=0))
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = field(default=1e-8, metadata=_bounds(above=0))
    weight_decay: float = field(default=0.01, metadata=_bounds(0))
    grad_clip: float | None = field(default=1.0, metadata=_bounds(above=0))
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    warmup_steps: int = field(default=0, metadata=_bounds(0))
    warmup_fraction: float | None = field(default=None, metadata=_bounds(0, high=0.5))
    """Warmup as a share of the run, so a preset's warmup scales with `train.steps`."""
    min_lr_ratio: float = field(default=0.1, metadata=_bounds(0, high=1))
    decay_fraction: float = field(default=0.2, metadata=_bounds(above=0, high=1))


@dataclass
class TrainConfig:
    """Run length in optimizer steps or in tokens (one of the two)."""

    steps: int | None = field(default=None, metadata=_bounds(1))
    tokens: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    seed: int = field(default=0, metadata=_bounds(0))
    val_interval: int = field(default=500, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class CheckpointConfig:
    interval: int = field(default=1000, metadata={**_OPERATIONAL, **_bounds(1)})
    keep: int = field(default=2, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class ParallelConfig:
    """`auto` is DDP when launched on several processes, else a plain single-process model."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = field(default="auto", metadata=_OPERATIONAL)
    activation_checkpointing: bool = field(default=False, metadata=_OPERATIONAL)


WandbMode = Literal["online", "offline", "disabled"]


@dataclass
class WandbConfig:
    """Weights & Biases logging (`run.wandb.enabled=true`, the wandb extra), from rank 0.

    Operational as a whole (`run.wandb`): where a run is watched changes nothing it learns."""

    enabled: bool = False
    project: str = "layerwise"
    entity: str | None = None
    """The W&B team or user; null: the API key's default entity."""
    group: str | None = None
    """Null: the comparison, search or ladder directory when the run is one of its cells."""
    name: str | None = None
    """Null: the cell's id (`12l/crown/seed0`) in a comparison, else `PROFILE-seedN`."""
    tags: list[str] | None = None
    mode: WandbMode | None = None
    """Null: WANDB_MODE when it is set, else "online". "offline" needs no API key or network;
    upload later with `wandb sync`."""
    dir: str | None = None
    """Where W&B writes its files; null: the run directory (RUN_DIR/wandb)."""


@dataclass
class RunConfig:
    """How and where to run. All but `precision` and `fp8` leave what is learned unchanged."""

    dir: str = field(default="runs/default", metadata=_OPERATIONAL)
    resume: Literal["never", "auto"] = field(default="never", metadata=_OPERATIONAL)
    overwrite: bool = field(default=False, metadata=_OPERATIONAL)
    device: str = field(default="auto", metadata=_OPERATIONAL)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = field(default=False, metadata=_OPERATIONAL)
    compile_mode: Literal["blocks", "model"] = field(default="blocks", metadata=_OPERATIONAL)
    """With `compile`: each block on its own ("blocks"), or the whole model as one graph."""
    compile_loss: bool = field(default=False, metadata=_OPERATIONAL)
    """Compile the final norm, LM head and chunked loss (implied by compile_mode=model)."""
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = field(
        default="auto", metadata=_OPERATIONAL
    )
    """The SDPA kernel; "auto" lets PyTorch choose. CPU runs only auto, flash and math."""
    fp8: bool = False
    """FP8 matmuls through torchao's float8 training (CUDA, compute capability 8.9+). Not
    operational: like `precision`, it changes the numbers a run computes."""
    peak_tflops: float | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(above=0)})
    tensorboard: bool = field(default=False, metadata=_OPERATIONAL)
    progress: bool = field(default=True, metadata=_OPERATIONAL)
    log_interval: int = field(default=10, metadata={**_OPERATIONAL, **_bounds(1)})
    callbacks: list[str | dict[str, Any]] | None = field(default=None, metadata=_OPERATIONAL)
    """Callbacks to add to the run, each `package.module:Class` or {class: ..., args: {...}}
    (keyword arguments for the class); the class must subclass `layerwise.Callback`."""
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=_OPERATIONAL)
    export_at_end: bool | str = field(default=False, metadata=_OPERATIONAL)
    """When the run finishes, write its Hugging Face export (the hf extra): true for RUN_DIR/hf,
    or a directory; an earlier export there is replaced. Not after SIGINT/SIGTERM or an error."""


@dataclass
class EvalConfig:
    """Downstream tasks scored during training (layerwise.evaluation): none by default."""

    tasks: list[str] | None = field(default=None, metadata=_OPERATIONAL)
    """Task names, or ["core"] / ["all"]; see `layerwise eval --help`."""
    interval: int | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(1)})
    """Score every this many steps (and at step 0 and the end); null: at validation steps."""
    limit: int | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(1)})
    """At most this many examples per task, for quick in-loop signals."""
    dir: str | None = field(default=None, metadata=_OPERATIONAL)
    """The evaluation sets; null: ../shared/evals beside the checkout when present."""


@dataclass
class InitConfig:
    """Where a run's weights start: fresh (seeded) or another run's trained weights."""

    from_: str | None = field(default=None, metadata={"key": "from"})
    """A run directory to start from (its newest valid checkpoint), with a fresh optimizer and
    schedule: fine-tuning, or continuing on other data. Its shape must equal this run's."""


@dataclass
class CompareConfig:
    """What `layerwise compare` crosses with profiles and seeds; `train` ignores it."""

    variants: dict[str, dict[str, Any]] | None = field(default=None, metadata=_OPERATIONAL)
    """Named variants, each a mapping of `section.key` to value, e.g. {12l: {model.n_layers: 12}}:
    the overrides that make a variant's runs differ; the runs' own configs record the result."""


LadderSchedule = Literal["branched", "separate"]


@dataclass
class LadderConfig:
    """What `layerwise ladder` crosses: profiles x sizes x token budgets x seeds; `train` ignores
    it. Each size is one rung, every profile at a rung matched to the reference's size."""

    profiles: list[str] = field(default_factory=lambda: ["isotropic", "crown"])
    reference: str = "isotropic"
    """The profile every other is matched to at each rung and compared with."""
    sizes: list[int | str] | None = None
    """The rungs: a d_model each (heads follow at fixed head_dim, depth stays), or
    "D_MODELxN_LAYERS" to scale width and depth together, e.g. [64, 96, "128x6"]."""
    tokens_per_param: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0])
    """Token budgets as multiples of each rung's reference N."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    schedule: LadderSchedule = "branched"
    """"branched": one WSD run per (size, profile, seed) to the largest budget, with a cooldown
    branch from its stable phase at each smaller one (Hagele et al. 2024); "separate": one run
    per budget with the config's own schedule (the faithful, costlier option)."""
    count: Literal["non_embedding_head", "non_embedding", "total"] = "non_embedding_head"
    """Which parameter count is N: non-embedding plus the LM head (as OLMo and Porian et al.
    count it), non-embedding only, or all parameters."""
    lr_rule: Literal["config", "olmo"] = "config"
    """"config": optim.lr at every rung; "olmo": 0.0047 x (N / 108M)^(-1/3), OLMo's ladder."""
    lr_sweep: list[float] | None = None
    """Multipliers of the rule's LR tried for each profile at the smallest rung; each profile's
    best multiplier is then used at every rung."""
    bootstrap: int = field(default=1000, metadata=_bounds(100))
    targets: list[str] = field(default_factory=lambda: ["180M:5B", "1B:20B"])
    """Where the fits predict the loss difference: "PARAMS:TOKENS" pairs."""


@dataclass
class LearnConfig:
    """`layerwise learn-shape`: each layer's width learned in one run of a gated supernet
    (hard-concrete gates on FFN channels and GQA groups, a Lagrangian on the expected size, as
    in Sheared-LLaMA); `train` ignores it."""

    target_params: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    """The learned shape's parameter count; null: the config's own model's (its profile,
    `model.match` or `model.target_params` as the config resolves them)."""
    target_flops: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    """Instead of a parameter count: training FLOPs per token (`data.seq_len` long)."""
    max_ffn: float = field(default=4.0, metadata=_bounds(above=0))
    """The supernet's FFN width in every layer, as a multiple of d_model (the study's widest)."""
    max_qkv: float = field(default=1.0, metadata=_bounds(above=0))
    """Its query width as a multiple of d_model, in whole GQA groups."""
    fix_at: float = field(default=0.7, metadata=_bounds(above=0, high=1))
    """Share of `train.steps` after which the gates are fixed to 0 or 1: the rest of the run
    trains the narrower model they leave."""
    target_warmup: float = field(default=0.3, metadata=_bounds(0, high=1))
    """Share of the gated steps over which the target moves from the supernet's expected size
    to the budget (Sheared-LLaMA's warmup), so the gates are not crushed in the first steps."""
    init_keep: float = field(default=0.95, metadata=_bounds(above=0, high=0.999))
    """Every gate's initial probability of being open."""
    gate_lr: float = field(default=0.05, metadata=_bounds(above=0))
    """AdamW learning rate of the gates' log_alpha (constant: not on the model's schedule)."""
    lambda_lr: float = field(default=0.05, metadata=_bounds(above=0))
    """AdamW learning rate of the ascent on the two Lagrange multipliers (constant)."""
    log_interval: int = field(default=10, metadata=_bounds(1))
    """Steps between records of the gates' state (the trajectory figure)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    compare: CompareConfig = field(default_factory=CompareConfig, metadata=_OPERATIONAL)
    """Operational as a whole: left out of the config hash, so adding it changed no run's hash."""
    ladder: LadderConfig = field(default_factory=LadderConfig, metadata=_OPERATIONAL)
    """Operational as a whole, as `compare` is: it says which runs to make, not what one learns."""
    learn: LearnConfig = field(default_factory=LearnConfig, metadata=_OPERATIONAL)
    """Operational for `train`, which never reads it; `learn-shape` refuses to continue a run
    whose `learn:` settings changed (layerwise.learn.run)."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's sequences are spread over ranks and micro-batches."""

    global_batch: int
    micro_batch: int
    accum_steps: int
    world_size: int
    seq_len: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


# ---------------------------------------------------------------------------------------------
# Derived quantities


def global_batch(config: Config) -> int:
    """Sequences per optimizer step, whichever way the config gave it."""
    if config.batch.global_batch is not None:
        return config.batch.global_batch
    assert config.batch.global_batch_tokens is not None
    return config.batch.global_batch_tokens // config.data.seq_len


def batch_plan(config: Config, world_size: int) -> BatchPlan:
    """Gradient accumulation steps for this world size, refusing splits that do not divide."""
    sequences, micro = global_batch(config), config.batch.micro_batch
    per_step = micro * world_size
    if sequences % per_step:
        raise UserError(
            f"batch: the global batch of {sequences} sequences cannot be split into micro-batches of "
            f"{micro} on {world_size} rank(s) ({micro} x {world_size} = {per_step} does not divide "
            f"{sequences}); choose a global batch that is a multiple of {per_step} or another "
            "batch.micro_batch"
        )
    return BatchPlan(
        global_batch=sequences,
        micro_batch=micro,
        accum_steps=sequences // per_step,
        world_size=world_size,
        seq_len=config.data.seq_len,
    )


def warmup_steps(optim: OptimConfig, total: int) -> int:
    """Warmup length in steps for a run of `total` steps, however the config gave it."""
    if optim.warmup_fraction is not None:
        return round(optim.warmup_fraction * total)
    return optim.warmup_steps


def total_steps(config: Config) -> int:
    """Optimizer steps of the run; a token budget is rounded up to whole steps."""
    if config.train.steps is not None:
        return config.train.steps
    assert config.train.tokens is not None
    return math.ceil(config.train.tokens / (global_batch(config) * config.data.seq_len))
