"""`layerwise eval RUN_DIR`: downstream task scores of a trained run's checkpoint.

torch is imported when the command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from layerwise.cli import positive_int

if TYPE_CHECKING:
    from layerwise.evaluation.metrics import TaskResult
    from layerwise.evaluation.report import RunScores


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a trained run on downstream multiple-choice tasks",
        description="Score a run's checkpoint on downstream tasks by rank classification "
        "(OLMo's in-loop formats): accuracy, length-normalised accuracy and bits per byte, "
        "beside chance. Writes RUN_DIR/eval/step<k>.json. Tasks: arc_easy, arc_challenge, "
        "boolq, commonsense_qa, hellaswag, openbookqa, piqa, social_iqa, sciq, copa, "
        "winogrande, basic_arithmetic, mmlu_stem, mmlu; core = arc_easy, hellaswag, piqa, "
        "sciq, commonsense_qa. Launch with torchrun to shard the scoring over GPUs.",
    )
    parser.add_argument("run_dir", help="a run directory (holding config.yaml and checkpoints)")
    parser.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="the checkpoint's step (default: newest)"
    )
    parser.add_argument(
        "--tasks", default="core", help="all, core, or comma-separated task names (default core)"
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N examples per task"
    )
    parser.add_argument(
        "--evals-dir",
        metavar="DIR",
        help="the tasks' *.jsonl.gz files (default: ../shared/evals beside the checkout)",
    )
    parser.add_argument(
        "--mmlu-split",
        choices=("validation", "test"),
        default="validation",
        help="the MMLU rows scored by mmlu and mmlu_stem (default validation)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layerwise.distributed.env import shutdown
    from layerwise.evaluation.evaluator import evaluate_run, result_path, results_json
    from layerwise.evaluation.report import RunRef, load_scores
    from layerwise.evaluation.tasks import select_tasks

    tasks = select_tasks(args.tasks)
    try:
        step, results = evaluate_run(
            args.run_dir,
            tasks,
            step=args.checkpoint,
            limit=args.limit,
            evals_dir=args.evals_dir,
            mmlu_split=args.mmlu_split,
            device=args.device,
            show_progress=not args.json,
        )
    finally:
        shutdown()
    if not is_main():
        return 0
    if args.json:
        print(json.dumps(results_json(step, results), indent=2))
        return 0
    history = load_scores(RunRef(Path(args.run_dir), profile="", seed=0))
    Console().print(score_table(step, results, history))
    print(f"scores: {result_path(Path(args.run_dir), step)}", file=sys.stderr)
    return 0


def is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def score_table(step: int, results: Mapping[str, TaskResult], history: RunScores | None) -> Table:
    """One line per task; a step-0 column when the run scored itself untrained on as many
    examples (in-loop evaluation at step 0)."""
    untrained = {task: history.initial(task, r.n) for task, r in results.items()} if history else {}
    show_untrained = any(v is not None for v in untrained.values())
    table = Table(title=f"downstream scores at step {step}")
    table.add_column("task", no_wrap=True)
    table.add_column("metric")
    for name in ("score", "acc", "len-norm", "bits/byte", "chance", "majority"):
        table.add_column(name, justify="right")
    if show_untrained:
        table.add_column("step 0", justify="right")
    table.add_column("n", justify="right")
    for task, r in results.items():
        cells = [f"{100 * v:.1f}" for v in (r.value, r.acc, r.len_norm)]
        cells += [f"{r.bpb:.3f}", f"{100 * r.chance:.1f}", f"{100 * r.majority:.1f}"]
        if show_untrained:
            value = untrained.get(task)
            cells.append("-" if value is None else f"{100 * value:.1f}")
        table.add_row(task, r.primary, *cells, str(r.n))
    return table
