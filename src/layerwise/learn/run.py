"""`learn_shape`: plan the supernet's run, train it with the gates and the constraint, and turn
what the gates kept into a shape file that every command taking a profile accepts.

DIR/ holds `supernet/` (an ordinary run directory: checkpoints, metrics.jsonl with the gates'
records, summary.json), `learn.json` (the settings, so a rerun that changed them is refused
rather than mixing two experiments), and the outputs: `learned-shape.yaml`, the report and its
figures. A rerun with `run.resume=auto` (`--resume`) continues an interrupted supernet run, or
takes a finished one as it is, and writes the outputs from it again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from layerwise.config.loader import config_hash, load_config
from layerwise.config.schema import Config, total_steps
from layerwise.launch import train
from layerwise.learn.budget import (
    UnitCosts,
    check_target,
    initial_size,
    target_at,
    unit_costs,
)
from layerwise.learn.callback import GATES_RECORD, ShapeLearning
from layerwise.learn.supernet import GatedTransformer
from layerwise.profiles.budget import BudgetResult, solve_budget
from layerwise.profiles.shape import LayerSpec, Metric, ModelShape, measure
from layerwise.profiles.shapefile import shape_multipliers, write_shape_file
from layerwise.runs.files import METRICS_FILE, RunSummary, read_records
from layerwise.training.build import build_model, with_data_vocab
from layerwise.training.callbacks.base import Callback
from layerwise.training.shape import config_shape, profile_spec
from layerwise.training.trainer import ModelBuilder
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json, check_output

RUN_DIR = "supernet"
SETTINGS_FILE = "learn.json"
SHAPE_FILE = "learned-shape.yaml"
REPORT_FILE = "report.md"
SHAPES_FIGURE = "shapes.png"
GATES_FIGURE = "gates.png"
CONFIRM_DIR = "confirm"
OUTPUTS = (
    RUN_DIR,
    SETTINGS_FILE,
    SHAPE_FILE,
    REPORT_FILE,
    SHAPES_FIGURE,
    GATES_FIGURE,
    CONFIRM_DIR,
)
"""Everything `learn-shape` writes in its --out directory (and `--overwrite` removes)."""


@dataclass(frozen=True)
class LearnPlan:
    """Everything a shape-learning run is, resolved and checked before the first step."""

    config_path: str
    overrides: tuple[str, ...]
    out: Path
    name: str
    """The learned shape's name: its label in compare, the ladder and reports."""
    config: Config
    """The user's config (vocabulary resolved): the base the learned shape is for."""
    run_config: Config
    """The supernet's run: the user's config with every layer at the widest shape."""
    supernet: ModelShape
    costs: UnitCosts
    target: int
    fix_step: int
    warmup_steps: int

    @property
    def metric(self) -> Metric:
        return self.costs.metric

    @property
    def seq_len(self) -> int:
        return self.config.data.seq_len

    def settings(self) -> dict[str, Any]:
        """What makes this experiment: compared with learn.json on a rerun."""
        return {
            "supernet_run": config_hash(self.run_config),  # its experiment, not where it runs
            "name": self.name,
            "metric": self.metric,
            "target": self.target,
            "learn": asdict(self.config.learn),
        }


def supernet_overrides(config: Config) -> tuple[str, ...]:
    """The user's model at the widest shape: every layer `learn.max_ffn` x d_model of FFN and
    `learn.max_qkv` x d_model of queries, rounded as any profile is, never rescaled."""
    learn = config.learn
    return (
        "model.profile=isotropic",
        f"model.ffn=[{learn.max_ffn}]",
        f"model.qkv=[{learn.max_qkv}]",
        "model.frame=false",
        "model.match=null",
        "model.target_params=null",
    )


