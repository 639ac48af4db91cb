"""`layerwise compare`: train every profile x seed on identical settings, then write the report.

The training stack is imported when a command runs, not when the parser is built, so
`layerwise --help` and the light commands start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from layerwise.compare.cells import Cell, ComparisonPlan


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="budget-matched comparison of profiles (the study's experiment)",
        description="Train each profile x seed with everything else identical and write the "
        "study's table and figures. Rerunning skips finished runs and resumes interrupted ones; "
        "it refuses to mix in runs made with other settings.",
    )
    parser.add_argument("config", help="YAML config shared by every run")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides for every run"
    )
    parser.add_argument(
        "--profiles",
        help="comma-separated shapes or presets (default: the study's five)",
    )
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="a named set of overrides crossed with profiles and seeds, e.g. "
        "--variant 12l:model.n_layers=12 --variant 18l:model.n_layers=18 (repeatable; replaces "
        "the config's compare.variants block)",
    )
    parser.add_argument(
        "--match-variant",
        metavar="VARIANT",
        help="rescale every cell of every variant to the parameter count of --match-params's "
        "profile in this variant (default: each variant matches its own)",
    )
    parser.add_argument(
        "--init-from",
        metavar="COMPARISON_DIR",
        help="fine-tune every run of that finished comparison, cell for cell, with this "
        "config's data, optimizer and schedule (the grid comes from COMPARISON_DIR)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--match-params",
        metavar="PROFILE",
        default="isotropic",
        help="rescale every other profile to this one's parameter count (default isotropic)",
    )
    budget.add_argument(
        "--paper-anchors",
        action="store_true",
        help="keep the study's hand-tuned anchors instead of matching budgets",
    )
    parser.add_argument(
        "--match-by",
        choices=("params", "flops"),
        default="params",
        help="what --match-params equalises (default params)",
    )
    parser.add_argument("--out", required=True, help="directory for runs and report")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="delete and retrain the cells whose runs in --out were made with other settings "
        "(without it, such runs stop the command before any training)",
    )
    add_analyze_flag(parser)
    parser.set_defaults(func=run)


def add_analyze_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="also run `layerwise analyze` on the finished runs (OUT/analysis/) and add its "
        "section to the report",
    )


DEFAULT_PROFILES = "isotropic,vanilla,framed,reverse,crown"


def plan_from_args(args: argparse.Namespace) -> ComparisonPlan:
    from layerwise.compare.run import (
        collect_variants,
        make_fine_tune_plan,
        make_plan,
        parse_list,
        parse_seeds,
    )
    from layerwise.util.errors import UserError
    from layerwise.util.files import check_output

    out = check_output(args.out, "--out", "directory")
    if args.init_from is not None:
        grid = [flag for flag, value in GRID_FLAGS.items() if getattr(args, value)]
        if grid:
            raise UserError(
                f"--init-from takes the grid from {args.init_from}; drop {', '.join(grid)}"
            )
        source, target = Path(args.init_from).resolve(), out.resolve()
        if target == source or source in target.parents:
            where = "is" if target == source else "is inside"
            raise UserError(
                f"--out {args.out} {where} --init-from {args.init_from}: the fine-tuned runs "
                "would be written over the runs they start from; choose another --out"
            )
        return make_fine_tune_plan(args.init_from, args.config, args.out, args.overrides)
    variants = None if not args.variant else collect_variants(args.variant, None)
    return make_plan(
        config=args.config,
        profiles=parse_list(args.profiles or DEFAULT_PROFILES, "--profiles"),
        seeds=parse_seeds(args.seeds or "0"),
        out=args.out,
        match=None if args.paper_anchors else args.match_params,
        match_by=args.match_by,
        overrides=args.overrides,
        variants=variants,
        match_variant=args.match_variant,
    )


GRID_FLAGS = {
    "--profiles": "profiles",
    "--seeds": "seeds",
    "--variant": "variant",
    "--match-variant": "match_variant",
    "--paper-anchors": "paper_anchors",
}
"""Flags that shape a grid, which a fine-tuning comparison inherits from its source instead."""


def announce(console: Console) -> Callable[[int, int, Cell, str], None]:
    def on_run(index: int, total: int, cell: Cell, status: str) -> None:
        console.print(f"[bold][{index + 1}/{total}][/bold] {escape(f'{cell.label}: {status}')}")

    return on_run


def print_report(console: Console, out: str, analyze: bool = False) -> None:
    """Write the report (after the layer analysis, when asked for) and print its table."""
    from layerwise.compare.report import sentence, summary_table, write_report
    from layerwise.util.render import markdown_table

    if analyze:
        from layerwise.analysis import analyze_comparison

        console.print(f"analysis: every finished run of {out} against its seed's reference")
        analyze_comparison(out)
    files, rows = write_report(out)
    reference = next((row.label for row in rows if row.verdict == "reference"), "the reference")
    console.print(escape(markdown_table(summary_table(rows))))
    for row in rows:
        if row.verdict != "reference":
            console.print(escape(f"- {sentence(row, reference)}"))
    console.print(
        f"report: {files.markdown}  tables: {files.csv} (per row), {files.runs_csv} "
        f"(per run)  page: {files.html}"
    )
    console.print(f"figures: {files.plots[0].parent}/ ({', '.join(p.name for p in files.plots)})")


def run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    return execute(Console(), plan, rerun_changed=args.rerun_changed, analyze=args.analyze)


def execute(
    console: Console, plan: ComparisonPlan, rerun_changed: bool = False, analyze: bool = False
) -> int:
    """Train the missing runs, then (on rank 0) write and print the report."""
    from layerwise.compare.run import is_main_process, run_comparison
    from layerwise.distributed.env import shutdown
    from layerwise.training.trainer import RunInterrupted

    main_process = is_main_process(plan)
    try:
        on_run = announce(console) if main_process else lambda *_: None
        run_comparison(plan, on_run, rerun_changed=rerun_changed)
    except RunInterrupted as exc:
        console.print(f"layerwise: {exc}; rerun the same command to continue the comparison")
        return 128 + exc.signum
    finally:
        shutdown()
    if main_process:
        print_report(console, str(plan.out), analyze)
    return 0
