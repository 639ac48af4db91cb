"""A trained run read back: its model at any verified checkpoint, with its shape and tokenizer,
and `init.from` (a run's, or a Hugging Face directory's, weights as a new run's start)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from layerwise.config.loader import load_config
from layerwise.config.schema import Config
from layerwise.data.meta import META_FILE, TokenMeta, read_meta
from layerwise.nn.model import Transformer
from layerwise.nn.state_dict_adapter import load_hf_state
from layerwise.profiles.shape import ModelShape
from layerwise.runs.files import CONFIG_FILE, TOKENIZER_DIR
from layerwise.training.build import build_model
from layerwise.training.checkpoint import choose_checkpoint, load_model_weights
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError


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
    damaged = [f"{path.name}: {why}" for path, why in choice.skipped if why != "other"]
    if choice.path is None:
        wanted = "no checkpoint" if step is None else f"no checkpoint of step {step}"
        detail = f" that verifies ({'; '.join(damaged)})" if damaged else ""
        raise UserError(f"{run_dir} has {wanted}{detail}; train it first (or pick another step)")
    for note in damaged:  # a newer checkpoint passed over: say which step is used instead
        print(f"layerwise: {run_dir}: skipped {note}; using {choice.path.name}", file=sys.stderr)
    vocab_size = config.model.vocab_size
    assert vocab_size is not None, "a run directory's config has its vocabulary resolved"
    shape, _ = config_shape(config, vocab_size)
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
