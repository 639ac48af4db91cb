"""The Optuna study: storage shared by workers, sampler, pruner, and the first trials.

By default the study lives in `DIR/study.journal`, an Optuna journal file: many processes on
one machine, or a SLURM array on a shared filesystem, append to it under a file lock, with no
database server. `--storage` takes an RDB URL (sqlite:///..., postgresql://...) instead, or
another journal file path. The search plan is saved in the study's user attributes, so a worker
started with other settings is refused instead of mixing two experiments in one study; so is
one started with another sampler, since CMA-ES and NSGA-II keep their state in the study.

Setting the study up (saving the plan, enqueuing the five baselines, re-enqueuing interrupted
trials) happens under a lock file in DIR, so workers started together enqueue everything once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from layerwise.profiles.shapefile import read_shape_file
from layerwise.runs.lock import abandoned
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.space import SearchSpace, anchor_params, baseline_params
from layerwise.util.errors import UserError

STUDY_NAME = "layerwise-search"
TRIALS_DIR = "trials"
JOURNAL_FILE = "study.journal"
PLAN_ATTR = "plan"
STARTS_ATTR = "starts"
SAMPLER_ATTR = "sampler"
DEFAULT_SAMPLER = "tpe"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
_SAMPLER_NEEDS = {"cmaes": ("cmaes", "'layerwise[search]'"), "gp": ("scipy", "scipy")}
"""Sampler: (the module it needs beyond Optuna, what to install for it)."""


def open_storage(storage: str | None, out: Path) -> BaseStorage:
    """The journal file in OUT, another journal file, or an RDB URL; unreachable: a UserError."""
    if storage is not None and "://" in storage:
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    storage,
                    heartbeat_interval=60,
                    grace_period=300,
                    heartbeat_stale_trial_callback=lambda study, trial: requeue_interrupted(study),
                )
        except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use it"
            raise UserError(
                f"--storage {storage}: cannot open the database ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); check the URL, that the server is reachable and "
                "that its driver is installed"
            ) from None
    path = Path(storage) if storage is not None else out / JOURNAL_FILE
    if path.is_dir():
        raise UserError(
            f"--storage {path} is a directory; give a journal file, e.g. {path / JOURNAL_FILE}"
        )
    if not path.parent.is_dir():
        raise UserError(
            f"--storage {path}: directory {path.parent} does not exist or is unreachable; "
            "give a journal file on a (shared) filesystem every worker can write"
        )
    check_journal(path)
    try:
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)  # reads the whole journal back
    except OSError as exc:
        raise UserError(
            f"--storage {path}: cannot open the journal file ({exc.strerror})"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # json, utf-8, log entries
        raise UserError(
            f"--storage {path}: the journal is damaged ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unexpected content'}); it was left as "
            "it is: restore it from a copy, or start a new study with another --storage"
        ) from None


def check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal before Optuna appends to it: an existing,
    non-empty journal starts with a whole line holding one of its JSON operations."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as exc:
        raise UserError(
            f"--storage {path}: cannot read the journal file ({exc.strerror})"
        ) from None
    try:
        entry = json.loads(first)
    except ValueError:  # not JSON, or not text
        entry = None
    if not first.endswith(b"\n") or not isinstance(entry, dict) or "op_code" not in entry:
        raise UserError(
            f"--storage {path} is not an Optuna journal file (its first line is no journal "
            f"entry); it was left as it is: give the {JOURNAL_FILE} of a search, a new file "
            "name, or an RDB URL"
        )


def check_sampler(name: str, pruner: str, plan: SearchPlan) -> None:
    """Refuse, before the study is opened, a sampler whose package is missing, or one that
    could not learn under the pruner.

    NSGA-II breeds a generation from complete trials only, and successive halving completes
    only trials in the top 1/eta at every rung so far: on a synthetic loss, 5 of 16 searches
    of 100 trials never left NSGA-II's random first generation (7 to 59 trials completed).
    Hyperband is accepted: some of its brackets never prune (over 40 of 100 completed).
    (benchmarks/bench_samplers.py)
    """
    needs = _SAMPLER_NEEDS.get(name)
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        raise UserError(f"--sampler {name} needs the {needs[0]} package: pip install {needs[1]}")
    if name == "nsga2" and pruner == "sha" and len(plan.rung_steps()) > 1:
        raise UserError(
            "--sampler nsga2 with --pruner sha: NSGA-II breeds each generation from complete "
            f"trials only, and successive halving completes only trials in the top 1/{plan.eta} "
            f"at every rung, so a generation of {population_size(plan.space)} can wait for many "
            "trials and the search may never leave its random first one; give nsga2 --pruner "
            "hyperband (some of its brackets never prune) or --pruner none, or use --sampler "
            "cmaes, which ranks a pruned trial by its last rung's loss"
        )


def population_size(space: SearchSpace) -> int:
    """CMA-ES's default population for the space's parameters, 4 + floor(3 ln d) (Hansen's
    rule), given to NSGA-II as well: Optuna's default of 50 would keep a search of a few dozen
    trials in NSGA-II's random first generation."""
    dimensions = 2 * space.anchors + (len(space.frames) > 1)
    return 4 + math.floor(3 * math.log(dimensions))


