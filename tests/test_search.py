"""The sweep's decisions as pure functions: rungs, ASHA promotions, sampling, the budget."""

from __future__ import annotations

import math
import statistics
import time

import pytest

from mobitune.params import EarlyStopParams, Params
from mobitune.sweep.scheduler import Scheduler, Segment, promoted, rungs

LR_RANGE = "sweep.lr={low: 0.0001, high: 0.05, log: true}"


def params(*overrides: str) -> Params:
    """A grid over the lr axis (one batch size, one depth) unless ``overrides`` say otherwise."""
    return Params().override(["sweep.mode=grid", "sweep.batch_size=[192]", "sweep.trainable_layers=[10]", *overrides])


def asha(**keys: int) -> EarlyStopParams:
    return EarlyStopParams(method="asha", **keys)


def test_rungs_grow_by_the_reduction_below_the_full_run() -> None:
    assert rungs(9, asha()) == [1, 3]
    assert rungs(10, asha()) == [1, 3, 9]
    assert rungs(20, asha(min_epochs=2, reduction=2)) == [2, 4, 8, 16]
    assert rungs(3, asha(min_epochs=3)) == []
    assert rungs(9, EarlyStopParams(method="none")) == []


@pytest.mark.parametrize(
    ("accuracy", "earlier", "reduction", "expected"),
    [
        (0.5, [], 3, True),  # first to arrive: best so far
        (0.4, [0.5], 3, False),  # fewer than η arrived: only a new best continues
        (0.6, [0.5, 0.4], 3, True),
        (0.5, [0.5, 0.4], 3, False),  # a tie goes to the trial that arrived first
        (0.5, [0.7, 0.4, 0.6, 0.3, 0.2], 3, False),  # 6 arrived: top 2 are 0.7, 0.6
        (0.6, [0.7, 0.4, 0.5, 0.3, 0.2], 3, True),
        (0.3, [0.7, 0.4, 0.6], 2, False),  # η 2: top half
        (0.6, [0.7, 0.4, 0.3], 2, True),
        (math.nan, [], 3, False),  # diverged: never continues
        (0.1, [math.nan], 3, True),  # a diverged trial does not outrank a finite one
    ],
)
def test_a_trial_continues_only_in_the_top_share_of_its_rung(
    accuracy: float, earlier: list[float], reduction: int, expected: bool
) -> None:
    assert promoted(accuracy, earlier, reduction) is expected


def run_all(scheduler: Scheduler, accuracy_of: dict[str, list[float]]) -> list[str]:
    """Run segments one at a time (one device) with fixed per-epoch accuracies; the order segments ran."""
    order = []
    while (segment := scheduler.next_segment()) is not None:
        order.append(f"{segment.trial.trial_id}@{segment.until}")
        curve = accuracy_of[segment.trial.trial_id]
        scheduler.segment_done(segment, "ok", curve[: segment.until])
    return order


def test_asha_on_an_enumerated_sweep_stops_the_weak_and_resumes_the_promoted() -> None:
    scheduler = Scheduler.create(
        params("sweep.lr=[0.01,0.005,0.001,0.0005]", "sweep.finetune_epochs=9", "sweep.early_stop.method=asha")
    )
    ids = [spec.trial_id for spec in scheduler.planned]
    curves = {  # per finetune epoch; t1 is best at every rung, t3 beats t0 at rung 1
        ids[0]: [0.50, 0.55, 0.56, 0.57, 0.57, 0.58, 0.58, 0.58, 0.59],
        ids[1]: [0.60, 0.65, 0.70, 0.72, 0.74, 0.75, 0.76, 0.77, 0.78],
        ids[2]: [0.40] * 9,
        ids[3]: [0.55, 0.60, 0.62, 0.63, 0.64, 0.65, 0.66, 0.67, 0.68],
    }
    order = run_all(scheduler, curves)
    # rung 1: t0 (first), t1 (new best) continue; t2 (3 arrived, not top 1) stops; t3 (4 arrived, top 1 is t1) stops
    # rung 3: t0 arrives first and continues; t1 beats it and continues
    assert order == [f"{ids[0]}@1", f"{ids[0]}@3", f"{ids[0]}@9", f"{ids[1]}@1", f"{ids[1]}@3", f"{ids[1]}@9"] + [
        f"{ids[2]}@1",
        f"{ids[3]}@1",
    ]
    assert scheduler.stopped == {ids[2], ids[3]}
    assert scheduler.epochs_committed == 9 + 9 + 1 + 1
    summary = scheduler.summary()
    assert (summary["finetune_epochs_spent"], summary["finetune_epochs_full"]) == (20, 36)
    assert [(d["rung"], d["promoted"]) for d in summary["decisions"]] == [
        (1, True),
        (3, True),
        (1, True),
        (3, True),
        (1, False),
        (1, False),
    ]


def test_promotions_come_before_new_trials_and_resume_where_they_stopped() -> None:
    scheduler = Scheduler.create(
        params("sweep.lr=[0.01,0.001]", "sweep.finetune_epochs=3", "sweep.early_stop.method=asha")
    )
    first = scheduler.next_segment()
    assert first is not None and (first.until, first.first) == (1, True)
    scheduler.segment_done(first, "ok", [0.5])
    again = scheduler.next_segment()
    assert again == Segment(first.trial, 3, first=False), "the promoted trial continues to the full run first"


