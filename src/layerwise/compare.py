"""Budget-matched comparison of profiles: the study's experiment as one resumable command.

Every profile x seed run shares the same config except the profile and the seed: same data order
for a given seed, same validation windows, token budget, optimizer and schedule. With a reference
profile to match, every other shape is rescaled by the budget solver to the reference's parameter
count (or FLOPs), so a difference in perplexity cannot come from a difference in size.

Runs go in `OUT/<profile>/seed<k>/`. Rerunning the same command skips finished runs and resumes an
interrupted one from its last checkpoint, so a comparison survives a lost node or a Ctrl-C.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from layerwise.config import load_config
from layerwise.distributed import init_distributed
from layerwise.errors import UserError
from layerwise.fsutil import atomic_write_json
from layerwise.rundir import SUMMARY_FILE, RunSummary
from layerwise.training import train

MANIFEST_FILE = "comparison.json"


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the comparison grid and the overrides that make it differ from the others."""

    profile: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return (self.run_dir / SUMMARY_FILE).exists()


@dataclass(frozen=True)
class ComparisonPlan:
    config: str
    profiles: tuple[str, ...]
    seeds: tuple[int, ...]
    match: str | None
    match_by: str
    out: Path
    overrides: tuple[str, ...]


def plan_runs(plan: ComparisonPlan) -> list[PlannedRun]:
    """The grid in the order it is trained: seed-major, so a partial comparison has whole seeds."""
    runs = []
    for seed in plan.seeds:
        for profile in plan.profiles:
            run_dir = plan.out / profile / f"seed{seed}"
            match = "null" if plan.match in (None, profile) else plan.match
            overrides = (
                *plan.overrides,
                f"model.profile={profile}",
                f"model.match={match}",
                f"model.match_by={plan.match_by}",
                f"train.seed={seed}",
                f"run.dir={run_dir}",
                "run.resume=auto",
            )
            runs.append(PlannedRun(profile, seed, run_dir, overrides))
    return runs


def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise UserError(f"{what}: give a comma-separated list, e.g. isotropic,crown")
    if len(set(items)) != len(items):
        raise UserError(f"{what} {text!r} names the same entry twice")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in parse_list(text, "--seeds"))
    except ValueError:
        raise UserError(f"--seeds {text!r}: write integers, e.g. 0,1,2") from None


def check_plan(plan: ComparisonPlan) -> None:
    """Fail before any training if a run's config is invalid, rather than hours in."""
    if plan.match is not None and plan.match not in plan.profiles:
        raise UserError(
            f"--match-params {plan.match!r} is not among --profiles {','.join(plan.profiles)}; "
            "the reference must be trained too"
        )
    for run in plan_runs(plan):
        load_config(plan.config, run.overrides)


def write_manifest(plan: ComparisonPlan) -> None:
    manifest = asdict(plan)
    manifest["out"] = str(plan.out)
    atomic_write_json(plan.out / MANIFEST_FILE, manifest)


def read_manifest(out: Path) -> dict:
    path = out / MANIFEST_FILE
    if not path.exists():
        raise UserError(f"{path} not found: is {out} the --out directory of a `layerwise compare`?")
    return json.loads(path.read_text(encoding="utf-8"))


def run_comparison(
    plan: ComparisonPlan,
    on_run: Callable[[int, int, PlannedRun, str], None] = lambda i, n, run, status: None,
) -> list[RunSummary]:
    """Train every missing run of the grid; `on_run(index, total, run, status)` reports progress."""
    check_plan(plan)
    runs = plan_runs(plan)
    if is_main_process(plan):
        plan.out.mkdir(parents=True, exist_ok=True)
        write_manifest(plan)
    summaries = []
    for index, run in enumerate(runs):
        if run.finished:
            on_run(index, len(runs), run, "finished earlier, skipped")
            summaries.append(RunSummary.load(run.run_dir / SUMMARY_FILE))
            continue
        on_run(index, len(runs), run, "training")
        summaries.append(train(load_config(plan.config, run.overrides)))
    return summaries


def is_main_process(plan: ComparisonPlan) -> bool:
    """Under torchrun every rank trains every run, but only rank 0 writes the comparison's files."""
    first = plan_runs(plan)[0]
    return init_distributed(load_config(plan.config, first.overrides).run.device).is_main


def make_plan(
    config: str,
    profiles: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    match: str | None = "isotropic",
    match_by: str = "params",
    overrides: Sequence[str] = (),
) -> ComparisonPlan:
    if not Path(config).is_file():
        raise UserError(f"config {config} not found")
    return ComparisonPlan(
        config=str(config),
        profiles=tuple(profiles),
        seeds=tuple(seeds),
        match=match,
        match_by=match_by,
        out=Path(out),
        overrides=tuple(overrides),
    )
