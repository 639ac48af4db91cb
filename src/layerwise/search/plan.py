"""What a search trains: the shared config, the fidelity (rungs) and the budget every trial meets.

Every trial is an ordinary run: the user's config with the trial's shape, the search schedule
and its own `run.dir`. The schedule is warmup-stable-decay with the warmup given in steps, so
that the run of rung k (r_k steps, ending in its own decay) and the run of rung k+1 share every
step up to rung k's decay start: rung k+1 continues rung k's run directory from that
checkpoint (`run.resume=auto`, as `train --resume` extends a WSD run). Each rung's loss is
then exactly what an independent r_k-step run would reach, so rungs compare across trials, and
a promoted trial pays only the short decays again, not the whole rung.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from layerwise.config.loader import load_config
from layerwise.config.schema import Config, total_steps, warmup_steps
from layerwise.data.loader import open_split
from layerwise.data.meta import read_meta
from layerwise.profiles.recipes import SHAPES
from layerwise.profiles.shape import ModelShape
from layerwise.search.space import SearchSpace, Shape
from layerwise.training.build import with_data_vocab
from layerwise.training.callbacks.wandb import with_wandb_cell
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

BASELINES = tuple(SHAPES)
"""The study's five profiles, trained first so the search starts from the human designs."""


@dataclass(frozen=True)
class SearchPlan:
    """The experiment a study runs; saved in the study so that every worker runs the same one."""

    config: str
    overrides: tuple[str, ...] = ()
    space: SearchSpace = field(default_factory=SearchSpace)
    trial_steps: int | None = None
    """Steps of a trial that reaches the last rung (default: the config's train budget)."""
    rungs: int = 3
    eta: int = 3
    match: str | None = None
    """Profile whose parameters (or FLOPs) every trial matches (default: the config's, else
    isotropic); ignored when the config sets model.target_params."""

    def __post_init__(self) -> None:
        if self.eta < 2:
            raise UserError(
                f"--eta {self.eta} must be at least 2: each rung trains eta times longer than "
                "the one before, and successive halving keeps 1 in eta trials per rung"
            )

    def base(self) -> Config:
        return load_config(self.config, self.overrides)

    @property
    def reference(self) -> str:
        return self.match or self.base().model.match or "isotropic"

    def rung_steps(self) -> list[int]:
        """Steps at each rung, a factor eta apart, the last being the trial's full budget."""
        full = self.trial_steps or total_steps(self.base())
        steps = [max(1, round(full / self.eta ** (self.rungs - 1 - k))) for k in range(self.rungs)]
        if len(steps) > 1 and steps[0] < 2:
            raise UserError(
                f"--rungs {self.rungs} with --eta {self.eta} needs a trial budget of at least "
                f"{self.eta ** (self.rungs - 1) * 2} steps, not {full}: the first rung must have "
                "a stable phase to branch from; lower --rungs or raise --trial-steps"
            )
        return steps

    def schedule_overrides(self) -> tuple[str, ...]:
        """WSD with a warmup in steps, no longer than the first rung's stable phase."""
        base = self.base()
        steps = self.rung_steps()
        first_decay = max(1, round(base.optim.decay_fraction * steps[0]))
        warmup = min(warmup_steps(base.optim, steps[-1]), steps[0] - first_decay)
        return (
            "optim.schedule=wsd",
            "optim.warmup_fraction=null",
            f"optim.warmup_steps={warmup}",
            f"train.val_interval={steps[-1]}",
            "run.progress=false",
            "run.resume=auto",
            "run.overwrite=false",
        )

    def budget_overrides(self, baseline: str | None) -> tuple[str, ...]:
        """Every trial is rescaled to the reference's size, except the reference itself."""
        if self.base().model.target_params is not None:
            return ("model.match=null",)
        return (f"model.match={'null' if baseline == self.reference else self.reference}",)

    def shape_overrides(self, baseline: str | None, shape: Shape | None) -> tuple[str, ...]:
        if baseline is not None:
            return (
                "model.profile=" + baseline,
                "model.ffn=null",
                "model.qkv=null",
                "model.frame=null",
            )
        assert shape is not None
        return shape.overrides()

    def trial_config(
        self,
        baseline: str | None,
        shape: Shape | None,
        run_dir: Path,
        steps: int,
        extra: tuple[str, ...] = (),
    ) -> Config:
        """The config of one trial's run at `steps` (a rung), vocabulary resolved; `extra`
        overrides go last (the fidelity check's other seeds). Rungs differ only in length:
        the config is read once per trial and copied with each rung's steps. Every run of a
        search lies in OUT/KIND/NAME (trials/trial-0003, fidelity/crown): its W&B run (if any)
        is KIND/NAME in a group named after OUT."""
        overrides = (
            *self.schedule_overrides(),
            *self.shape_overrides(baseline, shape),
            *self.budget_overrides(baseline),
            f"run.dir={run_dir}",
            f"train.steps={self.rung_steps()[-1]}",
            "train.tokens=null",
            *extra,
        )
        config = with_data_vocab(load_config(self.config, (*self.overrides, *overrides)))
        kind = run_dir.absolute().parent
        config = with_wandb_cell(config, kind.parent.name, f"{kind.name}/{run_dir.name}")
        return replace(config, train=replace(config.train, steps=steps))

    def to_dict(self) -> dict:
        """The plan as saved with the study: JSON, config path made absolute."""
        plan = asdict(self)
        plan["config"] = str(Path(self.config).resolve())
        plan["space"] = self.space.to_dict()
        plan["overrides"] = list(self.overrides)
        return json.loads(json.dumps(plan))


