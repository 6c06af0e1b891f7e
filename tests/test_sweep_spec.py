"""Sweep expansion rules (pure functions, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobitune.params import Params, ParamsError
from mobitune.sweep.plan import expand, fixed_axes, new_sweep_id, swept_axes, warmup_key


def test_the_report_study_runs_the_base_config_once() -> None:
    trials = expand(Params())
    assert len(trials) == 6 + 4 + 3 - 2  # the base (lr 0.005, batch 192, 10 blocks) sits on all three axes
    configs = [(t.params.lr, t.params.batch_size, t.params.trainable_layers) for t in trials]
    assert len(set(configs)) == len(configs)
    assert configs.count((0.005, 192, 10)) == 1
    assert len({t.trial_id for t in trials}) == len(trials)
    assert len({warmup_key(t.params) for t in trials}) == 1, "finetune-only axes share one warmup"


def test_grid_seeds_and_epochs() -> None:
    params = Params().override(
        [
            "sweep.mode=grid",
            "sweep.lr=[0.01,0.001]",
            "sweep.batch_size=[32,64,128]",
            "sweep.trainable_layers=[10]",
            "sweep.seeds=[0,1]",
            "sweep.warmup_epochs=1",
            "sweep.finetune_epochs=2",
        ]
    )
    trials = expand(params)
    assert len(trials) == 2 * 3 * 2
    assert {(t.params.warmup.epochs, t.params.finetune.epochs) for t in trials} == {(1, 2)}
    assert {t.params.seed for t in trials} == {0, 1}
    assert len({warmup_key(t.params) for t in trials}) == 2, "one warmup per seed"


def test_any_dotted_key_can_be_swept() -> None:
    params = Params().override(
        ["sweep.lr=[0.005]", "sweep.warmup.lr=[0.001,0.01]", "sweep.model.unfreeze_from=[first,last]"]
    )
    trials = expand(params)
    assert {t.params.warmup.lr for t in trials} == {0.001, 0.01}
    assert {t.params.model.unfreeze_from for t in trials} == {"first", "last"}
    assert len({warmup_key(t.params) for t in trials}) == 2


def test_an_axis_of_one_value_is_a_setting_every_trial_takes_not_an_axis() -> None:
    """`--set sweep.lr=[0.05,0.005] --set sweep.batch_size=[128]`: two trials, both at batch size 128, named by
    their lr alone; the one-value axes are neither swept nor named."""
    params = Params().override(["sweep.lr=[0.05,0.005]", "sweep.batch_size=[128]", "sweep.trainable_layers=[10]"])
    assert list(swept_axes(params)) == ["lr"] and fixed_axes(params) == {"batch_size": 128, "trainable_layers": 10}
    for mode in ("one-at-a-time", "grid"):
        trials = expand(params.override([f"sweep.mode={mode}"]))
        assert [t.trial_id for t in trials] == ["t000-lr=0.05-s0", "t001-base-s0"], mode
        assert {t.params.batch_size for t in trials} == {128} and [t.varied for t in trials][0] == {
            "lr": 0.05,
            "seed": 0,
        }
    alone = Params().override(
        ["sweep.lr=[0.002]", "sweep.batch_size=[64]", "sweep.trainable_layers=[5]", "sweep.seeds=[0,1]"]
    )
    assert [(t.trial_id, t.params.lr, t.params.batch_size) for t in expand(alone)] == [
        ("t000-base-s0", 0.002, 64),
        ("t001-base-s1", 0.002, 64),
    ], "no axis of two values: the base config (with the one-value settings) once per seed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sweep={}"], "sweep: nothing to sweep; give at least one axis"),
        (["sweep.seeds=[]", "sweep.lr=[0.1]"], "sweep.seeds: expected at least one seed"),
        (["sweep.lr=[]"], "sweep.lr: expected a non-empty list of values"),
        (["sweep.batch_size=[32, -1]"], "sweep.batch_size[1]: must be at least 1, got -1"),
        (["sweep.device=[cpu]"], "unknown key 'sweep.device'"),
    ],
)
def test_invalid_specs_fail_before_anything_runs(overrides: list[str], message: str) -> None:
    with pytest.raises(ParamsError) as caught:
        expand(Params().override(overrides))
    assert message in str(caught.value)


def test_sweep_ids_are_unique() -> None:
    assert len({new_sweep_id() for _ in range(200)}) == 200


def test_local_backend_gives_one_slot_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mobitune.orchestration import local_runner
    from mobitune.orchestration.local_runner import local_devices

    assert local_devices(Params().override(["device=cpu"]), None) == ["cpu"]
    assert local_devices(Params().override(["device=cpu"]), 3) == ["cpu"] * 3
    monkeypatch.setattr(local_runner, "GPU_DEVICE_NODES", ())
    assert local_devices(Params(), 2) == ["cpu", "cpu"], "auto, and no GPU device node: the CPU"
    monkeypatch.setattr(local_runner, "no_gpu_possible", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    assert local_devices(Params(), None) == ["cuda:0", "cuda:1"]
    assert local_devices(Params(), 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert local_devices(Params().override(["device=cuda:1"]), None) == ["cuda:1"]


def test_a_local_sweep_that_would_overpack_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """--parallel 4 on one GPU: four small trials fit in its free memory, four at 224 px do not, and the
    largest trial of the sweep is the one that counts."""
    import torch

    from mobitune.orchestration import local_runner
    from mobitune.training.memory import GIB, DeviceMemoryError

    monkeypatch.setattr(local_runner, "no_gpu_possible", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    small, big = Params().override(["model.image_size=64"]), Params().override(["model.image_size=224"])
    assert local_runner.local_devices(small, 4) == ["cuda:0"] * 4
    refused = r"cuda:0: 4 trial\(s\) of about [\d.]+ GiB each need [\d.]+ GiB, 20.0 GiB is free there; 1 fit at once"
    with pytest.raises(DeviceMemoryError, match=refused + r"\. Run fewer trials per device \(--parallel"):
        local_runner.local_devices(big, 4)
    with pytest.raises(DeviceMemoryError, match=refused):
        local_runner.local_devices(small, 4, [small, big])


def test_result_cache_keys_cover_config_epochs_data_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobitune.sweep import trial_setup as trial

    params = Params()
    key = trial.result_cache_key(params, None, "data-a")
    assert key == trial.result_cache_key(params, 5, "data-a"), "until the last epoch is the whole run"
    assert key == trial.result_cache_key(
        params.override(["sweep.lr=[0.1]", "storage.uri=s3://bucket/p"]), None, "data-a"
    )
    others = {
        trial.result_cache_key(params.override(["lr=0.001"]), None, "data-a"),
        trial.result_cache_key(params, 1, "data-a"),
        trial.result_cache_key(params, None, "data-b"),
    }
    assert key not in others and len(others) == 3
    warmup = trial.warmup_cache_key("abc", "data-a")
    assert warmup != trial.warmup_cache_key("abc", "data-b")
    monkeypatch.setattr(trial, "code_fingerprint", lambda module: "other code")
    assert trial.result_cache_key(params, None, "data-a") != key and trial.warmup_cache_key("abc", "data-a") != warmup


def test_the_dry_run_plans_the_sweeps_own_trials_and_finds_those_the_cache_holds(tmp_path: Path) -> None:
    """The plan is the scheduler's (same ids, same count as the sweep's first log line); a trial whose result and a
    warmup whose checkpoint are in the store are marked cached, and only the rest counts as epochs to train."""
    from mobitune.storage.stores import LocalStore
    from mobitune.sweep.preview import plan_headline, plan_sweep, plan_text
    from mobitune.sweep.scheduler import Scheduler
    from mobitune.sweep.trial_setup import prepared_path, result_cache_key, warmup_cache_key

    params = Params().override(["sweep.lr=[0.05,0.005,0.001]", "sweep.batch_size=[192]", "sweep.trainable_layers=[10]"])
    unknown = plan_sweep(params, tmp_path, "local", use_cache=True)
    assert [t.cached for t in unknown.trials] == [None] * 3, "no prepared data here: its content is not known"
    assert "cache: the data is not prepared on this machine yet" in plan_text(unknown)
    (prepared := prepared_path(params.data, tmp_path)).mkdir(parents=True)
    (prepared / "meta.json").write_text('{"sha256": "the-data"}')
    planned = list(Scheduler.create(params).planned)
    store = LocalStore(tmp_path)
    store.put_bytes(warmup_cache_key(warmup_key(planned[1].params), "the-data"), b"checkpoint")
    for name in ("metrics.json", "history.csv"):
        store.put_bytes(f"{result_cache_key(planned[1].params, None, 'the-data')}/{name}", b"{}")

    plan = plan_sweep(params, tmp_path, "local", use_cache=True)
    assert (
        [t.trial_id for t in plan.trials]
        == [t.trial_id for t in planned]
        == [
            "t000-lr=0.05-s0",
            "t001-base-s0",
            "t002-lr=0.001-s0",
        ]
    )
    assert [t.cached for t in plan.trials] == [False, True, False] and list(plan.warmups.values()) == [True]
    text = plan_text(plan).splitlines()
    assert text[0].startswith(f"dry run: {plan_headline(Scheduler.create(params))}; nothing trains")
    assert plan_headline(Scheduler.create(params)) == "3 trials (one-at-a-time over lr; seeds [0])"
    assert "every trial: batch_size=192, trainable_layers=10 (an axis of one value is a setting, not swept)" in text
    assert [line.split() for line in text if line.startswith("t00")] == [
        ["t000-lr=0.05-s0", "0.05", "0", "5", "trains"],
        ["t001-base-s0", "0.005", "0", "5", "cached"],
        ["t002-lr=0.001-s0", "0.001", "0", "5", "trains"],
    ]
    assert (
        "to train: 0 of 1 shared warmup(s) (0 epochs) and 2 of 3 trial(s) (10 finetune epochs); "
        "1 answered from the cache" in text
    )
    forced = plan_sweep(params, tmp_path, "local", use_cache=False)
    assert [t.cached for t in forced.trials] == [False] * 3 and list(forced.warmups.values()) == [False]
