"""Train a ladder: every (rung, profile, seed, budget) of the plan, resumable, then its table.

Before the first step every run's config is resolved and checked (profile, budget solver, batch
split), and every result or run already in OUT is compared with its planned config: one made
with other settings stops the command, naming the run and the keys, because a fit over two
experiments answers neither. Rerunning the same command skips finished budgets and continues an
interrupted run from its last checkpoint; adding sizes, seeds or larger budgets trains only
what is new. The plan's layout and the branched schedule are explained in `ladder.plan`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layerwise.compare.run import (
    PlannedRun,
    changed_settings,
    check_profile_names,
    checked,
    setting_changes,
)
from layerwise.config.loader import config_hash, dump_config, load_config
from layerwise.config.schema import Config
from layerwise.distributed.env import DistInfo, barrier, held_by_main, init_distributed
from layerwise.ladder.plan import (
    MANIFEST_FILE,
    SWEEP_DIR,
    LadderPlan,
    LadderRun,
    RungSize,
    ladder_runs,
    parameter_counts,
    rung_size,
    with_vocab,
)
from layerwise.launch import train
from layerwise.runs.files import CONFIG_FILE, RunSummary
from layerwise.runs.lock import DirectoryLock
from layerwise.training.callbacks.wandb import with_wandb_cell
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json, atomic_write_text

OnRun = Callable[[int, int, LadderRun, str], None]


@dataclass(frozen=True)
class Planned:
    """A ladder run with the config `train` gets."""

    run: LadderRun
    config: Config

    @property
    def as_compare(self) -> PlannedRun:
        return PlannedRun(self.run.cell, self.config)


def resolve(plan: LadderPlan, run: LadderRun, world_size: int) -> Planned:
    """The run's config, checked as a comparison checks its cells."""

    def resolved() -> PlannedRun:
        config = with_vocab(plan, load_config(plan.config, run.cell.overrides))
        # one W&B run per run directory: a branched run's budgets continue the same one
        return PlannedRun(
            run.cell, with_wandb_cell(config, plan.out.absolute().name, run.cell.run_id)
        )

    return Planned(run, checked(run.cell, resolved, world_size).config)


# ---------------------------------------------------------------------------------------------
# Records: one budget's result, kept beside its config


def record_config(record: Path) -> Path:
    return record.with_suffix(".yaml")


def make_record(planned: Planned, summary: RunSummary, count: str) -> dict[str, Any]:
    """One row of ladder.csv: the run's sizes (every count, from its own shape; N is `count`),
    its tokens, its learning rate and what it reached."""
    run, config = planned.run, planned.config
    assert config.model.vocab_size is not None, "with_data_vocab fills it in"
    shape, _ = config_shape(config, config.model.vocab_size)
    counts = parameter_counts(shape)
    sources = summary.final_val_sources or {}
    return {
        "rung": run.size.rung.name,
        "profile": run.profile,
        "seed": run.seed,
        "lr": run.lr,
        "params_total": counts["total"],
        "params_non_embedding": counts["non_embedding"],
        "N": counts[count],
        "flops_per_token": summary.flops_per_token,
        "D": summary.tokens,
        "tokens_per_param": run.tokens_per_param,
        "steps": summary.steps,
        "loss": summary.final_val_loss,
        "ppl": summary.final_val_ppl,
        **{f"loss:{name}": values["loss"] for name, values in sources.items()},
        "wall_time_s": summary.wall_time_s,
        "config_hash": summary.config_hash,
    }


def write_record(planned: Planned, summary: RunSummary, count: str) -> None:
    """The result and, beside it, the config it was made with (to name changed keys later)."""
    record = planned.run.record
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_config(record), dump_config(planned.config))
    row = make_record(planned, summary, count)
    # the whole summary too, so that a later version can derive what the row lacks
    atomic_write_json(record, {"row": row, "summary": summary.to_dict()})


def read_record(path: Path) -> dict[str, Any]:
    """The table row a finished budget's record holds."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["row"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is unreadable ({exc!r}); delete it and rerun the same `layerwise ladder` "
            "command: the budget is trained again"
        ) from None


# ---------------------------------------------------------------------------------------------
# Checks before the first step


def record_changes(planned: Planned) -> tuple[str, ...]:
    """How a finished budget's record differs from the plan (keys and values), or ()."""
    record = planned.run.record
    if not record.exists():
        return ()
    if read_record(record).get("config_hash") == config_hash(planned.config):
        return ()
    saved = record_config(record)
    if not saved.exists():
        return (f"unknown: {record.name} has another config hash and no {saved.name}",)
    return setting_changes(load_config(saved), planned.config)


