"""A comparison's grid without torch: its plan, its cells, where each run lives, its manifest.

`layerwise compare` trains the cells and `layerwise report` reads them; both take the layout
from `plan_cells` here, so they cannot disagree about where a run is, and reading a comparison
never imports the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layerwise.errors import UserError
from layerwise.fsutil import atomic_write_json

MANIFEST_FILE = "comparison.json"


@dataclass(frozen=True)
class Axis:
    """How one axis of the grid names a cell: its directory level and its words in messages."""

    directory: str
    label: str


AXES = {"profile": Axis("{}", "{}"), "seed": Axis("seed{}", "seed {}")}
"""The grid's axes in directory order: a cell's run lives in `OUT/<profile>/seed<k>/`."""


@dataclass(frozen=True)
class ComparisonPlan:
    """What `layerwise compare` was asked for; saved in OUT as the comparison's manifest."""

    config: str
    profiles: tuple[str, ...]
    seeds: tuple[int, ...]
    match: str | None
    match_by: str
    out: Path
    overrides: tuple[str, ...]


def cell_path(axes: Mapping[str, str | int]) -> str:
    """`crown/seed0`: the directory of the cell at `axes`, relative to OUT; the one place that
    decides the layout."""
    return "/".join(AXES[axis].directory.format(axes[axis]) for axis in AXES)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its value on each axis, its directory, and the overrides that make
    its config differ from the shared one."""

    axes: Mapping[str, str | int]
    run_dir: Path
    overrides: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return cell_path(self.axes)

    @property
    def label(self) -> str:
        """`crown seed 0`, for messages."""
        return " ".join(AXES[axis].label.format(self.axes[axis]) for axis in AXES)

    @property
    def profile(self) -> str:
        return str(self.axes["profile"])

    @property
    def seed(self) -> int:
        return int(self.axes["seed"])


def make_cell(plan: ComparisonPlan, axes: Mapping[str, str | int]) -> Cell:
    """The cell at `axes` under `plan`'s settings, also for axes the plan does not list (a cell
    an earlier command trained), so that its run can be checked against these settings."""
    profile, seed = str(axes["profile"]), int(axes["seed"])
    run_dir = plan.out / cell_path(axes)
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
    return Cell({"profile": profile, "seed": seed}, run_dir, overrides)


def plan_cells(plan: ComparisonPlan) -> list[Cell]:
    """The grid in the order it is trained: seed-major, so a partial comparison has whole seeds."""
    return [
        make_cell(plan, {"profile": profile, "seed": seed})
        for seed in plan.seeds
        for profile in plan.profiles
    ]


def write_manifest(plan: ComparisonPlan) -> Path:
    manifest = asdict(plan)
    manifest["out"] = str(plan.out)
    return atomic_write_json(plan.out / MANIFEST_FILE, manifest)


def read_plan(out: Path) -> ComparisonPlan:
    """The plan saved in `out`, located at `out` (the directory may have moved since).

    A missing or damaged manifest is a UserError naming the file and the command that rewrites it.
    """
    path = out / MANIFEST_FILE
    if not path.exists():
        raise UserError(f"{path} not found: is {out} the --out directory of a `layerwise compare`?")
    try:
        return _plan_from_manifest(json.loads(path.read_text(encoding="utf-8")), out)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is unreadable or not a comparison manifest ({exc!r}); rerun the "
            f"`layerwise compare ... --out {out}` command that made it: it rewrites the manifest "
            "and skips the runs that are finished"
        ) from None


def _plan_from_manifest(manifest: dict[str, Any], out: Path) -> ComparisonPlan:
    match = manifest["match"]
    if match is not None and not isinstance(match, str):
        raise TypeError(f"match must be a profile name or null, not {match!r}")
    return ComparisonPlan(
        config=_checked(manifest["config"], str, "config"),
        profiles=_list_of(manifest["profiles"], str, "profiles"),
        seeds=_list_of(manifest["seeds"], int, "seeds"),
        match=match,
        match_by=_checked(manifest["match_by"], str, "match_by"),
        out=out,
        overrides=_list_of(manifest["overrides"], str, "overrides"),
    )


def _checked(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} must be a {kind.__name__}, not {value!r}")
    return value


def _list_of(value: Any, kind: type, key: str) -> tuple:
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list, not {value!r}")
    return tuple(_checked(item, kind, key) for item in value)
