"""A sweep's decisions, fast: :class:`SweepRun` over a fake :class:`Runner` whose trials finish at once.

The fake stores the result files a real trial stores (through the same functions), with a test accuracy
that a rule of the params decides, so ordering, warmup sharing, ASHA promotions, failures and a resumed
sweep's replay are checked without Prefect, torch or a subprocess. The real runners are tested end to end in
test_sweep_flows.py; real trials in this process (failed and diverged ones) at the end.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from datasets import write_cifar_archive
from helpers import closed_port_url, sweep_project, tiny_params
from matplotlib.figure import Figure

from mobitune.errors import EndpointUnreachable
from mobitune.orchestration.presentation import display_table
from mobitune.params import Params, params_from_dict
from mobitune.report import sweep_report as report
from mobitune.report.sweep_report import outcome as report_outcome
from mobitune.storage.stores import LocalStore
from mobitune.sweep.run import SweepRun, resume_backend
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TrialRequest, store_results

LOGGER = logging.getLogger("test_sweep_run")


@pytest.fixture(autouse=True)
def blank_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's decisions are under test here, not its figures (test_sweep_flows.py draws real ones)."""
    for builder in ("curves_figure", "summary_figure", "search_figure"):
        monkeypatch.setattr(report, builder, lambda *args: Figure(figsize=(1, 1)))


def by_lr(params: Params) -> float:
    """Higher lr, higher accuracy: an order the scheduler's decisions can be checked against."""
    return min(0.99, params.lr * 10)


class FakeRunner:
    """Trials that take ``polls`` looks to finish, then store their files; ``failure`` says why one fails."""

    poll_seconds = 0.0

    def __init__(
        self,
        accuracy: Callable[[dict[str, Any]], float] = by_lr,
        polls: int = 1,
        failure: Callable[[TrialRequest], str | None] = lambda request: None,
    ) -> None:
        self.accuracy, self.polls, self.failure = accuracy, polls, failure
        self.started: list[TrialRequest] = []
        self.trained: list[tuple[str, int]] = []  # (trial id, finetune epochs reached) of each segment trained
        self.in_flight = self.most_in_flight = 0
        self.waiting: dict[int, int] = {}

    def start(self, request: TrialRequest) -> int:
        self.started.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        handle = len(self.started) - 1
        self.waiting[handle] = self.polls
        return handle

    def outcome(self, handle: int) -> str | None:
        if self.waiting[handle] > 0:
            self.waiting[handle] -= 1
            return None
        if self.waiting.pop(handle, None) is None:
            raise AssertionError("outcome asked again after the job ended")
        self.in_flight -= 1
        request = self.started[handle]
        if request.warmup_only:
            return ""
        if failure := self.failure(request):
            return failure
        self._store(request)
        return ""

    def _store(self, request: TrialRequest) -> None:
        epochs = request.until or request.params.finetune.epochs
        local_root = Path(request.local_root)
        done = local_root / "sweeps" / request.sweep_id / "trials" / request.trial_id / "metrics.json"
        if done.exists() and pd.read_json(done, typ="series")["finetune_epochs"] >= epochs:
            return  # a finished segment replayed by a resumed sweep: kept as it is, as run_trial does
        self.trained.append((request.trial_id, epochs))
        accuracy = self.accuracy(request.params)
        history = [row(1, "warmup", 1, 0.5)] + [row(1 + e, "finetune", e, accuracy) for e in range(1, epochs + 1)]
        metrics = {**history[-1], "warmup_epochs": 1, "finetune_epochs": epochs, "status": "ok", "seconds": 0.0}
        metrics = {k: v for k, v in metrics.items() if k not in ("step", "phase", "epoch")}
        store_results(request, LocalStore(local_root), local_root, history, {**metrics, "error": None})


def row(step: int, phase: str, epoch: int, accuracy: float) -> dict[str, Any]:
    return {
        "step": step,
        "phase": phase,
        "epoch": epoch,
        "train_loss": 1 - accuracy,
        "train_accuracy": accuracy,
        "test_loss": 1 - accuracy,
        "test_accuracy": accuracy,
        "seconds": 0.0,
    }


def sweep(*overrides: str) -> Params:
    return Params().override(["model.pretrained=none", "finetune.epochs=3", "sweep.seeds=[0]", *overrides])


