"""The trainer: one run is one profile trained on prepared token files.

`train(config)` resolves the profile into per-layer widths once, builds and parallelises the
model, and runs the loop below; every piece it uses is importable on its own. A run directory
holds `config.yaml` (the resolved config), `metrics.jsonl` (one record per step and evaluation),
`checkpoints/` and, at the end, `summary.json`.

The loop is deterministic on CPU: a run killed at any point and resumed from its latest
checkpoint reproduces the uninterrupted run's losses bit for bit. SIGINT and SIGTERM finish the
current step, save a checkpoint and raise `RunInterrupted`; a second SIGINT stops at once.
Under torchrun every rank runs this same code; only rank 0 writes logs, the summary and the
progress display, and every rank takes part in checkpointing and evaluation.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.distributed.tensor import DTensor

from layerwise.checkpointing import (
    TrainerState,
    load_checkpoint,
    save_checkpoint,
)
from layerwise.config import (
    BatchPlan,
    Config,
    ModelConfig,
    batch_plan,
    config_hash,
    dump_config,
    total_steps,
)
from layerwise.data import TokenMeta, check_vocab_fits, read_meta
from layerwise.distributed import DistInfo, all_reduce_sum, decide_on_main, init_distributed
from layerwise.errors import UserError
from layerwise.fsutil import atomic_write_json, atomic_write_text
from layerwise.loader import TokenWindows, WindowSampler, open_split, validation_indices
from layerwise.metrics import (
    MetricsWriter,
    MfuBasis,
    Throughput,
    hardware_info,
    mfu_basis,
    peak_memory_mib,
    truncate_log,
    versions,
)
from layerwise.model import BlockOptions, Transformer
from layerwise.optim import branch_steps, build_optimizer, lr_at, set_lr
from layerwise.parallelize import gradient_sync, parallelize
from layerwise.profiles import (
    BudgetResult,
    ModelShape,
    ProfileSpec,
    flops_per_token,
    lookup_spec,
    non_embedding_params,
    resolve_shape,
    total_params,
)
from layerwise.resume import ResumePoint, prepare_run_dir
from layerwise.rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunSummary

VOCAB_MULTIPLE = 64
"""`model.vocab_size: null` rounds the data's vocabulary up to this, for tensor-core-friendly shapes."""
THROUGHPUT_WARMUP_STEPS = 10
"""Steps at the start of each process left out of mean throughput (compilation, allocator)."""


