"""`layerwise analyze`: every measure of every run in one pass over its validation windows.

Each batch of windows is run through the model once with its states recorded; every measure
then folds that batch into running sums and the states are dropped, so memory is one batch's
states (plus the [d x d] moments and the CKA sample's Gram matrices) whatever the number of
windows. The reference run of `--against` sees exactly the same tokens as the run it is
compared with, which cross-run CKA needs; its widths may differ, its tokenizer may not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from layerwise.analysis.attention import attention_entropy
from layerwise.analysis.cka import Grams, MinibatchCKA, sample_tokens
from layerwise.analysis.collect import collect_states, token_rows
from layerwise.analysis.geometry import Geometry, UpdateRatios
from layerwise.analysis.importance import LayerImportance
from layerwise.analysis.lens import LogitLens
from layerwise.data.loader import open_split, validation_indices
from layerwise.data.meta import read_meta
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import ModelShape, layer_params
from layerwise.training.load import TrainedModel, load_model
from layerwise.util.errors import UserError


@dataclass(frozen=True)
class AnalysisOptions:
    windows: int = 64
    """Validation windows per run: the first ones in file order, the same for every run."""
    batch: int | None = None
    """Windows per forward pass; None: the run's `batch.micro_batch`."""
    cka_tokens: int = 1024
    """Tokens per batch in the CKA minibatch estimate (and the anisotropy pairs)."""
    entropy_windows: int = 4
    seed: int = 0


@dataclass(frozen=True)
class Pair:
    """One run to analyse and, optionally, the run its layers are compared with."""

    run_dir: Path
    against: Path | None = None


def analyze_model(
    model: Transformer,
    shape: ModelShape,
    batches: Iterator[torch.Tensor],
    options: AnalysisOptions,
    against: Transformer | None = None,
) -> tuple[dict[str, Any], list[list[float]] | None]:
    """Every per-layer measure of `model` over `batches` of windows [b, seq + 1], and the CKA
    of its layers against `against`'s on the same tokens (None without a reference)."""
    lens, importance = LogitLens(shape.n_layers), LayerImportance()
    ratios, geometry = UpdateRatios(), Geometry()
    within, cross = MinibatchCKA(), MinibatchCKA()
    entropy_windows: list[torch.Tensor] = []
    for index, windows in enumerate(batches):
        inputs, targets = windows[:, :-1], windows[:, 1:]
        states = collect_states(model, inputs)
        batch, seq = inputs.shape
        sample = sample_tokens(batch, seq, options.cka_tokens, options.seed + index)
        sample = sample.to(inputs.device)
        grams = Grams.of([token_rows(out)[sample] for out in states.outputs])
        within.update(grams)
        if against is not None:
            other = collect_states(against, inputs).outputs
            cross.update(grams, Grams.of([token_rows(out)[sample] for out in other]))
        assert states.final is not None
        lens.update(model, states.outputs, states.final, targets)
        importance.update(model, states, targets)
        ratios.update(states)
        geometry.update(states.outputs, sample)
        wanted = options.entropy_windows - sum(len(w) for w in entropy_windows)
        if wanted > 0:
            entropy_windows.append(inputs[:wanted])
    if lens.tokens == 0:
        raise UserError("no validation windows to analyse")
    found = lens.result()
    result = {
        **found,
        **importance.result(float(cast(float, found["val_loss"])), shape),
        **ratios.result(),
        **geometry.result(),
        "cka": within.result(),
        "attention_entropy": attention_entropy(model, torch.cat(entropy_windows)),
        "tokens": lens.tokens,
    }
    return result, cross.result() if against is not None else None


def window_batches(
    trained: TrainedModel, run_dir: Path, options: AnalysisOptions, device: torch.device
) -> tuple[int, Iterator[torch.Tensor]]:
    """How many validation windows the run is analysed on, and the batches of them."""
    config = trained.config
    check_data_tokenizer(trained, run_dir)
    windows = open_split(config.data.dir, "val", config.data.seq_len)
    indices = validation_indices(len(windows), options.windows)
    size = options.batch or config.batch.micro_batch

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(indices), size):
            yield windows.get(indices[start : start + size]).to(device)

    return len(indices), batches()