def independent_note(name: str, space: SearchSpace) -> str | None:
    """What the sampler cannot learn in this space, said once per start: CMA-ES models floats
    only, so a searched frame (a yes/no choice) is drawn at random for every trial."""
    if name != "cmaes" or len(space.frames) == 1:
        return None
    return (
        f"--sampler cmaes adapts the {2 * space.anchors} anchors but cannot model the frame "
        "choice (--frame search): each trial's frame is drawn at random, whatever the losses "
        "say; give --frame on or --frame off to search the anchors alone"
    )


def make_sampler(name: str, seed: int | None, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler (its package checked by `check_sampler`)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "cmaes":
        with warnings.catch_warnings():  # consider_pruned_trials is "experimental" since 2.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a pruned trial counts with its last rung's loss, a shorter run's, so it normally
            # ranks below every complete trial; counting complete trials only, a generation
            # would wait for the few trials the pruner lets complete
            return optuna.samplers.CmaEsSampler(
                seed=seed, consider_pruned_trials=True, warn_independent_sampling=False
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size(space), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, plan: SearchPlan) -> optuna.pruners.BasePruner:
    """Successive halving or Hyperband over the rungs (resources are training steps)."""
    steps = plan.rung_steps()
    if name == "none" or len(steps) == 1:
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=steps[0], max_resource=steps[-1], reduction_factor=plan.eta
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=steps[0], reduction_factor=plan.eta, min_early_stopping_rate=0
    )


@contextlib.contextmanager
def setup_lock(out: Path) -> Iterator[None]:
    """One worker at a time sets the study up (a lock file, safe on NFS like the journal's)."""
    lock = JournalFileOpenLock(str(out / "setup.lock"))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def open_study(
    plan: SearchPlan,
    out: Path,
    storage: str | None,
    sampler: str | None,
    seed: int | None,
    pruner: str,
    start_from: Sequence[str] = (),
) -> optuna.Study:
    """Create or continue the study in the storage, its plan and sampler checked, its first
    trials queued: the baselines, then the shape files in `start_from`. `sampler` None
    continues with the study's own (tpe for a new study)."""
    if sampler is not None:
        check_sampler(sampler, pruner, plan)  # before a new study's files are written
    out.mkdir(parents=True, exist_ok=True)
    store = open_storage(storage, out)
    with setup_lock(out):
        study = optuna.create_study(
            storage=store,
            study_name=STUDY_NAME,
            direction="minimize",
            pruner=make_pruner(pruner, plan),
            load_if_exists=True,
        )
        check_same_plan(study, plan)
        name = study_sampler(study, sampler)
        check_sampler(name, pruner, plan)
        study.sampler = make_sampler(name, start_seed(study, seed), plan.space)
        if not study.trials:
            enqueue_baselines(study, plan)
        enqueue_shape_files(study, plan, start_from)
        fail_abandoned(study, out)
        requeue_interrupted(study)
    note = independent_note(name, plan.space)
    if note is not None:
        print(f"layerwise: warning: {note}", file=sys.stderr)
    return study


def start_seed(study: optuna.Study, seed: int | None) -> int | None:
    """The sampler's seed for this start of the study: `seed` itself the first time, then one
    derived from (seed, how many starts came before). A continued study reseeded with `seed`
    alone would draw the same proposals again and spend its trials on shapes it has trained;
    each worker of a parallel search, started in turn under the setup lock, differs too."""
    starts = int(study.user_attrs.get(STARTS_ATTR, 0))
    study.set_user_attr(STARTS_ATTR, starts + 1)
    if seed is None or starts == 0:
        return seed
    return int(np.random.SeedSequence([seed, starts]).generate_state(1)[0])


