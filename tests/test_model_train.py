"""Model head, freezing, weight loading, and the shared training loop on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import closed_port_url

from mobitune.params import AugmentParams, Params
from mobitune.storage.records import FLIP_METRICS
from mobitune.training.batches import BatchTransform, DeviceData, DeviceSplit, augment_batch, resolve_device
from mobitune.training.data import Dataset, Split, load_dataset, prepare
from mobitune.training.evaluate import evaluate_checkpoint
from mobitune.training.loop import run_finetune, run_warmup
from mobitune.training.memory import (
    GIB,
    DeviceMemoryError,
    check_trial_fits,
    saved_for_backward_bytes,
    trial_memory_bytes,
)
from mobitune.training.model import MobileNetClassifier, ModelError, build_model, load_checkpoint, set_trainable_layers


@pytest.fixture(scope="module")
def prepared(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "cifar10"
    prepare(str(cifar_archive), None, out)
    return out


def small_params(weights: Path | str = "none", **changes: object) -> Params:
    overrides = [
        "device=cpu",
        f"model.pretrained={weights}",
        "model.hidden_units=64",
        "warmup.epochs=2",
        "warmup.batch_size=64",
        "finetune.epochs=2",
        "batch_size=64",
        "lr=0.002",
    ]
    return Params().override(overrides + [f"{k}={v}" for k, v in changes.items()])


def untimed(row: dict) -> dict:
    """A history row without what the clock decides (an epoch's seconds, its images per second)."""
    return {
        key: value for key, value in row.items() if key not in ("seconds", "train_images_per_s", "eval_images_per_s")
    }


def device_data_for(params: Params, prepared: Path, train_limit: int | None = None) -> DeviceData:
    dataset = load_dataset(prepared, train_limit, params.data.test_limit)
    return DeviceData.create(params, dataset, resolve_device(params.device))


def test_head_matches_the_report() -> None:
    model = MobileNetClassifier(num_classes=10, hidden_units=128, dropout=0.2)
    layers = [type(m).__name__ for m in model.classifier]
    assert layers == ["Flatten", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("blocks", "side", "last_conv", "expected"),
    [(10, "first", False, range(1, 11)), (3, "last", False, range(15, 18)), (17, "first", True, range(1, 19))],
)
def test_freezing_by_block_count(blocks: int, side: str, last_conv: bool, expected: range) -> None:
    model = MobileNetClassifier(10, 32, 0.2)
    set_trainable_layers(model, blocks, side, last_conv)
    trainable = [i for i, layer in enumerate(model.features) if any(p.requires_grad for p in layer.parameters())]
    assert trainable == list(expected)
    assert all(p.requires_grad for p in model.classifier.parameters())
    model.train()
    for index, layer in enumerate(model.features):
        for bn in (m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            assert bn.training == (index in expected), "frozen BatchNorm layers must stay in eval mode"


def test_frozen_features_keep_their_weights_and_statistics(prepared: Path) -> None:
    params = small_params(**{"warmup.epochs": 1})
    device_data = device_data_for(params, prepared, train_limit=128)
    torch.manual_seed(0)
    before = build_model(params.model, 10).state_dict()
    run_warmup(params, device_data, prepared.parent / "warmup.pt")
    after = load_checkpoint(prepared.parent / "warmup.pt")["model"]
    for key, value in before.items():
        if key.startswith("features."):
            assert torch.equal(value, after[key]), key
    assert not torch.equal(before["classifier.2.weight"], after["classifier.2.weight"])


def test_state_dict_paths_load_with_weights_only(tmp_path: Path) -> None:
    source = MobileNetClassifier(10, 32, 0.2)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    model = build_model(Params().model.model_copy(update={"pretrained": str(tmp_path / "weights.pt")}), 10)
    assert torch.equal(model.features[5].conv[0][0].weight, source.features[5].conv[0][0].weight)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelError, match="weights.pt: not a PyTorch checkpoint or state dict"):
        build_model(Params().model.model_copy(update={"pretrained": str(tmp_path / "weights.pt")}), 10)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a MobileNetV2 state dict"):
        build_model(Params().model.model_copy(update={"pretrained": str(tmp_path / "other.pt")}), 10)


def test_imagenet_offline_says_how_to_seed_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("https_proxy", closed_port_url(""))  # nothing reachable, as on this machine
    with pytest.raises(ModelError) as caught:
        build_model(Params().model, 10)
    message = str(caught.value)
    assert "cannot fetch the ImageNet weights" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in message
    assert "set model.pretrained to a local path" in message


def test_cuda_is_used_where_it_exists_and_refused_by_name_where_not() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(Exception, match="device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")


def test_augmentation_crops_and_flips_whole_batches() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(0)
    flipped = augment_batch(images, AugmentParams(flip=True, crop_padding=0), generator)
    for original, out in zip(images, flipped, strict=True):
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
    cropped = augment_batch(images, AugmentParams(flip=False, crop_padding=1), generator)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, y : y + 4, x : x + 4] for y in range(3) for x in range(3)]
        assert any(torch.equal(cropped[i], w) for w in windows)


