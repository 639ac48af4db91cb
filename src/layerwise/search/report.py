"""What a search found: DIR/trials.csv (one row per trial) and DIR/report.md with figures.

The report draws the best shapes beside the five baselines, the optimisation history, Optuna's
parameter importances, the compute spent (pruned trials and re-done decays included) and, when
`--check-fidelity` was run, the rank correlation between search and longer fidelity. The
search's own losses are what the report shows; `--confirm` judges the found shapes on fresh runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from layerwise.compare.report import csv_text
from layerwise.profiles.plot import plot_allocation
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.study import DONE
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text
from layerwise.util.plots import colour_for, save_figure
from layerwise.util.render import Table, markdown_table

TRIALS_CSV = "trials.csv"
REPORT_MD = "report.md"
FIDELITY_JSON = "fidelity.json"
FIGURES = "figures"
BEST_SHOWN = 3


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    markdown: Path
    figures: tuple[Path, ...]


def trial_record(trial: FrozenTrial) -> dict[str, object]:
    """A row of trials.csv: per-layer widths as space-separated lists."""
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "source": attrs.get("source", ""),
        "d_ffn": " ".join(str(v) for v in attrs.get("d_ffn", [])),
        "heads": " ".join(str(v) for v in attrs.get("heads", [])),
        "params": attrs.get("params", ""),
        "tokens": attrs.get("tokens", ""),
        # Optuna gives a pruned trial its last rung's loss as value; only a complete trial
        # has a loss at the trial budget
        "val_loss": trial.value if trial.state == TrialState.COMPLETE else "",
        "last_rung_loss": last_rung(trial),
        "tokens_per_s": attrs.get("tokens_per_s", ""),
        "flops_per_token": attrs.get("flops_per_token", ""),
        "compute_tokens": attrs.get("compute_tokens", 0),
        "reused_from": attrs.get("reused_from", ""),
        "note": attrs.get("infeasible") or attrs.get("diverged") or attrs.get("error") or "",
    }


def last_rung(trial: FrozenTrial) -> float | str:
    values = trial.intermediate_values
    return values[max(values)] if values else ""


def shape_from(trial: FrozenTrial, plan: SearchPlan) -> ModelShape:
    """The trained widths as recorded in the trial (attention head counts; KV heads by GQA)."""
    base = plan.base().model
    layers = tuple(
        LayerSpec(d_ffn=f, n_heads=h, n_kv_heads=h // base.gqa_group)
        for f, h in zip(trial.user_attrs["d_ffn"], trial.user_attrs["heads"], strict=True)
    )
    return ModelShape(base.d_model, base.head_dim, base.vocab_size or 1, layers)


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first, one per shape (reuses left out)."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "reused_from" not in t.user_attrs and t.value is not None
    ]
    return sorted(trials, key=lambda t: cast(float, t.value))  # None filtered out above


def baseline_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    found = {t.user_attrs.get("baseline"): t for t in ranked(study)}
    return {name: found[name] for name in BASELINES if name in found}


def best_found(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best k sampled shapes (not baselines)."""
    return [t for t in ranked(study) if "baseline" not in t.user_attrs][:k]


def write_search_report(study: optuna.Study, plan: SearchPlan, out: Path) -> ReportFiles:
    trials = study.get_trials(deepcopy=False)
    records = [trial_record(t) for t in trials]
    csv_path = atomic_write_text(out / TRIALS_CSV, csv_text(records) if records else "")
    figures_dir = out / FIGURES
    figures_dir.mkdir(exist_ok=True)
    baselines, best = baseline_trials(study), best_found(study, BEST_SHOWN)
    shapes = {name: shape_from(t, plan) for name, t in baselines.items()}
    shapes.update({f"trial {t.number}": shape_from(t, plan) for t in best})
    figures = [
        plot_history(study, figures_dir / "history.png"),
        plot_compute(trials, figures_dir / "compute.png"),
    ]
    if shapes:
        figures.append(plot_allocation(shapes, figures_dir / "shapes.png"))
    importances = param_importances(study)
    if importances:
        figures.append(plot_importances(importances, figures_dir / "importances.png"))
    fidelity = read_fidelity(out)
    text = render(study, plan, baselines, best, importances, fidelity, figures)
    markdown = atomic_write_text(out / REPORT_MD, text)
    return ReportFiles(csv_path, markdown, tuple(figures))


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importances (PED-ANOVA: no scikit-learn needed); empty with too few trials."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 4:
        return {}
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        return {}


