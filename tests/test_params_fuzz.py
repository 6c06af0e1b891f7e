"""Fuzz the params loader: any YAML loads into valid params or raises ParamsError, nothing else."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobitune.params import Params, ParamsError, parse_params, sweepable_keys

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
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[leaf] = value
    return tree


def outcome(text: str) -> None:
    try:
        assert isinstance(parse_params(text), Params)
    except ParamsError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_structured_yaml_loads_or_raises_params_error(flat: dict[str, object]) -> None:
    outcome(yaml.safe_dump(nest(flat)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_loads_or_raises_params_error(text: str) -> None:
    outcome(text)
