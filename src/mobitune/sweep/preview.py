"""A sweep's plan before anything trains (``mobitune sweep --dry-run``): its mode and axes, each trial with its
swept values and seed, the epochs they will spend, and which trials and shared warmups the store already holds.

The :class:`~mobitune.sweep.scheduler.Scheduler` the sweep runs enumerates the trials, so the plan is the sweep's,
and the sweep's first log line counts them with the same :func:`plan_headline`. No Prefect, no torch, no
training and no download: the store is only listed, and the data's content (part of every cache key) is known
only where an earlier run prepared it on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.params import Params, SearchRange, get_dotted
from mobitune.storage.stores import open_store
from mobitune.sweep.plan import fixed_axes, swept_axes, warmup_key
from mobitune.sweep.run import SweepRun
from mobitune.sweep.scheduler import Scheduler
from mobitune.sweep.trial_setup import data_digest, prepared_path, result_cache_key, warmup_cache_key


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str
    values: dict[str, Any]  # the swept axes' values of this trial
    seed: int
    finetune_epochs: int  # with early stopping: the most it trains
    warmup: str  # its shared warmup's key
    cached: bool | None  # its result is in the store (the sweep trains nothing for it); None: not known here


@dataclass(frozen=True)
class SweepPlan:
    scheduler: Scheduler  # the sweep's own, before it started anything
    trials: list[PlannedTrial]  # the enumerated trials, in the order they start; none for a sampled sweep
    warmups: dict[str, bool | None]  # each shared warmup's key: stored in the store, or None (not known here)
    warmup_epochs: int
    unknown_why: str | None  # why the cache could not be looked up, if it could not


def plan_headline(scheduler: Scheduler) -> str:
    """``4 trials (one-at-a-time over lr, batch_size; seeds [0])``: what the dry run and the sweep's first log
    line both say."""
    params = scheduler.params
    spec = params.sweep
    count = (
        f"up to {spec.trials} sampled trials"
        if scheduler.study is not None
        else f"{len(scheduler.planned)} trial{'s' if len(scheduler.planned) != 1 else ''}"
    )
    axes = ", ".join(swept_axes(params)) or "no axis: the base config"
    return f"{count} ({spec.mode} over {axes}; seeds {spec.seeds})"


def plan_sweep(params: Params, local_root: Path, backend: str, use_cache: bool) -> SweepPlan:
    """The sweep ``params`` would run from ``local_root`` on ``backend``, with the store's answers for its trials
    and warmups (all to be trained when ``use_cache`` is False)."""
    scheduler = Scheduler.create(params)
    root = Path(local_root).resolve()
    first_until = (scheduler.rungs or [scheduler.epochs])[0]
    store = open_store(SweepRun.trial_store_uri(params, backend), root)  # no outage ride-out: a dry run asks once
    unknown_why = None if use_cache else "--no-cache: every trial and warmup trains"
    try:
        stored = set(store.modified_times("cache/trials")) | set(store.modified_times("cache/warmup"))
    except MobituneError as exc:
        stored, unknown_why = set(), f"the store did not answer ({exc})"
    trials, warmups = [], {}
    for spec in scheduler.planned:
        data = _data_digest(spec.params, root)
        known = use_cache and unknown_why is None and data is not None
        if data is None and unknown_why is None:
            unknown_why = "the data is not prepared on this machine yet (the first trial decodes it)"
        key = warmup_key(spec.params)
        warmups.setdefault(key, (warmup_cache_key(key, data) in stored) if known else _unknown(use_cache))
        result = result_cache_key(spec.params, first_until, data or "")
        cached = {f"{result}/metrics.json", f"{result}/history.csv"} <= stored if known else _unknown(use_cache)
        raw = spec.params.to_dict()
        values = {axis: get_dotted(raw, axis) for axis in swept_axes(params)}
        trials.append(PlannedTrial(spec.trial_id, values, spec.params.seed, spec.params.finetune.epochs, key, cached))
    return SweepPlan(scheduler, trials, warmups, scheduler.params.warmup.epochs, unknown_why)


def _unknown(use_cache: bool) -> bool | None:
    """Without the cache a trial is known to train (False); with it and no answer, not known (None)."""
    return None if use_cache else False


def _data_digest(params: Params, root: Path) -> str | None:
    prepared = prepared_path(params.data, root)
    return data_digest(prepared) if (prepared / "meta.json").exists() else None


def _axis_text(values: list[Any] | SearchRange) -> str:
    if isinstance(values, SearchRange):
        return f"{values.low:g}..{values.high:g}{' (log)' if values.log else ''}"
    return "[" + ", ".join(str(value) for value in values) + "]"


def plan_text(plan: SweepPlan) -> str:
    """The plan as ``mobitune sweep --dry-run`` prints it."""
    scheduler = plan.scheduler
    params = scheduler.params
    spec = params.sweep
    lines = [f"dry run: {plan_headline(scheduler)}; nothing trains and Prefect is not started"]
    lines += [f"  {axis}: {_axis_text(values)}" for axis, values in swept_axes(params).items()]
    if fixed := fixed_axes(params):
        settings = ", ".join(f"{key}={value}" for key, value in fixed.items())
        lines.append(f"every trial: {settings} (an axis of one value is a setting, not swept)")
    early = spec.early_stop
    per_trial = f"{scheduler.epochs} finetune epochs"
    if early.method != "none":
        per_trial = f"at most {per_trial} (early stopping {early.method} at rungs {scheduler.rungs})"
    lines.append(f"each trial: a shared warmup of {plan.warmup_epochs} epochs, then {per_trial}")
    if scheduler.study is not None:
        lines.append(
            f"trials are sampled as the sweep runs (search_seed {spec.search_seed}), each looked up in the cache then"
        )
    else:
        lines += ["", *_table(plan)]
    lines += ["", *_spend(plan)]
    if spec.budget_epochs is not None:
        lines.append(f"sweep.budget_epochs {spec.budget_epochs}: no new trial starts once that many are committed")
    if spec.time_budget_s is not None:
        lines.append(
            f"sweep.time_budget_s {spec.time_budget_s:g}: nothing starts after it; running trials stop after an epoch"
        )
    return "\n".join(lines)


def _mark(cached: bool | None) -> str:
    return {True: "cached", False: "trains", None: "?"}[cached]


def _table(plan: SweepPlan) -> list[str]:
    axes = list(swept_axes(plan.scheduler.params))
    header = ["trial", *axes, "seed", "finetune epochs", "cache"]
    rows = [
        [t.trial_id, *(str(t.values[axis]) for axis in axes), str(t.seed), str(t.finetune_epochs), _mark(t.cached)]
        for t in plan.trials
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _spend(plan: SweepPlan) -> list[str]:
    """What the sweep will train: the warmups and trials the store does not hold, in epochs."""
    if plan.scheduler.study is not None:
        trials = plan.scheduler.params.sweep.trials
        return [f"to train: at most {trials * plan.scheduler.epochs} finetune epochs ({trials} trials), and warmups"]
    warmups = [stored for stored in plan.warmups.values() if stored is not True]
    trials = [t for t in plan.trials if t.cached is not True]
    finetune = sum(t.finetune_epochs for t in trials)
    cached = len(plan.trials) - len(trials)
    at_most = "at most " if plan.scheduler.rungs else ""
    line = (
        f"to train: {len(warmups)} of {len(plan.warmups)} shared warmup(s) ({len(warmups) * plan.warmup_epochs} "
        f"epochs) and {len(trials)} of {len(plan.trials)} trial(s) ({at_most}{finetune} finetune epochs)"
    )
    line += f"; {cached} answered from the cache" if cached else ""
    lines = [line]
    if plan.unknown_why:
        unknown = any(t.cached is None for t in plan.trials)
        lines.append(f"cache: {plan.unknown_why}" + ("; its trials counted as training" if unknown else ""))
    return lines