def grid(lrs: str, *more: str) -> Params:
    """A grid over ``lrs`` at one batch size and depth, plus ``more`` overrides."""
    return sweep("sweep.mode=grid", f"sweep.lr={lrs}", "sweep.batch_size=[192]", "sweep.trainable_layers=[10]", *more)


# six lrs, each trial worse than those before it: ASHA (rung at finetune epoch 1 of 3) stops some
ASHA_SWEEP = ("[0.006,0.005,0.004,0.003,0.002,0.001]", "sweep.early_stop.method=asha", "finetune.epochs=3")


def drive(tmp_path: Path, params: Params, runner: FakeRunner, slots: int = 2) -> tuple[SweepRun, pd.DataFrame]:
    run = SweepRun.start(params, tmp_path / "artifacts", None, [], "local")
    run.drive(runner, slots, LOGGER)
    run.finish()
    run.release()  # as the sweep flow does when it ends
    return run, pd.read_csv(run.sweep_dir / "results.csv")


def test_each_warmup_is_trained_once_before_the_trials_that_share_it(tmp_path: Path) -> None:
    params = grid(
        "[0.01,0.02]",
        "sweep.model.dropout=[0.1,0.3]",
    )
    runner = FakeRunner()
    _, results = drive(tmp_path, params, runner, slots=1)
    order = [r.trial_id for r in runner.started]
    warmups = [i for i, r in enumerate(runner.started) if r.warmup_only]
    assert len(warmups) == 2, "one warmup per distinct dropout, the lr axis shares it"
    for request in runner.started:
        if not request.warmup_only:
            own = next(
                i for i, r in enumerate(runner.started) if r.warmup_only and r.params.model == request.params.model
            )
            assert own < order.index(request.trial_id), f"{request.trial_id} ran before its warmup"
    assert sorted(results["trial_id"]) == sorted(r.trial_id for r in runner.started if not r.warmup_only)
    assert set(results["status"]) == {"ok"} and len(results) == 4


def test_a_one_value_axis_gets_no_column_report_section_or_figure(tmp_path: Path) -> None:
    run, results = drive(tmp_path, grid("[0.01,0.02]"), FakeRunner())
    record = json.loads((run.sweep_dir / "sweep.json").read_text())
    assert record["axes"] == ["lr"] and record["fixed"] == {"batch_size": 192, "trainable_layers": 10}
    assert "batch_size" not in results.columns and "trainable_layers" not in results.columns
    report = (run.sweep_dir / "report.md").read_text()
    assert "## lr" in report and "## batch_size" not in report and "## trainable_layers" not in report
    assert sorted(p.name for p in (run.sweep_dir / "figures").iterdir()) == ["lr_curves.png", "lr_summary.png"]
    alone, results = drive(tmp_path, grid("[0.01]", "sweep.seeds=[0,1]"), FakeRunner())
    report = (alone.sweep_dir / "report.md").read_text()
    assert results["trial_id"].tolist() == ["t000-base-s0", "t001-base-s1"] and "## lr" not in report
    assert "**Best config:** the base params (trial `t000-base-s0`" in report
    assert not list((alone.sweep_dir / "figures").iterdir())


def test_report_says_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobitune import cli

    run, _ = drive(tmp_path, grid("[0.01,0.02]"), FakeRunner())
    (run.sweep_dir / "report.md").unlink()
    monkeypatch.chdir(tmp_path)
    cli.main(["report", str(run.sweep_dir.relative_to(tmp_path))])
    folder = run.sweep_dir.relative_to(tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        f"{folder}: wrote results.csv (2 trials), 2 figures in figures/, report.md and manifest.json",
        str(folder / "report.md"),
    ]
    assert (run.sweep_dir / "report.md").exists()


def test_no_more_jobs_in_flight_than_slots_and_every_trial_once(tmp_path: Path) -> None:
    params = sweep(
        "sweep.mode=grid",
        "sweep.lr=[0.01,0.02,0.03,0.04,0.05]",
        "sweep.batch_size=[64,192]",
        "sweep.trainable_layers=[10]",
    )
    runner = FakeRunner(polls=3)
    _, results = drive(tmp_path, params, runner, slots=3)
    assert runner.most_in_flight == 3
    assert len(results) == 10 and results["trial_id"].is_unique
    assert [r.trial_id for r in runner.started if not r.warmup_only] == results["trial_id"].tolist(), "plan order"