def saved_steps(group: Sequence[Planned]) -> int | None:
    """The length the run in a cell's directory was last trained to, None with no run there."""
    saved = group[0].run.cell.run_dir / CONFIG_FILE
    return (load_config(saved).train.steps or 0) if saved.exists() else None


def run_dir_changes(group: Sequence[Planned], steps: int | None) -> tuple[str, ...]:
    """How the run in a cell's directory (trained to `steps`) differs from the plan; a branched
    run is judged at the budget it was trained to, which must be one of the plan's (any other
    length would differ)."""
    by_steps = {p.config.train.steps: p for p in group}
    return changed_settings(by_steps.get(steps, group[0]).as_compare)


def unreachable_budgets(group: Sequence[Planned], steps: int | None) -> list[str]:
    """Budgets without a record below the length a branched run was already trained to: their
    decay start is behind the run, and its checkpoint there was not kept."""
    if len(group) < 2 or steps is None:
        return []
    return [
        p.run.label
        for p in group
        if not p.run.record.exists() and (p.config.train.steps or 0) < steps
    ]


def by_run_dir(runs: Sequence[Planned]) -> list[list[Planned]]:
    groups: dict[Path, list[Planned]] = {}
    for planned in runs:
        groups.setdefault(planned.run.cell.run_dir, []).append(planned)
    return list(groups.values())


LISTED = 8
"""Changed runs named in a refusal; the rest are counted (one changed key changes them all)."""


def check_changes(plan: LadderPlan, runs: Sequence[Planned]) -> None:
    """Refuse, before anything trains, a ladder whose OUT holds results of another experiment."""
    found = [
        f"  {p.run.label} ({p.run.record}): {'; '.join(changes)}"
        for p in runs
        if (changes := record_changes(p))
    ]
    groups = [(group, saved_steps(group)) for group in by_run_dir(runs)]
    for group, steps in groups:
        changes = run_dir_changes(group, steps)
        if changes:
            found.append(
                f"  {group[0].run.cell.label} ({group[0].run.cell.run_dir}): {'; '.join(changes)}"
            )
    if found:
        shown = found[:LISTED] + (
            [f"  ... and {len(found) - LISTED} more"] if len(found) > LISTED else []
        )
        raise UserError(
            f"{plan.out} holds runs made with other settings than this command's:\n"
            + "\n".join(shown)
            + "\nA ladder holds the runs of one experiment, so nothing was trained. Use a new "
            "--out for the new settings, or delete those directories to train them again."
        )
    for group, steps in groups:
        late = unreachable_budgets(group, steps)
        if late:
            raise UserError(
                f"{group[0].run.cell.run_dir} was trained past {', '.join(late)}: a branched run "
                "reaches its budgets smallest first and cannot go back to a smaller one. Use a "
                "new --out, or ladder.schedule=separate"
            )


def prepare(plan: LadderPlan, world_size: int) -> tuple[list[RungSize], list[Planned]]:
    """Everything that can fail before the first step: the rungs' sizes and every run."""
    ladder = plan.settings
    check_profile_names(ladder.profiles)
    sizes = [rung_size(plan, rung) for rung in plan.rungs]
    # a finished sweep's choices: the runs trained with them are judged at their own LR
    sweep = read_sweep(plan) if ladder.lr_sweep is not None else None
    multipliers = sweep["best"] if sweep else {}
    runs = [resolve(plan, run, world_size) for run in ladder_runs(plan, sizes, multipliers)]
    check_changes(plan, runs)
    return sizes, runs


# ---------------------------------------------------------------------------------------------
# Training


def train_runs(
    plan: LadderPlan, runs: Sequence[Planned], dist: DistInfo, on_run: OnRun, start: int = 0
) -> None:
    """Train every run without a record; numbering for `on_run` starts at `start`."""
    total = start + len(runs)
    for index, planned in enumerate(runs, start):
        run = planned.run
        if run.record.exists():
            on_run(index, total, run, "finished earlier, skipped")
            continue
        finished = planned.as_compare.finished_summary()
        if finished is None:
            on_run(index, total, run, "training")
            finished = train(planned.config)
        if dist.is_main:
            write_record(planned, finished, plan.settings.count)
        barrier()


