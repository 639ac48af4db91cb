"""Per-layer widths of the run a config describes, without torch: the vocabulary a config
resolves to, the recipe of its profile, and the shape (rescaled to a budget where asked).

`training.build` builds the model from this shape and re-exports these names; commands that only
show or plan widths (`profile show CONFIG`) read them here and start without the training stack.
"""

from __future__ import annotations

import math
from dataclasses import replace

from layerwise.config.schema import Config, ModelConfig
from layerwise.data.meta import TokenMeta
from layerwise.profiles.budget import BudgetResult, resolve_shape
from layerwise.profiles.recipes import ProfileSpec, lookup_spec
from layerwise.profiles.shape import ModelShape
from layerwise.util.errors import UserError

BASE_KEYS = (
    "n_layers",
    "d_model",
    "head_dim",
    "gqa_group",
    "vocab_size",
    "tie_embeddings",
    "ffn_divisor",
)
"""The `model.*` keys that make a profile's base (a preset fixes its own)."""

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
        for name in BASE_KEYS
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