def warmup_steps_to_skip(remaining: int) -> int:
    """THROUGHPUT_WARMUP_STEPS, but never more than half of what this process will run, so a
    short resumed run still measures its throughput."""
    return min(THROUGHPUT_WARMUP_STEPS, remaining // 2)


class NonFiniteLoss(UserError):
    """The loss or gradient norm became NaN or infinite; the run stops before the bad update."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"{signal.Signals(signum).name} received: stopped after step {step} and saved "
            f"{checkpoint}; continue with --resume (run.resume=auto)"
        )


# ---------------------------------------------------------------------------------------------
# The model from the config


def resolve_vocab_size(model: ModelConfig, meta: TokenMeta) -> int:
    """The configured vocabulary, or the data's rounded up to a multiple of VOCAB_MULTIPLE."""
    if model.vocab_size is not None:
        return model.vocab_size
    return math.ceil(meta.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def profile_spec(model: ModelConfig, vocab_size: int) -> ProfileSpec:
    """The recipe of `model.profile` on the configured base, with any explicit anchors applied.

    A preset fixes its own base, so a config that also sets a different base is refused rather
    than one of the two being silently ignored.
    """
    base = ProfileSpec(
        ffn=(1.0,),
        qkv=(1.0,),
        n_layers=model.n_layers,
        d_model=model.d_model,
        head_dim=model.head_dim,
        gqa_group=model.gqa_group,
        vocab_size=vocab_size,
        tie_embeddings=model.tie_embeddings,
        ffn_divisor=model.ffn_divisor,
    )
    spec = lookup_spec(model.profile, base)
    conflicts = [
        f"model.{name}={getattr(base, name)} (preset: {getattr(spec, name)})"
        for name in (
            "n_layers",
            "d_model",
            "head_dim",
            "gqa_group",
            "vocab_size",
            "tie_embeddings",
            "ffn_divisor",
        )
        if getattr(spec, name) != getattr(base, name)
    ]
    if conflicts:
        raise UserError(
            f"model.profile={model.profile} is a preset with its own base, which differs in "
            f"{', '.join(conflicts)}; use the shape name (e.g. model.profile=crown) to apply the "
            "profile to your base, or remove those keys"
        )
    return replace(
        spec,
        ffn=spec.ffn if model.ffn is None else tuple(model.ffn),
        qkv=spec.qkv if model.qkv is None else tuple(model.qkv),
        frame=spec.frame if model.frame is None else model.frame,
    )


def build_shape(config: Config, vocab_size: int) -> tuple[ModelShape, BudgetResult | None]:
    """Per-layer widths of the run, computed once: the recipe as given or rescaled to a budget."""
    model = config.model
    spec = profile_spec(model, vocab_size)
    if model.target_params is not None:
        return resolve_shape(
            spec, target=model.target_params, metric="params", seq_len=config.data.seq_len
        )
    return resolve_shape(
        spec, match=model.match, metric=model.match_by, seq_len=config.data.seq_len
    )


def block_options(config: Config) -> BlockOptions:
    return BlockOptions(
        norm_order=config.model.norm_order,
        rope_theta=config.model.rope_theta,
        norm_eps=config.model.norm_eps,
        max_seq_len=config.data.seq_len,
        init_std=config.model.init_std,
    )


def build_model(shape: ModelShape, config: Config, device: torch.device) -> Transformer:
    """The model on `device`, initialised from `train.seed` on the CPU so every device agrees."""
    torch.manual_seed(config.train.seed)
    return Transformer(shape, block_options(config)).to(device)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; float32 (None) elsewhere unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def parallel_strategy(config: Config, dist: DistInfo) -> str:
    if config.parallel.strategy == "auto":
        return "ddp" if dist.world_size > 1 else "none"
    return config.parallel.strategy


# ---------------------------------------------------------------------------------------------
# One step, one evaluation


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    stop: bool
    """Some rank received SIGINT/SIGTERM: every rank stops after this step, together."""


def forward_backward(
    model: nn.Module,
    windows: torch.Tensor,
    plan: BatchPlan,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Accumulate the gradients of this rank's share of a step; returns its mean loss.

    Each window holds seq_len + 1 tokens: inputs and targets shifted by one. Gradients are
    synchronised across ranks only in the last micro-batch.
    """
    total = torch.zeros((), device=device)
    micro_batches = windows.split(plan.micro_batch)
    for index, micro in enumerate(micro_batches):
        micro = micro.to(device, non_blocking=True)
        last = index == len(micro_batches) - 1
        with gradient_sync(model, enabled=last), autocast(device, dtype):
            loss = model(micro[:, :-1], micro[:, 1:]) / plan.accum_steps
            loss.backward()
        total += loss.detach()
    return total


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Total gradient norm before clipping; with no limit it is only measured."""
    limit = math.inf if max_norm is None else max_norm
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    windows: torch.Tensor,
    plan: BatchPlan,
    *,
    step: int,
    lr: float,
    grad_clip: float | None,
    dtype: torch.dtype | None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> StepResult:
    """One optimizer step on this rank's windows; `step` (1-based) only names it in errors.

    The loss and the stop request (asked after the backward pass, so a signal that arrives
    during this step stops the run after it) are reduced in one collective, which every step
    needs anyway to log the global loss, and read back with the gradient norm in one host
    sync. A non-finite loss or gradient norm raises before the update, so the weights (and any
    checkpoint written later) never hold its result.
    """
    device = next(model.parameters()).device
    set_lr(optimizer, lr)
    loss = forward_backward(model, windows, plan, device, dtype)
    flags = torch.tensor(float(stop_requested()), device=device)
    reduced = all_reduce_sum(torch.stack([loss, flags]))
    norm = clip_gradients(model, grad_clip).reshape(1).to(reduced.dtype)
    summed_loss, stops, grad_norm = torch.cat([reduced, norm]).tolist()
    mean_loss = summed_loss / plan.world_size
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(
            f"training diverged at step {step}: loss {mean_loss}, gradient norm {grad_norm}. The "
            "update was not applied and the latest checkpoint is the last good one; lower "
            "optim.lr or raise optim.warmup_steps, then start a new run"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=mean_loss, grad_norm=grad_norm, stop=stops > 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: TokenWindows,
    indices: np.ndarray,
    micro_batch: int,
    dist: DistInfo,
    dtype: torch.dtype | None,
) -> float:
    """Mean loss per token over the validation windows `indices`, split across ranks.

    Each rank takes a contiguous part and runs the same number of forward passes (a rank that
    runs out repeats a window and discards it), because FSDP gathers parameters collectively
    and would hang if one rank stopped early. Sums of loss x tokens are reduced, not means, so
    unequal parts weigh correctly.
    """
    mine = np.array_split(indices, dist.world_size)[dist.rank]
    n_batches = math.ceil(math.ceil(len(indices) / dist.world_size) / micro_batch)
    totals = torch.zeros(2, dtype=torch.float64, device=dist.device)
    model.eval()
    for b in range(n_batches):
        chunk = mine[b * micro_batch : (b + 1) * micro_batch]
        batch = windows.get(chunk if len(chunk) else indices[:1]).to(dist.device)
        with autocast(dist.device, dtype):
            loss = model(batch[:, :-1], batch[:, 1:])
        n_tokens = len(chunk) * (batch.shape[1] - 1)
        totals[0] += loss.double() * n_tokens
        totals[1] += n_tokens
    model.train()
    all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


# ---------------------------------------------------------------------------------------------
# Run directory, signals, display


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step.

    Handlers can only be installed from the main thread; elsewhere (a notebook worker thread)
    the signals keep their default behaviour.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum


class Display:
    """Rank 0's stderr: a progress bar (step, loss, tokens/s, ETA) and a line per log interval."""

    def __init__(self, enabled: bool, steps: int, start: int) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            "train", total=steps, completed=start, loss="-", speed="-"
        )

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=False)

    def train(self, record: dict[str, Any], steps: int, log: bool) -> None:
        self.progress.update(
            self.task,
            completed=record["step"],
            loss=f"{record['loss']:.4f}",
            speed=f"{record['tokens_per_s']:,.0f}",
        )
        if log:
            mfu = "" if record["mfu"] is None else f" | mfu {record['mfu']:.1%}"
            self.print(
                f"step {record['step']:>{len(str(steps))}}/{steps} | loss {record['loss']:.4f} | "
                f"lr {record['lr']:.2e} | grad norm {record['grad_norm']:.3f} | "
                f"{record['tokens_per_s']:,.0f} tok/s{mfu}"
            )

    def val(self, record: dict[str, Any]) -> None:
        self.print(
            f"step {record['step']} | val loss {record['loss']:.4f} | val ppl {record['ppl']:.2f}"
        )


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """Everything the loop works on, built once by `setup_run`."""

    config: Config
    dist: DistInfo
    run_dir: Path
    steps: int
    plan: BatchPlan
    shape: ModelShape
    budget: BudgetResult | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler
    train_windows: TokenWindows
    val_windows: TokenWindows
    val_indices: np.ndarray
    dtype: torch.dtype | None
    mfu: MfuBasis
    state: TrainerState
    resumed: bool


def with_data_vocab(config: Config) -> Config:
    """The config with `model.vocab_size` filled in from the data, checked against its ids."""
    meta = read_meta(config.data.dir)
    vocab_size = resolve_vocab_size(config.model, meta)
    check_vocab_fits(meta, vocab_size)
    return replace(config, model=replace(config.model, vocab_size=vocab_size))


def setup_run(config: Config, dist: DistInfo, checkpoint: Path | None) -> Run:
    """Resolve the shape, build model, optimizer and data, and restore `checkpoint` if given."""
    assert config.model.vocab_size is not None, "call with_data_vocab first"
    plan = batch_plan(config, dist.world_size)
    shape, budget = build_shape(config, config.model.vocab_size)
    train_windows = open_split(config.data.dir, "train", config.data.seq_len)
    val_windows = open_split(config.data.dir, "val", config.data.seq_len)
    dtype = compute_dtype(config.run.precision, dist.device)
    model = parallelize(
        build_model(shape, config, dist.device),
        dist,
        parallel_strategy(config, dist),
        compile=config.run.compile,
        activation_checkpointing=config.parallel.activation_checkpointing,
        mixed_precision=dtype is not None,
    )
    optimizer = build_optimizer(model, config.optim, dist.device)
    sampler = WindowSampler(
        len(train_windows), plan.global_batch, config.train.seed, dist.rank, dist.world_size
    )
    state = TrainerState(world_size=dist.world_size)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, dist)
        sampler.load_state_dict(state.sampler)
    mfu = mfu_basis(
        flops_per_token(shape, config.data.seq_len),
        dist.device,
        dist.world_size,
        config.run.peak_tflops,
    )
    return Run(
        config=config,
        dist=dist,
        run_dir=Path(config.run.dir),
        steps=total_steps(config),
        plan=plan,
        shape=shape,
        budget=budget,
        model=model,
        optimizer=optimizer,
        sampler=sampler,
        train_windows=train_windows,
        val_windows=val_windows,
        val_indices=validation_indices(len(val_windows), config.data.val_windows),
        dtype=dtype,
        mfu=mfu,
        state=state,
        resumed=checkpoint is not None,
    )