def test_a_diverged_or_failed_trial_ends_without_a_rung_decision() -> None:
    scheduler = Scheduler.create(
        params("sweep.lr=[0.01,0.001]", "sweep.finetune_epochs=3", "sweep.early_stop.method=asha")
    )
    first = scheduler.next_segment()
    scheduler.segment_done(first, "diverged", [math.nan])
    second = scheduler.next_segment()
    scheduler.segment_done(second, "failed", [])
    assert scheduler.next_segment() is None and scheduler.decisions == [] and scheduler.stopped == set()


def test_the_budget_stops_new_trials_but_not_promotions() -> None:
    scheduler = Scheduler.create(
        params(
            "sweep.lr=[0.01,0.005,0.001,0.0005]",
            "sweep.finetune_epochs=3",
            "sweep.early_stop.method=asha",
            "sweep.budget_epochs=2",
        )
    )
    ids = [spec.trial_id for spec in scheduler.planned]
    order = run_all(scheduler, {trial_id: [0.5, 0.6, 0.7] for trial_id in ids})
    assert order == [f"{ids[0]}@1", f"{ids[0]}@3"], "3 epochs committed after the promotion: no new trial"


def test_without_early_stopping_every_trial_runs_whole_once() -> None:
    scheduler = Scheduler.create(params("sweep.lr=[0.01,0.001]", "sweep.finetune_epochs=4"))
    ids = [spec.trial_id for spec in scheduler.planned]
    assert run_all(scheduler, {t: [0.5] * 4 for t in ids}) == [f"{ids[0]}@4", f"{ids[1]}@4"]
    assert scheduler.rungs == [] and scheduler.stopped == set()


def sampled(*overrides: str, curve=lambda lr: [0.9 - abs(math.log10(lr) + 2.5) / 5] * 3) -> list[dict]:
    scheduler = Scheduler.create(params("sweep.finetune_epochs=3", *overrides))
    while (segment := scheduler.next_segment()) is not None:
        scheduler.segment_done(segment, "ok", curve(segment.trial.varied["lr"])[: segment.until])
    return [{**spec.varied, "stopped": spec.trial_id in scheduler.stopped} for spec in scheduler.started]


def test_random_search_samples_distinct_values_in_the_range_and_asha_stops_some() -> None:
    trials = sampled("sweep.mode=random", "sweep.trials=6", LR_RANGE, "sweep.early_stop.method=asha")
    lrs = [t["lr"] for t in trials]
    assert len(set(lrs)) == 6 and all(0.0001 <= lr <= 0.05 for lr in lrs)
    assert any(t["stopped"] for t in trials)


@pytest.mark.parametrize("mode", ["random", "tpe"])
def test_a_search_with_a_fixed_seed_is_reproducible(mode: str) -> None:
    overrides = (f"sweep.mode={mode}", "sweep.trials=8", LR_RANGE, "sweep.batch_size=[64,128]", "sweep.search_seed=7")
    first, again = sampled(*overrides), sampled(*overrides)
    assert first == again
    assert sampled(*overrides[:-1], "sweep.search_seed=8") != first


def test_tpe_samples_nearer_the_best_lr_than_random_search() -> None:
    """Accuracy peaks at lr 10^-2.5: after its random start-up, TPE's samples sit nearer it than random ones."""

    def later_distance(mode: str, seed: int) -> float:
        trials = sampled(f"sweep.mode={mode}", "sweep.trials=20", LR_RANGE, f"sweep.search_seed={seed}")
        return statistics.median(abs(math.log10(t["lr"]) + 2.5) for t in trials[10:])

    seeds = range(4)
    assert sum(later_distance("tpe", s) for s in seeds) < sum(later_distance("random", s) for s in seeds)


def test_a_small_choice_space_runs_each_configuration_once() -> None:
    trials = sampled("sweep.mode=random", "sweep.trials=5", "sweep.lr=[0.01,0.001]")
    assert sorted(t["lr"] for t in trials) == [0.001, 0.01]


def test_importance_ranks_the_axis_that_decides_accuracy() -> None:
    scheduler = Scheduler.create(
        params("sweep.mode=random", "sweep.trials=12", LR_RANGE, "sweep.batch_size=[64,128]", "sweep.finetune_epochs=1")
    )
    while (segment := scheduler.next_segment()) is not None:
        scheduler.segment_done(segment, "ok", [0.9 - abs(math.log10(segment.trial.varied["lr"]) + 2.5) / 5])
    importance = scheduler.summary()["importance"]
    assert set(importance) == {"lr", "batch_size"}, "trainable_layers has one value: a setting, not an axis"
    assert max(importance, key=importance.get) == "lr"


def test_past_the_time_budget_nothing_starts_and_a_trial_that_never_ran_counts_as_not_started() -> None:
    scheduler = Scheduler.create(params("sweep.lr=[0.01,0.001]", "sweep.finetune_epochs=3", "sweep.time_budget_s=60"))
    scheduler.start_clock()
    waiting = scheduler.next_segment()  # its warmup still trains when the budget runs out
    scheduler.deadline = time.time() - 1
    assert scheduler.next_segment() is None
    scheduler.withdraw(waiting)
    summary = scheduler.summary()
    assert scheduler.started == [] and scheduler.epochs_committed == 0
    assert (summary["ended_by_time_budget"], summary["not_started"], summary["time_budget_s"]) == (True, 2, 60)


def test_a_sweep_without_a_time_budget_has_no_deadline() -> None:
    scheduler = Scheduler.create(params("sweep.lr=[0.01,0.001]"))
    scheduler.start_clock()
    assert scheduler.deadline is None and scheduler.next_segment() is not None
