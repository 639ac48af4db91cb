"""`layerwise demo`: the quickstart comparison, on a CPU, with no data to bring."""

from __future__ import annotations

import argparse

from rich.console import Console

from layerwise.cli.compare import execute
from layerwise.util.files import check_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="compare the five profiles as tiny models on this machine (minutes on 2 CPU cores)",
        description="Prepare the Python standard library's docstrings with a small BPE, train the "
        "study's five shapes as tiny equal-size models on the CPU, and print the comparison table. "
        "Rerunning continues where an interrupted demo stopped.",
    )
    parser.add_argument(
        "--out", default="layerwise-demo", help="working directory (default ./layerwise-demo)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layerwise.cli.data import summary_line
    from layerwise.compare.demo import (
        DEMO_EVAL_LIMIT,
        DEMO_TOKENIZER,
        check_overrides,
        demo_evals_dir,
        demo_plan,
        prepare_demo_data,
    )

    out = check_output(args.out, "--out", "directory")
    check_overrides(out, tuple(args.overrides))
    console = Console()
    console.print(f"[bold]layerwise demo[/bold]: five profiles, tiny models, CPU; in {args.out}/")
    console.print(f"data: the Python standard library's docstrings, tokenizer {DEMO_TOKENIZER}")
    evals = demo_evals_dir()
    console.print(
        f"downstream: the core tasks, {DEMO_EVAL_LIMIT} examples each, from {evals}"
        if evals is not None
        else "downstream: no evaluation sets beside the checkout (../shared/evals); skipped"
    )
    prepared = prepare_demo_data(out / "data")
    console.print(summary_line(prepared) if prepared else f"data: reusing {out / 'data'}")
    return execute(console, demo_plan(out, tuple(args.overrides)))
