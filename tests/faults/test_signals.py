"""SIGTERM and SIGINT at every moment of a run: the command stops promptly, says so, exits
128 + the signal's number (143, 130), and `--resume` finishes a run equal to one that was
never interrupted.

The moments: before the first step, in the middle of a step's forward and backward, during a
validation, during the final validation after the last step (where a signal used to be
swallowed), and while a checkpoint is being saved. Comparisons (between and inside cells) and
searches (between rungs) are covered in tests/compare and tests/search.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from helpers import train_losses
from layerwise.cli import main as cli_main
from layerwise.training import checkpoint, step, trainer
from layerwise.training.callbacks.base import Callback, TrainerView

pytestmark = pytest.mark.slow


class SignalWhen(Callback):
    """Sends the signal to this process from inside a trainer event."""

    def __init__(self, signum: int, event: str, when: Callable[[TrainerView], bool]) -> None:
        self.signum, self.event, self.when = signum, event, when

    def _maybe(self, event: str, trainer: TrainerView) -> None:
        if event == self.event and self.when(trainer):
            self.event = "done"  # once
            os.kill(os.getpid(), self.signum)

    def on_train_start(self, trainer: TrainerView) -> None:
        self._maybe("start", trainer)

    def on_evaluation(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        self._maybe("evaluation", trainer)


def with_callback(patch: pytest.MonkeyPatch, callback: Callback) -> None:
    real = trainer.train
    patch.setattr(
        trainer,
        "train",
        lambda config, callbacks=(), *rest: real(config, [*callbacks, callback], *rest),
    )


def signal_inside(patch: pytest.MonkeyPatch, owner: Any, name: str, signum: int, call: int) -> None:
    real, calls = getattr(owner, name), []

    def signalling(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    patch.setattr(owner, name, signalling)


def arrange(patch: pytest.MonkeyPatch, moment: str, signum: int) -> None:
    if moment == "before the first step":
        with_callback(patch, SignalWhen(signum, "start", lambda t: True))
    elif moment == "in the middle of a step":
        signal_inside(patch, step, "forward_backward", signum, call=6)
    elif moment == "during a validation":
        with_callback(patch, SignalWhen(signum, "evaluation", lambda t: t.state.step == 5))
    elif moment == "during the final validation":
        with_callback(patch, SignalWhen(signum, "evaluation", lambda t: t.is_last_step))
    else:  # while the second checkpoint is saved
        signal_inside(patch, checkpoint, "write_manifest", signum, call=2)


MOMENTS = [
    "before the first step",
    "in the middle of a step",
    "during a validation",
    "during the final validation",
    "while a checkpoint is saved",
]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_signal_at_any_moment_stops_the_run_and_resume_equals_an_uninterrupted_one(
    tiny_run, reference: Path, tmp_path: Path, moment: str, signum: int,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = tiny_run()
    with pytest.MonkeyPatch.context() as patch:
        arrange(patch, moment, signum)
        assert cli_main(["train", str(config)]) == 128 + signum
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received" in err and "--resume" in err
    run_dir = tmp_path / "run"
    stopped_at = train_losses(run_dir)[-1][0] if train_losses(run_dir) else 0
    assert not (run_dir / "summary.json").exists(), "an interrupted run is not reported finished"
    assert cli_main(["train", str(config), "--resume"]) == 0
    assert train_losses(run_dir) == train_losses(reference), f"stopped at step {stopped_at}"
    assert (run_dir / "summary.json").exists()
