"""analysis.md: what the numbers show, in words, for a reader who will not open the JSON.

Every sentence is derived from analysis.json by a fixed rule (thresholds named below), so the
text is reproducible and says nothing the numbers do not.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from layerwise.analysis.importance import spearman

REDUNDANT_CKA = 0.95
"""Neighbouring layers more similar than this are called near-duplicates."""

FIGURES = (
    ("logit_lens.png", "Logit lens"),
    ("importance.png", "Layer importance"),
    ("update_ratios.png", "Update ratios and widths"),
    ("geometry.png", "Effective rank and anisotropy"),
    ("cka.png", "CKA within each run"),
    ("cka_cross.png", "CKA across runs"),
    ("attention_entropy.png", "Attention entropy"),
)


def render(result: dict[str, Any], figure_prefix: str = "", heading: str = "#") -> str:
    """The markdown text; `figure_prefix` is prepended to figure file names in links and
    `heading` is the level of the top heading (for embedding in a report)."""
    runs = result["runs"]
    first = runs[0]
    lines = [
        f"{heading} Layer analysis",
        "",
        f"On the first {first['windows']} validation windows of {first['seq_len']} tokens "
        f"({first['tokens']:,} predicted tokens per run), at the checkpoint of step "
        f"{', '.join(sorted({str(r['step']) for r in runs}))}. Layers are counted from 0; "
        "token statistics leave out position 0.",
        "",
        table(runs),
        "",
    ]
    for run in runs:
        lines += [f"{heading}# {run['label']}", "", *run_sentences(run), ""]
    if result["cross"]:
        lines += [f"{heading}# Across runs", ""]
        lines += [f"- {cross_sentence(entry)}" for entry in result["cross"]]
        lines.append("")
    if len(runs) > 1:
        lines += [f"{heading}# In short", "", *comparison_sentences(runs), ""]
    names = {"cka_cross.png"} if result["cross"] else set()
    for name, caption in FIGURES:
        if name != "cka_cross.png" or name in names:
            lines.append(f"![{caption}]({figure_prefix}{name})")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def formed_at(run: dict[str, Any]) -> float:
    """Relative depth (0..1] at which the prediction is formed: runs of different depths
    compare on this."""
    return (run["first_layer_near_final"] + 1) / run["n_layers"]


def adjacent_cka(run: dict[str, Any]) -> list[float]:
    return [run["cka"][i][i + 1] for i in range(run["n_layers"] - 1)]


def mean_entropy(run: dict[str, Any]) -> list[float]:
    """Mean over each layer's heads (NaN or None padding left out)."""
    return [
        statistics.fmean(v for v in row if v is not None and v == v)
        for row in run["attention_entropy"]
    ]


def table(runs: Sequence[dict[str, Any]]) -> str:
    head = (
        "| run | val loss | formed at layer | most needed layer | skip vs BI (Spearman) "
        "| mean CKA of neighbours | effective rank first -> last | mean attention entropy |"
    )
    rows = [head, "|" + "---|" * 8]
    for run in runs:
        delta = run["skip_delta"]
        top = max(range(len(delta)), key=delta.__getitem__)
        rows.append(
            f"| {run['label']} | {run['val_loss']:.4f} | {run['first_layer_near_final']} of "
            f"{run['n_layers']} | {top} (+{delta[top]:.3f}) | "
            f"{_fmt(run['skip_influence_spearman'])} | "
            f"{_fmt(statistics.fmean(adjacent_cka(run)) if run['n_layers'] > 1 else None)} | "
            f"{run['effective_rank'][0]:.1f} -> {run['effective_rank'][-1]:.1f} | "
            f"{statistics.fmean(mean_entropy(run)):.2f} |"
        )
    return "\n".join(rows)