def test_asha_stops_the_weak_at_the_rung_and_resumes_the_promoted_to_the_end(tmp_path: Path) -> None:
    runner = FakeRunner()
    run, results = drive(tmp_path, grid(*ASHA_SWEEP), runner, slots=1)
    stopped = results.loc[results["status"] == "stopped", "lr"].tolist()
    finished = results.loc[results["status"] == "ok", "lr"].tolist()
    assert stopped and finished and max(stopped) < max(finished), "the best lr goes on"
    assert set(results.loc[results["status"] == "stopped", "finetune_epochs"]) == {1}
    assert set(results.loc[results["status"] == "ok", "finetune_epochs"]) == {3}
    promoted = set(results.loc[results["status"] == "ok", "trial_id"])
    segments = [trial_id for trial_id, _ in runner.trained]
    assert all(segments.count(t) == 2 for t in promoted), "a promoted trial is the same trial resumed, never a new one"
    assert (run.sweep_dir / "search.json").exists()


def test_a_failed_job_is_a_failed_trial_and_the_sweep_goes_on(tmp_path: Path) -> None:
    crashed = "its flow run ended Crashed 3 times"
    runner = FakeRunner(failure=lambda request: crashed if request.params.lr == 0.02 else None)
    _, results = drive(tmp_path, grid("[0.01,0.02,0.03]"), runner)
    assert results.set_index("lr")["status"].to_dict() == {0.01: "ok", 0.02: "failed", 0.03: "ok"}
    assert results.set_index("lr").loc[0.02, "error"] == crashed


def test_a_resumed_sweep_replays_its_decisions_and_trains_nothing_finished_again(tmp_path: Path) -> None:
    run, first = drive(tmp_path, grid(*ASHA_SWEEP), FakeRunner(), slots=1)
    report = (run.sweep_dir / "report.md").read_text()
    resumed = SweepRun.resume(tmp_path / "artifacts", run.sweep_id, "local")
    replay = FakeRunner()
    resumed.drive(replay, 1, LOGGER)
    resumed.finish()
    assert replay.trained == [], "every segment had finished: all replayed, none trained"
    again = pd.read_csv(run.sweep_dir / "results.csv")
    pd.testing.assert_frame_equal(again, first)
    assert (run.sweep_dir / "report.md").read_text() == report


def test_a_resumed_sweep_trains_only_what_had_not_finished(tmp_path: Path) -> None:
    params = grid("[0.01,0.02,0.03]")
    run = SweepRun.start(params, tmp_path / "artifacts", None, [], "local")
    planned = [trial.trial_id for trial in run.scheduler.planned]
    request = run.request(run.scheduler.next_segment())
    FakeRunner()._store(request)  # the sweep died after its first trial finished
    run.release()  # and the system released the lock of its dead process
    resumed = SweepRun.resume(tmp_path / "artifacts", run.sweep_id, "local")
    runner = FakeRunner()
    resumed.drive(runner, 2, LOGGER)
    resumed.finish()
    assert [t for t, _ in runner.trained] == planned[1:]
    assert planned[0] in pd.read_csv(run.sweep_dir / "results.csv")["trial_id"].tolist()


@pytest.mark.parametrize("slots", [1, 4])
def test_the_outcome_does_not_depend_on_the_number_of_slots(tmp_path: Path, slots: int) -> None:
    params = grid("[0.001,0.002,0.003,0.004]")
    _, results = drive(tmp_path, params, FakeRunner(polls=2), slots=slots)
    assert results.sort_values("trial_id")["test_accuracy"].tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04])


def test_a_resumed_sweep_keeps_its_backend_unless_told_otherwise() -> None:
    record = {"sweep_id": "s1", "backend": "workers"}
    kept = "resuming sweep s1 on the workers backend (as it was started; --backend changes it)"
    assert resume_backend(record, None) == ("workers", kept)
    changed = "resuming sweep s1 on the local backend (it was started on workers)"
    assert resume_backend(record, "local") == ("local", changed)


class InProcessRunner:
    """Real trials, trained here one at a time: the seam a backend fills, without Prefect."""

    poll_seconds = 0.0

    def start(self, request: TrialRequest) -> str:
        """Runs the job; its outcome as the local backend's task state gives it ("" or why it failed)."""
        try:
            run_trial_recorded(request)
        except Exception as exc:  # a shared warmup that cannot be built: its trials try it themselves
            return f"task Failed: {exc}"
        return ""

    def outcome(self, failure: str) -> str:
        return failure


