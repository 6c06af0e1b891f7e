"""The typed params loader: the project's params.yaml, overrides, and every kind of bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import pristine, pristine_copy

from mobitune.params import Params, ParamsError, defaults_yaml, load_params, parse_params, sweepable_keys


def test_project_params_load_with_the_report_protocol(tmp_path: Path) -> None:
    """The committed params.yaml (git's copy: the workspace's is the user's, and `dvc exp run -S` edits it)."""
    params = load_params(pristine_copy("params.yaml", tmp_path))
    assert pristine("params.yaml") == defaults_yaml(), "params.yaml is `mobitune params`' output"
    assert params == Params()
    assert (params.warmup.epochs, params.warmup.lr, params.finetune.epochs) == (5, 0.001, 5)
    assert (params.lr, params.batch_size, params.trainable_layers) == (0.005, 192, 10)
    assert params.sweep.axes == {
        "lr": [0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001],
        "batch_size": [32, 64, 128, 192],
        "trainable_layers": [2, 5, 10],
    }


def test_overrides_use_dvc_exp_run_syntax() -> None:
    params = Params().override(
        ["lr=0.002", "warmup.epochs=1", "model.pretrained=none", "sweep.lr=[0.05,0.005]", "lr=1e-3"]
    )
    assert params.lr == 0.001 and params.warmup.epochs == 1 and params.model.pretrained == "none"
    assert params.sweep.axes["lr"] == [0.05, 0.005]
    assert Params().override(["sweep.model.dropout=[0.1,0.3]"]).sweep.axes["model.dropout"] == [0.1, 0.3]


def test_round_trip_through_to_dict() -> None:
    params = Params().override(["sweep.warmup.lr=[0.01]", "storage.uri=s3://bucket/prefix"])
    assert Params().override([]) == Params()
    assert parse_params(__import__("yaml").safe_dump(params.to_dict())) == params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: 0.1", "unknown key 'lrr'. Did you mean 'lr'?"),
        ("warmup: {epoch: 3}", "unknown key 'warmup.epoch'. Did you mean 'epochs'?"),
        ("lr: fast", "lr: expected a number, got 'fast'"),
        ("lr: 0", "lr: must be greater than 0.0, got 0.0"),
        ("lr: -1", "lr: must be greater than 0.0, got -1.0"),
        ("lr: .nan", "lr: expected a finite number"),
        ("warmup: {lr: 0}", "warmup.lr: must be greater than 0.0"),
        ("batch_size: 0", "batch_size: must be at least 1, got 0"),
        ("batch_size: 1.5", "batch_size: expected an integer, got 1.5"),
        ("warmup: {epochs: -1}", "warmup.epochs: must be at least 0, got -1"),
        ("finetune: {epochs: true}", "finetune.epochs: expected an integer, got True"),
        ("trainable_layers: 18", "trainable_layers: must be between 0 and 17, got 18"),
        ("trainable_layers: -1", "trainable_layers: must be between 0 and 17, got -1"),
        ("device: tpu", "device: 'tpu' is not allowed; use one of: auto, cpu, cuda, cuda:N"),
        (
            "model: {unfreeze_from: middle}",
            "model.unfreeze_from: 'middle' is not allowed; use one of: first, last",
        ),
        ("model: {dropout: 1.5}", "model.dropout: must be between 0.0 and 0.99, got 1.5"),
        ("augment: {flip: 1}", "augment.flip: expected true or false, got 1"),
        ("data: [1, 2]", "data: expected a mapping of keys to values"),
        ("- 1", "expected a mapping of keys to values at the top level"),
        ("lr: [0.1", "not valid YAML"),
        ("sweep: {lr: []}", "sweep.lr: expected a non-empty list of values"),
        ("sweep: {lr: 0.1}", "sweep.lr: expected a non-empty list of values"),
        ("sweep: {lr: [0.1, fast]}", "sweep.lr[1]: expected a number, got 'fast'"),
        ("sweep: {trainable_layers: [2, 40]}", "sweep.trainable_layers[1]: must be between 0 and 17, got 40"),
        ("sweep: {mode: hyperband}", "sweep.mode: 'hyperband' is not allowed; use one of: one-at-a-time, grid, random"),
        ("sweep: {lr: {low: 0.1, high: 0.01}}", "sweep.lr: low must be below high, got low=0.1, high=0.01"),
        ("sweep: {lr: {low: 0.001, high: 0.01}}", "sweep.lr: a range is sampled by sweep.mode random or tpe"),
        ("sweep: {mode: tpe, lr: {low: 0, high: 0.01, log: true}}", "sweep.lr.low: must be greater than 0.0"),
        ("sweep: {mode: tpe, lr: {low: 0.001, hi: 0.01}}", "sweep.lr: a range has keys low, high and optionally log"),
        ("sweep: {mode: tpe, augment.flip: {low: 0, high: 1}}", "sweep.augment.flip: augment.flip is not a number"),
        ("sweep: {mode: tpe, trainable_layers: {low: 1, high: 30}}", "sweep.trainable_layers.high: must be between 0"),
        ("sweep: {mode: random, seeds: [0, 1]}", "sweep.seeds: random search runs each sampled configuration once"),
        ("sweep: {trials: 0}", "sweep.trials: must be at least 1, got 0"),
        ("sweep: {early_stop: {method: hyperband}}", "sweep.early_stop.method: 'hyperband' is not allowed"),
        ("sweep: {early_stop: {reduction: 1}}", "sweep.early_stop.reduction: must be at least 2, got 1"),
        ("sweep: {early_stop: {min_epoch: 1}}", "unknown key 'sweep.early_stop.min_epoch'. Did you mean 'min_epochs'?"),
        ("sweep: {budget_epochs: 0}", "sweep.budget_epochs: must be at least 1, got 0"),
        ("sweep: {warmup.lrr: [0.1]}", "unknown key 'sweep.warmup.lrr'. Did you mean 'warmup.lr'?"),
        ("sweep: {seeds: [zero]}", "sweep.seeds[0]: expected an integer, got 'zero'"),
    ],
)
def test_bad_params_name_the_key_and_the_allowed_values(text: str, message: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr", "override 'lr' is malformed; write key=value"),
        ("=3", "override '=3' is malformed"),
        ("warmup..lr=1", "override 'warmup..lr=1' is malformed"),
        ("lr=[0.1", "override 'lr=[0.1': the value is not valid YAML"),
        ("nope=1", "unknown key 'nope'"),
        ("warmup=3", "warmup: expected a mapping of keys to values, got 3"),
        ("sweep.warmup.lrr=[0.1]", "unknown key 'sweep.warmup.lrr'. Did you mean 'warmup.lr'?"),
        ("sweep.early_stop.min_epoch=1", "unknown key 'sweep.early_stop.min_epoch'. Did you mean 'min_epochs'?"),
    ],
)
def test_malformed_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ParamsError) as caught:
        Params().override([override])
    assert message in str(caught.value)


