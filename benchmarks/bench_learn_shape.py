"""The gated supernet's training step against a plain step of the same widest model.

Both models have every layer at the supernet's widths (the tiny preset's: 6 layers, d_model
128, d_ffn 512, 8 heads in GQA groups of 2); one carries the hard-concrete gates and the
Lagrangian term of `layerwise learn-shape`, the other is the plain `Transformer`. Each is
timed over `--steps` optimizer steps of `--batch` x `--seq` tokens after `--warmup` steps,
interleaved in rounds so drift in the machine's speed hits both alike; the median step time
of each and their ratio are printed (the target on CPU: at most 1.15x).

    PYTHONPATH=src python benchmarks/bench_learn_shape.py [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from layerwise.config.schema import BatchPlan, OptimConfig
from layerwise.learn.budget import unit_costs
from layerwise.learn.supernet import GatedTransformer
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape
from layerwise.training.optim import build_optimizer
from layerwise.training.step import train_step
from timing import machine_info, synchronize

SHAPE = ModelShape(
    d_model=128, head_dim=16, vocab_size=4096, layers=tuple(LayerSpec(512, 8, 4) for _ in range(6))
)


def models(seq: int, device: torch.device) -> dict[str, torch.nn.Module]:
    options = BlockOptions(max_seq_len=seq)
    torch.manual_seed(0)
    plain = Transformer(SHAPE, options).to(device)
    torch.manual_seed(0)
    costs = unit_costs(SHAPE, 64, "params", seq)
    gated = GatedTransformer(SHAPE, options, costs, 0.95, 0.05, 0.05).to(device)
    gated.target = 0.8 * costs.size([8] * 6, [4] * 6)
    return {"plain": plain, "gated": gated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(json.dumps(machine_info(args.device)))
    plan = BatchPlan(args.batch, args.batch, 1, 1, args.seq)
    built = models(args.seq, device)
    optimizers = {name: build_optimizer(m, OptimConfig(), device) for name, m in built.items()}
    generator = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {name: [] for name in built}
    for step in range(args.warmup + args.steps):
        windows = torch.randint(
            0, SHAPE.vocab_size, (args.batch, args.seq + 1), generator=generator
        )
        for name, model in built.items():
            synchronize(device)
            started = time.perf_counter()
            train_step(
                model,
                optimizers[name],
                windows,
                plan,
                step=step + 1,
                lr=1e-3,
                grad_clip=1.0,
                dtype=None,
            )
            synchronize(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - started)
    plain, gated = (statistics.median(times[name]) for name in ("plain", "gated"))
    print(f"{'model':<8} {'median step (ms)':>17}")
    print(f"{'plain':<8} {1000 * plain:>17.1f}")
    print(f"{'gated':<8} {1000 * gated:>17.1f}")
    print(f"gated / plain: {gated / plain:.3f}x (target at most 1.15x on CPU)")


if __name__ == "__main__":
    main()
