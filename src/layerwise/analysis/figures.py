"""The analysis as pictures: one figure per question, one colour per profile as in the report.

Runs may differ in depth and width, so every per-layer axis is the run's own layer index and
every per-run panel its own subplot. Heatmaps share a 0..1 scale so that panels compare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from layerwise.util.plots import colour_for, save_figure

Run = dict[str, Any]


def write_figures(result: dict[str, Any], out: Path) -> list[Path]:
    """Every figure of an analysis.json-shaped `result` under `out`; returns their paths."""
    runs: list[Run] = result["runs"]
    paths = [
        plot_logit_lens(runs, out / "logit_lens.png"),
        plot_importance(runs, out / "importance.png"),
        plot_update_ratios(runs, out / "update_ratios.png"),
        plot_geometry(runs, out / "geometry.png"),
        plot_heatmaps(
            [(run["label"], run["cka"], "layer", "layer") for run in runs],
            out / "cka.png",
            title="Linear CKA between layers (unbiased minibatch estimate)",
        ),
        plot_heatmaps(
            [(run["label"], run["attention_entropy"], "head", "layer") for run in runs],
            out / "attention_entropy.png",
            title="Attention entropy per head (1 = uniform over visible keys, blank = no head)",
        ),
    ]
    if result["cross"]:
        cells = [
            (f"{c['a_label']} vs {c['b_label']}", c["cka"], c["b_label"], c["a_label"])
            for c in result["cross"]
        ]
        paths.append(
            plot_heatmaps(cells, out / "cka_cross.png", title="Linear CKA across runs, by layer")
        )
    return paths


def _colours(runs: Sequence[Run]) -> list[str]:
    """Colours follow the profile, so the same shape looks the same in every figure."""
    profiles = list(dict.fromkeys(run["profile"] for run in runs))
    return [colour_for(run["profile"], profiles) for run in runs]


def _integer_x(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _lines(ax: Axes, runs: Sequence[Run], key: str, title: str, ylabel: str) -> None:
    for run, colour in zip(runs, _colours(runs), strict=True):
        values = run[key]
        ax.plot(
            range(len(values)), values, color=colour, marker="o", markersize=3, label=run["label"]
        )
    ax.set(title=title, xlabel="layer (block output)", ylabel=ylabel)
    _integer_x(ax)


LinePanel = tuple[str, str, str]
"""(per-layer key in analysis.json, panel title, y label)."""


def _line_pair(runs: Sequence[Run], path: Path, left: LinePanel, right: LinePanel) -> Path:
    """Two per-layer panels side by side, one line per run, the legend on the right."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, (key, title, ylabel) in zip(axes, (left, right), strict=True):
        _lines(ax, runs, key, title, ylabel)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return save_figure(fig, path)


def plot_logit_lens(runs: Sequence[Run], path: Path) -> Path:
    return _line_pair(
        runs,
        path,
        ("logit_lens_loss", "Logit lens: loss decoding each layer", "loss (nats)"),
        ("logit_lens_kl", "KL(final || layer)", "nats"),
    )


def plot_geometry(runs: Sequence[Run], path: Path) -> Path:
    return _line_pair(
        runs,
        path,
        ("effective_rank", "Effective rank of the residual stream", "dims"),
        ("anisotropy", "Anisotropy (mean cosine of token pairs)", "cosine"),
    )


def _panels(n: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel().tolist()
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, axes[:n]


def plot_importance(runs: Sequence[Run], path: Path) -> Path:
    """Skip-delta bars per layer with Block Influence on a second axis, a panel per run."""
    fig, axes = _panels(len(runs), 4.6, 3.4)
    for ax, run, colour in zip(axes, runs, _colours(runs), strict=True):
        layers = range(run["n_layers"])
        ax.bar(layers, run["skip_delta"], color=colour, alpha=0.8, label="loss increase if skipped")
        ax.set(xlabel="layer", ylabel="loss increase (nats)")
        rho = run["skip_influence_spearman"]
        ax.set_title(f"{run['label']} (Spearman {'n/a' if rho is None else f'{rho:.2f}'})")
        twin = ax.twinx()
        twin.plot(layers, run["block_influence"], color="black", marker="o", markersize=3)
        twin.set_ylabel("Block Influence (line)")
        _integer_x(ax)
    fig.suptitle("Layer importance: skip the block (bars) vs how much it turns the stream (line)")
    return save_figure(fig, path)


def plot_update_ratios(runs: Sequence[Run], path: Path) -> Path:
    """Update ratios (log scale) over shaded bars of each layer's FFN width, heads in ticks."""
    fig, axes = _panels(len(runs), 4.6, 3.4)
    for ax, run, colour in zip(axes, runs, _colours(runs), strict=True):
        layers = list(range(run["n_layers"]))
        widths = ax.twinx()
        widths.bar(layers, [layer["d_ffn"] for layer in run["layers"]], color=colour, alpha=0.15)
        widths.set_ylabel("FFN width (bars)")
        ax.set_zorder(widths.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(
            layers,
            run["attn_update_ratio"],
            color=colour,
            linestyle="--",
            marker="o",
            markersize=3,
            label="attention",
        )
        ax.plot(
            layers, run["ffn_update_ratio"], color=colour, marker="s", markersize=3, label="FFN"
        )
        ax.set_yscale("log")
        ax.set_xticks(
            layers,
            [f"{i}\n{layer['n_heads']}h" for i, layer in zip(layers, run["layers"], strict=True)],
        )
        ax.set(title=run["label"], xlabel="layer / query heads", ylabel="||update|| / ||stream||")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize="small")
    fig.suptitle("Residual update ratios against each layer's width")
    return save_figure(fig, path)


def plot_heatmaps(
    cells: Sequence[tuple[str, list[list[float | None]], str, str]], path: Path, *, title: str
) -> Path:
    """One 0..1 heatmap per (title, matrix, x label, y label); missing values left blank."""
    fig, axes = _panels(len(cells), 4.2, 3.6)
    image = None
    for ax, (name, matrix, xlabel, ylabel) in zip(axes, cells, strict=True):
        values = np.array([[np.nan if v is None else v for v in row] for row in matrix])
        image = ax.imshow(
            np.ma.masked_invalid(values),
            vmin=0,
            vmax=1,
            cmap="viridis",
            origin="lower",
            aspect="auto",
        )
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return save_figure(fig, path)
