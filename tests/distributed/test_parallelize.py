"""Wrapping changes how the model runs, never what it computes.

The two-process tests run real gloo process groups (spawned workers on CPU) and check that one
optimizer step of DDP and of FSDP2 on a split global batch, with gradient accumulation, equals
one step of a single process on the whole batch.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from layerwise.distributed.env import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from layerwise.distributed.parallelize import (
    count_block_shapes,
    gradient_sync,
    parallelize,
    set_recompile_limit,
    transformer_blocks,
)
from layerwise.nn.model import Transformer
from layerwise.profiles.recipes import ProfileSpec, shape_from_spec
from layerwise.util.errors import UserError

TINY = ProfileSpec(
    ffn=(1.0, 4.0),
    qkv=(0.5, 1.0),
    n_layers=2,
    d_model=32,
    head_dim=8,
    gqa_group=1,
    vocab_size=61,
    ffn_divisor=8,
)
WORLD_SIZE = 2
GLOBAL_BATCH, SEQ_LEN, LR = 4, 16, 0.5
SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(shape_from_spec(TINY))


def global_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, TINY.vocab_size, (GLOBAL_BATCH, SEQ_LEN + 1), generator=generator)


def loss_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, :-1], tokens[:, 1:])


def sgd_step(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param -= LR * param.grad


def reference_step() -> tuple[float, dict[str, torch.Tensor]]:
    """One process, the whole global batch at once: loss and weights after one SGD step."""
    model = tiny_model()
    loss = loss_of(model, global_batch())
    loss.backward()
    sgd_step(model)
    return loss.item(), model.state_dict()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, strategy: str, port: int, out: Path) -> None:
    """One rank: its half of the batch in two accumulated micro-batches, then one SGD step.

    Each rank initialises with its own seed, so the test also proves the wrappers start every
    rank from rank 0's weights.
    """
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    dist = init_distributed("cpu")
    try:
        model = parallelize(
            tiny_model(seed=rank),
            dist,
            strategy,
            compile=False,
            activation_checkpointing=strategy == "fsdp",
        )
        shard = global_batch().chunk(WORLD_SIZE)[dist.rank]
        micro_batches = shard.chunk(2)
        total = torch.zeros(())
        for index, micro in enumerate(micro_batches):
            with gradient_sync(model, enabled=index == len(micro_batches) - 1):
                loss = loss_of(model, micro) / len(micro_batches)
                loss.backward()
            total += loss.detach()
        sgd_step(model)
        mean_loss = all_reduce_sum(total) / dist.world_size
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if dist.is_main:
            torch.save({"loss": mean_loss.item(), "state": state}, out)
        barrier()
    finally:
        shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_take_the_same_step_as_one(strategy: str, tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.start_processes(
        worker,
        args=(strategy, free_port(), out),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="spawn",
    )
    result = torch.load(out)
    expected_loss, expected_state = reference_step()
    assert result["loss"] == pytest.approx(expected_loss, abs=1e-5)
    assert result["state"].keys() == expected_state.keys()
    for name, expected in expected_state.items():
        torch.testing.assert_close(result["state"][name], expected, rtol=0, atol=1e-5, msg=name)


def test_activation_checkpointing_keeps_loss_gradients_and_parameter_names() -> None:
    plain, checkpointed = tiny_model(), tiny_model()
    wrapped = parallelize(
        checkpointed,
        SINGLE,
        "none",
        compile=False,
        activation_checkpointing=True,
    )
    tokens = global_batch()
    loss_of(plain, tokens).backward()
    loss_of(wrapped, tokens).backward()
    assert wrapped.state_dict().keys() == plain.state_dict().keys()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_single_process_ignores_the_data_parallel_wrapper() -> None:
    model = tiny_model()
    for strategy in ("ddp", "fsdp"):
        assert (
            parallelize(
                model,
                SINGLE,
                strategy,
                compile=False,
                activation_checkpointing=False,
            )
            is model
        )


def test_strategy_none_with_many_processes_is_a_user_error() -> None:
    dist = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(UserError, match="unrelated models"):
        parallelize(
            tiny_model(),
            dist,
            "none",
            compile=False,
            activation_checkpointing=False,
        )
    with pytest.raises(UserError, match="unknown parallelism"):
        parallelize(
            tiny_model(),
            dist,
            "zero3",
            compile=False,
            activation_checkpointing=False,
        )


def test_a_model_without_blocks_is_refused() -> None:
    with pytest.raises(TypeError, match="blocks"):
        transformer_blocks(torch.nn.Linear(2, 2))


def test_gradient_sync_is_a_no_op_without_a_wrapper() -> None:
    model = tiny_model()
    with gradient_sync(model, enabled=False):
        loss_of(model, global_batch()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_recompile_limit_covers_every_block_shape_of_this_model_only() -> None:
    """Sized per run, not a running total: a later model gets its own limit, never one inflated
    or exhausted by an earlier run in the same process."""
    spec = ProfileSpec(
        ffn=(0.5, 4.0),
        qkv=(0.5, 1.0),
        n_layers=18,
        d_model=64,
        head_dim=16,
        gqa_group=1,
        vocab_size=61,
        ffn_divisor=8,
    )
    blocks = transformer_blocks(Transformer(shape_from_spec(spec)))
    assert count_block_shapes(blocks) == 18
    config = torch._dynamo.config
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        set_recompile_limit(count_block_shapes(blocks))
        assert config.recompile_limit >= 36
        set_recompile_limit(1)
        assert config.recompile_limit == 8


@pytest.mark.slow
def test_compiled_blocks_of_different_shapes_never_fall_back_to_eager() -> None:
    """With the limit at 1, the second block shape would fail unless parallelize sets it.

    Inference only: it compiles one graph per shape, which keeps this test to seconds.
    """
    model, reference = tiny_model(), tiny_model()
    assert count_block_shapes(transformer_blocks(model)) == 2
    tokens = global_batch()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        compiled = parallelize(
            model,
            SINGLE,
            "none",
            compile=True,
            activation_checkpointing=False,
        )
        with torch.no_grad():
            loss = loss_of(compiled, tokens)
    torch._dynamo.reset()
    torch.testing.assert_close(loss, loss_of(reference, tokens))
    assert compiled.state_dict().keys() == reference.state_dict().keys()
