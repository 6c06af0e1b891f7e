"""The sweep flow for real: `mobitune sweep` on Prefect's local server and on a real
`prefect server` with two `prefect worker` processes, publishing to moto's S3 server."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from datasets import write_cifar_archive
from helpers import VENV_BIN, PrefectServer, free_port, run, sweep_project
from PIL import Image
from published import METRICS, check_published


def test_local_backend_publishes_a_complete_sweep(local_sweep: dict) -> None:
    results = check_published(local_sweep["tree"], trials=4)
    assert set(results["status"]) == {"ok"}
    assert sorted(results["lr"]) == [0.0005, 0.001, 0.005, 0.005]
    assert sorted(results["batch_size"]) == [50, 100, 100, 100]
    shared = (local_sweep["stdout"] + local_sweep["other_stdout"]).count("warmup 1/1")
    assert shared == 1, "the shared warmup ran once, for both sweeps at once"
    local_dir = local_sweep["project"] / "artifacts" / "sweeps" / local_sweep["sweep_id"]
    assert (local_dir / "results.csv").read_bytes() == local_sweep["tree"]["results.csv"]
    # what each trial cost; the GPU's figures absent on this CPU, not zero; which code and machine computed it
    assert (results["device_seconds"] > 0).all() and (results["train_images_per_s"] > 0).all()
    assert not {"peak_memory_bytes", "gpu_utilization_percent"} & set(results.columns)
    assert set(results["device"]) == {"cpu"} and results["source_fingerprint"].nunique() == 1
    report = local_sweep["tree"]["report.md"].decode()
    assert "## Cost" in report and "device-hours" in report and "GPU busy" not in report


def test_the_recipe_reaches_every_trial_and_the_report_sits_beside_the_seed_report(local_sweep: dict) -> None:
    tree = local_sweep["tree"]
    assert json.loads(tree["sweep.json"])["recipe"] == "recipe.yaml"
    for key in [k for k in tree if k.endswith("params.json")]:
        finetune = json.loads(tree[key])["params"]["finetune"]
        assert (finetune["schedule"], finetune["label_smoothing"]) == ("cosine", 0.1), key
    report = tree["report.md"].decode()
    assert "Beside the report's Table 1" in report and "Beside the report's Table 2" in report
    ours = pd.read_csv(io.BytesIO(tree["results.csv"])).query("lr == 0.005 and batch_size == 100")
    row = next(
        line for line in report.split("Beside the report's Table 1")[1].splitlines() if line.startswith("| 0.005 |")
    )
    assert row.startswith(f"| 0.005 | {ours['test_accuracy'].item() * 100:.2f} | 66.41 |")


def test_two_sweeps_at_once_never_overwrite_each_other(local_sweep: dict, s3_server) -> None:
    first, second = local_sweep["sweep_dirs"]
    assert first != second and first.parent == second.parent
    client = s3_server.client()
    for sweep_dir in (first, second):
        manifest = json.loads((sweep_dir / "manifest.json").read_text())
        listed = {entry["path"] for entry in manifest["files"]}
        # the second sweep's axes have one value each: its one trial, and no figure of an axis it did not sweep
        assert {"report.md", "results.csv", "sweep.json"} <= listed and len(listed) >= 6
        for entry in manifest["files"]:
            key = f"team/sweeps/{sweep_dir.name}/{entry['path']}"
            body = client.get_object(Bucket=local_sweep["bucket"], Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]
            assert (sweep_dir / entry["path"]).read_bytes() == body


def test_no_secret_in_logs_artifacts_or_reports(local_sweep: dict) -> None:
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    assert secret.decode() not in local_sweep["stdout"]
    assert not [key for key, body in local_sweep["tree"].items() if secret in body]
    local = [p for p in (local_sweep["project"] / "artifacts").rglob("*") if p.is_file()]
    assert len(local) > 10 and not [p for p in local if secret in p.read_bytes()]


SEARCH = [  # the issue's example: 6 sampled lrs, ASHA from finetune epoch 1 of 3
    "--set",
    "sweep.mode=random",
    "--set",
    "sweep.trials=6",
    "--set",
    "sweep.lr={low: 0.0001, high: 0.05, log: true}",
    "--set",
    "sweep.early_stop.method=asha",
    "--set",
    "sweep.finetune_epochs=3",
]


def check_searched(sweep_dir: Path, trials: int, epochs: int) -> pd.DataFrame:
    """A searched ASHA sweep's folder: distinct samples, some stopped, no epoch trained twice, the search report."""
    results = pd.read_csv(sweep_dir / "results.csv")
    assert len(results) == trials and results["lr"].nunique() == trials
    assert results["lr"].between(0.0001, 0.05).all()
    # a sampled lr near the top of the range may collapse to chance at its first epoch: diverged, stopped at once
    assert set(results["status"]) <= {"ok", "stopped", "diverged"} and (results["status"] == "stopped").any()
    assert results["finetune_epochs"].sum() < trials * epochs
    for row in results.itertuples():
        assert row.finetune_epochs == epochs if row.status == "ok" else row.finetune_epochs < epochs
        history = pd.read_csv(sweep_dir / "trials" / row.trial_id / "history.csv")
        assert history["step"].tolist() == list(range(1, 2 + row.finetune_epochs)), "each epoch once"
    search = json.loads((sweep_dir / "search.json").read_text())
    assert search["finetune_epochs_spent"] == results["finetune_epochs"].sum()
    not_promoted = {d["trial_id"] for d in search["decisions"] if not d["promoted"]}
    stopped = set(results.loc[results["status"] == "stopped", "trial_id"])
    assert stopped <= not_promoted <= stopped | set(results.loc[results["status"] == "diverged", "trial_id"])
    report = (sweep_dir / "report.md").read_text()
    spent = results["finetune_epochs"].sum()
    assert f"Finetune epochs spent: **{spent}** of the {trials * epochs}" in report
    assert "| rung (finetune epochs) | reached | continued | stopped |" in report
    assert (sweep_dir / "figures" / "search.png").read_bytes().startswith(b"\x89PNG")
    assert (sweep_dir / "study.journal").stat().st_size > 0, "the Optuna study is kept with the sweep"
    return results


