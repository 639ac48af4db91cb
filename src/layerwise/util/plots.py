"""Pictures a reader would rather look at than read: curves, bands and bars.

One colour per profile throughout (the same name gets the same colour in every figure of a
report), axes labelled, legends outside the data. Figures are written atomically. Matplotlib's
object API is used without pyplot, so plotting needs no display and touches no global state.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from layerwise.util.files import atomic_write_bytes

_PALETTE = {
    "isotropic": "#4d4d4d",
    "vanilla": "#1f77b4",
    "framed": "#2ca02c",
    "reverse": "#d62728",
    "crown": "#9467bd",
}
_EXTRA = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _study_colour(name: str) -> str | None:
    """The study's colour of a profile, also inside a variant's label (`12l/crown`)."""
    name = name.rsplit("/", 1)[-1]
    for shape, colour in _PALETTE.items():
        if name == shape or name.endswith(f"-{shape}"):
            return colour
    return None


def colour_for(name: str, names: Sequence[str]) -> str:
    """A stable colour: the study's shapes keep theirs, other names take the next free one."""
    known = _study_colour(name)
    if known is not None:
        return known
    others = [n for n in names if _study_colour(n) is None]
    return _EXTRA[others.index(name) % len(_EXTRA)] if name in others else _EXTRA[0]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """PNG at 150 dpi, written atomically so an interrupted run leaves no broken image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    return atomic_write_bytes(Path(path), buffer.getvalue())


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    zoom_last: float | None = None,
    spread: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    log_y: bool = False,
    dashes: Mapping[str, str] | None = None,
    log_x: bool = False,
) -> Path:
    """One figure of `draw_curves`."""
    fig = Figure(figsize=(8, 4.5))
    draw_curves(
        fig.subplots(),
        series,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        zoom_last=zoom_last,
        spread=spread,
        log_y=log_y,
        dashes=dashes,
        log_x=log_x,
    )
    return save_figure(fig, path)


def plot_panels(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
) -> Path:
    """One panel per title, side by side, with a shared legend: e.g. per profile, a line per
    variant (the study's 12- vs 18-layer validation perplexity figure)."""
    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items(), strict=True):
        draw_curves(
            ax, series, title=title, xlabel=xlabel, ylabel=ylabel, log_y=log_y, legend=False
        )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, path)


def draw_curves(
    ax: Axes,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    zoom_last: float | None = None,
    spread: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    log_y: bool = False,
    legend: bool = True,
    dashes: Mapping[str, str] | None = None,
    log_x: bool = False,
) -> None:
    """One line per name; `zoom_last` keeps only the last fraction of x to show small gaps.

    `spread` gives (x, low, high) bands, e.g. min/max over seeds, drawn behind each line.
    `log_y` keeps the late, small differences visible next to a large value at step 0. Sparse
    series (evaluations) get a marker at every point so a reader sees where they were measured.
    Panels of one figure that show the same names leave the legend to the figure (`legend`).
    `dashes` gives names a line style, e.g. one per variant when colours follow the profile.
    `log_x` is for rates and sizes swept by factors (learning rates, parameter counts).
    """
    names = list(series)
    x_max = max((p[0] for points in series.values() for p in points), default=0.0)
    x_min = x_max * (1 - zoom_last) if zoom_last else float("-inf")
    for name, points in series.items():
        kept = [(x, y) for x, y in points if x >= x_min]
        if not kept:
            continue
        colour = colour_for(name, names)
        marker = "o" if len(kept) <= 40 else None
        ax.plot(
            [x for x, _ in kept],
            [y for _, y in kept],
            color=colour,
            linestyle=(dashes or {}).get(name, "-"),
            label=name,
            linewidth=1.4,
            marker=marker,
            markersize=3,
        )
        band = [b for b in (spread or {}).get(name, []) if b[0] >= x_min]
        if band:
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=colour,
                alpha=0.15,
            )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(frameon=False)


def smoothing_window(curves: Iterable[Sequence[tuple[float, float]]]) -> int:
    """Steps to average per-step losses over: about 50 points across the longest curve."""
    return max(1, max((len(c) for c in curves), default=0) // 50)


def moving_average(curve: Sequence[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing moving average: per-step losses are too noisy to compare by eye."""
    values = [y for _, y in curve]
    out = []
    for i, (x, _) in enumerate(curve):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append((x, sum(chunk) / len(chunk)))
    return out


def plot_bars(values: Mapping[str, float], path: str | Path, *, title: str, ylabel: str) -> Path:
    """A bar per profile, labelled with its value, for figures like tokens/s."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    names = list(values)
    bars = ax.bar(names, list(values.values()), color=[colour_for(n, names) for n in names])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values.values()], padding=2)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