def fail_abandoned(study: optuna.Study, out: Path) -> None:
    """Fail the RUNNING trials whose worker is gone, so `requeue_interrupted` queues them again
    with their finished rungs. With journal storage nothing else ever ends such a trial: a
    worker killed with SIGKILL (or a node lost) leaves it RUNNING for good. A trial's worker
    holds the trial's directory lock across all its rungs, so a lock left behind by a dead
    holder is the sign; a trial still running, anywhere, keeps its lock fresh."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = abandoned(trial_dir(out, origin(trial)))
        if reason is None:
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        print(
            f"layerwise: trial {trial.number} was left running ({reason}); "
            "it is queued again and keeps its finished rungs",
            file=sys.stderr,
        )


def check_same_plan(study: optuna.Study, plan: SearchPlan) -> None:
    saved = study.user_attrs.get(PLAN_ATTR)
    wanted = plan.to_dict()
    if saved is None:
        study.set_user_attr(PLAN_ATTR, wanted)
        return
    differences = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]
    if differences:
        raise UserError(
            f"the study in this storage was started with other settings ({'; '.join(differences)});"
            " a study holds one experiment: rerun with its settings, or use a new --out/--storage"
        )


def study_sampler(study: optuna.Study, sampler: str | None) -> str:
    """The study's sampler, saved when it is created: `sampler` if given, else the saved one,
    else tpe. One sampler per study, since CMA-ES and NSGA-II keep their state (distribution,
    generations) in the study and learn from the trials they drew themselves: another
    sampler's trials would be lost on them, and their half-bred generations on it. (A study
    begun before the sampler was saved takes the first one it is started with.)"""
    saved = study.user_attrs.get(SAMPLER_ATTR)
    if saved is None:
        saved = sampler or DEFAULT_SAMPLER
        study.set_user_attr(SAMPLER_ATTR, saved)
    elif sampler is not None and sampler != saved:
        raise UserError(
            f"--sampler {sampler}: the study in this storage was started with --sampler {saved}, "
            "and a study keeps one sampler (CMA-ES and NSGA-II keep their state in the study "
            f"and learn from their own trials only): rerun with --sampler {saved} or without "
            "--sampler, or use a new --out/--storage"
        )
    return str(saved)


def enqueue_baselines(study: optuna.Study, plan: SearchPlan) -> None:
    """The study's five profiles, before any sampled shape."""
    n_layers = plan.base().model.n_layers
    for name in BASELINES:
        study.enqueue_trial(
            baseline_params(name, plan.space, n_layers),
            user_attrs={"source": name, "baseline": name},
            skip_if_exists=False,
        )


def enqueue_shape_files(study: optuna.Study, plan: SearchPlan, paths: Sequence[str]) -> None:
    """Shape files (a learned shape) as the first sampled trials: the sampler starts from
    them, and each is judged at the search's own fidelity. A file already queued is not
    queued again when the study continues."""
    n_layers = plan.base().model.n_layers
    queued = {t.user_attrs.get("source") for t in study.get_trials(deepcopy=False)}
    for path in paths:
        shape = read_shape_file(path)
        source = f"shape file {shape.name}"
        if source in queued:
            continue
        study.enqueue_trial(
            anchor_params(shape.ffn, shape.qkv, False, plan.space, n_layers),
            user_attrs={"source": source},
            skip_if_exists=False,
        )


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS_DIR / f"trial-{number:04d}"


def origin(trial: FrozenTrial) -> int:
    """The trial whose run directory this one continues (itself unless it resumes one)."""
    return int(trial.user_attrs.get("resume_of", trial.number))


def requeue_interrupted(study: optuna.Study) -> None:
    """Queue again every interrupted trial that nothing continues yet, with its parameters and
    source: the new trial resumes the interrupted one's run directory and rungs, so no trial is
    lost and no finished work is repeated.

    Interrupted means failed without an `error` attribute: stopped by a signal, or (with an RDB
    storage's heartbeat) a worker that died; a trial that raised an error is not retried.
    """
    trials = study.get_trials(deepcopy=False)
    taken = {origin(t) for t in trials if t.state != TrialState.FAIL}
    for trial in trials:
        if trial.state != TrialState.FAIL or "error" in trial.user_attrs or not trial.params:
            continue
        if origin(trial) in taken:
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("source", "baseline")}
        attrs["resume_of"] = origin(trial)
        attrs["resumed_rungs"] = [[int(s), float(v)] for s, v in trial.intermediate_values.items()]
        study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
        taken.add(origin(trial))


def done_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))
