"""The analysis section of a comparison: every finished run of `layerwise compare --out OUT`,
each against the reference profile of its own seed, written to OUT/analysis/.

The reference is the profile the comparison matched budgets to (isotropic by default), so the
cross-run CKA answers "how does this profile's stack of layers differ from the baseline's"
between models trained from the same seed on the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layerwise.analysis.outputs import write_analysis
from layerwise.analysis.runner import AnalysisOptions, Pair, analyze_runs
from layerwise.analysis.summary import render
from layerwise.compare.cells import ANALYSIS_DIR, Cell, ComparisonPlan, plan_cells, read_plan
from layerwise.runs.files import SUMMARY_FILE
from layerwise.util.errors import UserError


def reference_profile(plan: ComparisonPlan) -> str:
    """The profile others are compared with: the budget's reference, else isotropic, else the
    first profile."""
    for candidate in (plan.match, "isotropic"):
        if candidate in plan.profiles:
            return str(candidate)
    return plan.profiles[0]


def comparison_pairs(plan: ComparisonPlan) -> list[Pair]:
    """Each finished run with the finished reference run of its seed (or none)."""
    finished: list[Cell] = [c for c in plan_cells(plan) if (c.run_dir / SUMMARY_FILE).exists()]
    if not finished:
        raise UserError(f"no finished runs under {plan.out} yet: run `layerwise compare` first")
    reference = reference_profile(plan)
    references = {c.seed: c.run_dir for c in finished if c.profile == reference}
    return [Pair(c.run_dir, references.get(c.seed)) for c in finished]


def analyze_comparison(
    out_dir: str | Path,
    options: AnalysisOptions | None = None,
    device: str | torch.device = "cpu",
    step: int | None = None,
) -> str:
    """Analyse the comparison in `out_dir`, write OUT/analysis/ (analysis.json, figures,
    analysis.md) and return the markdown section to embed in the report at OUT, with figure
    links relative to OUT."""
    out = Path(out_dir)
    plan = read_plan(out)
    result = analyze_runs(comparison_pairs(plan), options or AnalysisOptions(), device, step)
    files = write_analysis(result, out / ANALYSIS_DIR)
    return render(files.result, figure_prefix=f"{ANALYSIS_DIR}/", heading="##")
