"""What a sweep runs next: enumerated or sampled trials, asynchronous successive halving, budgets of epochs and
of time.

Pure decisions with no Prefect in them: the sweep flow asks
:meth:`Scheduler.next_segment` whenever it has a free slot, runs the segment
wherever its backend runs trials, and hands the outcome back to
:meth:`Scheduler.segment_done`. ``random`` and ``tpe`` sample configurations
with Optuna's samplers through its ask-and-tell interface; the study lives in
the sweep folder (a journal file), so workers need no database.

A trial runs in *segments*: with early stopping, it first trains to the first
rung; if it is promoted, its next segment resumes from its checkpoint in the
artifact store and trains to the next rung, and so on to ``finetune.epochs``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mobitune.params import EarlyStopParams, Params, SearchRange
from mobitune.storage.records import Status
from mobitune.sweep.plan import TrialSpec, expand, make_trial, swept_axes, trial_base

STUDY_FILE = "study.journal"
SAMPLE_ATTEMPTS = 100  # draws per new trial before a search space counts as exhausted


def rungs(epochs: int, early_stop: EarlyStopParams) -> list[int]:
    """Finetune epochs at which a trial is judged: ``min_epochs`` x ``reduction``^k, below ``epochs``."""
    if early_stop.method == "none":
        return []
    points = []
    rung = early_stop.min_epochs
    while rung < epochs:
        points.append(rung)
        rung *= early_stop.reduction
    return points


def promoted(accuracy: float, earlier: Sequence[float], reduction: int) -> bool:
    """ASHA's rule: does a trial with ``accuracy`` continue past a rung that ``earlier`` trials reached first?

    It continues if it ranks in the top ``n // reduction`` of the ``n`` trials
    that have reached the rung, itself included; until ``reduction`` trials
    have arrived, only a trial better than all before it continues (as in
    Optuna's SuccessiveHalvingPruner). Ties go to the trial that arrived first.
    """
    if math.isnan(accuracy):
        return False
    ahead = sum(other >= accuracy for other in earlier if not math.isnan(other))
    return ahead < max(1, (len(earlier) + 1) // reduction)


@dataclass(frozen=True)
class Segment:
    """Train ``trial`` until it has ``until`` finetune epochs (resuming from its checkpoint if it has some)."""

    trial: TrialSpec
    until: int
    first: bool  # the trial's first segment: a new trial rather than a promotion


@dataclass
class RungDecision:
    rung: int
    trial_id: str
    test_accuracy: float
    promoted: bool


@dataclass
class _InFlight:
    spec: TrialSpec
    optuna_trial: optuna.trial.Trial | None
    epochs: int = 0


def distribution(values: list[Any] | SearchRange) -> BaseDistribution:
    """The Optuna distribution of one axis: a list is a choice, a range a float or int interval."""
    if isinstance(values, SearchRange):
        if values.integer:
            return IntDistribution(int(values.low), int(values.high), log=values.log)
        return FloatDistribution(values.low, values.high, log=values.log)
    return CategoricalDistribution(values)


def make_sampler(params: Params) -> optuna.samplers.BaseSampler:
    """``random``, or ``tpe`` with a start-up of random trials sized to the sweep (Optuna's default 10 is too many
    for a 10-trial study); both seeded with ``sweep.search_seed``, so a search is reproducible."""
    spec = params.sweep
    if spec.mode == "random":
        return optuna.samplers.RandomSampler(seed=spec.search_seed)
    startup = min(10, max(2, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=spec.search_seed, n_startup_trials=startup, constant_liar=True)


def open_study(params: Params, folder: Path | None) -> optuna.Study:
    """The sweep's study, in ``folder/study.journal`` when given (a resumed sweep continues it), else in memory."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    if folder is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))
    return optuna.create_study(
        storage=storage,
        sampler=make_sampler(params),
        study_name="sweep",
        direction="maximize",
        load_if_exists=True,
    )


@dataclass
class Scheduler:
    """Decides which segment a sweep runs next and what becomes of a trial at each rung."""

    params: Params  # the trials' base: the sweep's epoch counts applied (see trial_base)
    study: optuna.Study | None = None  # random/tpe only
    planned: deque[TrialSpec] = field(default_factory=deque)  # enumerated trials not started yet
    started: list[TrialSpec] = field(default_factory=list)
    promotions: deque[Segment] = field(default_factory=deque)
    running: dict[str, _InFlight] = field(default_factory=dict)
    reached: dict[int, list[float]] = field(default_factory=dict)  # rung -> accuracies of the trials that got there
    decisions: list[RungDecision] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)
    accuracies: dict[str, list[float]] = field(default_factory=dict)  # trial -> test accuracy per finetune epoch
    epochs_committed: int = 0
    exhausted: bool = False
    deadline: float | None = None  # wall clock (time.time()) after which nothing starts: see start_clock
    out_of_time: bool = False  # the time budget ended the sweep

    @classmethod
    def create(cls, params: Params, folder: Path | None = None) -> Scheduler:
        base = trial_base(params)
        if params.sweep.searched:
            return cls(base, study=open_study(params, folder))
        return cls(base, planned=deque(expand(params)))

    @property
    def epochs(self) -> int:
        """Finetune epochs of a full trial."""
        return self.params.finetune.epochs

    @property
    def rungs(self) -> list[int]:
        return rungs(self.epochs, self.params.sweep.early_stop)

    def _next_stop(self, trained: int) -> int:
        return next((rung for rung in self.rungs if rung > trained), self.epochs)

    def start_clock(self) -> None:
        """Start ``sweep.time_budget_s``: from now on, past it, no trial or promotion starts, and the trials
        running stop after the epoch they are in (their requests carry :attr:`deadline`)."""
        if self.params.sweep.time_budget_s is not None:
            self.deadline = time.time() + self.params.sweep.time_budget_s

    def past_deadline(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            self.out_of_time = True
        return self.out_of_time

    def _over_budget(self) -> bool:
        budget = self.params.sweep.budget_epochs
        return budget is not None and self.epochs_committed >= budget

    def next_segment(self) -> Segment | None:
        """A promoted trial's next segment first, else a new trial (within the budget), else None; None for good
        once the time budget is spent."""
        if self.past_deadline():
            return None
        if self.promotions:
            return self._commit(self.promotions.popleft())
        if self._over_budget():
            return None
        spec = self._new_trial()
        if spec is None:
            return None
        return self._commit(Segment(spec, self._next_stop(0), first=True))

    def _commit(self, segment: Segment) -> Segment:
        self.epochs_committed += segment.until - self.running[segment.trial.trial_id].epochs
        return segment

    def withdraw(self, segment: Segment) -> None:
        """Take back a trial's first segment that never ran (it waited for its warmup when time ran out): the
        trial counts as not started."""
        state = self.running.pop(segment.trial.trial_id)
        self.started.remove(segment.trial)
        self.epochs_committed -= segment.until
        if state.optuna_trial is not None and self.study is not None:
            self.study.tell(state.optuna_trial, state=TrialState.FAIL)
        else:
            self.planned.appendleft(segment.trial)

    def not_started(self) -> int:
        """Trials the sweep planned (enumerated, or ``sweep.trials`` to sample) that it did not start."""
        if self.params.sweep.searched:
            return 0 if self.exhausted else max(0, self.params.sweep.trials - len(self.started))
        return len(self.planned)

    def _new_trial(self) -> TrialSpec | None:
        if not self.params.sweep.searched:
            if not self.planned:
                return None
            spec, optuna_trial = self.planned.popleft(), None
        else:
            sampled = self._sample()
            if sampled is None:
                return None
            spec, optuna_trial = sampled
        self.started.append(spec)
        self.running[spec.trial_id] = _InFlight(spec, optuna_trial)
        return spec

    def _sample(self) -> tuple[TrialSpec, optuna.trial.Trial] | None:
        """Ask the study for a configuration not run yet; None once ``sweep.trials`` ran or the space is used up."""
        assert self.study is not None
        if len(self.started) >= self.params.sweep.trials or self.exhausted:
            return None
        axes = swept_axes(self.params)
        seen = [spec.varied for spec in self.started]
        for _ in range(SAMPLE_ATTEMPTS):
            trial = self.study.ask({axis: distribution(values) for axis, values in axes.items()})
            point = {axis: trial.params[axis] for axis in axes}
            varied = {**point, "seed": self.params.sweep.seeds[0]}
            if varied not in seen:
                return make_trial(self.params, len(self.started), point, self.params.sweep.seeds[0]), trial
            self.study.tell(trial, state=TrialState.FAIL)  # a repeat: not run, and not evidence either way
        self.exhausted = True
        return None

    def segment_done(self, segment: Segment, status: str, test_accuracies: Sequence[float]) -> None:
        """Take a segment's outcome: ``status`` (ok, diverged, failed; stopped: the time budget ended it before
        ``segment.until``) and the test accuracy after each finetune epoch trained so far. Decides at a rung
        whether the trial continues."""
        state = self.running[segment.trial.trial_id]
        self.accuracies[segment.trial.trial_id] = list(test_accuracies)
        for epoch in range(state.epochs, len(test_accuracies)):
            if state.optuna_trial is not None and not math.isnan(test_accuracies[epoch]):
                state.optuna_trial.report(test_accuracies[epoch], epoch + 1)
        state.epochs = len(test_accuracies)
        # a resumed sweep replaying a trial that had gone further: the promotions it earned on the way count again
        for passed in (rung for rung in self.rungs if segment.until <= rung < state.epochs):
            self._decided(passed, segment.trial.trial_id, test_accuracies[passed - 1], promote=True)
        if status != Status.OK or state.epochs >= self.epochs or state.epochs < segment.until:
            self._finish(state, status, test_accuracies)
            return
        accuracy = test_accuracies[-1]
        promote = promoted(accuracy, self.reached.get(state.epochs, []), self.params.sweep.early_stop.reduction)
        self._decided(state.epochs, segment.trial.trial_id, accuracy, promote)
        if promote:
            self.promotions.append(Segment(segment.trial, self._next_stop(state.epochs), first=False))
        else:
            self.stopped.add(segment.trial.trial_id)
            self._finish(state, Status.STOPPED, test_accuracies)

    def _decided(self, rung: int, trial_id: str, accuracy: float, promote: bool) -> None:
        self.reached.setdefault(rung, []).append(accuracy)
        self.decisions.append(RungDecision(rung, trial_id, accuracy, promote))

    def _finish(self, state: _InFlight, status: str, test_accuracies: Sequence[float]) -> None:
        del self.running[state.spec.trial_id]
        if state.optuna_trial is None or self.study is None:
            return
        if status == Status.OK:
            self.study.tell(state.optuna_trial, test_accuracies[-1])
        elif status == Status.STOPPED:
            self.study.tell(state.optuna_trial, state=TrialState.PRUNED)
        elif status == Status.DIVERGED:
            self.study.tell(state.optuna_trial, 0.0)  # evidence against its region, unlike a failure
        else:
            self.study.tell(state.optuna_trial, state=TrialState.FAIL)

    def summary(self) -> dict[str, Any]:
        """What ``search.json`` records: rungs, every decision, epochs spent against full runs, axis importance."""
        judged_at = (self.rungs or [self.epochs])[0]
        reached = {
            trial_id: values[judged_at - 1] for trial_id, values in self.accuracies.items() if len(values) >= judged_at
        }
        spent = sum(len(values) for values in self.accuracies.values())
        return {
            "mode": self.params.sweep.mode,
            "early_stop": self.params.sweep.early_stop.model_dump(),
            "budget_epochs": self.params.sweep.budget_epochs,
            "time_budget_s": self.params.sweep.time_budget_s,
            "ended_by_time_budget": self.out_of_time,
            "started": len(self.started),
            "not_started": self.not_started(),
            "full_epochs": self.epochs,
            "rungs": self.rungs,
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
            "finetune_epochs_spent": spent,
            "finetune_epochs_full": self.epochs * len(self.started),
            "importance_at_epoch": judged_at,
            "importance": axis_importance(self.params, self.started, reached) if self.params.sweep.searched else {},
        }


def axis_importance(params: Params, trials: Sequence[TrialSpec], accuracy: dict[str, float]) -> dict[str, float]:
    """Optuna's importance (PED-ANOVA) of each axis for the test accuracy every trial reached.

    With early stopping that is the accuracy at the first rung, the one epoch
    count all trials share; without, the final accuracy. Empty when fewer than
    two trials have one, or with a single axis (its importance is 1 by definition).
    """
    axes = swept_axes(params)
    points = [(spec, accuracy.get(spec.trial_id, math.nan)) for spec in trials]
    points = [(spec, value) for spec, value in points if not math.isnan(value)]
    if len(points) < 2 or len(axes) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {axis: distribution(values) for axis, values in axes.items()}
    for spec, value in points:
        point = {axis: spec.varied[axis] for axis in axes}
        study.add_trial(optuna.trial.create_trial(params=point, distributions=distributions, value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
