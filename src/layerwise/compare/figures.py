"""The comparison's figures, one line per table row (`crown`, or `12l/crown` with variants).

Colours follow the profile in every figure; with variants each variant gets its own line style,
and a figure with a panel per profile sets the variants side by side (the study's 12- vs 18-layer
validation perplexity picture). Only the runs on disk are read, through `RunResult`s.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from layerwise.profiles.plot import plot_allocation
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.runs.listing import Curve
from layerwise.util.plots import (
    moving_average,
    plot_bars,
    plot_curves,
    plot_panels,
    smoothing_window,
)

if TYPE_CHECKING:
    from layerwise.compare.results import RunResult

Band = list[tuple[float, float, float]]
LINE_STYLES = ("-", "--", ":", "-.")


def mean_curve(curves: Sequence[Curve]) -> tuple[Curve, Band]:
    """Mean over seeds at the x values all seeds reached, and the min-max band."""
    length = min(len(c) for c in curves)
    mean, band = [], []
    for i in range(length):
        ys = [c[i][1] for c in curves]
        mean.append((curves[0][i][0], statistics.fmean(ys)))
        band.append((curves[0][i][0], min(ys), max(ys)))
    return mean, band


def _shape(result: RunResult) -> ModelShape:
    summary = result.summary
    return ModelShape(
        d_model=summary.d_model,
        head_dim=summary.head_dim,
        vocab_size=summary.vocab_size,
        layers=tuple(LayerSpec(**layer) for layer in summary.layers),
    )


def variant_dashes(runs: Mapping[str, Sequence[RunResult]]) -> dict[str, str]:
    """A line style per variant, so rows of one profile in two variants stay apart."""
    variants = list(dict.fromkeys(rs[0].cell.variant for rs in runs.values()))
    return {
        row: LINE_STYLES[variants.index(rs[0].cell.variant) % len(LINE_STYLES)]
        for row, rs in runs.items()
    }


def write_plots(runs: Mapping[str, Sequence[RunResult]], out: Path) -> tuple[Path, ...]:
    """Every figure of the report for the finished runs of each row, in table order."""
    results = [r for rs in runs.values() for r in rs]
    window = smoothing_window(r.train_loss for r in results)
    train = {
        row: mean_curve([moving_average(r.train_loss, window) for r in rs])
        for row, rs in runs.items()
    }
    val = {row: mean_curve([r.val_ppl for r in rs]) for row, rs in runs.items()}
    dashes = variant_dashes(runs)
    figures = out / "figures"
    loss_label = "training loss" + (f" (moving average of {window} steps)" if window > 1 else "")
    curves = [
        (train, "train_loss", "Training loss", loss_label, None, False),
        (train, "train_loss_zoom", "Training loss, last 30% of tokens", loss_label, 0.3, False),
        (val, "val_ppl", "Validation perplexity", "perplexity", None, True),
        (val, "val_ppl_zoom", "Validation perplexity, second half", "perplexity", 0.5, False),
    ]
    paths = [
        plot_curves(
            {row: c for row, (c, _) in data.items()},
            figures / f"{name}.png",
            spread={row: b for row, (_, b) in data.items()},
            zoom_last=zoom,
            title=title,
            xlabel="tokens (millions)",
            ylabel=ylabel,
            log_y=log_y,
            dashes=dashes,
        )
        for data, name, title, ylabel, zoom, log_y in curves
    ]
    paths.append(
        plot_allocation(
            {row: _shape(rs[0]) for row, rs in runs.items()}, figures / "allocation.png", dashes
        )
    )
    if any(r.cell.variant is not None for r in results):
        paths.append(plot_variants(val, runs, figures / "val_ppl_variants.png"))
    throughput = {row: [r.summary.mean_tokens_per_s for r in rs] for row, rs in runs.items()}
    if all(None not in values for values in throughput.values()):
        paths.append(
            plot_bars(
                {row: statistics.fmean(v) for row, v in throughput.items()},  # type: ignore[arg-type]
                figures / "throughput.png",
                title="Training throughput (after warm-up)",
                ylabel="tokens/s",
            )
        )
    return tuple(paths)


def plot_variants(
    val: Mapping[str, tuple[Curve, Band]], runs: Mapping[str, Sequence[RunResult]], path: Path
) -> Path:
    """Validation perplexity with a panel per profile and a line per variant."""
    panels: dict[str, dict[str, Curve]] = {}
    for row, (curve, _) in val.items():
        cell = runs[row][0].cell
        panels.setdefault(cell.profile, {})[str(cell.variant)] = curve
    return plot_panels(
        panels, path, xlabel="tokens (millions)", ylabel="validation perplexity", log_y=True
    )
