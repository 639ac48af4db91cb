"""Evaluate a model on downstream tasks: prepare each task once, score it as often as needed.

Preparing (reading rows, formatting, tokenizing) is separate from scoring so the in-loop
callback tokenizes once per run and scores the same requests at every evaluation step.
`evaluate_run` is the whole path for a finished run: `layerwise eval` is a thin layer over it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from layerwise.data.meta import TOKENIZER_FILE
from layerwise.data.tokenizer import LoadedTokenizer, load_tokenizer
from layerwise.distributed.env import DistInfo, init_distributed
from layerwise.evaluation.formats import Example
from layerwise.evaluation.metrics import TaskResult, task_result
from layerwise.evaluation.requests import Request, build_requests, choice_offsets
from layerwise.evaluation.scoring import DEFAULT_BATCH_TOKENS, score_requests
from layerwise.evaluation.tasks import MmluSplit, Task, load_examples, resolve_evals_dir
from layerwise.nn.precision import compute_dtype
from layerwise.runs.files import TOKENIZER_DIR
from layerwise.training.load import load_model
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json

EVAL_DIR = "eval"
"""Where `layerwise eval` writes `step<k>.json` inside the run directory."""


@dataclass(frozen=True)
class PreparedTask:
    task: Task
    examples: list[Example]
    requests: list[Request]


def tokenizer_in(directory: str | Path, model_vocab: int | None = None) -> LoadedTokenizer:
    """The tokenizer.json of a data directory or of a run's `tokenizer/` copy of it; with
    `model_vocab`, refused if it has ids the model has no embedding for (another tokenizer)."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found: the run's data had no tokenizer.json (token files made outside "
            "`layerwise data prepare`), so its model cannot be given text to score"
        )
    tokenizer = load_tokenizer(path)
    if model_vocab is not None and tokenizer.vocab_size > model_vocab:
        raise UserError(
            f"{path} has {tokenizer.vocab_size:,} token ids but the model has a vocabulary of "
            f"{model_vocab:,}: it is not the tokenizer the run was trained with; put the run's "
            "own tokenizer.json back (the one in its data directory)"
        )
    return tokenizer


def prepare_tasks(
    tasks: Sequence[Task],
    evals_dir: str | Path | None,
    tokenizer: LoadedTokenizer,
    seq_len: int,
    limit: int | None = None,
    mmlu_split: MmluSplit = "validation",
) -> list[PreparedTask]:
    """Read, format and tokenize every task; errors in any file surface before any scoring."""
    directory = resolve_evals_dir(evals_dir)
    prepared = []
    for task in tasks:
        examples = load_examples(task, directory, limit, mmlu_split)
        requests = build_requests(examples, tokenizer.tokenizer, seq_len, tokenizer.eos_id)
        prepared.append(PreparedTask(task, examples, requests))
    return prepared


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def score_tasks(
    model: nn.Module,
    prepared: Sequence[PreparedTask],
    dist: DistInfo,
    dtype: torch.dtype | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = False,
) -> dict[str, TaskResult]:
    """Every task's scores, the same on every rank."""
    results = {}
    progress = progress_bar() if show_progress and dist.is_main else None
    with progress if progress is not None else contextlib.nullcontext():
        for item in prepared:
            if progress is not None:
                progress.console.print(f"{item.task.name}: {len(item.examples)} examples")
            flat = score_requests(model, item.requests, dist, dtype, batch_tokens, progress)
            offsets = choice_offsets(item.examples)
            logprobs = [flat[a:b] for a, b in itertools.pairwise(offsets)]
            results[item.task.name] = task_result(item.examples, logprobs, item.task.primary)
    return results


def results_json(step: int, results: dict[str, TaskResult]) -> dict[str, Any]:
    """`{"step": S, "tasks": {NAME: {...}}}`: the --json output and the eval/step<k>.json file."""
    return {"step": step, "tasks": {name: r.to_dict() for name, r in results.items()}}


def result_path(run_dir: Path, step: int) -> Path:
    return run_dir / EVAL_DIR / f"step{step}.json"


def evaluate_run(
    run_dir: str | Path,
    tasks: Sequence[Task],
    *,
    step: int | None = None,
    limit: int | None = None,
    evals_dir: str | Path | None = None,
    mmlu_split: MmluSplit = "validation",
    device: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = False,
) -> tuple[int, dict[str, TaskResult]]:
    """Score a run's checkpoint (default: the newest) and write `result_path(run_dir, step)`.

    Under torchrun every rank loads the model and scores its share; rank 0 writes the file.
    """
    run_dir = Path(run_dir)
    dist = init_distributed(device)
    trained = load_model(run_dir, step, dist.device)
    prepared = prepare_tasks(
        tasks,
        evals_dir,
        tokenizer_in(run_dir / TOKENIZER_DIR, trained.shape.vocab_size),
        trained.config.data.seq_len,
        limit,
        mmlu_split,
    )
    dtype = compute_dtype(trained.config.run.precision, dist.device)
    results = score_tasks(trained.model, prepared, dist, dtype, batch_tokens, show_progress)
    if dist.is_main:
        path = result_path(run_dir, trained.step)
        path.parent.mkdir(exist_ok=True)
        atomic_write_json(path, results_json(trained.step, results))
    return trained.step, results
