"""The model a config describes: vocabulary, per-layer widths, block options, precision.

`train()` builds its model here, and so does everything that reads a finished run back
(`load_model`): one place decides how a config becomes a `Transformer`, so a model loaded for
evaluation, analysis or export is exactly the one that was trained.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from layerwise.checkpointing import choose_checkpoint, load_model_weights
from layerwise.config import Config, ModelConfig, load_config
from layerwise.data import META_FILE, TokenMeta, check_vocab_fits, read_meta
from layerwise.distributed import DistInfo
from layerwise.errors import UserError
from layerwise.model import BlockOptions, Transformer
from layerwise.parallelize import SpeedOptions
from layerwise.profiles import BudgetResult, ModelShape, ProfileSpec, lookup_spec, resolve_shape
from layerwise.rundir import CONFIG_FILE, TOKENIZER_DIR

VOCAB_MULTIPLE = 64
"""`model.vocab_size: null` rounds the data's vocabulary up to this, for tensor-core-friendly shapes."""


def resolve_vocab_size(model: ModelConfig, meta: TokenMeta) -> int:
    """The configured vocabulary, or the data's rounded up to a multiple of VOCAB_MULTIPLE."""
    if model.vocab_size is not None:
        return model.vocab_size
    return math.ceil(meta.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def profile_spec(model: ModelConfig, vocab_size: int) -> ProfileSpec:
    """The recipe of `model.profile` on the configured base, with any explicit anchors applied.

    A preset fixes its own base, so a config that also sets a different base is refused rather
    than one of the two being silently ignored.
    """
    base = ProfileSpec(
        ffn=(1.0,),
        qkv=(1.0,),
        n_layers=model.n_layers,
        d_model=model.d_model,
        head_dim=model.head_dim,
        gqa_group=model.gqa_group,
        vocab_size=vocab_size,
        tie_embeddings=model.tie_embeddings,
        ffn_divisor=model.ffn_divisor,
    )
    spec = lookup_spec(model.profile, base)
    conflicts = [
        f"model.{name}={getattr(base, name)} (preset: {getattr(spec, name)})"
        for name in (
            "n_layers",
            "d_model",
            "head_dim",
            "gqa_group",
            "vocab_size",
            "tie_embeddings",
            "ffn_divisor",
        )
        if getattr(spec, name) != getattr(base, name)
    ]
    if conflicts:
        raise UserError(
            f"model.profile={model.profile} is a preset with its own base, which differs in "
            f"{', '.join(conflicts)}; use the shape name (e.g. model.profile=crown) to apply the "
            "profile to your base, or remove those keys"
        )
    return replace(
        spec,
        ffn=spec.ffn if model.ffn is None else tuple(model.ffn),
        qkv=spec.qkv if model.qkv is None else tuple(model.qkv),
        frame=spec.frame if model.frame is None else model.frame,
    )


def build_shape(config: Config, vocab_size: int) -> tuple[ModelShape, BudgetResult | None]:
    """Per-layer widths of the run, computed once: the recipe as given or rescaled to a budget."""
    model = config.model
    spec = profile_spec(model, vocab_size)
    if model.target_params is not None:
        return resolve_shape(
            spec, target=model.target_params, metric="params", seq_len=config.data.seq_len
        )
    return resolve_shape(
        spec, match=model.match, metric=model.match_by, seq_len=config.data.seq_len
    )


def block_options(config: Config) -> BlockOptions:
    return BlockOptions(
        norm_order=config.model.norm_order,
        rope_theta=config.model.rope_theta,
        norm_eps=config.model.norm_eps,
        max_seq_len=config.data.seq_len,
        init_std=config.model.init_std,
    )


def build_model(shape: ModelShape, config: Config, device: torch.device) -> Transformer:
    """The model on `device`, initialised from `train.seed` on the CPU so every device agrees."""
    torch.manual_seed(config.train.seed)
    return Transformer(shape, block_options(config)).to(device)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; float32 (None) elsewhere unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def speed_options(config: Config) -> SpeedOptions:
    """The run's speed levers (`run.compile_mode`, `compile_loss`, `attention`, `fp8`)."""
    run = config.run
    return SpeedOptions(
        compile_mode=run.compile_mode,
        compile_loss=run.compile_loss,
        attention=run.attention,
        fp8=run.fp8,
    )


def parallel_strategy(config: Config, dist: DistInfo) -> str:
    if config.parallel.strategy == "auto":
        return "ddp" if dist.world_size > 1 else "none"
    return config.parallel.strategy


def with_data_vocab(config: Config) -> Config:
    """The config with `model.vocab_size` filled in from the data, checked against its ids."""
    meta = read_meta(config.data.dir)
    vocab_size = resolve_vocab_size(config.model, meta)
    check_vocab_fits(meta, vocab_size)
    return replace(config, model=replace(config.model, vocab_size=vocab_size))


@dataclass
class TrainedModel:
    """A finished (or interrupted) run's model, unwrapped, with what it needs to be used."""

    model: Transformer
    shape: ModelShape
    meta: TokenMeta
    """The tokens the model was trained on: tokenizer, vocabulary, EOS (see layerwise.data)."""
    config: Config
    step: int
    checkpoint: Path


def load_model(
    run_dir: str | Path, step: int | None = None, device: str | torch.device = "cpu"
) -> TrainedModel:
    """The model of `run_dir` at checkpoint `step` (default: the newest that verifies), in eval
    mode on `device`, as a plain `Transformer` whatever layout, precision or compilation it was
    trained with. Its tokenizer comes from the run directory, so the data need not be there."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} holds no {CONFIG_FILE}: is it a run directory?")
    config = load_config(run_dir / CONFIG_FILE)
    choice = choose_checkpoint(run_dir, lambda found: None if step in (None, found) else "other")
    if choice.path is None:
        damaged = [f"{path.name}: {why}" for path, why in choice.skipped if why != "other"]
        wanted = "no checkpoint" if step is None else f"no checkpoint of step {step}"
        detail = f" that verifies ({'; '.join(damaged)})" if damaged else ""
        raise UserError(f"{run_dir} has {wanted}{detail}; train it first (or pick another step)")
    vocab_size = config.model.vocab_size
    assert vocab_size is not None, "a run directory's config has its vocabulary resolved"
    shape, _ = build_shape(config, vocab_size)
    with torch.random.fork_rng(devices=[]):
        model = build_model(shape, config, torch.device(device))
    load_model_weights(choice.path, model)
    return TrainedModel(
        model.eval(), shape, run_token_meta(run_dir, config), config, choice.step, choice.path
    )


def init_from(model: Transformer, shape: ModelShape, source: str) -> None:
    """Copy the weights of `source` (`init.from`) into `model`, refusing a source of another
    shape: fine-tuning starts from exactly the source's trained weights. `source` is a run
    directory, or a Hugging Face directory (config.json, no config.yaml) of an Olmo2 model."""
    path = Path(source)
    if not (path / CONFIG_FILE).is_file() and (path / "config.json").is_file():
        from layerwise.hf.importer import load_hf_state

        source_shape, state = load_hf_state(path)
    else:
        trained = load_model(source)
        source_shape, state = trained.shape, trained.model.state_dict()
    if source_shape != shape:
        raise UserError(
            f"init.from={source}: its model has another shape ({describe_shape(source_shape)}) "
            f"than this run's ({describe_shape(shape)}); use the same model settings and "
            "tokenizer as the source run"
        )
    model.load_state_dict(state)


def describe_shape(shape: ModelShape) -> str:
    widths = ",".join(str(layer.d_ffn) for layer in shape.layers)
    return f"d_model {shape.d_model}, vocab {shape.vocab_size}, d_ffn {widths}"


def run_token_meta(run_dir: Path, config: Config) -> TokenMeta:
    """The token meta a run recorded, else (runs from before it did) its data directory's."""
    recorded = run_dir / TOKENIZER_DIR
    return read_meta(recorded if (recorded / META_FILE).exists() else config.data.dir)