def join_distributed(plan: LadderPlan) -> DistInfo:
    """Under torchrun every rank trains every run; every run shares `run.device`."""
    return init_distributed(load_config(plan.config, plan.overrides).run.device)


def run_ladder(plan: LadderPlan, on_run: OnRun = lambda index, total, run, status: None) -> None:
    """Train every missing run, after the LR sweep when asked for. The table, fit and report
    are `layerwise.ladder.results`'s."""
    dist = join_distributed(plan)
    with held_by_main(DirectoryLock(plan.out, "ladder")):
        sizes, runs = prepare(plan, dist.world_size)
        if dist.is_main:
            plan.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(plan.out / MANIFEST_FILE, plan.manifest())
        barrier()
        multipliers: dict[str, float] = {}
        if plan.settings.lr_sweep is not None:
            multipliers = sweep_lr(plan, sizes[0], dist, on_run)
            runs = [
                resolve(plan, run, dist.world_size) for run in ladder_runs(plan, sizes, multipliers)
            ]
            check_changes(plan, runs)
        train_runs(plan, runs, dist, on_run, start=len(sweep_runs(plan, sizes[0])))


# ---------------------------------------------------------------------------------------------
# The learning-rate sweep at the smallest rung


def sweep_plan(plan: LadderPlan, multiplier: float) -> LadderPlan:
    return replace(plan, out=plan.out / SWEEP_DIR / f"x{multiplier:g}")


def sweep_runs(plan: LadderPlan, size: RungSize) -> list[tuple[float, LadderRun]]:
    """Each profile at the smallest rung, first seed, every budget, at each LR multiplier."""
    sweep = plan.settings.lr_sweep or []
    seed = plan.settings.seeds[0]
    return [
        (multiplier, run)
        for multiplier in sweep
        for run in ladder_runs(
            replace(sweep_plan(plan, multiplier), settings=replace(plan.settings, seeds=[seed])),
            [size],
            dict.fromkeys(plan.settings.profiles, multiplier),
        )
    ]


SWEEP_FILE = "sweep.json"


def sweep_lr(plan: LadderPlan, size: RungSize, dist: DistInfo, on_run: OnRun) -> dict[str, float]:
    """Train the sweep and return each profile's best multiplier (by its largest budget's
    validation loss); the losses and choices go to OUT/lr-sweep/sweep.json."""
    pairs = sweep_runs(plan, size)
    planned = [resolve(sweep_plan(plan, m), run, dist.world_size) for m, run in pairs]
    check_changes(plan, planned)
    train_runs(plan, planned, dist, on_run)
    largest = len(plan.budgets) - 1
    losses: dict[str, dict[str, float]] = {}
    for multiplier, run in pairs:
        if run.budget == largest:
            loss = read_record(run.record)["loss"]
            losses.setdefault(run.profile, {})[f"{multiplier:g}"] = loss
    best = {
        profile: float(min(values, key=lambda m: values[m])) for profile, values in losses.items()
    }
    if dist.is_main:
        atomic_write_json(
            plan.out / SWEEP_DIR / SWEEP_FILE,
            {"rung": size.rung.name, "base_lr": size.lr, "losses": losses, "best": best},
        )
    barrier()
    return best


def read_sweep(plan: LadderPlan) -> dict[str, Any] | None:
    """OUT/lr-sweep/sweep.json, None before the sweep finished."""
    path = plan.out / SWEEP_DIR / SWEEP_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc!r}); rerun the ladder to redo it") from None


def sweep_edges(plan: LadderPlan, best: dict[str, float]) -> list[str]:
    """Profiles whose best multiplier is the sweep's smallest or largest: the optimum may lie
    outside it, so the profile may be handicapped by its LR."""
    sweep = plan.settings.lr_sweep or []
    return [
        f"{profile}'s best LR multiplier x{m:g} is at the edge of the sweep "
        f"{[float(x) for x in sweep]}; widen ladder.lr_sweep"
        for profile, m in best.items()
        if m in (min(sweep), max(sweep))
    ]
