"""A comparison's grid without torch: its plan, its cells, where each run lives, its manifest.

`layerwise compare` trains the cells and `layerwise report` reads them; both take the layout
from `plan_cells` here, so they cannot disagree about where a run is, and reading a comparison
never imports the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json

MANIFEST_FILE = "comparison.json"
ANALYSIS_DIR = "analysis"
"""OUT/analysis/: the layer analysis of a comparison (`--analyze`, layerwise.analysis)."""


@dataclass(frozen=True)
class Axis:
    """How one axis of the grid names a cell: its directory level and its words in messages."""

    directory: str
    label: str


AXES = {
    "variant": Axis("{}", "{}"),
    "profile": Axis("{}", "{}"),
    "seed": Axis("seed{}", "seed {}"),
}
"""The grid's axes in directory order: a cell's run lives in `OUT/<variant>/<profile>/seed<k>/`,
or `OUT/<profile>/seed<k>/` in a comparison without variants (a cell lacks the axes its plan
does not vary)."""


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
    variants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Named sets of overrides, crossed with profiles and seeds; empty: no variant axis."""
    match_variant: str | None = None
    """Match every cell to `match` in this variant (a parameter count shared across variants)."""
    target_params: int | None = None
    """That count, resolved by `layerwise compare` before training and saved for the report."""
    init_from: str | None = None
    """A finished comparison whose runs this one fine-tunes, cell for cell."""
    shapes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Profiles that are not presets: a profile name's model overrides (per-layer `model.ffn`,
    `model.qkv`, `model.frame` on `model.profile=isotropic`), e.g. the shapes `layerwise search
    --confirm` found; each cell of such a profile gets them instead of `model.profile=NAME`."""

    @property
    def reference(self) -> Mapping[str, str]:
        """The cell every row is compared with: `match` (else isotropic or the first profile)
        in `match_variant` (else the first variant)."""
        profile = self.match or ("isotropic" if "isotropic" in self.profiles else self.profiles[0])
        if not self.variants:
            return {"profile": profile}
        return {"variant": self.match_variant or next(iter(self.variants)), "profile": profile}


def cell_path(axes: Mapping[str, str | int]) -> str:
    """`crown/seed0` or `12l/crown/seed0`: the directory of the cell at `axes`, relative to OUT;
    the one place that decides the layout."""
    return "/".join(AXES[axis].directory.format(axes[axis]) for axis in AXES if axis in axes)


def row_label(axes: Mapping[str, str | int]) -> str:
    """`crown` or `12l/crown`: a row of the table (a cell without its seed), in figures too."""
    return "/".join(str(axes[axis]) for axis in AXES if axis in axes and axis != "seed")


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
        return " ".join(AXES[a].label.format(self.axes[a]) for a in AXES if a in self.axes)

    @property
    def row(self) -> str:
        return row_label(self.axes)

    @property
    def variant(self) -> str | None:
        return None if "variant" not in self.axes else str(self.axes["variant"])

    @property
    def profile(self) -> str:
        return str(self.axes["profile"])

    @property
    def seed(self) -> int:
        return int(self.axes["seed"])


def make_cell(plan: ComparisonPlan, axes: Mapping[str, str | int]) -> Cell:
    """The cell at `axes` under `plan`'s settings, also for axes the plan does not list (a cell
    an earlier command trained), so that its run can be checked against these settings.

    A fine-tuning cell takes its model from its source run (see `layerwise.compare`) and starts
    from its weights; its variant is only a name there.
    """
    run_dir = plan.out / cell_path(axes)
    grid = (f"train.seed={int(axes['seed'])}", f"run.dir={run_dir}", "run.resume=auto")
    if plan.init_from is not None:
        source = Path(plan.init_from) / cell_path(axes)
        return Cell(dict(axes), run_dir, (*plan.overrides, f"init.from={source}", *grid))
    profile = str(axes["profile"])
    variant = plan.variants.get(str(axes["variant"]), ()) if "variant" in axes else ()
    if plan.target_params is not None:
        budget: tuple[str, ...] = ("model.match=null", f"model.target_params={plan.target_params}")
    else:
        budget = (f"model.match={'null' if plan.match in (None, profile) else plan.match}",)
    overrides = (
        *plan.overrides,
        *variant,
        *plan.shapes.get(profile, (f"model.profile={profile}",)),
        *budget,
        f"model.match_by={plan.match_by}",
        *grid,
    )
    return Cell(dict(axes), run_dir, overrides)


def plan_cells(plan: ComparisonPlan) -> list[Cell]:
    """The grid in the order it is trained: seed-major, so a partial comparison has whole seeds."""
    variants: list[dict[str, str]] = [{"variant": v} for v in plan.variants] or [{}]
    return [
        make_cell(plan, {**variant, "profile": profile, "seed": seed})
        for seed in plan.seeds
        for variant in variants
        for profile in plan.profiles
    ]


def write_manifest(plan: ComparisonPlan) -> Path:
    manifest = asdict(plan)
    manifest["out"] = str(plan.out)
    manifest["variants"] = {name: list(values) for name, values in plan.variants.items()}
    manifest["shapes"] = {name: list(values) for name, values in plan.shapes.items()}
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
    """The plan a manifest describes; keys added since (variants, fine-tuning) are optional, so
    comparisons made before them still report."""
    match = manifest["match"]
    if match is not None and not isinstance(match, str):
        raise TypeError(f"match must be a profile name or null, not {match!r}")
    variants = manifest.get("variants", {})
    shapes = manifest.get("shapes", {})
    for key, value in (("variants", variants), ("shapes", shapes)):
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping, not {value!r}")
    return ComparisonPlan(
        config=_checked(manifest["config"], str, "config"),
        profiles=_list_of(manifest["profiles"], str, "profiles"),
        seeds=_list_of(manifest["seeds"], int, "seeds"),
        match=match,
        match_by=_checked(manifest["match_by"], str, "match_by"),
        out=out,
        overrides=_list_of(manifest["overrides"], str, "overrides"),
        variants={_checked(k, str, "variants"): _list_of(v, str, k) for k, v in variants.items()},
        match_variant=_optional(manifest.get("match_variant"), str, "match_variant"),
        target_params=_optional(manifest.get("target_params"), int, "target_params"),
        init_from=_optional(manifest.get("init_from"), str, "init_from"),
        shapes={_checked(k, str, "shapes"): _list_of(v, str, k) for k, v in shapes.items()},
    )


def _optional(value: Any, kind: type, key: str) -> Any:
    return None if value is None else _checked(value, kind, key)


def _checked(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} must be a {kind.__name__}, not {value!r}")
    return value


def _list_of(value: Any, kind: type, key: str) -> tuple:
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list, not {value!r}")
    return tuple(_checked(item, kind, key) for item in value)
