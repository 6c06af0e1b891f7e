"""What a person sees, in headless Chromium: `dvc plots` pages offline; the sweep report, a trial's epochs and the
nightly run form in the Prefect UI. ``MOBITUNE_SCREENSHOTS=DIR`` keeps the screenshots there (docs/ has them)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browser import EMBEDDED_IMAGES, PAINTED_PIXELS, Browser, Page
from helpers import DvcExperiments, PrefectServer, run, sweep_project

from mobitune.orchestration.form import KEYS
from mobitune.orchestration.sweep_flow import artifact_key


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MOBITUNE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dvc_plots_diff_renders_all_three_plots_offline(
    dvc_experiments: DvcExperiments, browser: Browser, screenshots: Path
) -> None:
    project = dvc_experiments.project
    run(["dvc", "plots", "diff", "main", "low-lr", "-o", "plots-page"], project)
    page_file = project / "plots-page" / "index.html"
    html = page_file.read_text()
    assert not re.search(r"<script[^>]+src=", html), "the libraries are inlined, not loaded"

    page = browser.open(page_file.as_uri())
    painted = page.wait_for(f"(() => {{ const p = {PAINTED_PIXELS}; return p.length === 3 && p; }})()")
    assert all(count > 2000 for count in painted), painted  # axes, labels, two experiments' lines, the matrix
    outside = [url for url in page.requested if not url.startswith(("file:", "data:", "about:"))]
    assert outside == [], outside
    page.screenshot(screenshots / "dvc-plots-diff.png")


def open_ui(browser: Browser, server: PrefectServer, path: str) -> Page:
    """A page of the Prefect UI, signed in as its login form does it (the credential in the origin's local
    storage): the test server asks for the credential, as a deployed one does."""
    origin = server.api.removesuffix("/api")
    page = browser.open(origin)
    page.wait_for("document.readyState === 'complete'")
    page.evaluate(f"localStorage.setItem('prefect-password', btoa({json.dumps(server.auth_string)}))")
    page.call("Page.navigate", url=f"{origin}{path}")
    return page


def _artifact_id(server: PrefectServer, key: str) -> str:
    found = server.api_post("artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "limit": 1})
    assert found, f"no artifact {key}"
    return found[0]["id"]


def test_prefect_ui_shows_the_report_figures_and_a_trials_epochs(
    prefect_server: PrefectServer, tmp_path: Path, cifar_archive: Path, browser: Browser, screenshots: Path
) -> None:
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005, 0.002]}, **{"finetune.epochs": 2})
    env = {"PREFECT_API_URL": prefect_server.api, "PREFECT_LOGGING_LEVEL": "INFO"}  # Prefect's default level
    sweep_dir = Path(run(["mobitune", "sweep"], project, env_extra=env).stdout.strip().splitlines()[-1])
    figures = (sweep_dir / "report.md").read_text().count("](figures/")
    assert figures >= 2

    report_id = _artifact_id(prefect_server, f"{artifact_key(sweep_dir.name)}-report")
    page = open_ui(browser, prefect_server, f"/artifacts/artifact/{report_id}")
    widths = page.wait_for(f"(() => {{ const w = {EMBEDDED_IMAGES}; return w.length === {figures} && w; }})()")
    assert all(width > 300 for width in widths), widths
    assert "Best config" in page.evaluate("document.body.innerText")
    page.screenshot(screenshots / "prefect-sweep-report.png")

    trial_runs = prefect_server.api_post(
        "task_runs/filter",
        {"task_runs": {"name": {"any_": ["t001-lr=0.002-s0"]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1},
    )
    page = open_ui(browser, prefect_server, f"/runs/task-run/{trial_runs[0]['id']}")
    page.wait_for("document.body.innerText.includes('finetune 2/2: train loss')")
    page.screenshot(screenshots / "prefect-trial-epochs.png")
    of_trial = {"task_run_id": {"any_": [trial_runs[0]["id"]]}, "type": {"any_": ["progress"]}}
    progress = prefect_server.api_post("artifacts/filter", {"artifacts": of_trial})
    assert [artifact["data"] for artifact in progress] == [100.0]


def test_the_nightly_form_starts_empty_with_each_settings_description(
    prefect_server: PrefectServer, tmp_path: Path, cifar_archive: Path, browser: Browser, screenshots: Path
) -> None:
    """Deployments → nightly → Run → Custom run: the Sweep settings, each field empty (params.yaml's value when the
    run starts) under its description from the params model."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005]})
    run(
        ["prefect", "--no-prompt", "deploy", "--name", "nightly"],
        project,
        env_extra={"PREFECT_API_URL": prefect_server.api},
    )
    [nightly] = prefect_server.api_post("deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
    page = open_ui(browser, prefect_server, f"/deployments/deployment/{nightly['id']}/run")
    page.wait_for("document.body.innerText.includes('finetune learning rate: the values to try')")
    text = page.evaluate("document.body.innerText")
    assert "empty fields keep params.yaml's value" in text and "inverted-residual blocks unfrozen" in text
    page.screenshot(screenshots / "prefect-nightly-form.png")
    typed = page.evaluate("[...document.querySelectorAll('input')].filter((i) => i.type !== 'checkbox' && i.value)")
    assert len(typed) == 1, "only the run's name is filled in"
    settings = text.partition("Sweep settings")[2].partition("overrides (Optional)")[0]
    assert settings.count('Property is type "None"') == len(KEYS), "each setting is left to params.yaml"
