"""The trainer: one run is one profile trained on prepared token files.

`train(config)` decides what the run directory allows (layerwise.training.resume), builds the
model the config describes (layerwise.training.build), and hands both to a `Trainer`, whose loop
only steps the optimizer and announces its events; validation, checkpoints, the metrics log,
the display and throughput are callbacks (layerwise.training.callbacks), and so is anything a
caller adds.

The loop is deterministic on CPU: a run killed at any point and resumed from its latest
checkpoint reproduces the uninterrupted run's losses bit for bit. SIGINT and SIGTERM finish the
current step, save a checkpoint and raise `RunInterrupted`; a second SIGINT stops at once.
Under torchrun every rank runs this same code; only rank 0 writes logs, the summary and the
progress display, and every rank takes part in checkpointing and evaluation.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from layerwise.config.loader import config_hash, dump_config
from layerwise.config.schema import (
    BatchPlan,
    Config,
    DataSource,
    batch_plan,
    data_sources,
    total_steps,
)
from layerwise.data.loader import DeviceBatches, TokenWindows, WindowSampler, validation_indices
from layerwise.data.meta import META_FILE, TOKENIZER_FILE
from layerwise.data.mixture import MixedWindows, MixtureSampler, open_sources, repetition
from layerwise.distributed.env import (
    DistInfo,
    all_reduce_sum,
    decide_on_main,
    held_by_main,
    init_distributed,
)
from layerwise.distributed.parallelize import parallelize
from layerwise.nn.model import Transformer
from layerwise.nn.precision import compute_dtype
from layerwise.profiles.budget import BudgetResult
from layerwise.profiles.shape import ModelShape, flops_per_token, non_embedding_params, total_params
from layerwise.runs.files import SOURCES_DIR, SUMMARY_FILE, RunSummary, write_run_files
from layerwise.runs.lock import DirectoryLock
from layerwise.training.build import build_model, parallel_strategy, speed_options, with_data_vocab
from layerwise.training.callbacks.base import Callback, StepRecord
from layerwise.training.callbacks.checkpointing import Checkpointing
from layerwise.training.callbacks.metrics_log import MetricsLog
from layerwise.training.callbacks.progress import ProgressDisplay
from layerwise.training.callbacks.tensorboard import TensorBoardLog
from layerwise.training.callbacks.throughput import ThroughputMeter
from layerwise.training.callbacks.validation import Validation
from layerwise.training.callbacks.wandb import WandbLog
from layerwise.training.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from layerwise.training.load import init_from
from layerwise.training.metrics import (
    MfuBasis,
    hardware_info,
    mfu_basis,
    peak_memory_mib,
    reset_peak_memory,
    versions,
)
from layerwise.training.optim import branch_steps, build_optimizer, lr_at
from layerwise.training.resume import ResumePoint, prepare_run_dir
from layerwise.training.shape import config_shape
from layerwise.training.step import NonFiniteLoss, evaluate, train_step
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_json


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"{signal.Signals(signum).name} received: stopped after step {step} and saved "
            f"{checkpoint}; continue with --resume (run.resume=auto)"
        )


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
    batches: DeviceBatches
    val_sets: list[tuple[DataSource, TokenWindows, np.ndarray]]
    """Each source's validation windows and the indices validated, in `data.sources` order."""
    dtype: torch.dtype | None
    mfu: MfuBasis
    state: TrainerState
    resumed: bool


ModelBuilder = Callable[[ModelShape, Config, torch.device], Transformer]
"""Builds the model a run trains from its shape: `build_model` unless a capability trains
another module with the same interface (learned shapes' gated supernet)."""


