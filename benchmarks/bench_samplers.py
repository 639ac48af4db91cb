"""The search's samplers under its pruners on a synthetic loss, no training (docs/search.md).

The loss of a trial is the squared distance of its 10 log anchors (`--frame off`, the default
ranges) from a target point, plus 10/steps at each rung, so a shorter rung reads worse as a
short run does. Each row runs `--trials` trials with the sampler and pruner `layerwise search`
builds (`make_sampler`, `make_pruner`, rungs of 2, 6 and 18 steps), over `--seeds` seeds and two
target points, and prints the trials that completed, the generations an evolutionary sampler
reached, and the mean best loss. "complete only" is CMA-ES counting complete trials alone,
Optuna's default, which the search does not use. Hyperband assigns trials to brackets by a
hash of the study's name, which Optuna draws at random, so its rows vary a little between runs.

    PYTHONPATH=src python benchmarks/bench_samplers.py [--trials 100] [--seeds 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import optuna

from layerwise.search.plan import SearchPlan
from layerwise.search.space import SearchSpace, suggest
from layerwise.search.study import make_pruner, make_sampler

SPACE = SearchSpace(frame="off")
PLAN = SearchPlan("unused.yaml", space=SPACE, trial_steps=18)
TARGETS = (0.0, 0.3)
"""Log multipliers of the loss's minimum: every anchor at 1, and every anchor at e^0.3."""
GENERATION_ATTRS = ("cma:generation", "NSGAIISampler:generation")
ROWS: list[tuple[str, str, str]] = [
    ("cmaes", "sha", "pruned trials counted"),
    ("cmaes", "sha", "complete only"),
    ("cmaes", "hyperband", "pruned trials counted"),
    ("cmaes", "hyperband", "complete only"),
    ("nsga2", "sha", ""),
    ("nsga2", "hyperband", ""),
    ("nsga2", "none", ""),
    ("tpe", "sha", ""),
    ("random", "sha", ""),
]


def objective(target: float) -> Callable[[optuna.Trial], float]:
    steps = PLAN.rung_steps()

    def loss(trial: optuna.Trial) -> float:
        params = suggest(trial, SPACE)
        distance = sum((np.log(float(v)) - target) ** 2 for v in params.values())
        for rung, rung_steps in enumerate(steps):
            trial.report(distance + 10 / rung_steps, rung_steps)
            if rung < len(steps) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return distance + 10 / steps[-1]

    return loss


def sampler_for(name: str, variant: str, seed: int) -> optuna.samplers.BaseSampler:
    if variant == "complete only":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return make_sampler(name, seed, SPACE)


def run_row(name: str, pruner: str, variant: str, trials: int, seeds: int) -> str:
    completed, generations, best = [], [], {target: [] for target in TARGETS}
    for target in TARGETS:
        for seed in range(seeds):
            study = optuna.create_study(
                sampler=sampler_for(name, variant, seed), pruner=make_pruner(pruner, PLAN)
            )
            study.optimize(objective(target), n_trials=trials)
            done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            completed.append(len(done))
            generations.append(
                max(t.system_attrs.get(key, 0) for t in study.trials for key in GENERATION_ATTRS)
            )
            best[target].append(study.best_value)
    gens = f"{min(generations)}–{max(generations)}" if name in ("cmaes", "nsga2") else "–"
    never = sum(g == 0 for g in generations)
    if name in ("cmaes", "nsga2") and never:
        gens += f" ({never} of {len(generations)} never left the first)"
    label = ", ".join(part for part in (name, pruner, variant) if part)
    losses = ", ".join(f"{np.mean(values):.2f}" for values in best.values())
    return f"| {label} | {min(completed)}–{max(completed)} | {gens} | {losses} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.perf_counter()
    print(
        "| sampler, pruner | trials completed | generations reached | best loss (mean, per target) |"
    )
    print("|---|---|---|---|")
    for name, pruner, variant in ROWS:
        print(run_row(name, pruner, variant, args.trials, args.seeds), flush=True)
    print(f"({args.trials} trials, {args.seeds} seeds x {len(TARGETS)} targets; "
          f"{time.perf_counter() - started:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
