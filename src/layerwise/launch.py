"""`layerwise.train`: the core trainer with every callback the config asks for.

The trainer (layerwise.training) knows nothing of the capabilities built on it; this is where a
config's in-loop downstream evaluation (`eval.tasks`), its Hugging Face export
(`run.export_at_end`) and its own callbacks (`run.callbacks`) join a run. Every command that
trains (train, compare, search, demo) comes through here, so a setting in the config means the
same whichever command runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layerwise.config.loader import callback_spec
from layerwise.config.schema import Config, data_sources
from layerwise.evaluation.callback import DownstreamEval
from layerwise.hf.callback import export_at_end
from layerwise.runs.files import RunSummary
from layerwise.training import trainer
from layerwise.training.build import build_model
from layerwise.training.callbacks.base import Callback
from layerwise.training.trainer import ModelBuilder
from layerwise.util.errors import UserError
from layerwise.util.files import check_output
from layerwise.util.imports import import_object


def configured_callbacks(config: Config) -> list[Callback]:
    """The callbacks `config` itself asks for: downstream tasks, the export at the end (checked
    now, before the run builds anything), then `run.callbacks`."""
    callbacks: list[Callback] = []
    if config.eval.tasks:
        # the text is tokenized with the data's tokenizer: the first source's (they share one)
        tokenizer_dir = data_sources(config.data)[0].dir
        callbacks.append(
            DownstreamEval(
                config.eval, tokenizer_dir, config.data.seq_len, config.train.val_interval
            )
        )
    export = export_at_end(config)
    if export is not None:
        callbacks.append(export)
    for index, entry in enumerate(config.run.callbacks or ()):
        callbacks.append(_user_callback(index, entry))
    return callbacks


def _user_callback(index: int, entry: str | dict[str, Any]) -> Callback:
    """Entry `index` of `run.callbacks`, built. The loader has checked, naming the file, that
    the class imports and takes these arguments; what is left is known only here."""
    where = f"run.callbacks[{index}]"
    try:
        path, args = callback_spec(entry)
        cls = import_object(path)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise UserError(f"{where}: {path} is not a subclass of layerwise.Callback")
    try:
        return cls(**args)
    except TypeError as exc:
        raise UserError(f"{where}: {path}({', '.join(args)}) cannot be built: {exc}") from None


def train(
    config: Config, callbacks: Sequence[Callback] = (), build: ModelBuilder = build_model
) -> RunSummary:
    """Train (or, with run.resume=auto, continue) one run and return its summary.

    `callbacks` join the built-in ones and those the config asks for, ordered by priority;
    `build` makes the model from the run's shape (see layerwise.training.trainer.ModelBuilder).
    Raises UserError for bad settings or data, NonFiniteLoss if training diverges (the last
    good checkpoint stays) and RunInterrupted after a signal-triggered checkpoint; a run.dir
    that cannot be written is a UserError before anything is built.
    """
    check_output(config.run.dir, "run.dir", "directory")
    return trainer.train(config, [*configured_callbacks(config), *callbacks], build)