def setup_run(
    config: Config, dist: DistInfo, checkpoint: Path | None, build: ModelBuilder = build_model
) -> Run:
    """Resolve the shape, build model, optimizer and data, and restore `checkpoint` if given."""
    assert config.model.vocab_size is not None, "call with_data_vocab first"
    plan = batch_plan(config, dist.world_size)
    shape, budget = config_shape(config, config.model.vocab_size)
    sources, mixture = data_sources(config.data), config.data.sources is not None
    train_sets = open_sources(sources, "train", config.data.seq_len, mixture)
    val_sets = open_sources(sources, "val", config.data.seq_len, mixture)
    sizes = [len(windows) for windows in train_sets]
    notes = repetition(
        sources, sizes, total_steps(config) * plan.global_batch, config.data.max_epochs, mixture
    )
    if dist.is_main:
        for note in notes:
            print(f"layerwise: {note}", file=sys.stderr)
    dtype = compute_dtype(config.run.precision, dist.device)
    built = build(shape, config, dist.device)
    if checkpoint is None and config.init.from_ is not None:
        init_from(built, shape, config.init.from_)
    model = parallelize(
        built,
        dist,
        parallel_strategy(config, dist),
        compile=config.run.compile,
        activation_checkpointing=config.parallel.activation_checkpointing,
        speed=speed_options(config),
        dtype=dtype,
    )
    optimizer = build_optimizer(model, config.optim, dist.device)
    # one source reads exactly as `data.dir` does; several are interleaved at their weights
    sampler: WindowSampler | MixtureSampler
    train_windows: TokenWindows | MixedWindows
    if len(train_sets) == 1:
        train_windows = train_sets[0]
        sampler = WindowSampler(
            sizes[0], plan.global_batch, config.train.seed, dist.rank, dist.world_size
        )
    else:
        train_windows = MixedWindows(train_sets)
        weights = [source.weight for source in sources]
        sampler = MixtureSampler(
            sizes, weights, plan.global_batch, config.train.seed, dist.rank, dist.world_size
        )
    state = TrainerState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, dist)
        assert state.sampler is not None, "every checkpoint records the sampler's position"
        sampler.load_state_dict(state.sampler)
    reset_peak_memory(dist.device)
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
        batches=DeviceBatches(train_windows, sampler, dist.device),
        val_sets=[
            (source, windows, validation_indices(len(windows), config.data.val_windows))
            for source, windows in zip(sources, val_sets, strict=True)
        ],
        dtype=dtype,
        mfu=mfu_basis(
            flops_per_token(shape, config.data.seq_len),
            dist.device,
            dist.world_size,
            config.run.peak_tflops,
        ),
        state=state,
        resumed=checkpoint is not None,
    )


def signal_on_any_rank(signals: StopSignals, device: torch.device) -> bool:
    """Whether a stop signal reached any rank; every rank must call it (a collective)."""
    flag = torch.tensor([1.0 if signals.requested() else 0.0], device=device)
    return bool(all_reduce_sum(flag).item() > 0)


