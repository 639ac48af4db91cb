"""Budget-matched comparison of profiles: the study's experiment as one resumable command.

Every profile x seed run shares the same config except the profile and the seed: same data order
for a given seed, same validation windows, token budget, optimizer and schedule. With a reference
profile to match, every other shape is rescaled by the budget solver to the reference's parameter
count (or FLOPs), so a difference in perplexity cannot come from a difference in size.

A comparison holds the runs of one experiment. Before the first step every cell's config is
resolved and checked (profile, budget, batch split), and every run already in OUT is compared
with its cell's planned config: one made with other settings stops the command, naming the cell
and the keys, because mixing it into the table would compare two experiments as one. Rerunning
the same command skips finished runs and resumes an interrupted one from its last checkpoint, so
a comparison survives a lost node or a Ctrl-C. The grid's layout lives in `layerwise.cells`.

Named variants (sets of overrides, e.g. 12 vs 18 layers) add an axis crossed with profiles and
seeds; each variant's profiles are matched to its own reference, or with a match variant all to
one parameter count. `--init-from` fine-tunes a finished comparison's runs cell for cell.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layerwise.compare.cells import (
    Cell,
    ComparisonPlan,
    make_cell,
    plan_cells,
    read_plan,
    write_manifest,
)
from layerwise.config.loader import (
    config_hash,
    config_to_dict,
    config_value,
    experiment_differences,
    load_config,
    parse_override,
)
from layerwise.config.schema import Config, batch_plan
from layerwise.distributed.env import DistInfo, barrier, held_by_main, init_distributed
from layerwise.launch import train
from layerwise.profiles.recipes import PRESETS, SHAPES
from layerwise.profiles.shape import total_params
from layerwise.profiles.shapefile import (
    is_shape_file,
    profile_label,
    profile_overrides,
    read_shape_file,
)
from layerwise.runs.files import CONFIG_FILE, SUMMARY_FILE, RunSummary
from layerwise.runs.lock import DirectoryLock
from layerwise.training.build import with_data_vocab
from layerwise.training.callbacks.wandb import with_wandb_cell
from layerwise.training.checkpoint import list_checkpoints
from layerwise.training.resume import recorded_data_differences
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

OnRun = Callable[[int, int, Cell, str], None]


@dataclass(frozen=True)
class PlannedRun:
    """A cell with the resolved config `train` will get (the data's vocabulary filled in, as the
    run saves it in its config.yaml)."""

    cell: Cell
    config: Config

    def finished_summary(self) -> RunSummary | None:
        """The cell's summary if its run finished this very experiment (same config hash)."""
        path = self.cell.run_dir / SUMMARY_FILE
        if not path.exists():
            return None
        summary = RunSummary.load(path)
        return summary if summary.config_hash == config_hash(self.config) else None


@dataclass(frozen=True)
class Change:
    """A cell whose directory already holds a run made with other experiment settings."""

    run: PlannedRun
    differences: tuple[str, ...]

    @property
    def settings(self) -> str:
        return "; ".join(self.differences)

    def describe(self) -> str:
        return f"{self.run.cell.label} ({self.run.cell.run_dir}): {self.settings}"


def parse_list(text: str, what: str) -> tuple[str, ...]:
    """`a,b,c` -> ("a", "b", "c"); an empty entry (`a,,c`, a trailing comma) or one named twice
    is refused rather than dropped or merged."""
    items = tuple(part.strip() for part in text.split(","))
    if not any(items):
        raise UserError(f"{what}: give a comma-separated list, e.g. isotropic,crown")
    if not all(items):
        raise UserError(
            f"{what} {text!r} has an empty entry (two commas in a row, or one at an end); remove it"
        )
    if len(set(items)) != len(items):
        raise UserError(f"{what} {text!r} names the same entry twice")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in parse_list(text, "--seeds"))
    except ValueError:
        raise UserError(f"--seeds {text!r}: write integers, e.g. 0,1,2") from None


GRID_KEYS = (
    "model.profile",
    "model.match",
    "model.match_by",
    "train.seed",
    "run.dir",
    "run.resume",
)
"""Keys every cell sets itself, so a variant setting them would be silently overwritten."""

VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A variant names a directory level of OUT and a column of results.csv."""

_NEXT_OVERRIDE = re.compile(r",(?=\s*\w+\.\w+\s*=)")
"""A comma that starts another `section.key=value`, not one inside a value like `[0.5,4.0]`."""


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """`--variant 12l:model.n_layers=12,optim.lr=1e-3` -> ("12l", ("model.n_layers=12", ...))."""
    name, sep, body = text.partition(":")
    overrides = tuple(part.strip() for part in _NEXT_OVERRIDE.split(body) if part.strip())
    if not sep or not overrides:
        raise UserError(
            f"--variant {text!r} must look like NAME:section.key=value[,section.key=value], "
            "e.g. --variant 12l:model.n_layers=12"
        )
    return name.strip(), overrides


def collect_variants(
    flags: Sequence[str], from_config: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, tuple[str, ...]]:
    """The variants of `--variant` flags (a name given twice is refused: one flag holds all of a
    variant's overrides), else the config's `compare.variants` block; the flags replace the
    block rather than mix with it."""
    variants: dict[str, tuple[str, ...]] = {}
    for flag in flags:
        name, overrides = parse_variant(flag)
        if name in variants:
            raise UserError(
                f"--variant {name} is given twice ({name}:{','.join(variants[name])} and {flag}); "
                "give each variant once, with all its overrides comma-separated, e.g. "
                f"--variant {name}:{','.join((*variants[name], *overrides))}"
            )
        variants[name] = overrides
    if variants or not from_config:
        return variants
    return {
        name: tuple(f"{key}={json.dumps(value)}" for key, value in values.items())
        for name, values in from_config.items()
    }


def check_variants(plan: ComparisonPlan) -> None:
    """Every variant has a directory-safe name and overrides of real keys the grid leaves to it,
    and the variant to match budgets in exists."""
    for name, overrides in plan.variants.items():
        if not VARIANT_NAME.fullmatch(name):
            raise UserError(
                f"variant name {name!r}: use letters, digits, '.', '_' or '-' (it names a "
                "directory), e.g. 12l"
            )
        for override in overrides:
            section, key, _ = parse_override(override)
            dotted = f"{section}.{key}"
            if dotted in GRID_KEYS or section == "compare":
                raise UserError(
                    f"variant {name}: {dotted} is set by the grid for every cell; use --profiles, "
                    "--seeds, --match-params, --match-by or --out for it"
                )
    if plan.match_variant is None:
        return
    if plan.match_variant not in plan.variants:
        raise UserError(
            f"--match-variant {plan.match_variant!r} is not among the variants "
            f"({', '.join(plan.variants) or 'none given'}); add it with --variant"
        )
    if plan.match is None or plan.match_by != "params":
        raise UserError(
            "--match-variant matches parameter counts across variants: use it with "
            "--match-params PROFILE and --match-by params"
        )


def check_profile_names(profiles: Sequence[str], custom: Sequence[str] = ()) -> None:
    """Every name is a shape, a preset, one of the `custom` shapes or a readable shape file."""
    known = [*SHAPES, *PRESETS, *custom]
    for name in profiles:
        if is_shape_file(name):
            read_shape_file(name)
        elif name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"--profiles: unknown profile {name!r}{hint}; choose a shape "
                f"({', '.join(SHAPES)}), a preset ({', '.join(PRESETS)}) or a shape file (.yaml)"
            )


def check_profiles(plan: ComparisonPlan) -> None:
    """Every profile is a shape or preset, and the reference is trained too."""
    check_profile_names(plan.profiles, tuple(plan.shapes))
    if plan.match is not None and plan.match not in plan.profiles:
        raise UserError(
            f"--match-params {plan.match!r} is not among --profiles {','.join(plan.profiles)}; "
            "the reference must be trained too"
        )


def resolve(plan: ComparisonPlan, cell: Cell) -> PlannedRun:
    """The cell's config; a fine-tuning cell's model settings are its source run's, so that its
    shape is exactly the one whose weights it starts from. Its W&B run (if any) is named after
    the cell, in a group named after the comparison."""
    source = source_model_overrides(plan, cell) if plan.init_from is not None else ()
    config = with_data_vocab(load_config(plan.config, (*source, *cell.overrides)))
    return PlannedRun(cell, with_wandb_cell(config, plan.out.absolute().name, cell.run_id))


def source_model_overrides(plan: ComparisonPlan, cell: Cell) -> tuple[str, ...]:
    """`model.key=value` for every model setting of the run this cell fine-tunes."""
    assert plan.init_from is not None
    saved = Path(plan.init_from) / cell.run_id / CONFIG_FILE
    model = config_to_dict(load_config(saved))["model"]
    return tuple(f"model.{key}={json.dumps(value)}" for key, value in model.items())


def with_target(plan: ComparisonPlan) -> ComparisonPlan:
    """The plan with `target_params` resolved: the parameter count of its reference cell (match
    profile in the match variant), which every cell of every variant is then rescaled to."""
    if plan.match_variant is None or plan.init_from is not None:
        return replace(plan, target_params=None)
    unmatched = replace(plan, target_params=None)
    axes: dict[str, str | int] = {
        "variant": plan.match_variant,
        "profile": str(plan.match),
        "seed": plan.seeds[0],
    }
    reference = checked_run(unmatched, make_cell(unmatched, axes), world_size=1)
    vocab_size = reference.config.model.vocab_size
    assert vocab_size is not None, "with_data_vocab fills it in"
    return replace(plan, target_params=total_params(config_shape(reference.config, vocab_size)[0]))


def checked_run(plan: ComparisonPlan, cell: Cell, world_size: int) -> PlannedRun:
    """`cell` resolved and checked as far as it can be without training (config, data vocabulary,
    shape and budget, batch split), so a bad cell fails before the first run, not hours in."""
    return checked(cell, lambda: resolve(plan, cell), world_size)


def checked(cell: Cell, resolved: Callable[[], PlannedRun], world_size: int) -> PlannedRun:
    """`resolved()`, the cell's run, checked as `checked_run` says; errors name the cell."""
    try:
        run = resolved()
        vocab_size = run.config.model.vocab_size
        assert vocab_size is not None, "with_data_vocab fills it in"
        config_shape(run.config, vocab_size)
        batch_plan(run.config, world_size)
    except UserError as exc:
        raise UserError(f"{cell.label} cannot run: {exc}") from None
    return run


def setting_changes(old: Config, new: Config) -> tuple[str, ...]:
    """Every experiment key in which `new` differs from `old`, as `key: old -> new`."""
    return tuple(
        f"{key}: {config_value(old, key)!r} -> {config_value(new, key)!r}"
        for key in experiment_differences(old, new)
    )


def changed_settings(run: PlannedRun) -> tuple[str, ...]:
    """How the run already in the cell's directory differs from the plan, as `key: old -> new`;
    empty if it does not or there is none. Checkpoints without config.yaml cannot be compared and
    count as a difference (the trainer refuses to resume them too)."""
    run_dir, planned = run.cell.run_dir, run.config
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        return setting_changes(load_config(saved), planned) + tuple(
            f"data {line}" for line in recorded_data_differences(run_dir, planned)
        )
    if (run_dir / SUMMARY_FILE).exists():
        old_hash = RunSummary.load(run_dir / SUMMARY_FILE).config_hash
        if old_hash != config_hash(planned):
            unknown = f"no {CONFIG_FILE} says which keys"
            return (f"config hash {old_hash} -> {config_hash(planned)} ({unknown})",)
        return ()
    if list_checkpoints(run_dir):
        return (f"unknown: checkpoints but no {CONFIG_FILE}",)
    return ()


def find_changes(runs: Sequence[PlannedRun]) -> list[Change]:
    return [Change(run, found) for run in runs if (found := changed_settings(run))]


def dropped_runs(plan: ComparisonPlan) -> list[PlannedRun]:
    """Cells of the comparison in OUT that this plan leaves out, resolved with its settings.

    Their runs stay in OUT next to the rewritten manifest, so they too must be runs of the
    experiment it describes. An unreadable manifest lists none: rewriting it is its repair.
    """
    try:
        earlier_plan = read_plan(plan.out)
    except UserError:
        return []
    planned = {cell.run_id for cell in plan_cells(plan)}
    # A dropped variant's overrides are known only to the earlier plan.
    judged = replace(plan, variants={**earlier_plan.variants, **plan.variants})
    return [
        resolve(judged, make_cell(judged, cell.axes))
        for cell in plan_cells(earlier_plan)
        if cell.run_id not in planned
    ]


def changes_message(plan: ComparisonPlan, changes: Sequence[Change], remedy: str) -> str:
    listed = "\n".join(f"  {change.describe()}" for change in changes)
    return (
        f"{plan.out} holds runs made with other settings than this command's:\n{listed}\n"
        f"A comparison holds the runs of one experiment, so nothing was trained. {remedy}"
    )


def prepare(
    plan: ComparisonPlan, world_size: int, rerun_changed: bool
) -> tuple[list[PlannedRun], list[Change]]:
    """Everything that can fail before the first step; returns the runs in grid order and the
    changed cells to retrain.

    Raises UserError for a bad cell, for a run in OUT made with other settings (unless
    `rerun_changed`), and for such a run in a cell this plan leaves out (it would stay in OUT
    under a manifest that does not describe it).
    """
    check_profiles(plan)
    check_variants(plan)
    plan = with_target(plan)
    runs = [checked_run(plan, cell, world_size) for cell in plan_cells(plan)]
    dropped = find_changes(dropped_runs(plan))
    if dropped:
        raise UserError(
            changes_message(
                plan,
                dropped,
                "These cells are not in this command's grid: add them back to --profiles/--seeds"
                "/--variant "
                "(with --rerun-changed to retrain them), delete their directories, or use a new "
                "--out.",
            )
        )
    changes = find_changes(runs)
    if changes and not rerun_changed:
        raise UserError(
            changes_message(
                plan,
                changes,
                "Use a new --out for the new settings, or pass --rerun-changed to delete and "
                f"retrain {'this cell' if len(changes) == 1 else f'these {len(changes)} cells'}.",
            )
        )
    return runs, changes


def join_distributed(plan: ComparisonPlan) -> DistInfo:
    """Under torchrun every rank trains every run; every cell shares `run.device`."""
    first = plan_cells(plan)[0]
    return init_distributed(load_config(plan.config, first.overrides).run.device)


def is_main_process(plan: ComparisonPlan) -> bool:
    """Only rank 0 writes the comparison's files and reports progress."""
    return join_distributed(plan).is_main


def run_comparison(
    plan: ComparisonPlan,
    on_run: OnRun = lambda index, total, cell, status: None,
    rerun_changed: bool = False,
) -> list[RunSummary]:
    """Train every missing run of the grid; `on_run(index, total, cell, status)` reports progress.

    With `rerun_changed`, cells whose runs were made with other settings are deleted (and said so
    through `on_run`) before the manifest is rewritten, so it never describes a run it does not
    hold, and are then trained again.
    """
    dist = join_distributed(plan)
    with held_by_main(DirectoryLock(plan.out, "comparison")):
        return run_locked(plan, dist, on_run, rerun_changed)


def run_locked(
    plan: ComparisonPlan, dist: DistInfo, on_run: OnRun, rerun_changed: bool
) -> list[RunSummary]:
    """`run_comparison` once this process holds the comparison's directory."""
    runs, changes = prepare(plan, dist.world_size, rerun_changed)
    plan = with_target(plan)
    barrier()  # every rank has read OUT before rank 0 deletes in it
    if dist.is_main:
        position = {run.cell.run_id: i for i, run in enumerate(runs)}
        for change in changes:
            cell = change.run.cell
            shutil.rmtree(cell.run_dir)
            status = (
                f"settings changed ({change.settings}): deleted its earlier run, to train again"
            )
            on_run(position[cell.run_id], len(runs), cell, status)
        plan.out.mkdir(parents=True, exist_ok=True)
        write_manifest(plan)
    barrier()
    summaries = []
    for index, run in enumerate(runs):
        finished = run.finished_summary()
        if finished is not None:
            on_run(index, len(runs), run.cell, "finished earlier, skipped")
            summaries.append(finished)
            continue
        on_run(index, len(runs), run.cell, "training")
        summaries.append(train(run.config))
    return summaries


def make_plan(
    config: str,
    profiles: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    match: str | None = "isotropic",
    match_by: str = "params",
    overrides: Sequence[str] = (),
    variants: Mapping[str, Sequence[str]] | None = None,
    match_variant: str | None = None,
    shapes: Mapping[str, Sequence[str]] | None = None,
) -> ComparisonPlan:
    """The plan of a comparison; `variants` None takes the config's `compare.variants` block;
    `shapes` names custom profiles by their model overrides (see ComparisonPlan.shapes). A
    shape file among `profiles` becomes such a custom profile, named as the file names it."""
    if not Path(config).is_file():
        raise UserError(f"config {config} not found")
    shapes = {
        **(shapes or {}),
        **{profile_label(n): profile_overrides(n) for n in profiles if is_shape_file(n)},
    }
    profiles = [profile_label(name) for name in profiles]
    if variants is None:
        variants = collect_variants((), load_config(config, overrides).compare.variants)
    return ComparisonPlan(
        config=str(config),
        profiles=tuple(profiles),
        seeds=tuple(seeds),
        match=match,
        match_by=match_by,
        out=Path(out),
        overrides=tuple(overrides),
        variants={name: tuple(values) for name, values in variants.items()},
        match_variant=match_variant,
        shapes={name: tuple(values) for name, values in shapes.items()},
    )


def make_fine_tune_plan(
    source: str | Path, config: str, out: str | Path, overrides: Sequence[str] = ()
) -> ComparisonPlan:
    """Fine-tune every run of the comparison in `source`, cell for cell, with `config`'s data,
    optimizer and schedule and the source runs' models and weights (`init.from`).

    Every source run must be finished: a fine-tuned grid with holes could not be paired by seed.
    """
    if not Path(config).is_file():
        raise UserError(f"config {config} not found")
    earlier = read_plan(Path(source))
    unfinished = [c.label for c in plan_cells(earlier) if not (c.run_dir / SUMMARY_FILE).exists()]
    if unfinished:
        raise UserError(
            f"--init-from {source}: {len(unfinished)} run(s) are not finished "
            f"({', '.join(unfinished[:5])}); rerun the `layerwise compare` that made {source} "
            "to finish them first"
        )
    return replace(
        earlier,
        config=str(config),
        out=Path(out),
        overrides=tuple(overrides),
        target_params=None,
        init_from=str(Path(source).resolve()),
    )
