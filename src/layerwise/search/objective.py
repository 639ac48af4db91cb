"""One trial: propose a shape, resolve it to rounded widths, train it rung by rung, report.

Trials are keyed by their rounded per-layer widths: a shape that rounds to one a finished trial
already trained reuses that trial's rung losses (and its pruning) instead of training again.
Each trial trains in `DIR/trials/trial-NNNN/`, an ordinary run directory (a trial that resumes
an interrupted one continues that one's directory). Rung k is the same run extended to r_k
steps (see layerwise.search.plan); after each rung the validation loss is reported to the
pruner. The five baselines are never pruned: their full-budget losses are the bar a found shape
must clear, and the pruner compares sampled shapes against them at every rung.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from layerwise.launch import train
from layerwise.profiles.shape import flops_per_token, total_params
from layerwise.runs.files import RunSummary
from layerwise.runs.lock import DirectoryLock
from layerwise.search.plan import SearchPlan, resolved_shape
from layerwise.search.space import Shape, shape_key, shape_of, suggest
from layerwise.search.study import DONE, origin, trial_dir
from layerwise.training.callbacks.base import Callback
from layerwise.training.optim import wsd_decay_start
from layerwise.training.step import NonFiniteLoss
from layerwise.training.trainer import RunInterrupted
from layerwise.util.errors import UserError
from layerwise.util.signals import Terminated


class TrialInterrupted(KeyboardInterrupt):
    """A signal stopped the search between a trial's rungs; the trial is failed without an
    `error`, so the next start queues it again."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"{name} received between rungs: stopped; rerun the same command to continue"


@dataclass
class Timing:
    """Seconds inside `train`, set against the search's wall time to measure its overhead."""

    train_s: float = 0.0


