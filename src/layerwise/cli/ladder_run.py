"""`layerwise ladder CONFIG` (`ladder run`) and `layerwise ladder report OUT`: train a ladder,
then fit and report it; the report is rebuilt from the runs' records every time."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from layerwise.cli import positive_int

if TYPE_CHECKING:
    from layerwise.ladder.plan import LadderPlan, LadderRun


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write numbers, e.g. 5,10,20") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write integers, e.g. 0,1") from None


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def _sizes(text: str) -> list[int | str]:
    return [int(part) if part.strip().isdigit() else part.strip() for part in text.split(",")]


def add_run_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "run",
        help="train every profile at every size, budget and seed, then fit and report "
        "(`layerwise ladder CONFIG` for short)",
        description="Train a ladder: at each size (d_model, or D_MODELxN_LAYERS) every profile "
        "matched to the reference's parameter count, at each token budget (a multiple of the "
        "reference's N) and seed; then fit a scaling law per profile and write ladder.csv, "
        "fit.json, report.md/html and figures. Flags replace the config's `ladder:` keys. "
        "Rerunning the same command skips finished runs and resumes an interrupted one.",
    )
    parser.add_argument("config", help="YAML config of the runs (with a `ladder:` section)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", required=True, help="directory of the ladder's runs and report")
    parser.add_argument("--profiles", type=_words, help="e.g. isotropic,crown")
    parser.add_argument("--sizes", type=_sizes, help="d_model per size, e.g. 32,48,64 or 64x4,96x6")
    parser.add_argument(
        "--tokens-per-param", type=_floats, help="token budgets as multiples of N, e.g. 5,10,20"
    )
    parser.add_argument("--seeds", type=_ints, help="e.g. 0,1")
    parser.add_argument("--schedule", choices=("branched", "separate"))
    parser.add_argument("--lr-rule", choices=("config", "olmo"))
    parser.add_argument(
        "--lr-sweep", type=_floats, help="LR multipliers tried per profile at the smallest size"
    )
    parser.add_argument(
        "--reference", help="the profile the others are matched to and compared with"
    )
    parser.add_argument("--bootstrap", type=positive_int, help="bootstrap replicates of the fit")
    parser.set_defaults(func=run)

    report = commands.add_parser(
        "report",
        help="rebuild a ladder's table, fit and report from its runs",
        description="Read every finished run's record under OUT (a `layerwise ladder --out`), "
        "rewrite ladder.csv and fit and report what is there.",
    )
    report.add_argument("out", help="the ladder's --out directory")
    report.set_defaults(func=run_report)


def announce(console: Console) -> Callable[[int, int, LadderRun, str], None]:
    def on_run(index: int, total: int, run: LadderRun, status: str) -> None:
        console.print(f"[bold][{index + 1}/{total}][/bold] {escape(f'{run.label}: {status}')}")

    return on_run


def run(args: argparse.Namespace) -> int:
    from layerwise.distributed.env import shutdown
    from layerwise.ladder.estimate import render_costs, rung_costs
    from layerwise.ladder.plan import make_ladder_plan
    from layerwise.ladder.run import join_distributed, prepare, run_ladder
    from layerwise.training.trainer import RunInterrupted
    from layerwise.util.files import check_output

    check_output(args.out, "--out", "directory")
    flags = {
        "profiles": args.profiles,
        "sizes": args.sizes,
        "tokens_per_param": args.tokens_per_param,
        "seeds": args.seeds,
        "schedule": args.schedule,
        "lr_rule": args.lr_rule,
        "lr_sweep": args.lr_sweep,
        "reference": args.reference,
        "bootstrap": args.bootstrap,
    }
    plan = make_ladder_plan(args.config, args.out, args.overrides, **flags)
    console = Console(soft_wrap=True)
    main_process = join_distributed(plan).is_main
    if main_process:
        sizes, runs = prepare(plan, 1)
        console.print(escape(render_costs(plan, rung_costs(plan, sizes, runs))), highlight=False)
    try:
        run_ladder(plan, announce(console) if main_process else lambda *_: None)
    except RunInterrupted as exc:
        console.print(f"layerwise: {exc}; rerun the same command to continue the ladder")
        return 128 + exc.signum
    finally:
        shutdown()
    if main_process:
        print_report(console, plan)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from layerwise.ladder.plan import read_ladder_plan

    print_report(Console(soft_wrap=True), read_ladder_plan(Path(args.out)))
    return 0


def print_report(console: Console, plan: LadderPlan) -> None:
    from layerwise.ladder.report import files_of
    from layerwise.ladder.results import write_ladder_report_of
    from layerwise.ladder.run import read_sweep, sweep_edges

    fit = write_ladder_report_of(plan)
    sweep = read_sweep(plan)
    for warning in sweep_edges(plan, sweep["best"]) if sweep else []:
        console.print(escape(f"warning: {warning}"))
    for found in fit.answers:
        for sentence in found.sentences():
            console.print(escape(f"- {sentence}"))
    for warning in fit.warnings:
        console.print(escape(f"warning: {warning}"))
    files = files_of(plan.out)
    console.print(
        f"table: {plan.out / 'ladder.csv'}  fit: {files.fit_json}  report: {files.markdown}  "
        f"page: {files.html}"
    )
    console.print(
        f"figures: {files.figures[0].parent}/ ({', '.join(p.name for p in files.figures)})"
    )
