"""The model a config describes: vocabulary, per-layer widths, block options, precision.

`train()` builds its model here, and so does everything that reads a finished run back
(`load_model`): one place decides how a config becomes a `Transformer`, so a model loaded for
evaluation, analysis or export is exactly the one that was trained.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from layerwise.config.schema import Config, ModelConfig
from layerwise.data.meta import TokenMeta, check_vocab_fits, read_meta
from layerwise.distributed.env import DistInfo
from layerwise.distributed.parallelize import SpeedOptions, Strategy
from layerwise.nn.model import Transformer
from layerwise.profiles.budget import BudgetResult, resolve_shape
from layerwise.profiles.recipes import ProfileSpec, lookup_spec
from layerwise.profiles.shape import BlockOptions, ModelShape
from layerwise.util.errors import UserError

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


def config_shape(config: Config, vocab_size: int) -> tuple[ModelShape, BudgetResult | None]:
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


def speed_options(config: Config) -> SpeedOptions:
    """The run's speed levers (`run.compile_mode`, `compile_loss`, `attention`, `fp8`)."""
    run = config.run
    return SpeedOptions(
        compile_mode=run.compile_mode,
        compile_loss=run.compile_loss,
        attention=run.attention,
        fp8=run.fp8,
    )


def parallel_strategy(config: Config, dist: DistInfo) -> Strategy:
    if config.parallel.strategy == "auto":
        return "ddp" if dist.world_size > 1 else "none"
    return config.parallel.strategy


def with_data_vocab(config: Config) -> Config:
    """The config with `model.vocab_size` filled in from the data, checked against its ids."""
    meta = read_meta(config.data.dir)
    vocab_size = resolve_vocab_size(config.model, meta)
    check_vocab_fits(meta, vocab_size)
    return replace(config, model=replace(config.model, vocab_size=vocab_size))
