"""The real DVC pipeline in a throw-away git repo: repro, exp run -S, exp show, plots, push/pull."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import (
    ROOT,
    DvcExperiments,
    PrefectServer,
    closed_port_url,
    pristine,
    run,
    tiny_params,
    write_params,
)


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_dvc_yaml_declares_the_paths_the_stages_write() -> None:
    from mobitune.pipeline import paths

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = set()
    for stage in dvc.values():
        for key in ("outs", "metrics"):
            for entry in stage.get(key, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    written = {str(v) for k, v in vars(paths).items() if k.isupper() and k != "DATA"}
    assert declared == written
    for name, stage in dvc.items():
        assert stage["cmd"] == f"python -m mobitune.pipeline.stages.{name}"
        for dep in stage["deps"]:
            assert dep in written or (ROOT / dep).exists(), dep


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stage_turns_sigterm_and_sigint_into_a_clean_stop(sig: signal.Signals, capsys: pytest.CaptureFixture) -> None:
    """Both signals unwind a stage through KeyboardInterrupt (so its atomic writes clean up) and exit 130."""
    from mobitune.pipeline.stages import run_stage

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; an earlier test may ignore it
    try:
        with pytest.raises(SystemExit) as exited:
            run_stage(lambda: os.kill(os.getpid(), sig) or time.sleep(5))
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert exited.value.code == 130
    assert "interrupted: no output of this stage was completed; `dvc repro` will redo it" in capsys.readouterr().err


def test_pipeline_end_to_end(dvc_experiments: DvcExperiments, s3) -> None:
    project = dvc_experiments.project
    assert stages_run(dvc_experiments.repro) == ["download", "warmup", "finetune", "evaluate", "export"]
    metrics = dvc_experiments.evaluate_metrics
    assert metrics["status"] == "ok" and metrics["test_accuracy"] > 0.15  # chance is 0.10
    assert len((project / "data/plots/predictions.csv").read_text().splitlines()) == 501

    # the ONNX files of the workspace's model (the recipe's experiment), run by ONNX Runtime on the test images
    export = json.loads((project / "data/metrics/export.json").read_text())
    evaluated = json.loads((project / "data/metrics/evaluate.json").read_text())["test_accuracy"]
    fp32, int8 = export["fp32"], export["int8"]
    assert fp32["agreement_with_pytorch"] >= 0.999 and fp32["test_accuracy"] == pytest.approx(evaluated, abs=0.002)
    assert export["int8_smaller"] > 3 and int8["test_accuracy"] > fp32["test_accuracy"] - 0.05
    # the metrics files hold scores; what made them, what they cost, per class, sizes and latencies are details
    details = {p.stem: json.loads(p.read_text()) for p in (project / "data/metrics/details").glob("*.json")}
    assert set(details) == {"warmup", "finetune", "evaluate", "export"}
    assert all("provenance" in record for record in details.values())
    assert not [p.name for p in (project / "data/metrics").glob("*.json") if "provenance" in p.read_text()]
    assert details["finetune"]["cost"]["device_seconds"] > 0 and len(details["evaluate"]["per_class_accuracy"]) == 10
    assert details["export"]["test_images"] == 500 and details["export"]["pytorch_test_accuracy"] == pytest.approx(
        evaluated
    )
    fp32, int8 = details["export"]["fp32"], details["export"]["int8"]
    assert int8["bytes"] == (project / "data/models/model.int8.onnx").stat().st_size
    assert all(f["latency_ms_batch_1"] > 0 and f["latency_ms_batch_64"] > f["latency_ms_batch_1"] for f in (fp32, int8))

    again = run(["dvc", "repro"], project)
    assert stages_run(again.stdout) == [] and "Data and pipelines are up to date" in again.stdout
    # a change to code a stage imports makes it stale, and every stage after it; one to the Prefect side, none
    for touched, stale in (
        ("training/checkpoints.py", {"warmup", "finetune", "evaluate", "export"}),
        ("orchestration/slots.py", set()),
    ):
        source = project / "src" / "mobitune" / touched
        original = source.read_bytes()
        source.write_bytes(original + b"# touched\n")
        status = json.loads(run(["dvc", "status", "--json"], project).stdout)
        source.write_bytes(original)
        assert set(status) == stale, touched
    assert stages_run(dvc_experiments.exp_run) == ["finetune", "evaluate", "export"], "the recipe's experiment"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    results = {}
    for commit in shown:
        entries = [commit] + [rev for exp in commit.get("experiments") or [] for rev in exp["revs"]]
        for entry in entries:
            if entry["rev"] != "workspace":
                data = entry["data"]
                accuracy = data["metrics"]["data/metrics/evaluate.json"]["data"]["test_accuracy"]
                params = data["params"]["params.yaml"]["data"]
                results[entry["name"]] = (params["lr"], accuracy, params["finetune"]["schedule"])
    assert set(results) == {"main", "low-lr"}
    assert results["main"][::2] == (0.005, "constant") and results["low-lr"][::2] == (0.002, "cosine")
    assert results["main"][1] == metrics["test_accuracy"] and results["low-lr"][1] > 0

    run(["dvc", "exp", "apply", "low-lr"], project)
    plots = run(["dvc", "plots", "diff", "HEAD", "-o", "plots-out"], project)
    html = (project / "plots-out" / "index.html").read_text()
    for title in ("Train and test loss per epoch", "Train and test accuracy per epoch", "Confusion matrix"):
        assert title in html, plots.stdout
    assert "train_loss" in html and "test_accuracy" in html and "predicted" in html

    bucket = s3.bucket("dvc-remote")
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/store"], project)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint], project)
    run(["dvc", "push"], project)
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0
    checkpoint = (project / "data/models/finetune.pt").read_bytes()
    shutil.rmtree(project / "data" / "models")
    shutil.rmtree(project / ".dvc" / "cache")
    run(["dvc", "pull"], project)
    assert (project / "data/models/finetune.pt").read_bytes() == checkpoint
    assert run(["dvc", "status"], project).stdout.strip().endswith("Data and pipelines are up to date.")


def test_the_readme_workflow_on_a_fresh_clone_compares_experiments_in_a_table_that_fits_a_terminal(
    dvc_experiments: DvcExperiments,
) -> None:
    """The README's commands in a project that started with no dvc.lock (the session's: `dvc repro`, the baseline
    committed, an experiment): `dvc exp show --only-changed` is a table a terminal holds (metrics files hold
    scores, no provenance, cost or per-class column; the code deps unchanged), `dvc plots diff HEAD low-lr` draws
    both, its page ignored by git."""
    project = dvc_experiments.project
    columns = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    hidden = ("provenance", "per_class", "device_seconds", "images_per_s", "latency", "bytes")
    metrics = [column for column in columns if not column.startswith(("src/", "data/"))]  # deps apart
    assert not [c for c in metrics if any(word in c for word in hidden)], metrics
    assert {"warmup.test_loss", "finetune.test_accuracy", "test_accuracy", "int8.test_accuracy"} <= set(metrics)
    table = run(["dvc", "exp", "show", "--no-pager", "--only-changed"], project, env_extra={"COLUMNS": "10000"})
    width = max(len(line.rstrip()) for line in table.stdout.splitlines())
    # the recipe changes three params and the model file, a column each: 315 wide; the README's one-param example 158
    assert width <= 340 and " lr " in table.stdout and "src/" not in table.stdout, table.stdout
    plots = run(["dvc", "plots", "diff", "HEAD", "low-lr"], project)
    assert "failed to load" not in plots.stdout + plots.stderr
    html = (project / "dvc_plots" / "index.html").read_text()
    assert "low-lr" in html and "Confusion matrix" in html
    assert "dvc_plots" not in run(["git", "status", "--porcelain"], project).stdout


def test_offline_download_fails_with_a_clear_message(dvc_project: Path) -> None:
    params = yaml.safe_load(pristine("params.yaml"))
    params["data"]["source"] = closed_port_url()  # what the official URL does on a machine without internet
    write_params(dvc_project, params)
    result = run(["dvc", "repro"], dvc_project, check=False)
    assert result.returncode != 0
    assert "is unreachable" in result.stderr and "dvc exp run -S data.source=" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (dvc_project / "data" / "cifar10").exists()


def test_bad_params_stop_the_stage_with_the_key_named(dvc_project: Path, cifar_archive: Path) -> None:
    params = tiny_params(str(cifar_archive))
    params["lr"] = -1
    write_params(dvc_project, params)
    result = run(["dvc", "repro"], dvc_project, check=False)
    assert "error: lr: must be greater than 0.0, got -1.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_exp_import_saves_each_sweep_trial_as_a_dvc_experiment(
    shared_prefect: PrefectServer, dvc_project: Path, cifar_archive: Path, s3
) -> None:
    """In a fresh clone that never ran the pipeline, a 2-trial sweep, published (S3) or local, becomes two
    experiments with their lr and test accuracy, with no other command in between; plots diff compares their
    curves, and the workspace is as it was (no data stage output left behind)."""
    params = tiny_params(str(cifar_archive), **{"finetune.epochs": 1})
    params["sweep"] = {"mode": "grid", "lr": [0.005, 0.002], "seeds": [0]}
    write_params(dvc_project, params)
    run(["git", "add", "-A"], dvc_project)
    run(["git", "commit", "-qm", "baseline"], dvc_project)
    project = dvc_project.parent / "clone"
    run(["git", "clone", "-q", str(dvc_project), str(project)], dvc_project.parent)
    bucket = s3.bucket("exp-import")
    sweep_dir = Path(run(["mobitune", "sweep", "--set", f"storage.uri=s3://{bucket}/team"], project).stdout.split()[-1])
    results = pd.read_csv(sweep_dir / "results.csv").set_index("trial_id")
    params_before = (project / "params.yaml").read_bytes()

    for source in (f"s3://{bucket}/team/sweeps/{sweep_dir.name}", str(sweep_dir)):
        imported = run(["mobitune", "exp-import", source], project).stdout
        assert "saved 2 experiment(s)" in imported
        assert run(["git", "status", "--porcelain"], project).stdout == ""
        assert not (project / "data" / "cifar10").exists(), "the sweep's data stood in for the stage's output"
        assert (project / "params.yaml").read_bytes() == params_before

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = {
        rev["name"]: rev["data"] for commit in shown for exp in commit.get("experiments") or [] for rev in exp["revs"]
    }
    assert set(experiments) == set(results.index)
    for trial_id, data in experiments.items():
        assert data["params"]["params.yaml"]["data"]["lr"] == results.loc[trial_id, "lr"]
        accuracy = data["metrics"]["data/metrics/evaluate.json"]["data"]["test_accuracy"]
        assert accuracy == pytest.approx(results.loc[trial_id, "test_accuracy"])
    first, second = sorted(experiments)
    diff = json.loads(run(["dvc", "plots", "diff", first, second, "--json"], project).stdout)
    revs = {point["rev"] for point in diff["data"]["loss"][0]["content"]["data"]["values"]}
    assert revs == {first, second}


def test_exp_import_refuses_a_workspace_it_cannot_save_cleanly(dvc_project: Path) -> None:
    """Uncommitted changes (every experiment would include them): a message that says what to do, before
    anything is written."""
    run(["git", "add", "-A"], dvc_project)
    run(["git", "commit", "-qm", "baseline"], dvc_project)
    (dvc_project / "params.yaml").write_text("lr: 0.1\n")
    result = run(["mobitune", "exp-import", "artifacts/sweeps/none"], dvc_project, check=False)
    assert result.returncode == 2 and "uncommitted changes" in result.stderr and "params.yaml" in result.stderr
    assert (dvc_project / "params.yaml").read_text() == "lr: 0.1\n"


def test_a_stage_run_again_and_a_sweep_trial_of_the_same_params_give_identical_metrics(
    dvc_experiments: DvcExperiments, tmp_path: Path
) -> None:
    """Runs repeat bit for bit on one machine and thread count (README, "Runs that repeat"): the finetune stage
    forced to run again, and the same params and seed as a sweep trial, which shares no file with the stage.
    Last in this file: the forced stage leaves evaluate and export stale (its checkpoint records its seconds)."""
    from mobitune.params import load_params
    from mobitune.sweep.trial import run_trial
    from mobitune.sweep.trial_files import TrialRequest

    project = dvc_experiments.project
    before = json.loads((project / "data/metrics/finetune.json").read_text())["finetune"]
    run(["dvc", "repro", "--force", "--single-item", "finetune"], project)
    again = json.loads((project / "data/metrics/finetune.json").read_text())["finetune"]
    params = load_params(project / "params.yaml")
    trial = run_trial(TrialRequest(sweep_id="repeat", trial_id="t000", params=params, local_root=str(tmp_path)))
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert again[key] == before[key] == trial[key], key
    details = json.loads((project / "data/metrics/details/finetune.json").read_text())
    assert details["provenance"]["source_fingerprint"] == trial["provenance"]["source_fingerprint"]
