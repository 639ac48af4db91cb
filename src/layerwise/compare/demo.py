"""The quickstart: the study's comparison in miniature, on any machine, with nothing to download.

Prepares the built-in `python-docs` corpus (the standard library's docstrings) with a small BPE
trained on it, then compares the five shapes as tiny models rescaled to the isotropic model's
parameter count, on the CPU. Everything lands in one directory and a rerun resumes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from layerwise.compare.cells import ComparisonPlan
from layerwise.compare.run import make_plan
from layerwise.config.loader import load_config
from layerwise.data.meta import META_FILE
from layerwise.data.prepare import PrepareResult, prepare
from layerwise.evaluation.tasks import default_evals_dir
from layerwise.profiles.recipes import SHAPES

DEMO_TOKENIZER = "bpe:4096"
DEMO_VAL_TOKENS = 40_000
"""About 6% of the corpus: enough held-out windows that profiles are told apart by more than noise."""


def demo_config() -> Path:
    """The packaged config of the demo's tiny models."""
    return Path(str(resources.files("layerwise.compare") / "demo.yaml"))


def prepare_demo_data(data_dir: Path) -> PrepareResult | None:
    """Tokenize the standard library's docstrings once; None when an earlier run already did."""
    if (data_dir / META_FILE).exists():
        return None
    return prepare(
        ["python-docs"],
        DEMO_TOKENIZER,
        data_dir,
        val_tokens=DEMO_VAL_TOKENS,
        overwrite=data_dir.exists(),
        show_progress=True,
    )


DEMO_EVAL_LIMIT = 50
"""Examples per core task, scored at the start and the end of every run: enough to show the
downstream table and figure, few enough to keep the demo within minutes on 2 cores."""


def demo_evals_dir() -> Path | None:
    """The evaluation sets beside the checkout, when there are any (the demo works without)."""
    directory = default_evals_dir()
    return directory if directory.is_dir() else None


def demo_overrides(out: Path, overrides: tuple[str, ...]) -> tuple[str, ...]:
    evaluation: tuple[str, ...] = ()
    if demo_evals_dir() is not None:
        evaluation = ("eval.tasks=[core]", f"eval.limit={DEMO_EVAL_LIMIT}", "eval.interval=1000")
    return (f"data.dir={out / 'data'}", *evaluation, *overrides)


def check_overrides(out: Path, overrides: tuple[str, ...]) -> None:
    """Refuse bad overrides before minutes go into preparing the data."""
    load_config(demo_config(), demo_overrides(out, overrides))


def demo_plan(out: Path, overrides: tuple[str, ...] = ()) -> ComparisonPlan:
    return make_plan(
        config=str(demo_config()),
        profiles=tuple(SHAPES),
        seeds=(0,),
        out=out / "comparison",
        match="isotropic",
        overrides=demo_overrides(out, overrides),
    )
