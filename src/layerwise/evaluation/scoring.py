"""Batched scoring: the summed log-probability of each request's continuation tokens.

Requests are sorted by length and packed into batches of about `batch_tokens` padded tokens, so
padding stays small. The model runs up to its final norm only; the LM head is applied to the
hidden states at continuation positions alone, through the chunked cross-entropy
(`layerwise.losses`), so no full-vocabulary logits are ever formed for whole sequences. Right
padding cannot change the scores: attention is causal, so real positions never see it.

Under torchrun the batches are dealt round-robin to the ranks and the per-request sums are
reduced; every rank runs the same number of forward passes (an idle rank runs a one-token
dummy), as FSDP's parameter gathers require.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from layerwise.distributed.env import DistInfo, all_reduce_sum
from layerwise.evaluation.requests import Request
from layerwise.nn.losses import linear_cross_entropy
from layerwise.nn.model import Transformer
from layerwise.nn.precision import autocast

DEFAULT_BATCH_TOKENS = 16384


def make_batches(requests: Sequence[Request], batch_tokens: int) -> list[list[int]]:
    """Request indices grouped longest first, each group at most `batch_tokens` padded tokens
    (a single request longer than that is a batch of its own)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
    batches: list[list[int]] = []
    for index in order:
        width = len(requests[batches[-1][0]].tokens) if batches else 0
        if batches and (len(batches[-1]) + 1) * width <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


@contextlib.contextmanager
def unwrapped(model: nn.Module) -> Iterator[Transformer]:
    """The Transformer inside a training wrapper, usable for `hidden_states` and `lm_head`.

    DDP is only a wrapper. FSDP2 gathers the root's own parameters (embedding, final norm, LM
    head) in the root's forward, which scoring bypasses, so they are gathered here for the
    duration; each block still gathers its own in its forward.
    """
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(inner, Transformer):
        raise TypeError(f"scoring needs a layerwise Transformer, got {type(inner).__name__}")
    if not isinstance(inner, FSDPModule):
        yield inner
        return
    inner.unshard()
    try:
        yield inner
    finally:
        inner.reshard()


def score_batch(
    model: Transformer, requests: Sequence[Request], device: torch.device
) -> torch.Tensor:
    """Summed continuation log-probabilities (float64, one per request) of one padded batch."""
    width = max(len(r.tokens) for r in requests) - 1
    inputs = np.zeros((len(requests), width), dtype=np.int64)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for row, request in enumerate(requests):
        length = len(request.tokens) - 1
        inputs[row, :length] = request.tokens[:-1]
        rows += [row] * request.n_cont
        cols += range(length - request.n_cont, length)
        targets += request.tokens[-request.n_cont :]
    hidden = model.hidden_states(torch.from_numpy(inputs).to(device))
    row_index = torch.tensor(rows, device=device)
    selected = hidden[row_index, torch.tensor(cols, device=device)]
    losses = linear_cross_entropy(
        selected, model.lm_head.weight, torch.tensor(targets, device=device), reduction="none"
    )
    sums = torch.zeros(len(requests), dtype=torch.float64, device=device)
    return sums.index_add_(0, row_index, losses.double()).neg_()


@torch.no_grad()
def score_requests(
    model: nn.Module,
    requests: Sequence[Request],
    dist: DistInfo,
    dtype: torch.dtype | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Progress | None = None,
) -> list[float]:
    """The summed log-probability of every request's continuation, on every rank.

    Leaves the model in the mode it found it in (training resumes in train mode).
    """
    device = dist.device
    batches = make_batches(requests, batch_tokens)
    rounds = -(-len(batches) // dist.world_size)
    totals = torch.zeros(len(requests), dtype=torch.float64, device=device)
    task = None if progress is None else progress.add_task("scoring", total=len(requests))
    was_training = model.training
    model.eval()
    try:
        with unwrapped(model) as inner, autocast(device, dtype):
            for round_index in range(rounds):
                number = round_index * dist.world_size + dist.rank
                if number >= len(batches):
                    score_batch(inner, [Request((0, 0), 1)], device)
                    continue
                indices = batches[number]
                totals[indices] = score_batch(inner, [requests[i] for i in indices], device)
                if progress is not None and task is not None:
                    progress.advance(task, len(indices) * dist.world_size)
    finally:
        model.train(was_training)
    return all_reduce_sum(totals).tolist()