def plot_history(study: optuna.Study, path: Path) -> Path:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    done = [t for t in study.get_trials(deepcopy=False, states=DONE) if t.intermediate_values]
    for trial in done:
        loss = trial.value if trial.value is not None else last_rung(trial)
        baseline = trial.user_attrs.get("baseline")
        colour = colour_for(baseline, list(BASELINES)) if baseline else "#999999"
        marker = "s" if baseline else ("x" if trial.state == TrialState.PRUNED else "o")
        ax.scatter(trial.number, loss, color=colour, marker=marker, label=baseline)
    complete = [t for t in done if t.value is not None]
    best, xs, ys = math.inf, [], []
    for trial in sorted(complete, key=lambda t: t.number):
        best = min(best, float(cast(float, trial.value)))  # complete: value is not None
        xs.append(trial.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    ax.set(
        title="Optimisation history (x: pruned, last rung reached)",
        xlabel="trial",
        ylabel="validation loss",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return save_figure(fig, path)


def plot_compute(trials: list[FrozenTrial], path: Path) -> Path:
    """Tokens each trial trained (re-done decays included; a reuse trains none), by state."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    colours = {TrialState.COMPLETE: "#1f77b4", TrialState.PRUNED: "#ff7f0e"}
    for state, colour in colours.items():
        chosen = [t for t in trials if t.state == state]
        ax.bar(
            [t.number for t in chosen],
            [int(t.user_attrs.get("compute_tokens", 0)) / 1e6 for t in chosen],
            color=colour,
            label=state.name.lower(),
        )
    ax.set(title="Compute per trial", xlabel="trial", ylabel="million tokens trained")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    fig = Figure(figsize=(6, 0.35 * len(importances) + 1.5))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set(title="Parameter importances (PED-ANOVA)", xlabel="importance")
    return save_figure(fig, path)


FIDELITY_SUMMARY = ("spearman", "kendall", "reference", "seed_losses", "seed_std", "shape_std")
"""The keys a finished fidelity check adds to the shapes it saves as it goes."""


def read_fidelity(out: Path) -> dict | None:
    """DIR/fidelity.json, or None without one. An interrupted check leaves the shapes done so
    far and no summary (see `fidelity_finished`); a file that is not that is a UserError."""
    path = out / FIDELITY_JSON
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        problem = (
            ""
            if isinstance(document, dict) and isinstance(document.get("shapes"), dict)
            else "no shapes"
        )
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        problem = str(exc)
    if problem:
        raise UserError(
            f"{path} is not the result of a fidelity check ({problem}); delete it and rerun "
            "with --check-fidelity to redo the check"
        )
    return document


def fidelity_finished(fidelity: dict) -> bool:
    return all(key in fidelity for key in FIDELITY_SUMMARY)


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render(
    study: optuna.Study,
    plan: SearchPlan,
    baselines: dict[str, FrozenTrial],
    best: list[FrozenTrial],
    importances: dict[str, float],
    fidelity: dict | None,
    figures: list[Path],
) -> str:
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    compute = sum(int(t.user_attrs.get("compute_tokens", 0)) for t in trials)
    pruned_compute = sum(
        int(t.user_attrs.get("compute_tokens", 0)) for t in trials if t.state == TrialState.PRUNED
    )
    reused = sum("reused_from" in t.user_attrs for t in trials)
    reference = baselines.get(plan.reference)
    named = [*baselines.items(), *((f"trial {t.number}", t) for t in best)]
    rows = [
        (
            name,
            _loss(t.value),
            _delta(t, reference),
            " ".join(map(str, t.user_attrs["d_ffn"])),
            " ".join(map(str, t.user_attrs["heads"])),
            f"{t.user_attrs['params']:,}",
        )
        for name, t in named
    ]
    header = ("shape", "val loss", f"vs {plan.reference}", "d_ffn", "heads", "params")
    table = markdown_table(Table(header, tuple(rows))) if rows else "no trial has finished yet"
    lines = [
        "# Profile search",
        "",
        f"Config `{plan.config}`, rungs {plan.rung_steps()} steps (eta {plan.eta}), "
        f"{plan.space.anchors} anchors, {plan.space.interpolation} interpolation, frame "
        f"{plan.space.frame}; every trial matched to {plan.reference}'s size.",
        "",
        f"Trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed, {states[TrialState.RUNNING]} running, "
        f"{states[TrialState.WAITING]} waiting; {reused} reused an earlier trial's result.",
        f"Compute: {compute:,} tokens trained, {pruned_compute:,} of them in pruned trials.",
        "",
        "## Best shapes beside the baselines (search fidelity: these are the search's own "
        "numbers; `--confirm` retrains them on fresh seeds)",
        "",
        table,
        "",
    ]
    if importances:
        lines += ["## Parameter importances", ""]
        lines += [f"- {name}: {value:.3f}" for name, value in importances.items()] + [""]
    if fidelity is not None:
        lines += fidelity_lines(fidelity)
    lines += ["## Figures", ""] + [f"![{p.stem}]({FIGURES}/{p.name})" for p in figures]
    return "\n".join(lines) + "\n"


def _delta(trial: FrozenTrial, reference: FrozenTrial | None) -> str:
    if reference is None or reference.value is None or trial.value is None:
        return ""
    return f"{trial.value - reference.value:+.4f}"


def fidelity_lines(fidelity: dict) -> list[str]:
    if not fidelity_finished(fidelity):
        return [
            "## Fidelity check",
            "",
            f"The fidelity check is unfinished: it was interrupted after "
            f"{len(fidelity['shapes'])} shape(s) at {fidelity.get('short_steps')} and "
            f"{fidelity.get('long_steps')} steps, before the correlations; rerun with "
            "--check-fidelity to finish it.",
            "",
        ]
    return [
        "## Fidelity check",
        "",
        f"{len(fidelity['shapes'])} shapes at {fidelity['short_steps']} and "
        f"{fidelity['long_steps']} steps: Spearman {fidelity['spearman']:.3f}, Kendall "
        f"{fidelity['kendall']:.3f}. Seed noise of {fidelity['reference']} at the search "
        f"fidelity: std {fidelity['seed_std']:.4f} over {len(fidelity['seed_losses'])} seeds, "
        f"against a spread (std) of {fidelity['shape_std']:.4f} between shapes.",
        "",
    ]