def run_sentences(run: dict[str, Any]) -> list[str]:
    delta, per_m = run["skip_delta"], run["skip_delta_per_mparam"]
    order = sorted(range(len(delta)), key=delta.__getitem__)
    best_value = max(range(len(per_m)), key=per_m.__getitem__)
    k = run["first_layer_near_final"]
    out = [
        f"- The logit lens comes within 10% of the final loss ({run['val_loss']:.3f}) at layer "
        f"{k} of {run['n_layers']} ({formed_at(run):.0%} of the depth); the first layer decodes "
        f"to {run['logit_lens_loss'][0]:.3f}, {run['logit_lens_kl'][0]:.2f} nats of KL from "
        "the final distribution.",
        f"- Skipping layer {order[-1]} costs the most (+{delta[order[-1]]:.3f} nats), layer "
        f"{order[0]} the least ({delta[order[0]]:+.3f}); per million parameters layer "
        f"{best_value} is worth the most ({per_m[best_value]:+.3f} nats/M).",
    ]
    rho = run["skip_influence_spearman"]
    if rho is not None:
        agree = (
            "agrees with"
            if rho >= 0.5
            else "only partly agrees with"
            if rho > 0
            else ("does not predict")
        )
        out.append(
            f"- Block Influence {agree} the skip cost (Spearman {rho:.2f}): "
            + (
                "how much a block turns the stream is a fair proxy for its importance here."
                if rho >= 0.5
                else "a block can turn the stream a lot and still be replaceable."
            )
        )
    out += width_sentences(run)
    pairs = [f"{i}-{i + 1}" for i, c in enumerate(adjacent_cka(run)) if c > REDUNDANT_CKA]
    if pairs:
        out.append(
            f"- Near-duplicate neighbours (CKA > {REDUNDANT_CKA}): layers {', '.join(pairs)}; "
            "these are the candidates for removal or for narrower widths."
        )
    entropy = mean_entropy(run)
    focused = min(range(len(entropy)), key=entropy.__getitem__)
    out.append(
        f"- Effective rank goes from {run['effective_rank'][0]:.1f} to "
        f"{run['effective_rank'][-1]:.1f} dimensions and anisotropy from "
        f"{run['anisotropy'][0]:.2f} to {run['anisotropy'][-1]:.2f}; the most focused heads "
        f"are in layer {focused} (mean normalised entropy {entropy[focused]:.2f})."
    )
    return out


def width_sentences(run: dict[str, Any]) -> list[str]:
    """Do wider layers write more? Only asked where the widths differ."""
    widths = [layer["d_ffn"] for layer in run["layers"]]
    if len(set(widths)) < 2:
        return [
            f"- Every layer has the same width; FFN update ratios fall from "
            f"{run['ffn_update_ratio'][0]:.2f} to {run['ffn_update_ratio'][-1]:.2f}."
        ]
    rho = spearman([float(w) for w in widths], run["ffn_update_ratio"])
    rho_skip = spearman([float(w) for w in widths], run["skip_delta"])
    return [
        f"- Across layers, FFN width vs FFN update ratio: Spearman {_fmt(rho)}; FFN width vs "
        f"skip cost: {_fmt(rho_skip)} "
        + (
            "(wider layers do more)."
            if (rho_skip or 0) >= 0.5
            else "(width alone does not say which layers matter)."
        )
    ]


def cross_sentence(entry: dict[str, Any]) -> str:
    """Which layer of the reference each layer matches, and how well."""
    matrix = entry["cka"]
    best = [max(range(len(row)), key=row.__getitem__) for row in matrix]
    scores = [row[j] for row, j in zip(matrix, best, strict=True)]
    n_a, n_b = len(matrix), len(matrix[0])
    shift = statistics.fmean(j / max(n_b - 1, 1) - i / max(n_a - 1, 1) for i, j in enumerate(best))
    return (
        f"{entry['a_label']} vs {entry['b_label']}: each layer's best match has CKA "
        f"{min(scores):.2f}-{max(scores):.2f} (best-matching layers {best}); on average the "
        f"match sits {abs(shift):.0%} of the depth "
        f"{'deeper' if shift > 0 else 'shallower'} in {entry['b_label']}."
    )


def comparison_sentences(runs: Sequence[dict[str, Any]]) -> list[str]:
    early = min(runs, key=formed_at)
    late = max(runs, key=formed_at)
    spread = {r["label"]: max(r["skip_delta"]) / max(sum(r["skip_delta"]), 1e-12) for r in runs}
    concentrated = max(spread, key=spread.__getitem__)
    depth = (
        f"- Every run forms its prediction at {formed_at(early):.0%} of its depth."
        if formed_at(early) == formed_at(late)
        else f"- {early['label']} forms its prediction earliest ({formed_at(early):.0%} of the "
        f"depth), {late['label']} latest ({formed_at(late):.0%})."
    )
    return [
        depth,
        f"- {concentrated} leans most on a single layer: {spread[concentrated]:.0%} of its "
        "total skip cost is one block.",
    ]