def test_random_search_with_asha_stops_trials_early_and_resumes_the_promoted(
    shared_prefect: PrefectServer, tmp_path: Path, cifar_archive: Path, calibrated_weights: Path
) -> None:
    project = sweep_project(
        tmp_path, cifar_archive, {}, **{"model.pretrained": str(calibrated_weights), "trainable_layers": 2}
    )
    result = run(["mobitune", "sweep", *SEARCH], project, env_extra={"PREFECT_LOGGING_LEVEL": "INFO"})
    sweep_dir = Path(result.stdout.strip().splitlines()[-1])
    results = check_searched(sweep_dir, trials=6, epochs=3)
    output = result.stdout + result.stderr
    for trial_id in results.loc[results["status"] == "ok", "trial_id"]:
        assert f"{trial_id}: resuming from its checkpoint after finetune epoch 1" in output
    assert output.count("warmup 1/1") == 1, "one shared warmup for all sampled trials"
    report = (sweep_dir / "report.md").read_bytes()
    (sweep_dir / "report.md").unlink()
    run(["mobitune", "report", str(sweep_dir)], project)
    assert (sweep_dir / "report.md").read_bytes() == report, "the search section is rebuilt from the folder alone"


def test_a_killed_sweep_resumes_in_its_folder_keeping_what_finished(
    shared_prefect: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    """SIGKILL the sweep's process once its first trial finished and the second
    has a checkpoint: --resume finishes it, the first trial's files untouched, the second from its checkpoint."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005, 0.002]}, **{"finetune.epochs": 3, "batch_size": 25})
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    with (project / "sweep.log").open("w") as out:
        process = subprocess.Popen(
            ["mobitune", "sweep"], cwd=project, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    artifacts = project / "artifacts"
    deadline = time.monotonic() + 300
    while not (
        list(artifacts.glob("sweeps/*/trials/t000-*/metrics.json")) and list(artifacts.glob("checkpoints/*/t001-*"))
    ):
        assert time.monotonic() < deadline and process.poll() is None, (project / "sweep.log").read_text()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (sweep_dir,) = (artifacts / "sweeps").iterdir()
    first = {p.name: p.read_bytes() for p in next((sweep_dir / "trials").glob("t000-*")).iterdir()}
    result = run(
        ["mobitune", "sweep", "--resume", sweep_dir.name], project, env_extra={"PREFECT_LOGGING_LEVEL": "INFO"}
    )
    assert result.stdout.strip().splitlines()[-1] == str(sweep_dir)
    output = result.stdout + result.stderr
    assert f"resuming sweep {sweep_dir.name} on the local backend (as it was started" in output
    assert "t000-base-s0: already finished in this sweep (ok), kept as it is" in output
    assert "t001-lr=0.002-s0: resuming from its checkpoint after finetune epoch" in output
    assert {p.name: p.read_bytes() for p in (sweep_dir / "trials" / "t000-base-s0").iterdir()} == first
    results = pd.read_csv(sweep_dir / "results.csv")
    assert results["trial_id"].tolist() == ["t000-base-s0", "t001-lr=0.002-s0"] and set(results["status"]) == {"ok"}
    history = pd.read_csv(sweep_dir / "trials" / "t001-lr=0.002-s0" / "history.csv")
    assert history["step"].tolist() == [1, 2, 3, 4], "one warmup + three finetune epochs, none twice"
    assert "Best config:" in (sweep_dir / "report.md").read_text()
    refused = run(["mobitune", "sweep", "--resume", "no-such-sweep"], project, check=False)
    assert refused.returncode == 2 and "--resume no-such-sweep: no sweep of that id under" in refused.stderr
    assert sweep_dir.name in refused.stderr, "the error lists the sweeps there are"


def test_a_time_budget_the_warmup_spends_ends_a_completed_sweep_whose_report_says_so(
    shared_prefect: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    """`sweep.time_budget_s` shorter than the shared warmup (which every trial waits for): the sweep completes,
    and its report, search.json and last line say that no trial started and why. Its first log line counts the
    trials as `--dry-run` did."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005, 0.002]})
    budget = ["--set", "sweep.time_budget_s=0.001"]
    dry_run = run(["mobitune", "sweep", "--dry-run", *budget], project).stdout.splitlines()
    assert (
        dry_run[0] == "dry run: 2 trials (one-at-a-time over lr; seeds [0]); nothing trains and Prefect is not started"
    )
    assert not (project / "artifacts" / "sweeps").exists()
    result = run(["mobitune", "sweep", *budget], project, env_extra={"PREFECT_LOGGING_LEVEL": "INFO"})
    assert ": 2 trials (one-at-a-time over lr; seeds [0]), local backend -> " in result.stderr
    sweep_dir = Path(result.stdout.strip().splitlines()[-1])
    search = json.loads((sweep_dir / "search.json").read_text())
    assert (search["ended_by_time_budget"], search["started"], search["not_started"]) == (True, 0, 2)
    assert "**No trial started: the time budget (0.001 s) ended the sweep**" in (sweep_dir / "report.md").read_text()
    assert pd.read_csv(sweep_dir / "results.csv").empty and not (sweep_dir / "trials").exists()


def test_the_run_graph_draws_each_trial_from_its_warmup_and_no_edge_between_trials(
    shared_prefect: PrefectServer, tmp_path: Path
) -> None:
    """A 4-trial grid over two warmups (dropout is a warmup param) on the local backend: in the flow run's task
    runs, each trial waits for its own shared warmup (the UI's arrow) and takes no other task run as an input."""
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", 20, 50)
    grid = {"mode": "grid", "lr": [0.005, 0.002], "model.dropout": [0.1, 0.3]}
    project = sweep_project(tmp_path, archive, grid, **{"finetune.epochs": 1, "warmup.batch_size": 50})
    sweep_dir = Path(run(["mobitune", "sweep"], project).stdout.strip().splitlines()[-1])
    [flow_run] = shared_prefect.api_post("flow_runs/filter", {"flow_runs": {"name": {"any_": [sweep_dir.name]}}})
    task_runs = shared_prefect.api_post("task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    names = {task_run["id"]: task_run["name"] for task_run in task_runs}
    trials = [t for t in task_runs if not t["name"].startswith("warmup-")]
    assert len(trials) == 4 and len(task_runs) == 6, sorted(names.values())
    from mobitune.params import params_from_dict
    from mobitune.sweep.plan import warmup_key

    for trial in trials:
        own = params_from_dict(json.loads((sweep_dir / "trials" / trial["name"] / "params.json").read_text())["params"])
        inputs = {
            name: [names.get(given["id"]) for given in inputs if given["input_type"] == "task_run"]
            for name, inputs in trial["task_inputs"].items()
        }
        assert inputs.pop("wait_for") == [f"warmup-{warmup_key(own)}"], trial["name"]
        assert not [name for given in inputs.values() for name in given], f"{trial['name']} drawn from {inputs}"


def test_setup_names_the_server_it_needs(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"
    for api, message in (("", "PREFECT_API_URL is not set"), (closed, f"no Prefect server answers at {closed}")):
        result = run(["mobitune", "setup"], tmp_path, check=False, env_extra={"PREFECT_API_URL": api})
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


WEBHOOK_TOKEN = "planted-webhook-token-5b2e"  # a webhook's URL is its credential, as Slack's are


class Webhook(http.server.ThreadingHTTPServer):
    """A webhook on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/sweeps/{WEBHOOK_TOKEN}"


def test_setup_notify_sends_one_message_when_a_sweep_completes_and_one_when_it_fails(
    shared_prefect: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    """`mobitune setup --notify URL` twice (the second updates, nothing doubles), then a sweep that completes
    and one that fails in its flow (bad params given to the flow itself, as a UI run's form can): the webhook
    gets exactly one message for each, with the sweep's id, counts, best accuracy and report, or the error."""
    webhook = Webhook()
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005]})
    try:
        for verb in ("created", "updated"):
            out = run(["mobitune", "setup", "--notify", webhook.url], project).stdout
            assert f"automation 'mobitune: tell a webhook when a sweep ends': {verb}" in out
            assert WEBHOOK_TOKEN not in out, "setup never prints the webhook's URL"
        blocks = shared_prefect.api_post(
            "block_documents/filter", {"block_documents": {"name": {"any_": ["mobitune-sweep-end"]}}}
        )
        assert blocks and WEBHOOK_TOKEN not in json.dumps(blocks), "the server shows the URL masked, as a secret"
        finished = Path(run(["mobitune", "sweep"], project).stdout.strip().splitlines()[-1])
        failing = "from mobitune.orchestration.sweep_flow import sweep; sweep(overrides=['lr=-1'])"
        assert run([str(VENV_BIN / "python"), "-c", failing], project, check=False).returncode != 0
        deadline = time.monotonic() + 90
        while len(webhook.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # a second message for either would have come by now
    finally:
        run(["prefect", "automation", "delete", "mobitune: tell a webhook when a sweep ends"], project, check=False)
        webhook.shutdown()
    by_subject = {message["subject"].rsplit(": ", 1)[-1]: message for message in webhook.received}
    assert len(webhook.received) == 2 and set(by_subject) == {"Completed", "Failed"}, webhook.received
    done = by_subject["Completed"]
    assert done["subject"] == f"mobitune sweep {finished.name}: Completed"
    assert f"sweep {finished.name}: 1 trials (1 ok); best test accuracy " in done["body"]
    assert f"report: {finished}/report.md" in done["body"]
    assert "lr: must be greater than 0.0, got -1.0" in by_subject["Failed"]["body"]


# --------------------------------------------------------------- workers backend


def test_without_a_worker_the_sweep_says_so_and_gives_up(
    prefect_server: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    """Nobody polls pool `gpu` (this runs before any test starts a worker on this server): the sweep names
    the pool and the command that starts a worker, and fails after sweep.worker_timeout_s with its folder."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005]})
    env = {"PREFECT_API_URL": prefect_server.api, "PREFECT_LOGGING_LEVEL": "INFO"}
    run(["prefect", "--no-prompt", "deploy", "--all"], project, env_extra=env)
    started = time.monotonic()
    command = ["mobitune", "sweep", "--backend", "workers", "--set", "sweep.worker_timeout_s=8"]
    result = run(command, project, check=False, env_extra=env, timeout=300)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "no worker polls work pool 'gpu': trials are waiting" in result.stderr
    assert "error: 1 trial(s) never started: no worker polled work pool 'gpu' for 8 s" in result.stderr
    assert result.stderr.rstrip().endswith("Start a worker in the project root with: prefect worker start --pool gpu")
    assert time.monotonic() - started < 150, "given up after the timeout, not waiting on"
    (sweep_dir,) = (project / "artifacts" / "sweeps").iterdir()
    results = pd.read_csv(sweep_dir / "results.csv")
    assert results["status"].tolist() == ["failed"] and "no worker polled work pool 'gpu'" in results["error"][0]
    scheduled = prefect_server.api_post("flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    assert not [r["name"] for r in scheduled if "-slot-" in r["name"]], "queued slot runs are cancelled, not left"


def test_an_unchanged_sweep_reuses_every_trial_and_a_changed_archive_does_not(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    """Results are keyed by config, the data's content and the training code: the same sweep again is all
    `cached: true` with the same metrics; the same path with other bytes, or --no-cache, trains again. (How much
    faster a cached sweep is, is measured in benchmarks/, not timed here.)"""
    # small data: what is cached does not depend on its size
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", 20, 50)
    project = sweep_project(tmp_path, archive, {"lr": [0.005, 0.002]}, **{"finetune.epochs": 2, "batch_size": 25})
    env = {"PREFECT_API_URL": prefect_server.api}

    def sweep(*extra: str) -> tuple[pd.DataFrame, str]:
        result = run(["mobitune", "sweep", *extra], project, env_extra={**env, "PREFECT_LOGGING_LEVEL": "INFO"})
        return pd.read_csv(Path(result.stdout.strip().splitlines()[-1]) / "results.csv"), result.stdout + result.stderr

    first, _ = sweep()
    again, log = sweep()
    assert not first["cached"].any() and again["cached"].all()
    assert "warmup 1/1" not in log and "finetune 1/2" not in log, "nothing trained again"
    assert log.count("reusing the result of an identical trial") == 2
    for metric in METRICS:
        assert again[metric].tolist() == first[metric].tolist()
    one = ("--set", "sweep.lr=[0.005]")  # the first trial alone: its cache key is the same as above
    forced, _ = sweep("--no-cache", *one)
    assert forced["cached"].tolist() == [False]
    write_cifar_archive(archive, 20, 50, seed=1)  # same path, other images
    changed, _ = sweep(*one)
    assert changed["cached"].tolist() == [False]
    assert changed["test_loss"][0] != first["test_loss"][0], "trained on the other images"


def test_a_sweep_from_the_nightly_form_runs_the_lrs_typed_into_it(
    workers: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    """`prefect deploy --all` makes both deployments of prefect.yaml, the nightly one on a schedule; its form's
    fields start empty (params.yaml as the run starts) and carry the params' types; a run created with two lrs in it
    (the REST call the UI's Custom run makes), executed by a real worker on pool `sweeps`, trains exactly those two."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005, 0.001, 0.0005]})
    env = {"PREFECT_API_URL": workers.api}
    run(["prefect", "--no-prompt", "deploy", "--all"], project, env_extra=env)
    deployed = workers.api_post("deployments/filter", {"deployments": {"name": {"any_": ["nightly", "gpu"]}}})
    pools = {d["name"]: d["work_pool_name"] for d in deployed}
    assert pools == {"nightly": "sweeps", "gpu": "gpu"}, "sweep/nightly and trial-slot/gpu"
    [nightly] = [d for d in deployed if d["name"] == "nightly"]
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"]
    form = nightly["parameter_openapi_schema"]["definitions"]["SweepSettings"]["properties"]
    assert {name: field["default"] for name, field in form.items()} == dict.fromkeys(form)
    assert form["lr"]["anyOf"][0] == {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0.0}}
    assert form["mode"]["anyOf"][0]["enum"] == ["one-at-a-time", "grid", "random", "tpe"]
    assert nightly["parameters"]["settings"] == {}  # scheduled runs: params.yaml as it is then

    typed = {"settings": {"mode": "grid", "lr": [0.004, 0.002], "finetune_epochs": 1}, "backend": "local"}
    flow_run = workers.api_post(f"deployments/{nightly['id']}/create_flow_run", {"parameters": typed})
    worker = workers.start("sweeps-worker", ["prefect", "worker", "start", "--pool", "sweeps", "--run-once"], project)
    deadline = time.monotonic() + 300
    while (state := workers.api_get(f"flow_runs/{flow_run['id']}")["state"]["type"]) not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline and state != "CRASHED", worker.read_text()
        time.sleep(1)
    assert state == "COMPLETED", worker.read_text()
    [results] = (project / "artifacts" / "sweeps").glob("*/results.csv")
    trained = pd.read_csv(results)
    assert sorted(trained["lr"]) == [0.002, 0.004] and set(trained["finetune_epochs"]) == {1}


def test_report_is_rebuilt_from_the_trials(local_sweep: dict) -> None:
    sweep_dir = local_sweep["project"] / "artifacts" / "sweeps" / local_sweep["sweep_id"]
    (sweep_dir / "report.md").unlink()
    (sweep_dir / "results.csv").unlink()
    result = run(["mobitune", "report", str(sweep_dir)], local_sweep["project"])
    assert result.stdout.splitlines() == [
        f"{sweep_dir}: wrote results.csv (4 trials), 4 figures in figures/, report.md and manifest.json",
        str(sweep_dir / "report.md"),
    ]
    assert (sweep_dir / "report.md").read_bytes() == local_sweep["tree"]["report.md"]
    assert (sweep_dir / "results.csv").read_bytes() == local_sweep["tree"]["results.csv"]
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert {"report.md", "results.csv"} <= {entry["path"] for entry in manifest["files"]}


def test_export_of_a_sweeps_best_trial_is_published_beside_its_report(
    local_sweep: dict, s3_server, tmp_path: Path
) -> None:
    """The local backend's sweep (copied, with its checkpoints, and pointed at a bucket of its own):
    `mobitune export --best` writes both files and export.json, lists them in the manifest with their SHA-256,
    publishes them, and `mobitune predict` answers with the exported file."""
    project = tmp_path / "project"
    shutil.copytree(local_sweep["project"], project, ignore=shutil.ignore_patterns("*.lock"))
    sweep_dir = project / "artifacts" / "sweeps" / local_sweep["sweep_id"]
    bucket = s3_server.bucket("exported")  # a bucket of its own: the shared sweep's stays as it is
    record = json.loads((sweep_dir / "sweep.json").read_text())
    (sweep_dir / "sweep.json").write_text(json.dumps({**record, "storage_uri": f"s3://{bucket}/team"}))
    s3_env = {"AWS_ENDPOINT_URL": s3_server.endpoint}
    out = run(["mobitune", "export", str(sweep_dir), "--best"], project, env_extra=s3_env)
    results = [r for r in csv.DictReader((sweep_dir / "results.csv").open()) if r["status"] == "ok"]
    best = max(results, key=lambda r: float(r["test_accuracy"]))
    folder = sweep_dir / "export" / best["trial_id"]
    report = json.loads((folder / "export.json").read_text())
    assert report["trial_id"] == best["trial_id"] and report["fp32"]["agreement_with_pytorch"] >= 0.999
    assert report["fp32"]["test_accuracy"] == pytest.approx(float(best["test_accuracy"]), abs=0.002)
    assert f"published to s3://{bucket}/team/sweeps/{sweep_dir.name}" in out.stdout
    manifest = {entry["path"]: entry for entry in json.loads((sweep_dir / "manifest.json").read_text())["files"]}
    keys = {obj["Key"] for obj in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    for name in ("model.onnx", "model.int8.onnx", "export.json"):
        path = f"export/{best['trial_id']}/{name}"
        assert manifest[path]["size"] == (folder / name).stat().st_size
        assert f"team/sweeps/{sweep_dir.name}/{path}" in keys
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "tan").save(photo)
    answer = run(["mobitune", "predict", str(photo), "--model", str(folder / "model.int8.onnx")], project)
    assert answer.stdout.startswith(f"{photo}: ")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sweeps_models_registered_in_turn_are_versions_dvc_artifacts_get_gives_back(
    local_sweep: dict, tmp_path: Path
) -> None:
    """`mobitune export --register NAME` in a git and DVC project: the best trial's model is NAME@v0.0.1, another
    trial's v0.0.2; `dvc artifacts get` returns each version's bytes, the artifact's meta names its trial, and
    what the user had staged stays staged, out of the registry's commits."""
    project = tmp_path / "project"
    shutil.copytree(local_sweep["project"], project, ignore=shutil.ignore_patterns("*.lock"))
    sweep_dir = project / "artifacts" / "sweeps" / local_sweep["sweep_id"]
    (sweep_dir / "sweep.json").write_text(
        json.dumps({**json.loads((sweep_dir / "sweep.json").read_text()), "storage_uri": None})
    )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", ".dvc", "params.yaml"]):
        run(command, project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"], project)
    (project / "notes.txt").write_text("the user's own change\n")
    run(["git", "add", "notes.txt"], project)
    refused = run(["mobitune", "export", str(sweep_dir), "--register", "best model"], project, check=False)
    assert refused.returncode != 0 and "error: --register best model: Can't use" in refused.stderr
    assert "model.onnx" not in refused.stdout and not (project / "models").exists(), "it fails before the export"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    ok = [r for r in csv.DictReader((sweep_dir / "results.csv").open()) if r["status"] == "ok"]
    ranked = sorted(ok, key=lambda r: float(r["test_accuracy"]), reverse=True)
    exported = {}
    for which, version in ((["--best"], "v0.0.1"), (["--trial", ranked[1]["trial_id"]], "v0.0.2")):
        out = run(["mobitune", "export", str(sweep_dir), *which, "--register", "cifar10-best"], project, env_extra=env)
        trial_id = ranked[0 if which == ["--best"] else 1]["trial_id"]
        exported[version] = sha256(sweep_dir / "export" / trial_id / "model.onnx")
        assert f"registered cifar10-best@{version} at commit " in out.stdout and exported[version] in out.stdout
    assert exported["v0.0.1"] != exported["v0.0.2"]
    for rev, version in (([], "v0.0.2"), (["--rev", "v0.0.1"], "v0.0.1")):
        got = tmp_path / f"got-{version}.onnx"
        run(["dvc", "artifacts", "get", ".", "cifar10-best", *rev, "-o", str(got)], project)
        assert sha256(got) == exported[version], f"{rev or 'latest'} gives {version}'s bytes"
    meta = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"]["cifar10-best"]
    assert (meta["type"], meta["path"]) == ("model", "models/cifar10-best.onnx")
    assert meta["meta"]["trial_id"] == ranked[1]["trial_id"] and meta["meta"]["sha256"] == exported["v0.0.2"]
    staged = run(["git", "diff", "--cached", "--name-only"], project).stdout.split()
    assert staged == ["notes.txt"], "the user's staged change is neither committed nor unstaged"