def check_data_tokenizer(trained: TrainedModel, run_dir: Path) -> None:
    """The run's validation data must still be the tokens it was trained on."""
    data = read_meta(trained.config.data.dir)
    if data.tokenizer_sha256 != trained.meta.tokenizer_sha256:
        raise UserError(
            f"{trained.config.data.dir} was prepared with tokenizer {data.tokenizer} but the "
            f"run {run_dir} was trained with {trained.meta.tokenizer}: "
            "prepare the data again with the run's tokenizer"
        )


def check_comparable(run: TrainedModel, run_dir: Path, ref: TrainedModel, ref_dir: Path) -> None:
    """Cross-run CKA feeds the reference the run's tokens: same tokenizer, long enough context."""
    if run.meta.tokenizer_sha256 != ref.meta.tokenizer_sha256:
        raise UserError(
            f"--against {ref_dir} was trained on tokens of tokenizer {ref.meta.tokenizer} "
            f"(sha256 {ref.meta.tokenizer_sha256[:12]}), {run_dir} on {run.meta.tokenizer} "
            f"(sha256 {run.meta.tokenizer_sha256[:12]}): layers can only be compared on the "
            "same tokens; pick a reference run prepared with the same tokenizer"
        )
    if ref.config.data.seq_len < run.config.data.seq_len:
        raise UserError(
            f"--against {ref_dir} was trained on sequences of {ref.config.data.seq_len} tokens, "
            f"shorter than the {run.config.data.seq_len} of {run_dir}; pick a reference run with "
            "at least the same data.seq_len"
        )


def analyze_runs(
    pairs: Sequence[Pair],
    options: AnalysisOptions,
    device: str | torch.device = "cpu",
    step: int | None = None,
) -> dict[str, Any]:
    """`{"runs": [...], "cross": [...]}` (analysis.json) for each run and its reference."""
    device = torch.device(device)
    loaded: dict[Path, TrainedModel] = {}

    def load(path: Path) -> TrainedModel:
        if path not in loaded:
            loaded[path] = load_model(path, step, device)
        return loaded[path]

    references = {pair.against for pair in pairs}
    runs, cross = [], []
    for pair in pairs:
        trained = load(pair.run_dir)
        same = pair.against is not None and pair.against.resolve() == pair.run_dir.resolve()
        against = None if same else pair.against
        reference = None if against is None else load(against)
        if reference is not None and against is not None:
            check_comparable(trained, pair.run_dir, reference, against)
        n_windows, batches = window_batches(trained, pair.run_dir, options, device)
        found, cka = analyze_model(
            trained.model,
            trained.shape,
            batches,
            options,
            None if reference is None else reference.model,
        )
        runs.append(describe_run(pair.run_dir, trained, n_windows) | found)
        if cka is not None and reference is not None:
            profile = reference.config.model.profile
            cross.append(
                {"a": str(pair.run_dir), "b": str(against), "b_label": profile, "cka": cka}
            )
        if pair.run_dir not in references:
            loaded.pop(pair.run_dir, None)  # keep only references loaded
    label_runs(runs)
    for entry in cross:
        entry["a_label"] = next(r["label"] for r in runs if r["run_dir"] == entry["a"])
        entry["b_label"] = next(
            (r["label"] for r in runs if r["run_dir"] == entry["b"]), entry["b_label"]
        )
    return {"runs": runs, "cross": cross}


def describe_run(run_dir: Path, trained: TrainedModel, n_windows: int) -> dict[str, Any]:
    """What the numbers belong to: the run, its checkpoint, its per-layer widths."""
    shape = trained.shape
    return {
        "run_dir": str(run_dir),
        "profile": trained.config.model.profile,
        "seed": trained.config.train.seed,
        "step": trained.step,
        "n_layers": shape.n_layers,
        "windows": n_windows,
        "seq_len": trained.config.data.seq_len,
        "layers": [
            {
                "d_ffn": layer.d_ffn,
                "n_heads": layer.n_heads,
                "n_kv_heads": layer.n_kv_heads,
                "mparams": layer_params(shape, layer) / 1e6,
            }
            for layer in shape.layers
        ],
    }


def label_runs(runs: list[dict[str, Any]]) -> None:
    """Short names for figures: the profile, with the seed where profiles repeat, or the run
    directory where that is not enough."""
    for run in runs:
        run["label"] = run["profile"]
    for key in ("seed", "run_dir"):
        labels = [run["label"] for run in runs]
        for run in runs:
            if labels.count(run["label"]) > 1:
                run["label"] = f"{run['profile']} {key} {run[key]}"


def json_ready(value: Any) -> Any:
    """NaN (heads a layer lacks, undefined correlations) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value