def test_upsampling_and_channels_last() -> None:
    x = BatchTransform(torch.device("cpu"), 64)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert x.shape == (2, 3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last)


def test_batches_cover_the_split_once_per_epoch() -> None:
    split = DeviceSplit(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
    seen = torch.cat([y for _, y in split.batches(4, torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))


def test_learning_is_real(
    prepared: Path, calibrated_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Warmup + finetune on a tiny set with learnable structure: far above the 10% of chance, with no warning;
    random frozen features (model.pretrained none) end the warmup at chance, and it says why."""
    params = small_params(calibrated_weights)
    device_data = device_data_for(params, prepared)
    warm = run_warmup(params, device_data, tmp_path / "warmup.pt")
    assert "warning" not in capsys.readouterr().out
    random_features = small_params(**{"warmup.epochs": 1})
    run_warmup(random_features, device_data_for(random_features, prepared, train_limit=128), tmp_path / "random.pt")
    assert "warning: the warmup ended at chance" in capsys.readouterr().out
    fine = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt")
    assert warm.status == fine.status == "ok"
    assert [r["step"] for r in warm.history + fine.history] == [1, 2, 3, 4]
    assert fine.history[-1]["train_loss"] < warm.history[0]["train_loss"]
    evaluation = evaluate_checkpoint(params, device_data, tmp_path / "finetune.pt")
    assert evaluation.test_accuracy >= 0.6
    assert evaluation.test_accuracy == pytest.approx(fine.history[-1]["test_accuracy"], abs=1e-6)
    assert np.mean(list(evaluation.per_class_accuracy.values())) == pytest.approx(evaluation.test_accuracy, abs=0.02)


def test_divergence_is_recorded_not_raised(prepared: Path, tmp_path: Path) -> None:
    params = small_params(lr=1e30)
    device_data = device_data_for(params, prepared, train_limit=256)
    run_warmup(params, device_data, tmp_path / "warmup.pt")
    result = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt")
    assert result.status == "diverged"
    assert len(result.history) == 1 and math.isnan(result.history[0]["train_loss"])
    assert load_checkpoint(tmp_path / "finetune.pt")["status"] == "diverged"


@pytest.mark.parametrize(
    ("row", "warmup_accuracy", "expected"),
    [
        ({"test_accuracy": 0.11, "train_loss": 1.2}, 0.60, "test accuracy 11.0% (chance: 1/10 + 2%), 60.0% after"),
        ({"test_accuracy": 0.35, "train_loss": 2.30}, 0.60, "train loss 2.3000 is ln 10"),
        ({"test_accuracy": 0.35, "train_loss": 1.9}, 0.60, None),  # worse, not at chance
        ({"test_accuracy": 0.09, "train_loss": 2.30}, 0.11, None),  # never above chance: nothing to lose
        ({"test_accuracy": 0.09, "train_loss": 2.30}, None, None),  # a warmup: no earlier phase
    ],
)
def test_a_finetune_that_falls_to_chance_has_collapsed(
    row: dict, warmup_accuracy: float | None, expected: str | None
) -> None:
    from mobitune.training.collapse import collapse_reason

    reason = collapse_reason({**row, "phase": "finetune", "epoch": 2}, 10, warmup_accuracy)
    if expected is None:
        assert reason is None
    else:
        assert reason.startswith("collapsed to chance at finetune epoch 2: ") and expected in reason


@pytest.mark.parametrize(
    ("overrides", "accuracy", "expected"),
    [
        ([], 0.45, None),  # above chance: nothing to say
        (["model.pretrained=none"], 0.10, "model.pretrained is none, so the frozen features are random"),
        (["model.pretrained=standin.pth", "model.image_size=32"], 0.11, "set model.image_size=64 or more"),
        (["model.pretrained=standin.pth", "model.image_size=64"], 0.12, "try another warmup.lr (now 0.001)"),
        (["model.image_size=48"], 0.09, "dead at model.image_size 48"),  # torchvision's weights: said as likely
    ],
)
def test_a_warmup_at_chance_says_why_it_likely_is_and_what_to_change(
    overrides: list[str], accuracy: float, expected: str | None
) -> None:
    from mobitune.training.collapse import warmup_at_chance

    said = warmup_at_chance(Params().override(overrides), accuracy, 10)
    if expected is None:
        assert said is None
    else:
        assert said.startswith(f"the warmup ended at chance ({accuracy:.1%} test accuracy on 10 classes)")
        assert expected in said


def test_frozen_batchnorm_at_a_large_lr_collapses_and_is_recorded_diverged(
    prepared: Path, calibrated_weights: Path, tmp_path: Path
) -> None:
    """``docs/fidelity.md``'s frozen-BatchNorm rows ended at chance and were ``ok``; such a run now stops, diverged,
    at the epoch it collapsed, with the reason in its checkpoint."""
    params = small_params(calibrated_weights, **{"finetune.batchnorm": "frozen", "lr": 0.05, "finetune.epochs": 3})
    device_data = device_data_for(params, prepared)
    warm = run_warmup(params, device_data, tmp_path / "warmup.pt")
    assert warm.status == "ok" and warm.history[-1]["test_accuracy"] > 0.3
    result = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt")
    assert result.status == "diverged" and result.reason.startswith("collapsed to chance at finetune epoch 1")
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    checkpoint = load_checkpoint(tmp_path / "finetune.pt")
    assert (checkpoint["status"], checkpoint["reason"]) == ("diverged", result.reason)


def test_deterministic_kernels_train_as_the_cpu_always_does(prepared: Path, tmp_path: Path) -> None:
    """On the CPU every run repeats already: the switch changes no number, and it is switched off again after."""
    histories = []
    for deterministic in ("true", "false"):
        params = small_params(**{"warmup.epochs": 1, "finetune.epochs": 1, "deterministic": deterministic})
        device_data = device_data_for(params, prepared, train_limit=128)
        assert torch.are_deterministic_algorithms_enabled() == (deterministic == "true")
        run_warmup(params, device_data, tmp_path / "warmup.pt")
        histories.append(run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "fine.pt").history)
    assert [untimed(row) for row in histories[0]] == [untimed(row) for row in histories[1]]


def test_resume_continues_from_the_last_epoch(prepared: Path, tmp_path: Path) -> None:
    params = small_params(**{"warmup.epochs": 1})
    device_data = device_data_for(params, prepared, train_limit=128)
    run_warmup(params, device_data, tmp_path / "warmup.pt")
    first = run_finetune(
        params.override(["finetune.epochs=1"]),
        device_data,
        tmp_path / "warmup.pt",
        tmp_path / "finetune.pt",
    )
    resumed = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt", resume=True)
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]
    uninterrupted = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "again.pt")
    assert resumed.history[1]["train_loss"] == pytest.approx(uninterrupted.history[1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "augment",
    [{}, {"augment.flip": "true", "augment.test_flip": "true"}],
    ids=["plain", "flips-and-test-flips"],
)
def test_cached_features_train_the_head_exactly_like_the_full_forward(
    prepared: Path, calibrated_weights: Path, tmp_path: Path, augment: dict[str, str]
) -> None:
    """With flips the cache keeps each image's mirror features too, and draws between them as the flip would."""
    from mobitune.training.frozen_features import frozen_feature_data
    from mobitune.training.loop import FitRun, fit
    from mobitune.training.phases import warmup_phase

    params = small_params(calibrated_weights, **augment)
    device_data = device_data_for(params, prepared, train_limit=256)
    probe = build_model(params.model, 10)
    set_trainable_layers(probe, 0, "first")
    cached_data = frozen_feature_data(probe, device_data)
    assert cached_data is not None
    assert cached_data.train.images.shape == (256, 2 if augment else 1, 1280)
    histories = []
    for cache in (True, False):
        torch.manual_seed(0)
        model = build_model(params.model, 10)
        run = FitRun(seed=0, checkpoint_path=tmp_path / f"{cache}.pt", cache_features=cache)
        result = fit(model, warmup_phase(params), device_data, run)
        histories.append(result.history)
    for cached, full in zip(*histories, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", *cached.keys() & FLIP_METRICS):
            assert cached[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    assert ("test_accuracy_flips" in histories[0][-1]) == bool(augment)


def test_test_flips_score_the_mean_logits_of_each_image_and_its_mirror_beside_the_single_view(
    prepared: Path, calibrated_weights: Path
) -> None:
    """Both views come from one evaluation: ``test_accuracy`` stays the single view, the flips are labelled."""
    from mobitune.training.loop import evaluate

    torch.manual_seed(0)
    model = build_model(small_params(calibrated_weights).model, 10).eval()
    plain = device_data_for(small_params(), prepared)
    flipped = device_data_for(small_params(**{"augment.test_flip": "true"}), prepared)
    x = plain.test_transform(plain.test.images)
    with torch.no_grad():
        mean_logits = (model(x) + model(x.flip(3))) / 2
    scores, single = evaluate(model, flipped), evaluate(model, plain)
    assert single.flips is None and scores.flips is not None
    assert torch.equal(scores.flips.predicted, mean_logits.argmax(1))
    loss = torch.nn.functional.cross_entropy(mean_logits, plain.test.labels).item()
    assert scores.flips.loss == pytest.approx(loss, rel=1e-5)
    assert (scores.loss, scores.accuracy) == (single.loss, single.accuracy) and torch.equal(
        scores.predicted, single.predicted
    )
    assert single.loss != pytest.approx(loss, rel=1e-3)  # the mirror images count
    row = scores.row()
    assert row["test_accuracy"] == single.accuracy and row["test_accuracy_flips"] == scores.flips.accuracy


def test_recalibrated_batchnorm_statistics_are_those_the_training_batches_show(
    prepared: Path, calibrated_weights: Path
) -> None:
    """After recalibration, switching to batch statistics (as the finetune does) leaves the features as they were."""
    from mobitune.training.batchnorm import recalibrate_batchnorm

    params = small_params(calibrated_weights, **{"model.image_size": "48"})  # not the calibration's 32 px
    device_data = device_data_for(params, prepared, train_limit=256)
    features = build_model(params.model, 10).features
    x = device_data.test_transform(device_data.train.images)

    def batch_statistics_change() -> float:
        with torch.no_grad():
            stored = features.eval()(x)
            batch = features.train()(x)
        return ((batch - stored).norm() / stored.norm()).item()

    before = batch_statistics_change()
    features.load_state_dict(build_model(params.model, 10).features.state_dict())  # the train() pass moved them
    recalibrate_batchnorm(features, device_data.train, device_data.test_transform)
    assert not features.training and all(m.momentum == 0.1 for m in features.modules() if hasattr(m, "momentum"))
    after = batch_statistics_change()
    assert after < 0.05 and before > 0.5, (after, before)  # measured: 0.014 against 0.92 (256 images)


def test_crops_need_the_backbone_every_epoch(prepared: Path) -> None:
    from mobitune.training.frozen_features import frozen_feature_data

    params = small_params(**{"augment.crop_padding": "2"})
    model = build_model(params.model, 10)
    set_trainable_layers(model, 0, "first")
    assert frozen_feature_data(model, device_data_for(params, prepared, train_limit=16)) is None


def recorded_multiplier(schedule: str, warmup_steps: int, step: int, total: int) -> float:
    """The factor on the peak learning rate before step ``step`` that every recorded run trained with (the closed
    form the schedules had before they were composed from ``torch.optim.lr_scheduler``)."""
    if schedule == "onecycle":
        rise = warmup_steps or max(1, round(0.3 * total))
        start, end = 1 / 25, 1 / 25 / 1e4
        if step < rise:
            return start + (1 - start) * (1 - math.cos(math.pi * step / rise)) / 2
        fall = max(1, total - rise)
        return end + (1 - end) * (1 + math.cos(math.pi * min(step - rise, fall) / fall)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total - warmup_steps)
        return (1 + math.cos(math.pi * min(step - warmup_steps, span) / span)) / 2
    return 1.0


def schedule_curve(total: int = 10, **options: object) -> list[float]:
    """The learning rate factor at each of ``total`` optimiser steps of a phase with these options."""
    from mobitune.params import OptimizationParams
    from mobitune.training.loop import lr_schedule

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=0.01)
    scheduler = lr_schedule(optimizer, OptimizationParams(**options), total)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"] / 0.01)
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_the_torch_schedules_give_the_recorded_runs_rates_step_by_step(schedule: str) -> None:
    for warmup_steps in (0, 1, 3, 10):
        for total in (1, 2, 7, 50, 391):  # 391: one epoch of 50k images in batches of 128
            expected = [recorded_multiplier(schedule, warmup_steps, step, total) for step in range(total)]
            curve = schedule_curve(total, schedule=schedule, warmup_steps=warmup_steps)
            assert curve == pytest.approx(expected, rel=1e-12, abs=1e-15), (warmup_steps, total)


def test_learning_rate_schedules_on_fixed_steps() -> None:
    curve = schedule_curve
    assert curve() == pytest.approx([1.0] * 10)
    assert curve(warmup_steps=4)[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    cosine = curve(schedule="cosine")
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and 0 < cosine[-1] < 0.03
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    warm_cosine = curve(schedule="cosine", warmup_steps=2)
    assert warm_cosine[:3] == pytest.approx([0.5, 1.0, 1.0]) and warm_cosine[-1] < 0.1
    onecycle = curve(100, schedule="onecycle")
    assert onecycle[0] == pytest.approx(1 / 25) and max(onecycle) == pytest.approx(onecycle[30]) == 1.0
    assert onecycle[-1] < 0.001
    rising = curve(100, schedule="onecycle", warmup_steps=10)
    assert rising.index(max(rising)) == 10


def test_weight_decay_spares_biases_and_norms_and_the_schedule_drives_the_rate() -> None:
    from mobitune.training.loop import make_optimizer
    from mobitune.training.phases import finetune_phase

    params = small_params(**{"finetune.weight_decay": 0.05, "finetune.schedule": "cosine", "trainable_layers": 2})
    model = build_model(params.model, 10)
    set_trainable_layers(model, 2, "first")
    optimizer, scheduler = make_optimizer(model, finetune_phase(params), steps_per_epoch=4)
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    rates = []
    for _ in range(8):  # 2 epochs x 4 steps
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == params.lr and rates[4] == pytest.approx(params.lr / 2) and rates[-1] < params.lr * 0.05


def test_label_smoothing_trains_but_reports_plain_cross_entropy() -> None:
    """With a learning rate of 0 the weights stay put: the loss reported is their plain cross-entropy."""
    import torch.nn.functional as F

    from mobitune.training.loop import train_one_epoch

    torch.manual_seed(0)
    features = torch.randn(300, 8)
    model = torch.nn.Linear(8, 10)
    with torch.no_grad():
        model.weight.mul_(5)
        logits = model(features)
    labels = logits.argmax(1)  # confident and right: plain loss near 0, smoothed far above it
    device_data = DeviceData(None, torch.device("cpu"), DeviceSplit(features, labels), None, lambda x, g: x, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    reported, _ = train_one_epoch(model, optimizer, device_data, 64, torch.Generator(), "test", label_smoothing=0.3)
    plain = F.cross_entropy(logits, labels).item()
    assert reported == pytest.approx(plain, rel=1e-5)
    assert F.cross_entropy(logits, labels, label_smoothing=0.3).item() > plain + 1


def test_resume_with_a_schedule_continues_exactly(prepared: Path, tmp_path: Path) -> None:
    """Stopped after epoch 1 of 2 and resumed: the same curve as a run that never stopped."""
    options = {"finetune.schedule": "cosine", "finetune.weight_decay": 0.1, "finetune.label_smoothing": 0.1}
    params = small_params(**{"warmup.epochs": 1, **options})
    device_data = device_data_for(params, prepared, train_limit=128)
    run_warmup(params, device_data, tmp_path / "warmup.pt")

    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt", on_checkpoint=stop)
    assert len(load_checkpoint(tmp_path / "finetune.pt")["history"]) == 1
    resumed = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt", resume=True)
    uninterrupted = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "again.pt")
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert resumed.history[1][key] == pytest.approx(uninterrupted.history[1][key], rel=1e-4), key


@pytest.mark.parametrize("batchnorm", ["train", "frozen"])
def test_finetune_batchnorm_statistics_train_or_stay(prepared: Path, tmp_path: Path, batchnorm: str) -> None:
    """``frozen``: the unfrozen blocks' weights (BatchNorm's scale included) train, their statistics stay."""
    params = small_params(**{"warmup.epochs": 1, "finetune.epochs": 1, "trainable_layers": 2})
    params = params.override([f"finetune.batchnorm={batchnorm}"])
    device_data = device_data_for(params, prepared, train_limit=128)
    run_warmup(params, device_data, tmp_path / "warmup.pt")
    run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt")
    before = load_checkpoint(tmp_path / "warmup.pt")["model"]
    after = load_checkpoint(tmp_path / "finetune.pt")["model"]
    block = "features.1.conv.0"  # the first trainable block's first conv + BatchNorm
    assert not torch.equal(before[f"{block}.0.weight"], after[f"{block}.0.weight"])
    assert not torch.equal(before[f"{block}.1.weight"], after[f"{block}.1.weight"])
    kept = torch.equal(before[f"{block}.1.running_mean"], after[f"{block}.1.running_mean"])
    assert kept == (batchnorm == "frozen")
    assert torch.equal(before["features.5.conv.0.1.running_mean"], after["features.5.conv.0.1.running_mean"])


def test_segments_up_to_rungs_train_exactly_like_one_run(prepared: Path, tmp_path: Path) -> None:
    """An ASHA promotion: stop at epoch 1 (a rung), resume to 3, then to 4; the schedule is the whole run's,
    so every epoch equals the uninterrupted run's, and no epoch is trained twice."""
    params = small_params(**{"warmup.epochs": 1, "finetune.epochs": 4, "finetune.schedule": "cosine"})
    device_data = device_data_for(params, prepared, train_limit=128)
    run_warmup(params, device_data, tmp_path / "warmup.pt")
    segments = [
        run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "finetune.pt", resume=True, until=until)
        for until in (1, 3, 4)
    ]
    assert [len(s.history) for s in segments] == [1, 3, 4]
    assert [row["epoch"] for row in segments[-1].history] == [1, 2, 3, 4]
    uninterrupted = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "again.pt")
    for segmented, whole in zip(segments[-1].history, uninterrupted.history, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert segmented[key] == pytest.approx(whole[key], rel=1e-4), (segmented["epoch"], key)


def test_compiled_steps_train_like_eager_and_resume_exactly(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compile``: the train and eval steps captured by torch.compile give eager's losses within 1e-4, the
    checkpoints are the eager model's (no wrapper in their keys), and a resumed run equals an uninterrupted one.

    Captured with dynamo and AOT autograd (backend ``aot_eager``), without Inductor's code generation (70 s
    for this model on this 2-core CPU). The phase trains the head on cached features, so what is captured is
    the head: capturing the whole network takes 15-20 s here, and benchmarks/gpu_speed.py captures it on a GPU.
    """
    captured: list[str] = []
    compile_eagerly = torch.compile

    def capture(module: torch.nn.Module, mode: str, dynamic: bool) -> torch.nn.Module:
        captured.append(mode)
        return compile_eagerly(module, backend="aot_eager", dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", capture)
    params = small_params(**{"warmup.epochs": 1, "finetune.epochs": 2, "trainable_layers": 0})
    device_data = device_data_for(params, prepared, train_limit=160)  # batches of 64: the last one is smaller
    run_warmup(params, device_data, tmp_path / "warmup.pt")
    eager = run_finetune(params, device_data, tmp_path / "warmup.pt", tmp_path / "eager.pt")
    assert captured == []
    compiled = params.override(["compile=default"])
    whole = run_finetune(compiled, device_data, tmp_path / "warmup.pt", tmp_path / "whole.pt")
    assert captured == ["default"]
    for ours, theirs in zip(whole.history, eager.history, strict=True):
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (ours["epoch"], key)
    keys = load_checkpoint(tmp_path / "eager.pt")["model"].keys()
    assert load_checkpoint(tmp_path / "whole.pt")["model"].keys() == keys
    run_finetune(compiled, device_data, tmp_path / "warmup.pt", tmp_path / "resumed.pt", until=1)
    resumed = run_finetune(compiled, device_data, tmp_path / "warmup.pt", tmp_path / "resumed.pt", resume=True)
    assert [untimed(row) for row in resumed.history] == [untimed(row) for row in whole.history]


def test_memory_estimate_counts_what_a_real_forward_keeps_and_refuses_a_full_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The estimate's activations, from shapes alone (the meta device), are a real training forward's; a trial
    is refused on a GPU without that much memory left, with a message that says what to do."""
    params = small_params(**{"model.image_size": 32, "trainable_layers": 4})
    real = build_model(params.model, 10)
    set_trainable_layers(real, params.trainable_layers, params.model.unfreeze_from)
    with torch.device("meta"):
        shapes_only = MobileNetClassifier(10, params.model.hidden_units, params.model.dropout)
    set_trainable_layers(shapes_only, params.trainable_layers, params.model.unfreeze_from)
    real_bytes = saved_for_backward_bytes(real, torch.rand(4, 3, 32, 32))
    meta_batch = torch.empty(4, 3, 32, 32, device="meta")
    # within 1%: the meta device keeps the per-channel vectors that the CPU's BatchNorm in eval mode leaves empty
    assert saved_for_backward_bytes(shapes_only, meta_batch) == pytest.approx(real_bytes, rel=0.01)

    def need(*overrides: str) -> int:
        return trial_memory_bytes(params.override(list(overrides)), 10, 60_000, (3, 32, 32))

    assert need("model.image_size=32") < need("model.image_size=64") < need("model.image_size=224")
    assert need("batch_size=32") < need("batch_size=192") and need("trainable_layers=17") > need()

    free = need() + GIB // 2
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free - GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * GIB)  # an earlier trial's, cached
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * GIB)
    images = np.zeros((50_000, 3, 32, 32), dtype=np.uint8)
    data = Dataset(Split(images, np.zeros(50_000)), Split(images[:10_000], np.zeros(10_000)), list("abcdefghij"), {})
    check_trial_fits(params, torch.device("cuda:0"), data)  # free + what this process caches: it fits
    with pytest.raises(DeviceMemoryError, match=r"cuda:0: 1 trial\(s\) of about .* GiB each need .* GiB, .* GiB is fr"):
        check_trial_fits(params.override(["model.image_size=224"]), torch.device("cuda:0"), data)
