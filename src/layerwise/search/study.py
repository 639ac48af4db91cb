"""The Optuna study: storage shared by workers, sampler, pruner, and the first trials.

By default the study lives in `DIR/study.journal`, an Optuna journal file: many processes on
one machine, or a SLURM array on a shared filesystem, append to it under a file lock, with no
database server. `--storage` takes an RDB URL (sqlite:///..., postgresql://...) instead, or
another journal file path. The search plan is saved in the study's user attributes, so a worker
started with other settings is refused instead of mixing two experiments in one study.

Setting the study up (saving the plan, enqueuing the five baselines, re-enqueuing interrupted
trials) happens under a lock file in DIR, so workers started together enqueue everything once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from layerwise.runs.lock import abandoned
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.space import baseline_params
from layerwise.util.errors import UserError

STUDY_NAME = "layerwise-search"
TRIALS_DIR = "trials"
JOURNAL_FILE = "study.journal"
PLAN_ATTR = "plan"
STARTS_ATTR = "starts"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
_SAMPLER_NEEDS = {"cmaes": "cmaes", "gp": "scipy"}


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


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The sampler; those that need an optional package say which, before the first trial."""
    module = _SAMPLER_NEEDS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        raise UserError(f"--sampler {name} needs the {module} package: pip install {module}")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
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
    plan: SearchPlan, out: Path, storage: str | None, sampler: str, seed: int | None, pruner: str
) -> optuna.Study:
    """Create or continue the study in the storage, its plan checked, its first trials queued."""
    out.mkdir(parents=True, exist_ok=True)
    store = open_storage(storage, out)
    with setup_lock(out):
        study = optuna.create_study(
            storage=store,
            study_name=STUDY_NAME,
            direction="minimize",
            sampler=make_sampler(sampler, seed),
            pruner=make_pruner(pruner, plan),
            load_if_exists=True,
        )
        check_same_plan(study, plan)
        study.sampler = make_sampler(sampler, start_seed(study, seed))
        if not study.trials:
            enqueue_baselines(study, plan)
        fail_abandoned(study, out)
        requeue_interrupted(study)
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


def enqueue_baselines(study: optuna.Study, plan: SearchPlan) -> None:
    """The study's five profiles, before any sampled shape."""
    n_layers = plan.base().model.n_layers
    for name in BASELINES:
        study.enqueue_trial(
            baseline_params(name, plan.space, n_layers),
            user_attrs={"source": name, "baseline": name},
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
