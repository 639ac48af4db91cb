"""`--check-fidelity`: can the search's short runs rank shapes the way longer runs would?

The five baselines and N random shapes of the space are trained at the search fidelity (the
last rung) and at a longer one; the two rankings are compared with Spearman's rho and Kendall's
tau, and the reference is trained at several seeds to show how large seed noise is next to the
spread between shapes. A low correlation, or a spread within the seed noise, means the search
fidelity cannot tell these shapes apart: search at a longer trial budget.

The longer run continues the short run's directory from its WSD decay start (as rungs do), so
it costs the extra steps only. Results are saved per shape in DIR/fidelity.json as they come,
so an interrupted check continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise.launch import train
from layerwise.search.objective import checked_loss
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.report import FIDELITY_JSON, read_fidelity
from layerwise.search.space import SearchSpace, Shape, ffn_name, qkv_name, shape_of
from layerwise.util.files import atomic_write_json
from layerwise.util.stats import kendall, spearman

FIDELITY_DIR = "fidelity"


def random_params(space: SearchSpace, rng: np.random.Generator) -> dict[str, float | bool]:
    """A point drawn uniformly in log space, like the search's random sampler."""
    params: dict[str, float | bool] = {}
    for name, (low, high) in [
        *((ffn_name(k), space.ffn_range) for k in range(space.anchors)),
        *((qkv_name(k), space.qkv_range) for k in range(space.anchors)),
    ]:
        params[name] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    params["frame"] = bool(rng.choice(space.frames))
    return params


def check_fidelity(
    plan: SearchPlan,
    out: Path,
    n_random: int,
    factor: int,
    seeds: int,
    seed: int | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Train the shapes at both fidelities and the reference at `seeds` seeds; save and return
    DIR/fidelity.json's content."""
    short = plan.rung_steps()[-1]
    long = short * factor
    path = out / FIDELITY_JSON
    saved = read_fidelity(out) or {}  # an interrupted check continues with the shapes it has
    done = saved["shapes"] if saved.get("long_steps") == long else {}
    rng = np.random.default_rng(seed)
    n_layers = plan.base().model.n_layers
    candidates: list[tuple[str, str | None, Shape | None]] = [(n, n, None) for n in BASELINES]
    for k in range(n_random):
        random_shape = shape_of(random_params(plan.space, rng), plan.space, n_layers)
        candidates.append((f"random-{k + 1}", None, random_shape))
    for name, baseline, shape in candidates:
        if name in done:
            continue
        run_dir = out / FIDELITY_DIR / name
        losses = [
            checked_loss(train(plan.trial_config(baseline, shape, run_dir, steps)))
            for steps in (short, long)
        ]
        done[name] = {"short": losses[0], "long": losses[1]}
        say(f"fidelity {name}: {short} steps {losses[0]:.4f}, {long} steps {losses[1]:.4f}")
        atomic_write_json(path, {"short_steps": short, "long_steps": long, "shapes": done})
    seed_losses = [done[plan.reference]["short"]]
    base_seed = plan.base().train.seed
    for k in range(1, seeds):
        run_dir = out / FIDELITY_DIR / f"{plan.reference}-seed{base_seed + k}"
        extra = (f"train.seed={base_seed + k}",)
        config = plan.trial_config(plan.reference, None, run_dir, short, extra)
        seed_losses.append(checked_loss(train(config)))
    result = summarise(done, short, long, plan.reference, seed_losses)
    atomic_write_json(path, result)
    return result


def summarise(
    shapes: dict[str, dict[str, float]],
    short: int,
    long: int,
    reference: str,
    seed_losses: list[float],
) -> dict:
    names = list(shapes)
    short_losses = [shapes[n]["short"] for n in names]
    long_losses = [shapes[n]["long"] for n in names]
    return {
        "short_steps": short,
        "long_steps": long,
        "shapes": shapes,
        "spearman": _or_nan(spearman(short_losses, long_losses)),
        "kendall": _or_nan(kendall(short_losses, long_losses)),
        "reference": reference,
        "seed_losses": seed_losses,
        "seed_std": float(np.std(seed_losses, ddof=1)) if len(seed_losses) > 1 else 0.0,
        "shape_std": float(np.std(short_losses, ddof=1)),
    }


def _or_nan(value: float | None) -> float:
    """An undefined correlation (every loss equal) as NaN, which the report prints as such."""
    return float("nan") if value is None else value
