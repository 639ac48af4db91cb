"""`layerwise.train`: the core trainer with every callback the config asks for.

The trainer (layerwise.training) knows nothing of the capabilities built on it; this is where a
config's in-loop downstream evaluation (`eval.tasks`) joins a run. Every command that trains
(train, compare, search, demo) comes through here, so a setting in the config means the same
whichever command runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerwise.config.schema import Config
from layerwise.evaluation.callback import DownstreamEval
from layerwise.runs.files import RunSummary
from layerwise.training import trainer
from layerwise.training.callbacks.base import Callback
from layerwise.util.files import check_output


def configured_callbacks(config: Config) -> list[Callback]:
    """The callbacks `config` itself asks for."""
    if not config.eval.tasks:
        return []
    return [
        DownstreamEval(config.eval, config.data.dir, config.data.seq_len, config.train.val_interval)
    ]


def train(config: Config, callbacks: Sequence[Callback] = ()) -> RunSummary:
    """Train (or, with run.resume=auto, continue) one run and return its summary.

    `callbacks` join the built-in ones and those the config asks for, ordered by priority.
    Raises UserError for bad settings or data, NonFiniteLoss if training diverges (the last
    good checkpoint stays) and RunInterrupted after a signal-triggered checkpoint; a run.dir
    that cannot be written is a UserError before anything is built.
    """
    check_output(config.run.dir, "run.dir", "directory")
    return trainer.train(config, [*configured_callbacks(config), *callbacks])