def test_missing_params_file_says_where_to_run(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params.yaml: not found; run from the project root"):
        load_params(tmp_path / "params.yaml")


def test_phase_options_default_to_the_report_and_are_validated() -> None:
    for phase in (Params().warmup, Params().finetune):
        assert (phase.schedule, phase.warmup_steps, phase.weight_decay, phase.label_smoothing) == (
            "constant",
            0,
            0.0,
            0.0,
        )
    tuned = Params().override(["finetune.schedule=onecycle", "finetune.warmup_steps=50", "warmup.weight_decay=0.05"])
    assert (tuned.finetune.schedule, tuned.finetune.warmup_steps, tuned.warmup.weight_decay) == ("onecycle", 50, 0.05)
    for override, message in (
        (
            "finetune.schedule=linear",
            "finetune.schedule: 'linear' is not allowed; use one of: constant, cosine, onecycle",
        ),
        ("finetune.label_smoothing=0.7", "finetune.label_smoothing: must be between 0.0 and 0.5, got 0.7"),
        ("warmup.weight_decay=-1", "warmup.weight_decay: must be between 0.0 and 1.0, got -1.0"),
        ("finetune.warmup_steps=-3", "finetune.warmup_steps: must be at least 0, got -3"),
    ):
        with pytest.raises(ParamsError) as caught:
            Params().override([override])
        assert message in str(caught.value)
    assert "finetune.schedule" in sweepable_keys()


def test_project_recipes(tmp_path: Path) -> None:
    """The committed recipes on the committed params.yaml (git's copies, as above)."""
    from mobitune.params import recipe_overrides

    params_file = pristine_copy("params.yaml", tmp_path)
    report, tuned_recipe = (pristine_copy(f"recipes/{name}.yaml", tmp_path) for name in ("report", "tuned"))
    assert load_params(params_file, recipe=report) == Params()
    tuned = load_params(params_file, ["lr=0.0005"], recipe=tuned_recipe)
    assert tuned.lr == 0.0005, "--set comes after the recipe"
    assert tuned.trainable_layers == 17 and tuned.finetune.schedule == "cosine"
    assert all("=" in o for o in recipe_overrides(tuned_recipe))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: 0.1", "unknown key 'lrr'. Did you mean 'lr'?"),
        ("finetune: {epochs: 3}", "finetune: recipes are flat; write each nested key dotted"),
        ("- lr: 0.1", "a recipe is a mapping of dotted param keys to values"),
        ("", "a recipe is a mapping of dotted param keys to values"),
        ("finetune.schedule: linear", "finetune.schedule: 'linear' is not allowed"),
        ("lr: [0.1", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    params_file = pristine_copy("params.yaml", tmp_path)
    with pytest.raises(ParamsError) as caught:
        load_params(params_file, recipe=recipe)
    assert str(recipe) in str(caught.value) and message in str(caught.value)
    with pytest.raises(ParamsError, match="recipe not found"):
        load_params(params_file, recipe=tmp_path / "missing.yaml")


def test_the_project_tests_pass_in_a_clone_whose_workspace_dvc_edited(tmp_path: Path) -> None:
    """The README's workflow leaves the workspace changed: `dvc exp run -S lr=0.002` rewrites params.yaml, a user
    edits a recipe, `dvc repro` fills data/. In a clone so changed (its tests/ the ones under test here), the tests
    that check the project's own files still pass: they read git's copies, not the workspace."""
    from helpers import ROOT, run

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], tmp_path)
    shutil.rmtree(clone / "tests")
    shutil.copytree(ROOT / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    params = clone / "params.yaml"
    params.write_text(params.read_text().replace("\nlr: 0.005 ", "\nlr: 0.002 ", 1))
    (clone / "recipes" / "tuned.yaml").write_text("lr: 0.1\n")
    (clone / "data" / "metrics").mkdir(parents=True)
    assert run(["git", "status", "--porcelain", "params.yaml", "recipes"], clone).stdout.split() == [
        *("M", "params.yaml", "M", "recipes/tuned.yaml")
    ]
    chosen = "project_params_load or project_recipes or bad_recipes_name"
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_params.py", "-k", chosen],
        clone,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith("8 passed"), (
        result.stdout + result.stderr
    )
