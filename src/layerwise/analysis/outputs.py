"""Where an analysis goes: analysis.json, the figures and analysis.md in one directory.

Every file is written atomically, so an interrupted analysis never leaves a half file that a
later report would embed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.analysis.figures import write_figures
from layerwise.analysis.runner import AnalysisOptions, Pair, analyze_runs, json_ready
from layerwise.analysis.summary import render
from layerwise.util.files import atomic_write_json, atomic_write_text

JSON_FILE = "analysis.json"
MARKDOWN_FILE = "analysis.md"


@dataclass(frozen=True)
class AnalysisFiles:
    json: Path
    markdown: Path
    figures: tuple[Path, ...]
    result: dict[str, Any]


def write_analysis(result: dict[str, Any], out: Path) -> AnalysisFiles:
    """analysis.json, the figures and analysis.md of `result` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    result = json_ready(result)
    json_path = atomic_write_json(out / JSON_FILE, result)
    figures = write_figures(result, out)
    markdown = atomic_write_text(out / MARKDOWN_FILE, render(result))
    return AnalysisFiles(json_path, markdown, tuple(figures), result)


def distinct_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Each run once, in the order given: a run named twice (`analyze R R`, or `R` and `./R`)
    would be two identical rows; the repeat is dropped and said on stderr."""
    seen: dict[Path, Path] = {}
    for run_dir in map(Path, run_dirs):
        resolved = run_dir.resolve()
        if resolved in seen:
            print(f"layerwise: {run_dir} is {seen[resolved]} again: analysed once", file=sys.stderr)
            continue
        seen[resolved] = run_dir
    return list(seen.values())


def analyze(
    run_dirs: Sequence[str | Path],
    *,
    against: str | Path | None = None,
    out: str | Path | None = None,
    options: AnalysisOptions | None = None,
    device: str | torch.device = "cpu",
    step: int | None = None,
) -> AnalysisFiles:
    """Analyse each run (at checkpoint `step`, default its newest), each against the run
    `against` if given, and write the results to `out` (default RUN_DIR/analysis of the first)."""
    if not run_dirs:
        raise ValueError("no run directories to analyse")
    reference = None if against is None else Path(against)
    pairs = [Pair(run_dir, reference) for run_dir in distinct_runs(run_dirs)]
    result = analyze_runs(pairs, options or AnalysisOptions(), device, step)
    return write_analysis(result, Path(out) if out else Path(run_dirs[0]) / "analysis")
