"""Throughput of `data import` (GB of input ids per second), end to end, on synthetic GPT-2 ids.

Two cases: an int32 array (converted to uint16 and written once, the study's layout) and a
uint16 file imported whole with `--val-tokens 0` (hard-linked: only read, for its sha256 and the
checks). Both read every id once; the second shows what the hash and checks cost alone.
The ids are a random draw with an EOS every ~1,000 tokens, written to a temporary directory
next to `--dir` (default: the system's temporary directory; the page cache is warm).

    python benchmarks/bench_import.py [--tokens 50M] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from layerwise.data.token_import import import_tokens
from layerwise.training.metrics import cpu_model
from layerwise.util.units import parse_count

GPT2 = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "gpt2"
EOS = 50256


def synthetic_ids(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, EOS, n, dtype=np.int32)
    ids[rng.random(n) < 1e-3] = EOS
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="50M", help="ids per case (default 50M)")
    parser.add_argument("--dir", default=None, help="where the temporary files go")
    args = parser.parse_args()
    n = parse_count(args.tokens)
    print(f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        ids = synthetic_ids(n)
        ids.tofile(root / "study.bin")
        ids.astype(np.uint16).tofile(root / "u16.bin")
        del ids
        cases = [
            ("int32 -> uint16, written", root / "study.bin", "int32", None),
            ("uint16 whole, hard-linked", root / "u16.bin", "uint16", 0),
        ]
        for name, path, dtype, val in cases:
            result = import_tokens([path], dtype, str(GPT2), root / name.split()[0], val_tokens=val)
            print(
                f"{name}: {n:,} ids, {result.input_bytes / 1e9:.2f} GB in {result.seconds:.2f} s "
                f"= {result.gb_per_s:.2f} GB/s (linked: {', '.join(result.linked) or 'none'})"
            )


if __name__ == "__main__":
    main()
