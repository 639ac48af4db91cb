"""The study's parameter-allocation figure for any set of shapes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from layerwise.profiles.shape import ModelShape, layer_params
from layerwise.util.plots import colour_for, save_figure


def plot_allocation(
    shapes: Mapping[str, ModelShape],
    path: str | Path,
    dashes: Mapping[str, str] | None = None,
) -> Path:
    """The study's 'parameter allocation' figure: parameters, FFN width and heads per layer;
    `dashes` gives names a line style (one per variant) where colours repeat across variants."""
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3, sharex=True)
    panels = [
        ("Parameters per layer", "millions", lambda shape, layer: layer_params(shape, layer) / 1e6),
        ("FFN width per layer", "d_ffn", lambda shape, layer: layer.d_ffn),
        ("Attention per layer", "query heads", lambda shape, layer: layer.n_heads),
    ]
    names = list(shapes)
    for ax, (title, ylabel, value) in zip(axes, panels, strict=True):
        for name, shape in shapes.items():
            ax.plot(
                range(shape.n_layers),
                [value(shape, layer) for layer in shape.layers],
                color=colour_for(name, names),
                linestyle=(dashes or {}).get(name, "-"),
                marker="o",
                markersize=3,
                alpha=0.85,
                label=name,
            )
        ax.set(title=title, xlabel="layer index", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return save_figure(fig, path)
