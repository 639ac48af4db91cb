"""layerwise: pre-train and compare language models whose layers are not all the same width.

The names users write are importable from here, lazily: `import layerwise` loads nothing
heavy (no torch), and `layerwise.train` imports the trainer on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerwise.compare.report import write_report
    from layerwise.compare.run import make_plan, run_comparison
    from layerwise.config.loader import load_config
    from layerwise.config.schema import Config
    from layerwise.ladder.fit import fit_ladder
    from layerwise.ladder.plan import make_ladder_plan
    from layerwise.ladder.results import write_ladder_report_of
    from layerwise.ladder.run import run_ladder
    from layerwise.ladder.table import read_table
    from layerwise.launch import train
    from layerwise.learn.confirm import learned_comparison
    from layerwise.learn.report import write_learn_report
    from layerwise.learn.run import learn_shape, make_learn_plan
    from layerwise.profiles.budget import BudgetResult, resolve_shape, solve_budget
    from layerwise.profiles.recipes import (
        PRESETS,
        SHAPES,
        ProfileSpec,
        lookup_spec,
        shape_from_spec,
    )
    from layerwise.profiles.shape import (
        LayerSpec,
        ModelShape,
        flops_per_token,
        non_embedding_params,
        total_params,
    )
    from layerwise.training.callbacks.base import Callback
    from layerwise.training.load import TrainedModel, load_model
    from layerwise.training.plan import plan_run

__version__ = "0.1.0"

_PUBLIC = {
    "train": "layerwise.launch",
    "load_model": "layerwise.training.load",
    "TrainedModel": "layerwise.training.load",
    "Callback": "layerwise.training.callbacks.base",
    "plan_run": "layerwise.training.plan",
    "Config": "layerwise.config.schema",
    "load_config": "layerwise.config.loader",
    "make_plan": "layerwise.compare.run",
    "run_comparison": "layerwise.compare.run",
    "write_report": "layerwise.compare.report",
    "make_ladder_plan": "layerwise.ladder.plan",
    "run_ladder": "layerwise.ladder.run",
    "write_ladder_report_of": "layerwise.ladder.results",
    "fit_ladder": "layerwise.ladder.fit",
    "read_table": "layerwise.ladder.table",
    "make_learn_plan": "layerwise.learn.run",
    "learn_shape": "layerwise.learn.run",
    "write_learn_report": "layerwise.learn.report",
    "learned_comparison": "layerwise.learn.confirm",
    "PRESETS": "layerwise.profiles.recipes",
    "SHAPES": "layerwise.profiles.recipes",
    "ProfileSpec": "layerwise.profiles.recipes",
    "lookup_spec": "layerwise.profiles.recipes",
    "shape_from_spec": "layerwise.profiles.recipes",
    "BudgetResult": "layerwise.profiles.budget",
    "resolve_shape": "layerwise.profiles.budget",
    "solve_budget": "layerwise.profiles.budget",
    "LayerSpec": "layerwise.profiles.shape",
    "ModelShape": "layerwise.profiles.shape",
    "flops_per_token": "layerwise.profiles.shape",
    "non_embedding_params": "layerwise.profiles.shape",
    "total_params": "layerwise.profiles.shape",
}
"""Public name -> the module that defines it (imported on first access)."""

__all__ = [
    "PRESETS",
    "SHAPES",
    "BudgetResult",
    "Callback",
    "Config",
    "LayerSpec",
    "ModelShape",
    "ProfileSpec",
    "TrainedModel",
    "__version__",
    "fit_ladder",
    "flops_per_token",
    "learn_shape",
    "learned_comparison",
    "load_config",
    "load_model",
    "lookup_spec",
    "make_ladder_plan",
    "make_learn_plan",
    "make_plan",
    "non_embedding_params",
    "plan_run",
    "read_table",
    "resolve_shape",
    "run_comparison",
    "run_ladder",
    "shape_from_spec",
    "solve_budget",
    "total_params",
    "train",
    "write_ladder_report_of",
    "write_learn_report",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'layerwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
