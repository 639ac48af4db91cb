"""`layerwise ladder`: every profile at several sizes and budgets, and a scaling law per profile.

`ladder fit TABLE.csv --out DIR` fits any table of runs (from this tool or elsewhere) and
writes fit.json, the report and its figures. The command keeps its forms as subcommands, so
training a ladder and rebuilding its report join as `run` and `report` beside `fit`. scipy (the `ladder` extra) is imported when a fit runs, not when the parser is
built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from layerwise.cli import positive_int
from layerwise.cli.ladder_run import add_run_parsers
from layerwise.util.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ladder",
        help="scaling laws per profile from runs at several sizes and budgets "
        "(pip install 'layerwise[ladder]')",
        description="Fit L(N, D) = E + A/N^alpha + B/D^beta per profile and jointly, with paired "
        "bootstrap intervals, and say how many times its size a reference model needs to match "
        "each profile, at the trained sizes and extrapolated.",
    )
    commands = parser.add_subparsers(dest="ladder_command", metavar="SUBCOMMAND", required=True)
    add_run_parsers(commands)
    add_fit_parser(commands)


def target(text: str) -> tuple[float, float]:
    """argparse type of --target: `N:D` as counts (`1B:20B`, `180e6:5e9`)."""
    from layerwise.ladder.answer import parse_target

    try:
        return parse_target(text, "--target")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_fit_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fit",
        help="fit a table of runs (columns N, D, loss, profile, seed) and write the report",
        description="Fit a ladder's table of runs: one CSV row per run with columns N (the "
        "parameter count to fit on), D (training tokens), loss, profile and seed; rung and "
        "tokens_per_param are used when present. Writes fit.json, report.md, report.html and "
        "figures/ under --out.",
    )
    parser.add_argument("table", help="CSV of runs, e.g. a ladder's ladder.csv")
    parser.add_argument("--out", required=True, help="directory for fit.json, report, figures")
    parser.add_argument(
        "--reference", default="isotropic", help="profile the others are measured against"
    )
    parser.add_argument(
        "--bootstrap", type=positive_int, default=1000, help="bootstrap replicates (1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's draws (0)")
    parser.add_argument(
        "--target",
        type=target,
        action="append",
        metavar="N:D",
        help="predict the loss at N parameters and D tokens (repeatable; default "
        "180M:5B and 1B:20B)",
    )
    parser.add_argument("--json", action="store_true", help="print fit.json instead of the summary")
    parser.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from layerwise.ladder.answer import TARGETS
    from layerwise.ladder.law import require_scipy
    from layerwise.ladder.report import files_of, write_ladder_report
    from layerwise.ladder.table import read_table
    from layerwise.util.files import check_output

    require_scipy()
    out = check_output(args.out, "--out", "directory")
    points = read_table(args.table)
    fit = write_ladder_report(
        points,
        out,
        reference=args.reference,
        targets=args.target or TARGETS,
        bootstrap=args.bootstrap,
        seed=args.seed,
        source=f"table {args.table}",
    )
    files = files_of(out)
    if args.json:
        sys.stdout.write(Path(files.fit_json).read_text(encoding="utf-8"))
        return 0
    console = Console(soft_wrap=True)
    for found in fit.answers:
        for sentence in found.sentences():
            console.print(escape(f"- {sentence}"))
    for warning in fit.warnings:
        console.print(escape(f"warning: {warning}"))
    console.print(
        f"fit: {files.fit_json}  report: {files.markdown}  page: {files.html}  figures: "
        f"{files.figures[0].parent}/ ({', '.join(p.name for p in files.figures)})"
    )
    return 0