class Trainer:
    """The loop and its events; to its callbacks, a `TrainerView` (see training/callbacks/base.py)."""

    def __init__(self, run: Run, callbacks: Sequence[Callback]) -> None:
        names = [callback.name for callback in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")
        self.run = run
        # sorted() is stable: equal priorities keep the order given
        self.callbacks = sorted(callbacks, key=lambda callback: -callback.priority)
        self.stop_signal_received = False
        self.stop_reason: str | None = None
        self._checkpoint_request: tuple[int, frozenset[int]] | None = None
        self.last_checkpoint: Path | None = None
        self._clock = time.perf_counter()
        self._wall_before = run.state.wall_time_s
        self.val_sources: dict[str, dict[str, float]] | None = None
        """The last validation's loss and perplexity per source, with data.sources."""

    # -- the surface callbacks see (TrainerView) ----------------------------------------------

    @property
    def state(self) -> TrainerState:
        return self.run.state

    @property
    def steps(self) -> int:
        return self.run.steps

    @property
    def resumed(self) -> bool:
        return self.run.resumed

    @property
    def is_last_step(self) -> bool:
        return self.state.step == self.steps

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def dist(self) -> DistInfo:
        return self.run.dist

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return self.run.dtype

    def request_checkpoint(self, keep: int, protect: Collection[int] = ()) -> None:
        self._checkpoint_request = (keep, frozenset(protect))

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def log(self, record: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(self, record)

    def evaluate(self) -> float:
        run = self.run
        losses = {
            source.name: evaluate(
                run.model, windows, indices, run.plan.micro_batch, run.dist, run.dtype
            )
            for source, windows, indices in run.val_sets
        }
        # the mixture's loss: each source's at its weight (one source: its loss, unchanged)
        loss = math.fsum(source.weight * losses[source.name] for source, _, _ in run.val_sets)
        self.state.val_loss = loss
        record: dict[str, Any] = {"type": "val", "step": self.state.step, "loss": loss}
        record.update(ppl=math.exp(loss), tokens=self.state.tokens)
        if run.config.data.sources is not None:
            self.val_sources = {
                name: {"loss": value, "ppl": math.exp(value)} for name, value in losses.items()
            }
            record["sources"] = self.val_sources
        self.log(record)
        self._emit("on_evaluation", record)
        return loss

    # -- the loop -------------------------------------------------------------------------------

    def save_checkpoint(self, keep: int, protect: Collection[int] = ()) -> Path:
        """Checkpoint model, optimizer, data position and every callback's state."""
        state, run = self.state, self.run
        state.sampler = run.batches.state_dict()
        state.wall_time_s = self._wall_time()
        saved = {callback.name: callback.state_dict() for callback in self.callbacks}
        state.callbacks = {
            name: callback_state for name, callback_state in saved.items() if callback_state
        }
        path = save_checkpoint(
            run.run_dir, run.model, run.optimizer, state, run.dist, keep, protect=protect
        )
        self.last_checkpoint = path
        self._emit("on_checkpoint_saved", path)
        return path

    def fit(self) -> None:
        """Step until the last step or a stop request; raise RunInterrupted after a signal."""
        for callback in self.callbacks:
            if callback.name in self.state.callbacks:
                callback.load_state_dict(self.state.callbacks[callback.name])
        self.run.model.train()
        try:
            with StopSignals() as signals:
                self._emit("on_train_start")
                while self.state.step < self.steps and self.stop_reason is None:
                    record = self._step(signals)
                    self.log(record.to_dict())
                    self._emit("on_step_end", record)
                    if self.stop_signal_received:
                        signum = signals.signum or signal.SIGTERM
                        raise RunInterrupted(signum, self.state.step, self.last_checkpoint)
                self._emit("on_train_end")
                if signal_on_any_rank(signals, self.run.dist.device):
                    # it came after the last step's own check (during the final validation,
                    # scoring or save): the final checkpoint is on disk, the command must stop
                    signum = signals.signum or signal.SIGTERM
                    raise RunInterrupted(signum, self.state.step, self.last_checkpoint)
        except BaseException as error:
            for callback in self.callbacks:
                callback.on_error(self, error)
            raise
        finally:
            for callback in self.callbacks:
                callback.close()

    def summary_fields(self) -> dict[str, Any]:
        """What the callbacks add to summary.json."""
        fields: dict[str, Any] = {}
        for callback in self.callbacks:
            fields.update(callback.summary())
        return fields

    def _step(self, signals: StopSignals) -> StepRecord:
        run, state = self.run, self.state
        started = time.perf_counter()
        lr = lr_at(state.step, run.steps, run.config.optim)
        try:
            result = train_step(
                run.model,
                run.optimizer,
                run.batches.next(),
                run.plan,
                step=state.step + 1,
                lr=lr,
                grad_clip=run.config.optim.grad_clip,
                dtype=run.dtype,
                stop_requested=signals.requested,
            )
        except NonFiniteLoss as exc:
            saved = latest_checkpoint(run.run_dir)
            good = (
                f"{saved} is the last good checkpoint" if saved else "no checkpoint was saved yet"
            )
            raise NonFiniteLoss(f"{exc} ({good})") from None
        seconds = time.perf_counter() - started
        self.stop_signal_received = result.stop
        state.step += 1
        state.tokens += run.plan.tokens_per_step
        state.train_loss = result.loss
        state.peak_memory_mib = max(state.peak_memory_mib, peak_memory_mib(run.dist.device))
        state.wall_time_s = self._wall_time()
        tokens_per_s = run.plan.tokens_per_step / seconds
        return StepRecord(
            step=state.step,
            loss=result.loss,
            lr=lr,
            grad_norm=result.grad_norm,
            tokens=state.tokens,
            tokens_per_step=run.plan.tokens_per_step,
            step_time_s=seconds,
            tokens_per_s=tokens_per_s,
            mfu=run.mfu.mfu(tokens_per_s),
            peak_mem_mib=state.peak_memory_mib,
            time_s=state.wall_time_s,
        )

    def _wall_time(self) -> float:
        return self._wall_before + time.perf_counter() - self._clock

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)
        if self._checkpoint_request is not None:
            keep, protect = self._checkpoint_request
            self._checkpoint_request = None
            self.save_checkpoint(keep, protect)


def builtin_callbacks(run: Run) -> list[Callback]:
    """What every run does besides stepping; their priorities order them (log the step, show
    it, validate, then checkpoint, so the checkpoint holds the validation loss)."""
    config, is_main = run.config, run.dist.is_main
    callbacks: list[Callback] = [ThroughputMeter(run.mfu)]
    if is_main:
        callbacks.append(MetricsLog(run.run_dir))
    if is_main and config.run.tensorboard:
        callbacks.append(TensorBoardLog(run.run_dir, dump_config(config)))
    if is_main and config.run.wandb.enabled:
        callbacks.append(WandbLog(run.run_dir, config))
    if is_main and config.run.progress:
        callbacks.append(ProgressDisplay(config.run.log_interval))
    callbacks.append(Validation(config.train.val_interval))
    callbacks.append(
        Checkpointing(
            config.checkpoint.interval,
            config.checkpoint.keep,
            protect=branch_steps(run.steps, config.optim),
        )
    )
    return callbacks


def train(
    config: Config, callbacks: Sequence[Callback] = (), build: ModelBuilder = build_model
) -> RunSummary:
    """Train (or, with run.resume=auto, continue) one run and return its summary.

    `callbacks` join the built-in ones, ordered by priority; `build` makes the model. This is
    the core loop alone: `layerwise.train` (layerwise.launch) adds the callbacks the config
    asks for, such as in-loop downstream evaluation. Raises UserError for bad settings or data, NonFiniteLoss if
    training diverges (the last good checkpoint stays) and RunInterrupted after a
    signal-triggered checkpoint.
    """
    dist = init_distributed(config.run.device)
    config = with_data_vocab(config)
    run_dir = Path(config.run.dir)
    with held_by_main(DirectoryLock(run_dir, "run directory")):
        return train_locked(config, dist, run_dir, callbacks, build)


def train_locked(
    config: Config,
    dist: DistInfo,
    run_dir: Path,
    callbacks: Sequence[Callback],
    build: ModelBuilder = build_model,
) -> RunSummary:
    """`train` once this process holds the run directory."""
    point = decide_on_main(lambda: prepare_run_dir(run_dir, config))
    if dist.is_main:
        for note in point.notes:
            print(f"layerwise: {note}", file=sys.stderr)
    finished = finished_summary(run_dir, point, total_steps(config))
    if finished is not None:
        return finished
    run = setup_run(config, dist, point.checkpoint, build)
    if dist.is_main:
        record_run_files(run)
    trainer = Trainer(run, [*builtin_callbacks(run), *callbacks])
    trainer.fit()
    fields = {**trainer.summary_fields(), "final_val_sources": trainer.val_sources}
    summary = summarize(run, trainer.stop_reason, fields)
    if dist.is_main:
        atomic_write_json(run.run_dir / SUMMARY_FILE, summary.to_dict())
    return summary


def finished_summary(run_dir: Path, point: ResumePoint, steps: int) -> RunSummary | None:
    """The summary of a run that already reached its last step, when asked to resume it again.

    A damaged summary is not trusted: the run resumes from its final checkpoint, takes no
    step, and writes the summary again.
    """
    if point.checkpoint is None or point.step < steps or not (run_dir / SUMMARY_FILE).exists():
        return None
    try:
        return RunSummary.load(run_dir / SUMMARY_FILE)
    except UserError as exc:
        print(f"layerwise: {exc}; writing it again", file=sys.stderr)
        return None


def record_run_files(run: Run) -> None:
    """Rank 0: the resolved config and the data's tokenizer go into the run directory."""
    data_dir = Path(data_sources(run.config.data)[0].dir)
    found = {name: data_dir / name for name in (META_FILE, TOKENIZER_FILE)}
    tokenizer = {name: path for name, path in found.items() if path.exists()}
    if run.config.data.sources is not None:
        for source, _, _ in run.val_sets:
            tokenizer[f"{SOURCES_DIR}/{source.name}/{META_FILE}"] = Path(source.dir) / META_FILE
    write_run_files(run.run_dir, dump_config(run.config), tokenizer)


def summarize(run: Run, stopped_early: str | None, fields: dict[str, Any]) -> RunSummary:
    """The run's summary.json; `fields` are what its callbacks add (throughput, scores)."""
    state, shape, budget = run.state, run.shape, run.budget
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
        mfu_note=run.mfu.note,
        peak_memory_mib=state.peak_memory_mib or None,
        wall_time_s=state.wall_time_s,
        hardware=hardware_info(run.dist.device, run.dist.world_size),
        versions=versions(),
        config_hash=config_hash(run.config),
        stopped_early=stopped_early,
        **fields,
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
