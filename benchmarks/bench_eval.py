"""Downstream scoring benchmark: the evaluator against a plain batched forward (issue 11).

Run from the repository root:

    PYTHONPATH=src python benchmarks/bench_eval.py --device cpu --limit 100
    PYTHONPATH=src python benchmarks/bench_eval.py --device cuda --model paper-18l-isotropic

Both sides see the same tokens in the same padded batches (`make_batches`), on the same
randomly initialised model (scores of an untrained model cost the same as a trained one's):

* **scoring**: `score_requests`, the evaluator's own path (final hidden states, the LM head at
  continuation positions only, per-request sums, the reduction);
* **plain**: `model(inputs)` per batch, the full-vocabulary logits of every position, which is
  what a straightforward scorer would compute before picking the continuation's log-probs.

Each side runs `--repeats` times in turns (scoring, plain | plain, scoring | ...) so load from
other processes hits both alike; the table gives the median examples/s of each and the median
per-turn ratio scoring/plain (target: at most 1.5). Tokenizing (once per run in-loop) is timed
separately. The tokenizer is a byte-level BPE trained here on the tasks' own text, so the
benchmark needs no download; on GPU the model runs under bf16 autocast as training does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from layerwise.data.tokenizer import LoadedTokenizer, train_bpe
from layerwise.distributed.env import DistInfo, parse_device
from layerwise.evaluation.evaluator import PreparedTask
from layerwise.evaluation.requests import build_requests
from layerwise.evaluation.scoring import DEFAULT_BATCH_TOKENS, make_batches, score_requests
from layerwise.evaluation.tasks import load_examples, resolve_evals_dir, select_tasks
from layerwise.nn.model import BlockOptions, Transformer
from layerwise.nn.precision import autocast
from layerwise.profiles.budget import resolve_shape
from layerwise.profiles.recipes import ProfileSpec, lookup_spec
from layerwise.profiles.shape import ModelShape
from layerwise.training.metrics import device_name
from timing import synchronize

TINY = ProfileSpec(
    ffn=(1.0,), qkv=(1.0,), n_layers=6, d_model=128, head_dim=32, gqa_group=2, vocab_size=4096
)


def model_shape(name: str) -> ModelShape:
    """`tiny` (the demo's size) or any profile/preset name, e.g. paper-18l-isotropic (180M)."""
    spec = TINY if name == "tiny" else lookup_spec(name, TINY)
    return resolve_shape(spec)[0]


def prepare(args: argparse.Namespace, vocab: int) -> tuple[list[PreparedTask], LoadedTokenizer]:
    evals = resolve_evals_dir(args.evals_dir)
    tasks = select_tasks(args.tasks)
    examples = {t.name: load_examples(t, evals, args.limit) for t in tasks}
    texts = [
        c + s for ex in examples.values() for e in ex for c, s in map(e.choice, range(e.n_choices))
    ]
    tokenizer = train_bpe(min(vocab, 8192), texts)
    started = time.perf_counter()
    prepared = [
        PreparedTask(
            t,
            examples[t.name],
            build_requests(examples[t.name], tokenizer.tokenizer, args.seq_len, tokenizer.eos_id),
        )
        for t in tasks
    ]
    print(
        f"tokenizing {sum(len(p.requests) for p in prepared)} requests: "
        f"{time.perf_counter() - started:.2f} s"
    )
    return prepared, tokenizer


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny", help="tiny, or a profile/preset name")
    parser.add_argument("--tasks", default="core")
    parser.add_argument("--limit", type=int, default=100, help="examples per task")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--evals-dir")
    args = parser.parse_args()
    device = parse_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    shape = model_shape(args.model)
    torch.manual_seed(0)
    model = Transformer(shape, BlockOptions(max_seq_len=args.seq_len)).to(device).eval()
    prepared, _ = prepare(args, shape.vocab_size)
    requests = [r for p in prepared for r in p.requests]
    examples = sum(len(p.examples) for p in prepared)
    batches = make_batches(requests, args.batch_tokens)
    inputs = []
    for batch in batches:
        width = max(len(requests[i].tokens) for i in batch) - 1
        rows = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = requests[i].tokens[:-1]
            rows[row, : len(tokens)] = torch.tensor(tokens)
        inputs.append(rows.to(device))
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=device)

    def scoring() -> None:
        score_requests(model, requests, dist, dtype, args.batch_tokens)

    @torch.no_grad()
    def plain() -> None:
        with autocast(device, dtype):
            for batch in inputs:
                model(batch)

    scoring(), plain()  # warm-up
    times: dict[str, list[float]] = {"scoring": [], "plain": []}
    ratios = []
    for turn in range(args.repeats):
        order = ("scoring", "plain") if turn % 2 == 0 else ("plain", "scoring")
        took = {name: timed(scoring if name == "scoring" else plain, device) for name in order}
        for name, seconds in took.items():
            times[name].append(seconds)
        ratios.append(took["scoring"] / took["plain"])
    padded = sum(x.numel() for x in inputs)
    print(
        f"device {device_name(device)} | model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"params, vocab {shape.vocab_size}) | tasks {args.tasks} x {args.limit} = {examples} "
        f"examples, {len(requests)} requests, {len(batches)} batches, {padded:,} padded tokens"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>8}: {examples / median:10.1f} examples/s  ({median:.3f} s per pass)")
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    print(f"scoring/plain time: {ratio:.2f} (target <= 1.5): {verdict}")


if __name__ == "__main__":
    main()
