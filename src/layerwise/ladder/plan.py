"""What a ladder trains, before anything is trained: its rungs, budgets, runs and their files.

A ladder is every profile at several sizes (rungs) and token budgets, with several seeds. At
each rung the reference profile's size gives N (the parameter count the fits use) and the token
budgets (multiples of N, in whole optimizer steps); every other profile is matched to the
reference's parameter count at that rung by the budget solver, and all share the rung's budgets
and learning rate, so a difference at a rung cannot come from size, data or schedule.

With the "branched" schedule (the default) one warmup-stable-decay run per (rung, profile, seed)
serves every budget: the run of the smallest budget ends in its own decay, and each larger budget
continues the same run directory from the previous one's decay start (`run.resume=auto`, as
`train --resume` extends a WSD run), so each budget's loss is that of an independent run of its
length (Hagele et al. 2024) at the cost of the largest run plus the short cooldowns. The warmup is
fixed in steps (the smallest budget's) for that reason: every budget's schedule must agree with
the others' up to its decay start. With "separate" every budget is its own run with the config's
schedule.

Every run is a compare `Cell` (`OUT/<rung>/<profile>/seed<k>/`, one level more per budget with
"separate"), and after each budget finishes its result is kept as a record in the cell's
`budgets/` directory: a branched run directory's summary is replaced by the next budget's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from layerwise.compare.cells import Cell
from layerwise.config.loader import load_config
from layerwise.config.schema import Config, LadderConfig, global_batch, warmup_steps
from layerwise.ladder.answer import parse_target
from layerwise.profiles.shape import (
    ModelShape,
    non_embedding_params,
    total_params,
)
from layerwise.profiles.shapefile import profile_label, profile_overrides
from layerwise.training.build import with_data_vocab
from layerwise.training.optim import wsd_decay_start
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

MANIFEST_FILE = "ladder.json"
TABLE_FILE = "ladder.csv"
RECORDS_DIR = "budgets"
SWEEP_DIR = "lr-sweep"

OLMO_LR = (0.0047, 108e6)
"""OLMo's ladder rule, LR(N) = 0.0047 x (N / 108M)^(-1/3) (allenai/OLMo-ladder)."""

_SIZE = re.compile(r"(\d+)(?:x(\d+))?")


@dataclass(frozen=True)
class Rung:
    """One size of the base shape: its d_model (heads follow at fixed head_dim) and, when width
    and depth scale together, its number of layers."""

    d_model: int
    n_layers: int | None = None

    @property
    def name(self) -> str:
        """`d128` or `d128x6`: the rung's directory and its label in tables."""
        return f"d{self.d_model}" + ("" if self.n_layers is None else f"x{self.n_layers}")

    @property
    def overrides(self) -> tuple[str, ...]:
        depth = () if self.n_layers is None else (f"model.n_layers={self.n_layers}",)
        return (f"model.d_model={self.d_model}", *depth)


def parse_size(value: int | str, where: str) -> Rung:
    """`128` or `"128x6"` (d_model x n_layers) as a rung."""
    found = _SIZE.fullmatch(str(value).strip())
    if found is None or int(found[1]) < 1 or (found[2] is not None and int(found[2]) < 1):
        raise UserError(
            f"{where}: size {value!r} must be a d_model (e.g. 128) or D_MODELxN_LAYERS (e.g. 128x6)"
        )
    return Rung(int(found[1]), None if found[2] is None else int(found[2]))


@dataclass(frozen=True)
class LadderPlan:
    """What `layerwise ladder` was asked for; saved in OUT as the ladder's manifest."""

    config: str
    out: Path
    overrides: tuple[str, ...]
    settings: LadderConfig
    read_data: bool = True
    """Take the vocabulary from the data and check it; False plans a ladder whose data is not
    here yet (`layerwise plan --ladder`), with `model.vocab_size` set."""

    @property
    def rungs(self) -> tuple[Rung, ...]:
        assert self.settings.sizes is not None, "make_ladder_plan refuses a ladder without sizes"
        return tuple(parse_size(size, "ladder.sizes") for size in self.settings.sizes)

    @property
    def budgets(self) -> tuple[float, ...]:
        """Tokens per parameter, smallest first (the order a branched run reaches them)."""
        return tuple(sorted(self.settings.tokens_per_param))

    @property
    def targets(self) -> tuple[tuple[float, float], ...]:
        return tuple(parse_target(t, "ladder.targets") for t in self.settings.targets)

    def manifest(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "out": str(self.out),
            "overrides": list(self.overrides),
            "ladder": asdict(self.settings),
        }


def read_ladder_plan(out: Path) -> LadderPlan:
    """The plan saved in `out`'s manifest, located at `out` (the directory may have moved)."""
    path = out / MANIFEST_FILE
    if not path.exists():
        raise UserError(f"{path} not found: is {out} the --out directory of a `layerwise ladder`?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        settings = LadderConfig(**manifest["ladder"])
        return LadderPlan(str(manifest["config"]), out, tuple(manifest["overrides"]), settings)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is unreadable or not a ladder manifest ({exc!r}); rerun the `layerwise "
            f"ladder ... --out {out}` command that made it: it rewrites the manifest and skips "
            "the runs that are finished"
        ) from None


