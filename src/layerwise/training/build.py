"""The model a config describes: vocabulary, per-layer widths, block options, precision.

`train()` builds its model here, and so does everything that reads a finished run back
(`load_model`): one place decides how a config becomes a `Transformer`, so a model loaded for
evaluation, analysis or export is exactly the one that was trained. The widths themselves come
from `training.shape` (torch-free).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from layerwise.config.schema import Config, data_sources
from layerwise.data.meta import check_vocab_fits, read_meta
from layerwise.distributed.env import DistInfo
from layerwise.distributed.parallelize import SpeedOptions, Strategy
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import BlockOptions, ModelShape
from layerwise.training.shape import resolve_vocab_size


def block_options(config: Config) -> BlockOptions:
    return BlockOptions(
        norm_order=config.model.norm_order,
        rope_theta=config.model.rope_theta,
        norm_eps=config.model.norm_eps,
        max_seq_len=config.data.seq_len,
        init_std=config.model.init_std,
    )


ModelClass = Callable[[ModelShape, BlockOptions], Transformer]
"""Makes the model from its widths and block options: `Transformer`, or a subclass with more
to it (learned shapes' gated supernet, its other settings bound with `functools.partial`)."""


def build_model(
    shape: ModelShape, config: Config, device: torch.device, make: ModelClass = Transformer
) -> Transformer:
    """The model on `device`, initialised from `train.seed` on the CPU so every device agrees."""
    torch.manual_seed(config.train.seed)
    return make(shape, block_options(config)).to(device)


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
    meta = read_meta(data_sources(config.data)[0].dir)  # the sources share one tokenizer
    vocab_size = resolve_vocab_size(config.model, meta)
    check_vocab_fits(meta, vocab_size)
    return replace(config, model=replace(config.model, vocab_size=vocab_size))