@dataclass
class TrialRunner:
    """The objective Optuna calls; `callbacks` are added to every trial's training run."""

    plan: SearchPlan
    out: Path
    callbacks: Sequence[Callback] = ()
    say: Callable[[str], None] = print
    timing: Timing = field(default_factory=Timing)

    def __call__(self, trial: optuna.Trial) -> float:
        # held across every rung (each rung's `train` borrows it): a worker killed mid-trial
        # leaves the lock behind, which is how the next start knows the trial was abandoned
        lock = DirectoryLock(trial_dir(self.out, origin_of(trial)), "search trial", lend=True)
        try:
            with lock:
                return self._run(trial)
        except (RunInterrupted, KeyboardInterrupt, optuna.TrialPruned):
            raise  # an interruption is a FAIL without `error`: the next start queues it again
        except Terminated as exc:
            # Optuna ends a trial on an Exception or KeyboardInterrupt only: a SystemExit would
            # leave it RUNNING for good, never queued again
            raise TrialInterrupted(exc.signum) from None
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        n_layers = self.plan.base().model.n_layers
        params = suggest(trial, self.plan.space)
        baseline = trial.user_attrs.get("baseline")
        shape = None
        if not baseline:
            shape = shape_of(params, self.plan.space, n_layers)
            trial.set_user_attr("source", type(trial.study.sampler).__name__)
            trial.set_user_attr("ffn", list(shape.ffn))
            trial.set_user_attr("qkv", list(shape.qkv))
            trial.set_user_attr("frame", shape.frame)
        run_dir = trial_dir(self.out, origin_of(trial))
        steps = self.plan.rung_steps()
        try:
            config = self.plan.trial_config(baseline, shape, run_dir, steps[-1])
            model_shape = resolved_shape(config)
        except UserError as exc:
            trial.set_user_attr("infeasible", str(exc))
            raise optuna.TrialPruned(f"shape cannot meet the budget: {exc}") from None
        key = shape_key(model_shape)
        trial.set_user_attr("key", key)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("params", total_params(model_shape))
        trial.set_user_attr("flops_per_token", flops_per_token(model_shape, config.data.seq_len))
        trial.set_user_attr("d_ffn", [layer.d_ffn for layer in model_shape.layers])
        trial.set_user_attr("heads", [layer.n_heads for layer in model_shape.layers])
        earlier = same_shape(trial.study, key, exclude=origin_of(trial))
        if earlier is not None:
            return reuse(trial, earlier, self.say)
        return self._train_rungs(trial, baseline, shape, run_dir, steps)

    def _train_rungs(
        self,
        trial: optuna.Trial,
        baseline: str | None,
        shape: Shape | None,
        run_dir: Path,
        steps: list[int],
    ) -> float:
        done = {int(s): float(v) for s, v in trial.user_attrs.get("resumed_rungs", [])}
        trained, loss, compute = 0.0, float("nan"), 0
        label = baseline or f"trial {trial.number}"
        for rung, rung_steps in enumerate(steps):
            config = self.plan.trial_config(baseline, shape, run_dir, rung_steps)
            if rung_steps in done and rung < len(steps) - 1:
                loss = done[rung_steps]
            else:
                clock = time.perf_counter()
                try:
                    summary = train(config, self.callbacks)
                except NonFiniteLoss as exc:
                    trial.set_user_attr("diverged", str(exc))
                    raise optuna.TrialPruned(f"diverged: {exc}") from None
                finally:
                    elapsed = time.perf_counter() - clock
                    trained += elapsed
                    self.timing.train_s += elapsed  # pruned trials' training counts too
                loss = checked_loss(summary)
                start = wsd_decay_start(steps[rung - 1], config.optim) if rung else 0
                compute += (rung_steps - start) * (summary.tokens // max(1, summary.steps))
                trial.set_user_attr("tokens", summary.tokens)
                if summary.mean_tokens_per_s is not None:
                    trial.set_user_attr("tokens_per_s", summary.mean_tokens_per_s)
            trial.report(loss, rung_steps)
            trial.set_user_attr("compute_tokens", compute)
            trial.set_user_attr("train_s", trained)
            self.say(
                f"{label}: rung {rung + 1}/{len(steps)} ({rung_steps} steps) val loss {loss:.4f}"
            )
            # every trial asks: Optuna's halving pruners rank a rung among the trials that
            # asked at it, so the baselines must ask to be the bar; a baseline is never stopped
            prune = rung < len(steps) - 1 and trial.should_prune()
            if prune and baseline is None:
                raise optuna.TrialPruned(f"pruned at rung {rung + 1}")
        return loss


def checked_loss(summary: RunSummary) -> float:
    if summary.final_val_loss is None:
        raise UserError(f"{summary.run_dir} finished without a validation loss")
    return summary.final_val_loss


def origin_of(trial: optuna.Trial) -> int:
    return int(trial.user_attrs.get("resume_of", trial.number))


def same_shape(study: optuna.Study, key: str, exclude: int) -> FrozenTrial | None:
    """The first finished trial (not a reuse itself) that trained the same rounded widths."""
    for other in study.get_trials(deepcopy=False, states=DONE):
        if (
            other.user_attrs.get("key") == key
            and "reused_from" not in other.user_attrs
            and "infeasible" not in other.user_attrs
            and origin(other) != exclude
        ):
            return other
    return None


def reuse(trial: optuna.Trial, earlier: FrozenTrial, say: Callable[[str], None]) -> float:
    """Report the earlier trial's rungs as this trial's, and end the same way it did."""
    trial.set_user_attr("reused_from", earlier.number)
    trial.set_user_attr("compute_tokens", 0)
    trial.set_user_attr("tokens", earlier.user_attrs.get("tokens"))
    for step, value in sorted(earlier.intermediate_values.items()):
        trial.report(value, step)
    say(f"trial {trial.number}: same widths as trial {earlier.number}, its result reused")
    if earlier.state == TrialState.PRUNED or earlier.value is None:
        raise optuna.TrialPruned(f"same widths as trial {earlier.number}, which was pruned")
    return float(earlier.value)
