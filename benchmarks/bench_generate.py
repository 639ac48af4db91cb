"""Generation benchmark: new tokens/s with the KV cache against recomputing the sequence.

Run from the repository root:

    PYTHONPATH=src python benchmarks/bench_generate.py            # tiny crown preset, CPU
    PYTHONPATH=src python benchmarks/bench_generate.py --config configs/tiny-isotropic.yaml

The model is the preset's shape (its budget-matched per-layer widths, vocabulary 4096 as in the
tiny data) with random weights: speed does not depend on what the weights learned. Both ways
decode the same prompt greedily to `--new-tokens` new tokens (so both draw the same ids, which
is checked) with batch 1: with the cache each step runs one token through the blocks; without
it each step runs the model's own forward over the whole sequence so far. The context is
raised to fit prompt + new tokens. Each is timed `--repeats` times and the fastest kept, since a
shared machine only ever slows a run down. Target (issue 13): at least 5x on CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from layerwise.config.loader import load_config
from layerwise.hf.generate import generate
from layerwise.nn.model import BlockOptions, Transformer
from layerwise.profiles.shape import total_params
from layerwise.training.metrics import cpu_model
from layerwise.training.shape import config_shape

TARGET = 5.0


def best_time(run: Callable[[], list[list[int]]], repeats: int) -> tuple[float, list[int]]:
    """The fastest of `repeats` runs, in seconds, and the ids it produced."""
    best, ids = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        ids = run()[0]
        best = min(best, time.perf_counter() - start)
    return best, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny-crown.yaml")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    shape, _ = config_shape(config, args.vocab_size)
    torch.manual_seed(0)
    context = args.prompt_tokens + args.new_tokens
    model = Transformer(shape, BlockOptions(max_seq_len=context)).eval()
    prompt = torch.randint(0, args.vocab_size, (args.prompt_tokens,)).tolist()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"model: {args.config} ({shape.n_layers} layers, d_model {shape.d_model}, "
        f"{total_params(shape) / 1e6:.2f}M params), prompt {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens, greedy, batch 1"
    )
    generate(model, [prompt], 8)  # warm-up
    cached, cached_ids = best_time(lambda: generate(model, [prompt], args.new_tokens), args.repeats)
    full, full_ids = best_time(
        lambda: generate(model, [prompt], args.new_tokens, use_cache=False), args.repeats
    )
    assert cached_ids == full_ids, "the cache changed the generated tokens"
    n = args.new_tokens
    print(f"{'KV cache':<24} {n / cached:10.1f} new tokens/s  ({cached:.2f} s)")
    print(f"{'recompute every step':<24} {n / full:10.1f} new tokens/s  ({full:.2f} s)")
    speedup = full / cached
    verdict = "PASS" if speedup >= TARGET else "FAIL"
    print(f"speed-up {speedup:.1f}x (target >= {TARGET:g}x): {verdict}")


if __name__ == "__main__":
    main()