def test_failed_and_diverged_trials_are_results(tmp_path: Path, cifar_archive: Path) -> None:
    missing = str(tmp_path / "missing.pt")
    raw = tiny_params(str(cifar_archive))
    raw["sweep"] = {"mode": "one-at-a-time", "seeds": [0], "lr": [0.005, 1e30], "model.pretrained": ["none", missing]}
    run, results = drive(tmp_path, params_from_dict(raw), InProcessRunner(), slots=1)
    results = results.set_index("lr")
    statuses = dict(zip(results["model.pretrained"], results["status"], strict=True))
    assert sorted(results["status"]) == ["diverged", "failed", "ok"] and statuses[missing] == "failed"
    assert results.loc[1e30, "status"] == "diverged" and results.loc[1e30, "finetune_epochs"] == 1
    failed_id = results.loc[results["status"] == "failed", "trial_id"].item()
    failed = json.loads((run.sweep_dir / "trials" / failed_id / "metrics.json").read_text())
    assert "model.pretrained" in failed["error"] and "no such file" in failed["error"]
    report = (run.sweep_dir / "report.md").read_text()
    assert "1 diverged, 1 failed, 1 ok" in report and "Failed or diverged, and why:" in report


def test_a_trial_stopped_by_an_unreachable_store_is_not_recorded_as_failed(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url(""))
    raw = tiny_params(str(cifar_archive), **{"storage.uri": "s3://results/p", "storage.outage_s": 0})
    request = TrialRequest(
        sweep_id="s1", trial_id="t1", params=params_from_dict(raw), store_uri="s3://results/p", local_root=str(tmp_path)
    )
    with pytest.raises(EndpointUnreachable, match="S3 endpoint http://127.0.0.1:.* is unreachable"):
        run_trial_recorded(request)
    assert not list(tmp_path.rglob("metrics.json")), "the fleet's failure is not the trial's result"


