"""`layerwise search`: look for a better layer-wise shape than the study's five at equal budget.

Optuna is imported when the command runs, so `layerwise --help` works without the extra.
"""

from __future__ import annotations

import argparse
import importlib.util

from rich.console import Console
from rich.markup import escape

from layerwise.cli import positive_int
from layerwise.util.errors import UserError
from layerwise.util.files import check_output


def float_pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write LOW,HIGH, e.g. 0.25,8") from None
    return low, high


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="automatic profile search with Optuna (pip install 'layerwise[search]')",
        description="Search per-layer FFN and attention multipliers (K anchors, interpolated) "
        "that reach the lowest validation loss at the reference's size. The five baselines are "
        "trained first; rerunning continues the study; workers sharing --storage (and --out) "
        "share one study.",
    )
    parser.add_argument("config", help="YAML config every trial starts from")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", required=True, help="directory of the study's trials and report")
    parser.add_argument(
        "--trials",
        type=positive_int,
        default=30,
        help="finished trials the study should hold, baselines included (30)",
    )
    parser.add_argument("--storage", help="RDB URL or journal file (default OUT/study.journal)")
    parser.add_argument(
        "--sampler",
        choices=("tpe", "cmaes", "nsga2", "gp", "random"),
        help="tpe, cmaes (CMA-ES on the anchors), nsga2 (a genetic algorithm; with --pruner "
        "hyperband or none), gp, random; kept by the study (default: the study's, tpe for a "
        "new one)",
    )
    parser.add_argument("--seed", type=int, help="sampler seed (give each worker its own)")
    parser.add_argument("--pruner", choices=("sha", "hyperband", "none"), default="sha")
    parser.add_argument("--rungs", type=positive_int, default=3, help="fidelity levels (3)")
    parser.add_argument(
        "--eta", type=positive_int, default=3, help="rung length ratio, at least 2 (3)"
    )
    parser.add_argument(
        "--trial-steps",
        type=positive_int,
        help="steps of a trial at the last rung (default: the config's budget)",
    )
    parser.add_argument("--anchors", type=positive_int, default=5, help="anchors per curve (5)")
    parser.add_argument("--interpolation", choices=("pchip", "linear"), default="pchip")
    parser.add_argument("--frame", choices=("search", "on", "off"), default="search")
    parser.add_argument("--ffn-range", type=float_pair, default=(0.25, 8.0), metavar="LOW,HIGH")
    parser.add_argument("--qkv-range", type=float_pair, default=(0.25, 2.0), metavar="LOW,HIGH")
    parser.add_argument(
        "--match",
        metavar="PROFILE",
        help="profile whose size every trial matches (default: the config's, else isotropic)",
    )
    parser.add_argument(
        "--check-fidelity",
        type=int,
        nargs="?",
        const=5,
        metavar="N",
        help="instead of searching: rank correlation of the baselines and N "
        "random shapes (5) between search fidelity and a longer one",
    )
    parser.add_argument("--fidelity-factor", type=positive_int, default=3)
    parser.add_argument("--fidelity-seeds", type=positive_int, default=3)
    parser.add_argument(
        "--confirm",
        type=positive_int,
        metavar="K",
        help="after the search, retrain the top K shapes and the baselines at "
        "the full budget through `layerwise compare`",
    )
    parser.add_argument("--confirm-seeds", default="0,1,2", help="seeds of --confirm (0,1,2)")
    parser.add_argument(
        "--start-from",
        metavar="FILE[,FILE]",
        help="shape files (e.g. learn-shape's learned-shape.yaml) to train as the first sampled "
        "trials, read at the anchors: the sampler starts from them",
    )
    parser.set_defaults(func=run)


def make_plan(args: argparse.Namespace):  # -> SearchPlan, typed loosely to keep imports lazy
    from layerwise.search.plan import SearchPlan
    from layerwise.search.space import SearchSpace

    space = SearchSpace(
        anchors=args.anchors,
        interpolation=args.interpolation,
        frame=args.frame,
        ffn_range=args.ffn_range,
        qkv_range=args.qkv_range,
    )
    return SearchPlan(
        config=args.config,
        overrides=tuple(args.overrides),
        space=space,
        trial_steps=args.trial_steps,
        rungs=args.rungs,
        eta=args.eta,
        match=args.match,
    )


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise UserError("layerwise search needs Optuna: pip install 'layerwise[search]'")
    from layerwise.search.fidelity import check_fidelity
    from layerwise.search.plan import check_plan
    from layerwise.search.run import run_search
    from layerwise.training.trainer import RunInterrupted

    console = Console()
    plan = make_plan(args)
    out = check_output(args.out, "--out", "directory")
    try:
        if args.check_fidelity is not None:
            out.mkdir(parents=True, exist_ok=True)
            check_plan(plan, out)
            result = check_fidelity(
                plan,
                out,
                args.check_fidelity,
                args.fidelity_factor,
                args.fidelity_seeds,
                args.seed,
                say=console.print,
            )
            console.print(
                f"fidelity: Spearman {result['spearman']:.3f}, Kendall {result['kendall']:.3f}; "
                f"seed std {result['seed_std']:.4f} vs shape std {result['shape_std']:.4f} "
                f"({out / 'fidelity.json'})"
            )
            return 0
        found = run_search(
            plan,
            out,
            args.trials,
            args.storage,
            args.sampler,
            args.seed,
            args.pruner,
            say=lambda text: console.print(escape(text)),
            start_from=args.start_from.split(",") if args.start_from else (),
        )
    except RunInterrupted as exc:
        console.print(f"layerwise: {exc}; rerun the same command to continue the search")
        return 128 + exc.signum
    print_summary(console, found)
    if args.confirm is not None:
        return confirm(console, found.study, plan, out, args)
    return 0


def print_summary(console: Console, found) -> None:
    console.print(escape(found.files.markdown.read_text(encoding="utf-8").split("## Figures")[0]))
    overhead = found.overhead_fraction
    if overhead is not None:
        console.print(
            f"time: {found.wall_s:.0f} s running trials, {found.timing.train_s:.0f} s of it in "
            f"training; overhead (sampling, solving, storage) {100 * overhead:.1f}%"
        )
    console.print(f"trials: {found.files.csv}  report: {found.files.markdown}")


def confirm(console: Console, study, plan, out, args: argparse.Namespace) -> int:
    from layerwise.cli.compare import execute
    from layerwise.compare.run import parse_seeds
    from layerwise.search.confirm import confirm_plan

    comparison = confirm_plan(study, plan, out, args.confirm, parse_seeds(args.confirm_seeds))
    return execute(console, comparison)
