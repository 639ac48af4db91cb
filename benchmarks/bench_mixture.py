"""The loader's cost per training step: one source against a three-source mixture.

Each case draws a step's indices and gathers its windows from memory-mapped uint16 files (what
`DeviceBatches` does on the CPU before the copy to the device), averaged over `--steps` steps
after a warm-up step. The mixture's extra work is its per-step split, a shuffle and one gather
per source; the figure to compare with is a training step's time (milliseconds and up).

    python benchmarks/bench_mixture.py [--batch 64] [--seq-len 1024] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from layerwise.data.loader import TokenWindows, WindowSampler
from layerwise.data.mixture import MixedWindows, MixtureSampler
from layerwise.training.metrics import cpu_model


def per_step_ms(windows: TokenWindows | MixedWindows, sampler: object, steps: int) -> float:
    """Mean time per step, after a first pass of the same length that maps the files' pages
    (first touches of a memory map cost page faults a long run pays once, not per step)."""
    for _ in range(steps):
        windows.get(sampler.next_indices())  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(steps):
        windows.get(sampler.next_indices())  # type: ignore[attr-defined]
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="global batch in sequences")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20_000_000, help="tokens per source")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name in ("a", "b", "c"):
            path = Path(tmp) / f"{name}.bin"
            rng.integers(0, 50257, args.tokens, dtype=np.uint16).tofile(path)
            files.append(TokenWindows(path, args.seq_len, "uint16"))
        one = per_step_ms(files[0], WindowSampler(len(files[0]), args.batch, 0), args.steps)
        sizes = [len(w) for w in files]
        three = per_step_ms(
            MixedWindows(files), MixtureSampler(sizes, [0.5, 0.3, 0.2], args.batch, 0), args.steps
        )
    print(f"machine: {cpu_model()} ({os.cpu_count()} CPUs), {platform.system()}")
    print(f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps")
    print(f"one source:    {one:.3f} ms per step")
    print(f"three sources: {three:.3f} ms per step ({three - one:+.3f} ms)")


if __name__ == "__main__":
    main()