def make_ladder_plan(
    config: str | Path, out: str | Path, overrides: Sequence[str] = (), **flags: Any
) -> LadderPlan:
    """The plan from the config's `ladder:` section with the command's flags (`profiles`,
    `sizes`, `tokens_per_param`, `seeds`, ... as LadderConfig names them; None: keep the
    config's) on top; refuses a ladder that cannot be fitted before anything trains."""
    if not Path(config).is_file():
        raise UserError(f"config {config} not found")
    section = load_config(config, overrides).ladder
    settings = replace(section, **{k: v for k, v in flags.items() if v is not None})
    plan = LadderPlan(str(config), Path(out), tuple(overrides), settings)
    check_plan(plan)
    return plan


def check_plan(plan: LadderPlan) -> None:
    """A ladder too small to fit is refused here, saying what to add, not after hours of runs."""
    ladder = plan.settings
    if not ladder.sizes:
        raise UserError("ladder: no sizes; give --sizes 64,96,128 (or ladder.sizes in the config)")
    rungs = plan.rungs
    if len(set(rungs)) != len(rungs):
        raise UserError(f"ladder.sizes {ladder.sizes} names a size twice")
    wanted = [
        (len(rungs) >= 3, f"{len(rungs)} size(s): a scaling law needs at least 3; add sizes"),
        (len(set(plan.budgets)) >= 2, "one token budget: add a second to --tokens-per-param"),
        (len(set(ladder.profiles)) >= 2, "one profile: add the reference and another"),
        (ladder.reference in ladder.profiles, f"the reference {ladder.reference!r} is not trained"),
        (len(set(ladder.seeds)) == len(ladder.seeds), f"seeds {ladder.seeds} repeat a seed"),
        (all(t > 0 for t in plan.budgets), "tokens per parameter must be above 0"),
    ]
    problems = [why for ok, why in wanted if not ok]
    if problems:
        raise UserError("ladder cannot be fitted: " + "; ".join(problems))
    if ladder.lr_sweep is not None and (
        len(ladder.lr_sweep) < 2 or any(m <= 0 for m in ladder.lr_sweep)
    ):
        raise UserError(
            f"ladder.lr_sweep {ladder.lr_sweep}: give at least two multipliers above 0, e.g. "
            "[0.5, 1, 2]"
        )
    plan.targets  # noqa: B018 - parsed for its errors


# ---------------------------------------------------------------------------------------------
# The reference at each rung: N, budgets in steps, learning rate


def head_params(shape: ModelShape) -> int:
    """The LM head's weights (vocab x d_model), counted whether or not it is tied."""
    return shape.vocab_size * shape.d_model


def parameter_counts(shape: ModelShape) -> dict[str, int]:
    """Every count a fit may use, named as `ladder.count` names them."""
    non_embedding = non_embedding_params(shape)
    return {
        "total": total_params(shape),
        "non_embedding": non_embedding,
        "non_embedding_head": non_embedding + head_params(shape),
    }


@dataclass(frozen=True)
class RungSize:
    """What every run at a rung shares: the reference's N, the budgets in steps, the LR."""

    rung: Rung
    n: int
    steps: tuple[int, ...]
    """Optimizer steps of each budget, in `plan.budgets` order."""
    tokens_per_step: int
    warmup_steps: int
    lr: float
    """The rule's learning rate (before any per-profile sweep multiplier)."""


def with_vocab(plan: LadderPlan, config: Config) -> Config:
    """The config with its vocabulary taken from the data (checked against its ids), or as
    configured when the plan does not read the data."""
    if plan.read_data:
        return with_data_vocab(config)
    if config.model.vocab_size is None:
        raise UserError(
            "model.vocab_size is null (take it from the data) and the data is not there; set "
            "model.vocab_size=N to plan the ladder without its data"
        )
    return config


def rung_config(plan: LadderPlan, rung: Rung, extra: Sequence[str] = ()) -> Config:
    """The config at `rung` with `extra` overrides and its vocabulary."""
    return with_vocab(plan, load_config(plan.config, (*plan.overrides, *rung.overrides, *extra)))


