"""`run.export_at_end`: a finished run writes its Hugging Face export (as OLMo-core's converter
callback does), ready for transformers or lm-eval without a separate `layerwise export`.

What the export needs is checked when the callback is built, before the run builds its model:
the hf extra, a block transformers has (`model.norm_order`), a tokenizer.json, and an output
that is free or holds an earlier export. A run of hours must not find out at its end.

The export is written in `close`, the one hook after the trainer's last look for a signal
(which follows `on_train_end` and the final save): a run stopped by SIGINT or SIGTERM, even
during its final validation or save, or by an error, is not exported; a finished one is, from
the checkpoint of its last step, reloaded from disk by rank 0 alone (so an FSDP run needs no
gather). `export_run` writes DIR.tmp and renames it, so an export cut short leaves no DIR. A
rerun of a run that stopped before its export (`--resume`) takes no step and exports.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar

from layerwise.config.schema import Config, data_sources
from layerwise.data.meta import TOKENIZER_FILE
from layerwise.hf.export import check_output_dir, export_run
from layerwise.nn.state_dict_adapter import check_exportable
from layerwise.runs.files import TOKENIZER_DIR
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.util.errors import UserError

EXPORT_DIR = "hf"
"""Where `run.export_at_end: true` writes, inside the run directory."""
KEY = "run.export_at_end"
HF_EXTRA = ("transformers", "safetensors")


def export_dir(config: Config) -> Path | None:
    """Where the run's export goes: None when `run.export_at_end` is false, RUN_DIR/hf when
    true, else the directory it names (relative to the working directory, like run.dir)."""
    value = config.run.export_at_end
    if value is False:
        return None
    if value is True:
        return Path(config.run.dir) / EXPORT_DIR
    if not value.strip():
        raise UserError(f"{KEY}: give true (RUN_DIR/{EXPORT_DIR}), false, or a directory")
    return Path(value)


def check_export_at_end(config: Config, out: Path) -> None:
    """Everything `export_run` would refuse at the end of the run, refused now."""
    missing = [name for name in HF_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"{KEY} needs {' and '.join(missing)}: pip install 'layerwise[hf]' (or set {KEY}=false)"
        )
    try:
        check_exportable(config.model.norm_order)
    except UserError as exc:
        raise UserError(f"{KEY}: {exc}; set {KEY}=false to train it anyway") from None
    run_dir = Path(config.run.dir)
    data_dir = Path(data_sources(config.data)[0].dir)
    tokenizers = (data_dir / TOKENIZER_FILE, run_dir / TOKENIZER_DIR / TOKENIZER_FILE)
    if not any(path.is_file() for path in tokenizers):
        raise UserError(
            f"{KEY}: {data_dir} holds no {TOKENIZER_FILE}, and an export needs one for "
            f"AutoTokenizer; prepare the data with a tokenizer, or set {KEY}=false"
        )
    if run_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"{KEY}={out} is the run directory or above it, and the export would replace it; "
            f"choose a directory outside it (or true, for RUN_DIR/{EXPORT_DIR})"
        )
    check_output_dir(out, overwrite=True, what=KEY)


def export_at_end(config: Config) -> ExportAtEnd | None:
    """The callback `run.export_at_end` asks for, checked; None when it is false."""
    out = export_dir(config)
    if out is None:
        return None
    check_export_at_end(config, out)
    return ExportAtEnd(out)


class ExportAtEnd(Callback):
    """Rank 0 exports the last step's checkpoint to `out` once the run has finished cleanly."""

    priority: ClassVar[int] = -200
    """Last, so its `close`, which takes a while and may fail, follows every other one."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.finished: tuple[Path, int] | None = None
        """(run directory, last step) once the run ended without a signal or an error."""

    def on_train_end(self, trainer: TrainerView) -> None:
        if trainer.dist.is_main:
            self.finished = (trainer.run_dir, trainer.state.step)

    def on_error(self, trainer: TrainerView, error: BaseException) -> None:
        self.finished = None

    def close(self) -> None:
        if self.finished is None:
            return
        (run_dir, step), self.finished = self.finished, None
        result = export_run(run_dir, self.out, step, overwrite=True)
        print(
            f"layerwise: exported step {result.step} to {result.out} as {result.kind}",
            file=sys.stderr,
        )
