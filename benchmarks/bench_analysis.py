"""Cost of `layerwise analyze` (issue 12): time per run and peak memory against window count.

Run from the repository root (nothing to install beyond the package's own dependencies):

    PYTHONPATH=src python benchmarks/bench_analysis.py --device cpu
    PYTHONPATH=src python benchmarks/bench_analysis.py --device cuda   # paper-18l-* presets

Each profile is analysed with `analyze_model`, the function `layerwise analyze` runs per run,
against the isotropic model (cross-run CKA included), on random tokens with freshly initialised
weights: the cost does not depend on what the weights learned. The issue's targets: CPU seconds
for the tiny presets; on GPU the 180M presets over 64 windows of 1024 tokens in under 2 minutes
each; and peak memory that does not grow with the number of windows, checked by measuring
`--windows` and twice as many. Every measurement runs in its own subprocess so that peak memory
(CUDA's allocator peak, or the process's maximum resident set on CPU) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from layerwise.analysis import AnalysisOptions, analyze_model
from layerwise.nn.model import BlockOptions, Transformer
from layerwise.profiles.budget import resolve_shape
from layerwise.profiles.recipes import ProfileSpec, lookup_spec
from layerwise.training.metrics import device_name
from timing import synchronize

TINY_BASE = ProfileSpec(
    ffn=(1.0,), qkv=(1.0,), n_layers=6, d_model=128, head_dim=16, gqa_group=2,
    vocab_size=4096, ffn_divisor=64,
)  # fmt: skip
"""configs/tiny-base.yaml's model, as `layerwise demo` trains it."""


def build(profile: str, device: str, seq_len: int) -> Transformer:
    """`profile` on the tiny base (CPU) or as the study's preset (CUDA), matched to isotropic."""
    base = None if device == "cuda" else TINY_BASE
    name = f"paper-18l-{profile}" if device == "cuda" else profile
    isotropic = "paper-18l-isotropic" if device == "cuda" else "isotropic"
    shape, _ = resolve_shape(lookup_spec(name, base), match=isotropic)
    torch.manual_seed(0)
    return Transformer(shape, BlockOptions(max_seq_len=seq_len)).to(device).eval()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One profile at one window count, in this (child) process."""
    device, seq_len = spec["device"], spec["seq_len"]
    torch.set_num_threads(spec["threads"])
    model = build(spec["profile"], device, seq_len)
    reference = build("isotropic", device, seq_len)
    vocab = model.shape.vocab_size
    tokens = torch.randint(0, vocab, (spec["windows"], seq_len + 1), generator=torch.Generator())
    batches = (batch.to(device) for batch in tokens.split(spec["batch"]))
    options = AnalysisOptions(cka_tokens=spec["cka_tokens"], entropy_windows=4)
    synchronize(torch.device(device))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    analyze_model(model, model.shape, batches, options, against=reference)
    synchronize(torch.device(device))
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **spec,
        "n_layers": model.shape.n_layers,
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "peak_mib": peak_mib,
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profiles", default="isotropic,vanilla,framed,reverse,crown")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, help="default: cpu 128, cuda 1024")
    parser.add_argument("--batch", type=int, help="windows per pass; default: cpu 16, cuda 16")
    parser.add_argument("--cka-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    cuda = args.device == "cuda"
    common = {
        "device": args.device,
        "seq_len": args.seq_len or (1024 if cuda else 128),
        "batch": args.batch or 16,
        "cka_tokens": args.cka_tokens,
        "threads": args.threads,
    }
    machine = device_name(torch.device(args.device))
    print(f"device: {machine}, {args.threads} thread(s), torch {torch.__version__}")
    print("| profile | layers | windows | wall s | cpu s | peak MiB | peak at 2x windows |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for profile in args.profiles.split(","):
        row = run_child({**common, "profile": profile, "windows": args.windows})
        double = run_child({**common, "profile": profile, "windows": 2 * args.windows})
        row["peak_mib_2x"] = double["peak_mib"]
        rows.append(row)
        print(
            f"| {profile} | {row['n_layers']} | {row['windows']} x {row['seq_len']} | "
            f"{row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_mib']:.0f} | "
            f"{row['peak_mib_2x']:.0f} ({double['wall_s']:.1f} s) |"
        )
    worst = max(row["wall_s"] for row in rows)
    growth = max(row["peak_mib_2x"] / row["peak_mib"] - 1 for row in rows)
    target = 120 if cuda else None
    verdict = "" if target is None else f" ({'PASS' if worst < target else 'FAIL'} < {target} s)"
    print(
        f"slowest profile: {worst:.1f} s{verdict}; peak memory growth at 2x windows: {growth:+.1%}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
