"""`layerwise learn-shape CONFIG --out DIR`: learn each layer's width by gradient in one run.

A gated supernet trains with its expected size held to the target; the widths its gates keep,
landed on the target by the budget solver, become DIR/learned-shape.yaml, a profile every other
command takes. `--confirm K` retrains it from scratch beside the study's five with K seeds.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from layerwise.cli import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "learn-shape",
        help="learn where the width goes: a gated supernet, one run (Sheared-LLaMA's gates)",
        description="Train CONFIG's model as a supernet (every layer at learn.max_ffn x d_model "
        "FFN and learn.max_qkv x d_model queries) with hard-concrete gates on FFN channel blocks "
        "and GQA groups, its expected size driven to the target by a Lagrangian; after "
        "learn.fix_at of the steps the gates are fixed and the rest trains the narrower model. "
        "Writes OUT/learned-shape.yaml (give it wherever a profile goes), a report and figures.",
    )
    parser.add_argument("config", help="YAML config, e.g. configs/tiny-isotropic.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. learn.gate_lr=0.1")
    parser.add_argument("--out", required=True, help="directory of the run, shape and report")
    parser.add_argument(
        "--target-params",
        metavar="N",
        help="parameters of the learned shape, e.g. 2.01M (default: the config's model's)",
    )
    parser.add_argument(
        "--target-flops", metavar="F", help="instead: training FLOPs per token, e.g. 30M"
    )
    parser.add_argument("--name", default="learned", help="the shape's name in reports (learned)")
    parser.add_argument(
        "--confirm",
        type=positive_int,
        metavar="K",
        help="then retrain the learned shape and the study's five from scratch with K seeds "
        "through `layerwise compare` (OUT/confirm/), and say whether it beat isotropic at 95%%",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUT (or a finished one, e.g. to add --confirm)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start again: delete OUT's earlier run first"
    )
    parser.set_defaults(func=run)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The command's flags as the config keys they set."""
    flags = [
        *(["learn.target_params=" + args.target_params] if args.target_params else []),
        *(["learn.target_flops=" + args.target_flops] if args.target_flops else []),
        *(["run.resume=auto"] if args.resume else []),
    ]
    return [*args.overrides, *flags]


def run(args: argparse.Namespace) -> int:
    from layerwise.distributed.env import shutdown
    from layerwise.learn.report import write_learn_report
    from layerwise.learn.run import learn_shape, make_learn_plan
    from layerwise.training.trainer import RunInterrupted

    console = Console()
    plan = make_learn_plan(args.config, args.out, overrides_of(args), args.name)
    console.print(escape(describe_plan(plan)))
    try:
        learned = learn_shape(plan, overwrite=args.overwrite)
    except RunInterrupted as exc:
        console.print(f"layerwise: {exc}")
        return 128 + exc.signum
    finally:
        shutdown()
    if args.confirm is not None:
        from layerwise.cli.compare import execute
        from layerwise.learn.confirm import learned_comparison

        status = execute(console, learned_comparison(plan, learned, range(args.confirm)))
        if status:
            return status
    report = write_learn_report(plan, learned)
    console.print(escape(report.read_text(encoding="utf-8").split("## Figures")[0]))
    console.print(f"shape: {learned.shape_file}  report: {report}")
    return 0


def describe_plan(plan) -> str:  # LearnPlan; typed loosely to keep imports lazy
    widest = plan.supernet.layers[0]
    return (
        f"learn-shape: target {plan.metric} {plan.target:,}; supernet {plan.supernet.n_layers} "
        f"layers of d_ffn {widest.d_ffn} and {widest.n_heads} heads, gated in blocks of "
        f"{plan.costs.ffn_channels} channels and groups of {plan.costs.group} heads; gates "
        f"fixed after step {plan.fix_step} of {plan.run_config.train.steps or 'the budget'}"
    )