def resolved_shape(config: Config) -> ModelShape:
    vocab_size = config.model.vocab_size
    assert vocab_size is not None, "trial_config resolves the vocabulary"
    return config_shape(config, vocab_size)[0]


def check_plan(plan: SearchPlan, out: Path) -> ModelShape:
    """Everything that can be wrong before the first trial; returns the reference shape.

    The data must have a validation split (trials are ranked by validation loss), every
    baseline must meet the budget, and so must the space at each frame setting it allows.
    """
    plan.space.check()
    if not Path(plan.config).is_file():
        raise UserError(f"config {plan.config} not found")
    base = plan.base()
    meta = read_meta(base.data.dir)
    if "val" not in meta.splits:
        raise UserError(
            f"data.dir {base.data.dir} has no validation split (splits: "
            f"{', '.join(meta.splits)}); the search ranks shapes by validation loss: prepare "
            "the data with `layerwise data prepare ... --val-tokens N`"
        )
    open_split(base.data.dir, "val", base.data.seq_len)
    steps = plan.rung_steps()[-1]
    probe = out / "trials" / "check"
    _check_space_meets_budget(plan, probe, steps)
    for name in BASELINES:
        try:
            resolved_shape(plan.trial_config(name, None, probe, steps))
        except UserError as exc:
            raise UserError(f"baseline {name} cannot meet the search's budget: {exc}") from None
    return resolved_shape(plan.trial_config(plan.reference, None, probe, steps))


def _check_space_meets_budget(plan: SearchPlan, probe: Path, steps: int) -> None:
    """A constant shape at the middle of the ranges must be solvable at every allowed frame;
    if a frame setting cannot be, no trial with it could run."""
    space = plan.space
    n_layers = plan.base().model.n_layers
    middle = [(low * high) ** 0.5 for low, high in (space.ffn_range, space.qkv_range)]
    for frame in space.frames:
        shape = Shape((middle[0],) * n_layers, (middle[1],) * n_layers, frame)
        try:
            resolved_shape(plan.trial_config(None, shape, probe, steps))
        except UserError as exc:
            hint = " (try --frame off)" if frame else ""
            raise UserError(
                f"the search space cannot meet the budget with frame={'on' if frame else 'off'}"
                f"{hint}: {exc}"
            ) from None