def rung_size(plan: LadderPlan, rung: Rung) -> RungSize:
    """The reference profile at `rung` as the config gives it (no budget solving): its N fixes
    the rung's token budgets and learning rate for every profile."""
    reference = plan.settings.reference
    try:
        config = rung_config(
            plan,
            rung,
            (f"model.profile={reference}", "model.match=null", "model.target_params=null"),
        )
        assert config.model.vocab_size is not None, "with_data_vocab fills it in"
        shape, _ = config_shape(config, config.model.vocab_size)
    except UserError as exc:
        raise UserError(f"ladder size {rung.name}: {exc}") from None
    n = parameter_counts(shape)[plan.settings.count]
    tokens_per_step = global_batch(config) * config.data.seq_len
    steps = tuple(max(1, math.ceil(t * n / tokens_per_step)) for t in plan.budgets)
    if len(set(steps)) < len(steps):
        raise UserError(
            f"ladder size {rung.name}: the budgets {list(plan.budgets)} tokens per parameter are "
            f"{list(steps)} steps of {tokens_per_step:,} tokens for N={n:,}; two are the same run. "
            "Spread the budgets or lower the global batch"
        )
    return RungSize(
        rung=rung,
        n=n,
        steps=steps,
        tokens_per_step=tokens_per_step,
        warmup_steps=warmup_steps(config.optim, steps[0]),
        lr=rule_lr(plan.settings, config, n),
    )


def rule_lr(ladder: LadderConfig, config: Config, n: int) -> float:
    if ladder.lr_rule == "config":
        return config.optim.lr
    scale, at = OLMO_LR
    return scale * (n / at) ** (-1 / 3)


# ---------------------------------------------------------------------------------------------
# The runs


@dataclass(frozen=True)
class LadderRun:
    """One budget of one (rung, profile, seed): a compare cell, its LR and its record."""

    size: RungSize
    profile: str
    seed: int
    budget: int
    """Index into `plan.budgets`."""
    tokens_per_param: float
    cell: Cell
    lr: float
    record: Path
    """Where this budget's result is kept once it finishes."""

    @property
    def label(self) -> str:
        return (
            f"{self.size.rung.name} {self.profile} seed {self.seed} "
            f"{self.tokens_per_param:g} tokens/param"
        )


def budget_name(tokens_per_param: float) -> str:
    """`tpp10`, `tpp2.5`: a budget in file names."""
    return f"tpp{tokens_per_param:g}"


def cell_dir(plan: LadderPlan, rung: Rung, profile: str, seed: int) -> Path:
    return plan.out / rung.name / profile / f"seed{seed}"


def ladder_run(
    plan: LadderPlan, size: RungSize, profile: str, seed: int, budget: int, lr_multiplier: float
) -> LadderRun:
    """The run of one budget: the shared config at the rung, the profile matched to the
    reference there, the rung's schedule and LR, and its own directory."""
    ladder = plan.settings
    tokens_per_param = plan.budgets[budget]
    label = profile_label(profile)  # a shape file's runs are named as the file names its shape
    run_dir = cell_dir(plan, size.rung, label, seed)
    record = run_dir / RECORDS_DIR / f"{budget_name(tokens_per_param)}.json"
    schedule: tuple[str, ...] = ()
    if ladder.schedule == "branched":
        schedule = (
            "optim.schedule=wsd",
            "optim.warmup_fraction=null",
            f"optim.warmup_steps={size.warmup_steps}",
        )
    else:
        run_dir = run_dir / budget_name(tokens_per_param)
    lr = size.lr * lr_multiplier
    match = "null" if profile == ladder.reference else ladder.reference
    overrides = (
        *plan.overrides,
        *size.rung.overrides,
        *profile_overrides(profile),
        f"model.match={match}",
        "model.target_params=null",
        "model.match_by=params",
        *schedule,
        f"optim.lr={lr!r}",
        f"train.steps={size.steps[budget]}",
        "train.tokens=null",
        f"train.seed={seed}",
        f"run.dir={run_dir}",
        "run.resume=auto",
    )
    cell = Cell({"variant": size.rung.name, "profile": label, "seed": seed}, run_dir, overrides)
    return LadderRun(size, label, seed, budget, tokens_per_param, cell, lr, record)


def ladder_runs(
    plan: LadderPlan, sizes: Sequence[RungSize], lr_multipliers: dict[str, float]
) -> list[LadderRun]:
    """Every run in training order: seed-major (a partial ladder has whole seeds), then rung,
    profile and budget, smallest first, as a branched run reaches them."""
    return [
        ladder_run(
            plan, size, profile, seed, budget, lr_multipliers.get(profile_label(profile), 1.0)
        )
        for seed in plan.settings.seeds
        for size in sizes
        for profile in plan.settings.profiles
        for budget in range(len(plan.budgets))
    ]


def trained_steps(plan: LadderPlan, size: RungSize, config: Config) -> int:
    """Optimizer steps one (rung, profile, seed) trains for all its budgets: with "branched",
    the smallest budget and then each larger one from the previous one's decay start."""
    if plan.settings.schedule == "separate":
        return sum(size.steps)
    optim = replace(config.optim, warmup_fraction=None, warmup_steps=size.warmup_steps)
    starts = [wsd_decay_start(steps, optim) for steps in size.steps[:-1]]
    return size.steps[0] + sum(s - start for s, start in zip(size.steps[1:], starts, strict=True))