def finished_summary(run_dir: Path, point: ResumePoint, steps: int) -> RunSummary | None:
    """The summary of a run that already reached its last step, when asked to resume it again."""
    if point.checkpoint is None or point.step < steps or not (run_dir / SUMMARY_FILE).exists():
        return None
    return RunSummary.load(run_dir / SUMMARY_FILE)


def open_metrics(run: Run) -> MetricsWriter | None:
    """Rank 0: save the config, drop log records a resumed run will redo, start appending."""
    if not run.dist.is_main:
        return None
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.run_dir / CONFIG_FILE, dump_config(run.config))
    (run.run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    truncate_log(run.run_dir / METRICS_FILE, run.state.step if run.resumed else -1)
    return MetricsWriter(run.run_dir, run.config.run.tensorboard)


def train(config: Config) -> RunSummary:
    """Train (or, with run.resume=auto, continue) one run and return its summary.

    Raises UserError for bad settings or data, NonFiniteLoss if training diverges (the last
    good checkpoint stays) and RunInterrupted after a signal-triggered checkpoint.
    """
    dist = init_distributed(config.run.device)
    config = with_data_vocab(config)
    run_dir = Path(config.run.dir)
    point = decide_on_main(lambda: prepare_run_dir(run_dir, config))
    if dist.is_main:
        for note in point.notes:
            print(f"layerwise: {note}", file=sys.stderr)
    finished = finished_summary(run_dir, point, total_steps(config))
    if finished is not None:
        return finished
    run = setup_run(config, dist, point.checkpoint)
    config, state = run.config, run.state
    writer = open_metrics(run)
    throughput = Throughput(
        warmup_steps_to_skip(run.steps - state.step), state.timed_tokens, state.timed_seconds
    )
    keep_always = branch_steps(run.steps, config.optim)
    clock = time.perf_counter()
    wall_before = state.wall_time_s

    def log(record: dict[str, Any]) -> None:
        if writer is not None:
            writer.write(record)

    def validate() -> None:
        state.val_loss = evaluate(
            run.model, run.val_windows, run.val_indices, run.plan.micro_batch, dist, run.dtype
        )
        record = {"type": "val", "step": state.step, "loss": state.val_loss}
        record.update(ppl=math.exp(state.val_loss), tokens=state.tokens)
        log(record)
        display.val(record)

    run.model.train()
    try:
        with (
            StopSignals() as signals,
            Display(dist.is_main and config.run.progress, run.steps, state.step) as display,
        ):
            if not run.resumed:
                validate()
            while state.step < run.steps:
                started = time.perf_counter()
                lr = lr_at(state.step, run.steps, config.optim)
                windows = run.train_windows.get(run.sampler.next_indices())
                result = train_step(
                    run.model,
                    run.optimizer,
                    windows,
                    run.plan,
                    step=state.step + 1,
                    lr=lr,
                    grad_clip=config.optim.grad_clip,
                    dtype=run.dtype,
                    stop_requested=signals.requested,
                )
                seconds = time.perf_counter() - started
                throughput.add(run.plan.tokens_per_step, seconds)
                state.step += 1
                state.tokens += run.plan.tokens_per_step
                state.train_loss = result.loss
                state.timed_tokens, state.timed_seconds = throughput.tokens, throughput.seconds
                state.peak_memory_mib = max(state.peak_memory_mib, peak_memory_mib(dist.device))
                state.wall_time_s = wall_before + time.perf_counter() - clock
                record = train_record(
                    state, result, lr, run.plan.tokens_per_step / seconds, run.mfu
                )
                log(record)
                last = state.step == run.steps
                display.train(record, run.steps, last or state.step % config.run.log_interval == 0)
                if last or state.step % config.train.val_interval == 0:
                    validate()
                branch = state.step in keep_always
                if last or result.stop or branch or state.step % config.checkpoint.interval == 0:
                    state.sampler = run.sampler.state_dict()
                    state.wall_time_s = wall_before + time.perf_counter() - clock
                    saved = save_checkpoint(
                        run.run_dir,
                        run.model,
                        run.optimizer,
                        state,
                        dist,
                        config.checkpoint.keep,
                        protect=keep_always,
                    )
                if result.stop:
                    raise RunInterrupted(signals.signum or signal.SIGTERM, state.step, saved)
    finally:
        if writer is not None:
            writer.close()
    summary = summarize(run, throughput)
    if dist.is_main:
        atomic_write_json(run.run_dir / SUMMARY_FILE, summary.to_dict())
    return summary


def train_record(
    state: TrainerState, result: StepResult, lr: float, tokens_per_s: float, mfu: MfuBasis
) -> dict[str, Any]:
    return {
        "type": "train",
        "step": state.step,
        "loss": result.loss,
        "lr": lr,
        "grad_norm": result.grad_norm,
        "tokens": state.tokens,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu.mfu(tokens_per_s),
        "peak_mem_mib": state.peak_memory_mib,
        "time_s": state.wall_time_s,
    }


def summarize(run: Run, throughput: Throughput) -> RunSummary:
    state, shape, budget = run.state, run.shape, run.budget
    mean_tokens_per_s = throughput.tokens_per_s
    return RunSummary(
        run_dir=str(run.run_dir),
        profile=run.config.model.profile,
        seed=run.config.train.seed,
        steps=state.step,
        tokens=state.tokens,
        final_train_loss=state.train_loss,
        final_val_loss=state.val_loss,
        final_val_ppl=None if state.val_loss is None else math.exp(state.val_loss),
        params=total_params(shape),
        non_embedding_params=non_embedding_params(shape),
        layers=[asdict(layer) for layer in shape.layers],
        d_model=shape.d_model,
        head_dim=shape.head_dim,
        vocab_size=shape.vocab_size,
        flops_per_token=run.mfu.flops_per_token,
        budget=None if budget is None else budget_dict(budget),
        mean_tokens_per_s=mean_tokens_per_s,
        mean_mfu=None if mean_tokens_per_s is None else run.mfu.mfu(mean_tokens_per_s),
        mfu_note=run.mfu.note,
        peak_memory_mib=state.peak_memory_mib or None,
        wall_time_s=state.wall_time_s,
        hardware=hardware_info(run.dist.device, run.dist.world_size),
        versions=versions(),
        config_hash=config_hash(run.config),
    )


def budget_dict(budget: BudgetResult) -> dict[str, Any]:
    return {
        "metric": budget.metric,
        "target": budget.target,
        "achieved": budget.achieved,
        "relative_error": budget.relative_error,
        "ffn_scale": budget.ffn_scale,
        "qkv_scale": budget.qkv_scale,
    }
