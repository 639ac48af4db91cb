"""`layerwise plan CONFIG`: parameters, FLOPs, memory per GPU and time of a run, before running it."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from layerwise.cli import positive_float, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="estimate a run's size, memory per GPU and time before running it",
        description="Parameters, FLOPs per token, estimated memory per GPU for DDP and FSDP2 "
        "(with and without activation checkpointing), the run's tokens and steps, and its time "
        "at a stated MFU; warns when the configured layout will not fit.",
    )
    parser.add_argument("config", help="YAML config of the run")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--gpus", type=positive_int, default=1, help="GPUs (default 1)")
    parser.add_argument(
        "--gpu-memory",
        default="80GiB",
        help="memory of one GPU, e.g. 80GiB or 141GB (default 80GiB)",
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=positive_float,
        help="dense bf16 peak per GPU (default: run.peak_tflops, else an H100's 989)",
    )
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="plan the config's ladder (its `ladder:` section) instead of one run: every size's "
        "N, budgets, steps and LR, and the FLOPs and time of all its runs",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ladder:
        return plan_ladder(args)
    from layerwise.config.loader import load_config
    from layerwise.training.build import with_data_vocab
    from layerwise.training.plan import DEFAULT_PEAK_TFLOPS, plan_run, render_plan
    from layerwise.training.shape import config_shape
    from layerwise.util.errors import UserError
    from layerwise.util.units import parse_memory

    gpu_memory = parse_memory(args.gpu_memory)
    config = load_config(args.config, args.overrides)
    if config.model.vocab_size is None:
        try:
            config = with_data_vocab(config)
        except UserError as exc:
            raise UserError(
                f"model.vocab_size is null (take it from the data) and the data cannot be read "
                f"({exc}); set model.vocab_size=N to plan without the data"
            ) from None
    assert config.model.vocab_size is not None
    shape, _ = config_shape(config, config.model.vocab_size)
    peak = args.peak_tflops or config.run.peak_tflops or DEFAULT_PEAK_TFLOPS
    plan = plan_run(config, shape, args.gpus, gpu_memory, args.mfu, peak)
    Console(width=200).print(escape(render_plan(plan)), highlight=False)
    return 0


def plan_ladder(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from layerwise.config.loader import load_config
    from layerwise.config.schema import data_sources
    from layerwise.data.meta import META_FILE
    from layerwise.ladder.estimate import render_estimate, rung_costs
    from layerwise.ladder.plan import make_ladder_plan
    from layerwise.ladder.run import prepare
    from layerwise.training.plan import DEFAULT_PEAK_TFLOPS

    plan = make_ladder_plan(args.config, "ladder-plan", args.overrides)
    sources = data_sources(load_config(args.config, args.overrides).data)
    plan = replace(plan, read_data=all((Path(s.dir) / META_FILE).exists() for s in sources))
    sizes, runs = prepare(plan, args.gpus)
    peak = args.peak_tflops or runs[0].config.run.peak_tflops or DEFAULT_PEAK_TFLOPS
    text = render_estimate(plan, rung_costs(plan, sizes, runs), args.mfu, peak, args.gpus)
    Console(width=200).print(escape(text), highlight=False)
    return 0