def make_learn_plan(
    config_path: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    name: str = "learned",
) -> LearnPlan:
    """Resolve and check a shape-learning run: target, supernet, unit prices, fixing step."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "learn-shape runs as one process (the gates' constraint is not yet reduced across "
            "ranks); run it without torchrun, on one GPU"
        )
    if not name or "/" in name or name.endswith((".yaml", ".yml")):
        raise UserError(f"--name {name!r}: give a word, e.g. learned")
    out = check_output(out, "--out", "directory")
    config = with_data_vocab(load_config(config_path, overrides))
    learn = config.learn
    if learn.target_params is not None and learn.target_flops is not None:
        raise UserError("give learn.target_params or learn.target_flops, not both")
    if config.run.export_at_end or config.init.from_ is not None:
        raise UserError(
            "learn-shape trains a gated supernet, not the model: run.export_at_end and "
            "init.from do not apply to it; export or fine-tune a run of the learned shape "
            "(e.g. one of --confirm's) instead"
        )
    metric: Metric = "flops" if learn.target_flops is not None else "params"
    profile_spec(config.model, config.model.vocab_size or 0)  # the base must be valid as given
    run_config = with_data_vocab(
        load_config(
            config_path,
            (*overrides, *supernet_overrides(config), f"run.dir={out / RUN_DIR}"),
        )
    )
    assert run_config.model.vocab_size is not None
    supernet, _ = config_shape(run_config, run_config.model.vocab_size)
    costs = unit_costs(supernet, config.model.ffn_divisor, metric, config.data.seq_len)
    target = learn.target_params if metric == "params" else learn.target_flops
    if target is None:
        own, _ = config_shape(config, run_config.model.vocab_size)
        target = measure(own, metric, config.data.seq_len)
    check_target(target, supernet, costs, config.data.seq_len)
    steps = total_steps(run_config)
    fix_step = min(steps, max(1, round(learn.fix_at * steps)))
    return LearnPlan(
        config_path=str(config_path),
        overrides=tuple(overrides),
        out=out,
        name=name,
        config=config,
        run_config=run_config,
        supernet=supernet,
        costs=costs,
        target=target,
        fix_step=fix_step,
        warmup_steps=round(learn.target_warmup * fix_step),
    )


def supernet_builder(plan: LearnPlan) -> ModelBuilder:
    """Builds the gated supernet where `train` would build the plain model, seeded as it is."""
    learn = plan.config.learn
    supernet = partial(
        GatedTransformer,
        costs=plan.costs,
        init_keep=learn.init_keep,
        gate_lr=learn.gate_lr,
        lambda_lr=learn.lambda_lr,
    )
    return partial(build_model, make=supernet)


def shape_learning(plan: LearnPlan) -> ShapeLearning:
    learn = plan.config.learn
    start = initial_size(plan.supernet, plan.costs, learn.init_keep, plan.seq_len)

    def target(step: int) -> float:
        return target_at(step, start, plan.target, plan.warmup_steps)

    return ShapeLearning(plan.fix_step, target, learn.log_interval)


def check_settings(plan: LearnPlan, overwrite: bool) -> None:
    """Refuse to continue DIR with other settings (naming them); `overwrite` starts afresh."""
    path = plan.out / SETTINGS_FILE
    if overwrite:
        for name in OUTPUTS:
            target = plan.out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        now = plan.settings()
        changed = [
            f"{key} {saved.get(key)!r} -> {now[key]!r}" for key in now if saved.get(key) != now[key]
        ]
        if changed:
            raise UserError(
                f"{plan.out} holds a shape learned with other settings ({'; '.join(changed)}); "
                "give another --out, or --overwrite to start again"
            )
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan.settings())


@dataclass(frozen=True)
class LearnedShape:
    """What a finished learning run left: the kept widths and the shape landed on the target."""

    kept: ModelShape
    """The widths the gates kept: exactly what the supernet trained after fixing."""
    expected_at_fix: float
    landed: BudgetResult
    """`kept` rescaled by the budget solver to the target, as any profile is."""
    summary: RunSummary
    shape_file: Path


def gates_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(run_dir / METRICS_FILE) if r.get("type") == GATES_RECORD]


def fixed_record(run_dir: Path) -> dict[str, Any]:
    fixed = [r for r in gates_records(run_dir) if r.get("fixed")]
    if not fixed:
        raise UserError(
            f"{run_dir}: the run ended before its gates were fixed (no fixing record in "
            f"{METRICS_FILE}); rerun the same command to continue it"
        )
    return fixed[-1]


def learned_shape(plan: LearnPlan, summary: RunSummary) -> LearnedShape:
    """The kept widths, landed on the target, written as DIR/learned-shape.yaml."""
    record = fixed_record(plan.out / RUN_DIR)
    kept = replace(plan.supernet, layers=tuple(LayerSpec(**layer) for layer in record["kept"]))
    ffn, qkv = shape_multipliers(kept)
    spec = replace(
        profile_spec(plan.config.model, plan.supernet.vocab_size),
        ffn=tuple(ffn),
        qkv=tuple(qkv),
        frame=False,
    )
    landed = solve_budget(spec, plan.target, plan.metric, plan.seq_len)
    about = {
        "target": {"metric": plan.metric, "value": plan.target},
        "achieved": landed.achieved,
        "learned": {
            "run": str(plan.out / RUN_DIR),
            "steps": summary.steps,
            "fixed_at_step": plan.fix_step,
            "expected_at_fix": record["expected"],
            "kept": record["kept"],
            "kept_size": measure(kept, plan.metric, plan.seq_len),
            "final_val_loss": summary.final_val_loss,
        },
    }
    rounding = {"gqa_group": spec.gqa_group, "ffn_divisor": spec.ffn_divisor}
    path = write_shape_file(plan.out / SHAPE_FILE, plan.name, landed.shape, rounding, about)
    return LearnedShape(kept, float(record["expected"]), landed, summary, path)


def learn_shape(
    plan: LearnPlan, callbacks: Sequence[Callback] = (), overwrite: bool = False
) -> LearnedShape:
    """Train the supernet (or continue it), fix its gates, and write the learned shape."""
    check_settings(plan, overwrite)
    summary = train(
        plan.run_config, [shape_learning(plan), *callbacks], build=supernet_builder(plan)
    )
    return learned_shape(plan, summary)
