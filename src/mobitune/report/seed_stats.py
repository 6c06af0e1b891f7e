"""The statistics of the lab documents, done once: over seeds, never over runs.

A config's figure is the mean and sample standard deviation of its *seeds* (the runs of one seed averaged first,
so a seed run twice does not count twice); a Δ between two configs is paired by seed (the mean and sample std of
the per-seed differences, on the seeds both ran); it is *inside the noise* when its size is under the noise floor,
the larger seed std of the two configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


def per_seed(runs: pd.DataFrame, metric: str = "test_accuracy") -> pd.Series:
    """``metric`` in % per seed (the mean of a seed's runs), seeds without it left out; indexed by seed."""
    return (runs.groupby("seed")[metric].mean() * 100).dropna().sort_index()


def spread_text(seeds: pd.Series, unit: str = "") -> str:
    """``86.50 ± 1.29`` (mean ± sample std over seeds), ``87.00 (1 seed)``; empty where there is none."""
    if seeds.empty:
        return ""
    if len(seeds) == 1:
        return f"{seeds.mean():.2f}{unit} (1 seed)"
    return f"{seeds.mean():.2f} ± {seeds.std():.2f}{unit}"


@dataclass(frozen=True)
class Delta:
    """A paired Δ in points: the mean of the per-seed differences, their sample std, how many seeds."""

    mean: float
    std: float  # NaN with one pair
    pairs: int


def paired_delta(config: pd.Series, reference: pd.Series) -> Delta:
    """``config`` against ``reference`` (:func:`per_seed` series) on the seeds both ran."""
    shared = config.index.intersection(reference.index)
    differences = config[shared] - reference[shared]
    if differences.empty:
        return Delta(math.nan, math.nan, 0)
    return Delta(float(differences.mean()), float(differences.std()) if len(differences) > 1 else math.nan, len(shared))


def noise_floor(*configs: pd.Series) -> float:
    """The larger seed std (points) of the configs compared; NaN where none ran two seeds."""
    spreads = [series.std() for series in configs if len(series) > 1]
    return float(max(spreads)) if spreads else math.nan


def inside_noise(delta: Delta, noise: float) -> bool:
    """Whether ``delta`` is under the noise floor (False where the floor is unknown)."""
    return not math.isnan(noise) and abs(delta.mean) < noise


def delta_text(delta: Delta, noise: float) -> str:
    """``+7.40 ± 1.20 (3 seeds)``; ``, inside the noise`` where it is under ``noise``; ``noise unknown``
    where no config has two seeds."""
    if not delta.pairs:
        return "no seed in common"
    spread = "" if math.isnan(delta.std) else f" ± {delta.std:.2f}"
    text = f"{delta.mean:+.2f}{spread} ({delta.pairs} seed{'s' if delta.pairs > 1 else ''})"
    if math.isnan(noise):
        return f"{text}, noise unknown"
    return f"{text}, inside the noise" if inside_noise(delta, noise) else text
