"""`run_search`: check the plan, open (or continue) the study, run trials, write the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback

from layerwise.search.objective import Timing, TrialRunner
from layerwise.search.plan import SearchPlan, check_plan
from layerwise.search.report import ReportFiles, write_search_report
from layerwise.search.study import DONE, done_count, open_study
from layerwise.training.callbacks.base import Callback


@dataclass(frozen=True)
class SearchResult:
    """The study after this worker's trials, where its report is, and what the search cost."""

    study: optuna.Study
    files: ReportFiles
    timing: Timing
    wall_s: float
    """Seconds this call spent running trials (training, sampling, storage)."""

    @property
    def overhead_fraction(self) -> float | None:
        """Share of the trial loop not spent inside `train`: sampling, solving, bookkeeping."""
        if self.wall_s <= 0 or self.timing.train_s <= 0:
            return None
        return (self.wall_s - self.timing.train_s) / self.wall_s


def run_search(
    plan: SearchPlan,
    out: str | Path,
    trials: int,
    storage: str | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    pruner: str = "sha",
    callbacks: Sequence[Callback] = (),
    say: Callable[[str], None] = print,
    start_from: Sequence[str] = (),
) -> SearchResult:
    """Run trials until the study holds `trials` finished (complete or pruned) ones, counting
    those of earlier runs and of other workers, then write DIR/trials.csv and DIR/report.md.
    `sampler` (tpe, cmaes, nsga2, gp, random) is kept by the study: None continues with the
    study's own, tpe for a new one; another is refused. `start_from` (shape files, such as
    `layerwise learn-shape` writes) are trained as the first sampled trials."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_plan(plan, out)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are announced by `say`
    study = open_study(plan, out, storage, sampler, seed, pruner, start_from)
    runner = TrialRunner(plan, out, callbacks, say)
    started = time.perf_counter()
    if done_count(study) < trials:
        study.optimize(runner, callbacks=[MaxTrialsCallback(trials, states=DONE)])
    wall = time.perf_counter() - started
    files = write_search_report(study, plan, out)
    return SearchResult(study, files, runner.timing, wall)
