"""lm-evaluation-harness scores a tiny export offline with the task YAMLs of docs/evaluation.md
(read from the page, so the recipe there is the one tested) and agrees with `layerwise eval`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import REPO, random_run
from layerwise.distributed.env import DistInfo
from layerwise.evaluation.evaluator import evaluate_run, prepare_tasks, tokenizer_in
from layerwise.evaluation.scoring import score_requests
from layerwise.evaluation.tasks import TASKS, load_examples
from layerwise.hf.export import export_run
from layerwise.runs.files import TOKENIZER_DIR
from layerwise.training.load import load_model

pytest.importorskip("transformers")
pytest.importorskip(
    "lm_eval", reason="lm-eval is not installed: pip install 'layerwise[lmeval]' to run it"
)

DOC = REPO / "docs" / "evaluation.md"
OLMO_TOKENIZER = Path("tokenizers") / "gpt-neox-olmo-dolma-v1_5.json"
SEQ_LEN = 64
N_ARC = 20
MODEL = {
    "profile": "vanilla",  # layer-wise: the export's own modeling file, trust_remote_code
    "d_model": 64,
    "n_layers": 3,
    "head_dim": 16,
    "gqa_group": 2,
    "ffn_divisor": 16,
    "vocab_size": 50304,
}


def write_doc_tasks(directory: Path, shared: Path) -> list[str]:
    """The page's task YAMLs as files in `directory`, reading the evals from `shared`."""
    found = re.findall(r"```yaml\n(task: (\S+)\n.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    for text, name in found:
        (directory / f"{name}.yaml").write_text(text.replace("../shared/", f"{shared}/"))
    return [name for _, name in found]


def logprobs(samples: list[dict[str, Any]]) -> list[float]:
    """lm-eval's log-likelihood of every choice, example by example, in the file's order."""
    ordered = sorted(samples, key=lambda sample: sample["doc_id"])
    return [float(ll) for sample in ordered for ll, _ in sample["filtered_resps"]]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> dict[str, Any]:
    """One lm-eval run of both page tasks on an export: the first ARC-Easy examples, and the
    first PIQA rows with a solution longer than the training context."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lm-eval")
    random_run(root / "run", MODEL, shared / OLMO_TOKENIZER, SEQ_LEN)
    export_run(root / "run", root / "hf")
    (root / "tasks").mkdir()
    names = write_doc_tasks(root / "tasks", shared)
    assert names == ["layerwise_arc_easy", "layerwise_piqa"]
    tokenizer = tokenizer_in(root / "run" / TOKENIZER_DIR).tokenizer
    piqa = load_examples(TASKS["piqa"], shared / "evals")
    lengths = [[len(tokenizer.encode(c).ids) for c in ex.continuations] for ex in piqa]
    long_rows = [row for row, length in enumerate(lengths) if max(length) > SEQ_LEN][:3]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("HF_DATASETS_OFFLINE", "1")
        # datasets caches the JSON files it reads; read at call time, whenever it was imported
        env.setattr("datasets.config.HF_DATASETS_CACHE", root / "datasets-cache")
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={
                "pretrained": str(root / "hf"),
                "tokenizer": str(root / "hf"),
                "trust_remote_code": True,
            },
            tasks=names,
            task_manager=TaskManager(include_path=str(root / "tasks")),
            samples={"layerwise_arc_easy": list(range(N_ARC)), "layerwise_piqa": long_rows},
            device="cpu",
            batch_size=16,
            bootstrap_iters=0,
        )
    assert out is not None
    return {"root": root, "out": out, "piqa_lengths": [lengths[row] for row in long_rows]}


def test_lm_eval_agrees_with_layerwise_eval(scored: dict[str, Any], shared: Path) -> None:
    run, out = scored["root"] / "run", scored["out"]
    task = TASKS["arc_easy"]
    _, results = evaluate_run(run, [task], limit=N_ARC, evals_dir=shared / "evals", device="cpu")
    tokenizer = tokenizer_in(run / TOKENIZER_DIR)
    prepared = prepare_tasks([task], shared / "evals", tokenizer, SEQ_LEN, N_ARC)[0]
    assert max(len(r.tokens) for r in prepared.requests) <= SEQ_LEN + 1  # nothing cut, either side
    ours = score_requests(
        load_model(run).model, prepared.requests, DistInfo(0, 0, 1, torch.device("cpu"))
    )
    theirs = logprobs(out["samples"]["layerwise_arc_easy"])
    assert len(theirs) == len(ours)
    assert max(abs(a - b) for a, b in zip(theirs, ours, strict=True)) < 1e-4
    scores = out["results"]["layerwise_arc_easy"]
    assert scores["acc,none"] == results["arc_easy"].acc
    assert scores["acc_norm,none"] == results["arc_easy"].len_norm


def test_lm_eval_scores_answers_longer_than_the_training_context(scored: dict[str, Any]) -> None:
    """lm-eval refuses a continuation longer than max_position_embeddings; the export declares
    2048, so PIQA's long solutions are scored (past the 64-token training context)."""
    lengths = scored["piqa_lengths"]
    assert len(lengths) == 3 and all(max(length) > SEQ_LEN for length in lengths)
    theirs = logprobs(scored["out"]["samples"]["layerwise_piqa"])
    assert len(theirs) == 6 and all(math.isfinite(ll) and ll < 0 for ll in theirs)