def test_bad_sweep_input_fails_before_prefect_starts(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`mobitune sweep` (its main, in this process) refuses each with one line and exit status 2."""
    from mobitune import cli

    monkeypatch.chdir(sweep_project(tmp_path, cifar_archive, {"lr": [0.01]}))
    for args, message in (
        (["--set", "sweep.lr=[0.1,fast]"], "error: sweep.lr[1]: expected a number, got 'fast'"),
        (["--set", "sweep={}"], "error: sweep: nothing to sweep"),
        (["--set", "lr"], "error: override 'lr' is malformed"),
        (["--set", "storage.uri=s3://UPPER/x"], "is not a valid S3 URI"),
        (["--recipe", "missing.yaml"], "error: missing.yaml: recipe not found"),
        (["--set", "sweep.lr={low: 0.01, high: 0.001}"], "error: sweep.lr: low must be below high"),
        (["--set", "sweep.lr={low: 0.001, high: 0.01}"], "error: sweep.lr: a range is sampled by sweep.mode random"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(["sweep", *args])
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and message in stderr and len(stderr.splitlines()) == 1, stderr
    assert not (tmp_path / "project" / "artifacts" / "sweeps").exists()


def test_a_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path, cifar_archive: Path) -> None:
    """`mobitune sweep --dry-run` in its own process: the plan on stdout, no sweep folder, no Prefect imported."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.01, 0.005], "batch_size": [100]})
    script = "import sys; from mobitune import cli; cli.main(sys.argv[1:]); assert 'prefect' not in sys.modules"
    args = ["sweep", "--dry-run", "--set", "sweep.seeds=[0,1]"]
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dry run: 4 trials (one-at-a-time over lr; seeds [0, 1]); nothing trains")
    assert [line.split()[0] for line in lines if line.startswith("t00")] == [
        *("t000-lr=0.01-s0", "t001-base-s0", "t002-lr=0.01-s1", "t003-base-s1")
    ]
    assert not (project / "artifacts" / "sweeps").exists()


def test_export_of_a_trial_answered_from_the_cache_uses_the_model_of_the_trial_that_computed_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The second sweep's trial is answered from the first's result, so it has no checkpoint of its own: `export`
    takes the first sweep's, and says so; without that one either, the error names the sweep and trial to export."""
    from mobitune.release.sweep_export import SweepExportError, export_trial

    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", 20, 50)  # what is exported: any model
    raw = tiny_params(str(archive), **{"finetune.epochs": 1, "warmup.batch_size": 50})
    raw["sweep"].update(lr=[0.005], batch_size=[100], trainable_layers=[2])
    first, _ = drive(tmp_path, params_from_dict(raw), InProcessRunner(), slots=1)
    second, results = drive(tmp_path, params_from_dict(raw), InProcessRunner(), slots=1)
    assert results["cached"].tolist() == [True] and results["trial_id"].tolist() == ["t000-base-s0"]
    metrics = json.loads((second.sweep_dir / "trials" / "t000-base-s0" / "metrics.json").read_text())
    assert metrics["computed_by"] == {"sweep_id": first.sweep_id, "trial_id": "t000-base-s0"}
    folder, report = export_trial(str(second.sweep_dir), None)
    assert folder == second.sweep_dir / "export" / "t000-base-s0" and (folder / "model.onnx").exists()
    assert f"reused the result of trial t000-base-s0 of sweep {first.sweep_id}" in capsys.readouterr().out
    (tmp_path / "artifacts" / "checkpoints" / first.sweep_id / "t000-base-s0.pt").unlink()
    with pytest.raises(SweepExportError) as refused:
        export_trial(str(second.sweep_dir), None)
    assert f"mobitune export artifacts/sweeps/{first.sweep_id} --trial t000-base-s0" in str(refused.value)


def test_a_known_trial_is_answered_without_importing_torch(tmp_path: Path, cifar_archive: Path) -> None:
    """A cached sweep on a CPU machine imports no torch (2-3 s of its start): the device check, a warmup in the
    store and a trial whose identical twin is stored are all answered without it."""
    params = params_from_dict(tiny_params(str(cifar_archive)))
    trained = TrialRequest(sweep_id="s1", trial_id="t1", params=params, local_root=str(tmp_path))
    assert run_trial_recorded(trained)["cached"] is False
    script = """
import json, sys
from mobitune.orchestration.local_runner import local_devices
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TrialRequest
request = TrialRequest.model_validate_json(sys.argv[1])
devices = local_devices(request.params, None)
warmup = run_trial_recorded(request.model_copy(update={"trial_id": "warmup", "warmup_only": True}))
metrics = run_trial_recorded(request)
print(json.dumps({"devices": devices, "warmup": warmup, "cached": metrics["cached"], "torch": "torch" in sys.modules}))
"""
    again = trained.model_copy(update={"sweep_id": "s2"})
    out = subprocess.run([sys.executable, "-c", script, again.model_dump_json()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["devices"] == ["cpu"] and answer["warmup"]["warmup_key"].startswith("cache/warmup/")
    assert answer["cached"] is True and answer["torch"] is False, answer


def test_the_report_says_what_the_trials_cost_and_leaves_out_the_cached() -> None:
    """Device-hours per config and in all, the busy share of the trials' wall time; a cached trial cost nothing."""
    from mobitune.report.results import SweepResults
    from mobitune.report.sweep_report import cost_markdown
    from mobitune.storage.records import cost_metrics

    history = [
        {"phase": "finetune", "seconds": 30.0, "train_images_per_s": "100.0", "eval_images_per_s": "400"},
        {"phase": "finetune", "seconds": 42.0, "train_images_per_s": "80.0", "eval_images_per_s": ""},  # diverged
    ]
    assert cost_metrics(history) == {"device_seconds": 72.0, "train_images_per_s": 90.0, "eval_images_per_s": 400}
    assert cost_metrics([{"phase": "finetune", "seconds": 1.0}]) == {}, "a run older than the figures: none"
    table = pd.DataFrame(
        {
            "lr": [0.001, 0.001, 0.005],
            "seed": [0, 1, 0],
            "seconds": [4000.0, 2000.0, 50.0],
            "device_seconds": [3600.0, 1800.0, 40.0],
            "train_images_per_s": [100.0, 200.0, 300.0],
            "cached": [False, False, True],
        }
    )
    lines = cost_markdown(SweepResults(table, {}, ["lr"], {"lr": 0.005}, "grid"))
    text = "\n".join(lines)
    assert "**1.500 device-hours**" in text and "90% of the trials' wall time; 1 answered from the cache" in text
    assert "| 0.001 | 1.5 | 150" in text and "0.005" not in text.split("| lr |")[1]


class BudgetEndsWhenTheFirstTrialStarts(InProcessRunner):
    """The time budget's end set through its seam rather than by seconds of wall time: the deadline is the moment
    the first trial starts, so that trial stops after its first finetune epoch on any machine, however slow."""

    def __init__(self, run: SweepRun) -> None:
        self.run = run

    def start(self, request: TrialRequest) -> str:
        if not request.warmup_only and self.run.scheduler.deadline > time.time():
            self.run.scheduler.deadline = time.time()
            request = request.model_copy(update={"deadline": self.run.scheduler.deadline})
        return super().start(request)


def test_the_time_budget_stops_the_sweep_after_the_running_epoch_with_every_trial_recorded(
    tmp_path: Path, cifar_archive: Path
) -> None:
    raw = tiny_params(str(cifar_archive), **{"finetune.epochs": 3})
    raw["sweep"].update(mode="grid", seeds=[0], lr=[0.001, 0.002, 0.003], batch_size=[100], trainable_layers=[2])
    raw["sweep"]["time_budget_s"] = 3600  # never ends by the clock here: the runner ends it
    run = SweepRun.start(params_from_dict(raw), tmp_path / "artifacts", None, [], "local")
    run.drive(BudgetEndsWhenTheFirstTrialStarts(run), 1, LOGGER)
    run.finish()
    results = pd.read_csv(run.sweep_dir / "results.csv")
    assert results["lr"].tolist() == [0.001], "nothing started after the budget"
    stopped = results.iloc[0]
    assert (stopped["status"], stopped["finetune_epochs"]) == ("stopped", 1), "stopped after the epoch running"
    assert "time budget ended after finetune epoch 1" in stopped["error"]
    checkpoint = torch.load(
        tmp_path / "artifacts" / "checkpoints" / run.sweep_id / f"{stopped['trial_id']}.pt", weights_only=False
    )
    assert len(checkpoint["history"]) == stopped["finetune_epochs"], "its last epoch is kept: resumable"
    search = json.loads((run.sweep_dir / "search.json").read_text())
    assert (search["ended_by_time_budget"], search["not_started"]) == (True, 2)
    assert (
        "**The time budget (3600 s) ended the sweep**: 2 planned trials did not start"
        in (run.sweep_dir / "report.md").read_text()
    )
    assert not list((tmp_path / "artifacts" / "cache" / "trials").glob("*")), "a cut-short trial is no cached result"


class BudgetEndsDuringTheWarmup(FakeRunner):
    """The time budget ends while the shared warmup trains (its deadline moved into the past when the warmup
    ends), so no trial ever starts."""

    def __init__(self, run: SweepRun) -> None:
        super().__init__()
        self.run = run

    def outcome(self, handle: int) -> str | None:
        failure = super().outcome(handle)
        if failure is not None and self.started[handle].warmup_only:
            self.run.scheduler.deadline = time.time() - 1
        return failure


def test_a_time_budget_that_ends_during_the_warmup_is_a_completed_sweep_that_says_so(tmp_path: Path) -> None:
    params = grid("[0.01,0.02,0.03]", "sweep.time_budget_s=60")
    run = SweepRun.start(params, tmp_path / "artifacts", None, [], "local")
    runner = BudgetEndsDuringTheWarmup(run)
    run.drive(runner, 2, LOGGER)
    results = run.finish()
    run.release()
    assert [r.warmup_only for r in runner.started] == [True], "the warmup ran, no trial"
    assert results.table.empty and pd.read_csv(run.sweep_dir / "results.csv").empty
    assert json.loads((run.sweep_dir / "sweep.json").read_text())["trials"] == []
    search = json.loads((run.sweep_dir / "search.json").read_text())
    assert (search["ended_by_time_budget"], search["started"], search["not_started"]) == (True, 0, 3)
    report = (run.sweep_dir / "report.md").read_text()
    assert "**No trial started: the time budget (60 s) ended the sweep** before the first trial" in report
    assert "3 planned trials did not start" in report and "## lr" not in report
    assert report_outcome(results, run.sweep_id) == (
        f"sweep {run.sweep_id}: no trial started: the time budget (60 s) ended the sweep"
    )
    assert display_table(results).empty
