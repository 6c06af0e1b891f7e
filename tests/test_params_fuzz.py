"""Fuzz the params loader: any YAML raises ParamsError or loads into params that dump and re-load to themselves."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobitune.params import Params, ParamsError, parse_params, set_dotted, sweepable_keys

KEYS = sorted(
    {
        *sweepable_keys(),
        "device",
        "sweep",
        "storage",
        "storage.uri",
        "sweep.mode",
        "sweep.seeds",
        "sweep.lr",
        "sweep.model.dropout",
        "data",
        "model",
        "warmup",
        "bogus",
        "sweep.axes",
    }
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "cuda:1", "first", "last", "grid", "one-at-a-time", "s3://bucket/x", "1e-3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def nest(flat: dict[str, object]) -> dict[str, object]:
    tree: dict[str, object] = {}
    for dotted, value in flat.items():
        set_dotted(tree, dotted, value)
    return tree


def outcome(text: str) -> None:
    """Either a clear ParamsError, or params that dump and load back to themselves."""
    try:
        params = parse_params(text)
    except ParamsError:
        return
    assert isinstance(params, Params)
    dumped = yaml.safe_dump(params.to_dict())
    assert parse_params(dumped) == params
    assert yaml.safe_dump(parse_params(dumped).to_dict()) == dumped


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_structured_yaml_loads_or_raises_params_error(flat: dict[str, object]) -> None:
    outcome(yaml.safe_dump(nest(flat)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_loads_or_raises_params_error(text: str) -> None:
    outcome(text)


PLAUSIBLE = st.sampled_from(
    [0, 1, 2, 5, 17, 0.001, 0.5, True, False, None, "first", "last", "cosine", "frozen", "none"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(sweepable_keys())), PLAUSIBLE, max_size=5))
def test_plausible_values_round_trip(flat: dict[str, object]) -> None:
    outcome(yaml.safe_dump(nest(flat)))
