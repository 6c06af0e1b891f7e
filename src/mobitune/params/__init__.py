"""Typed, validated parameters (pydantic): the one place that reads ``params.yaml``.

Every other module receives a :class:`Params` object. Overrides use the
``key=value`` syntax of ``dvc exp run -S`` (dotted keys for nested values,
values parsed as YAML), so ``lr=0.002`` and ``sweep.lr=[0.05,0.005]`` mean
the same thing to DVC, the CLI and the sweep flow. Validation is pydantic's,
strict (no ``1`` for ``true``, no ``1.5`` for an integer); its errors are
translated into one line that names the key, the value and what is allowed.
"""
# the package's public names, re-exported: callers import from mobitune.params

from mobitune.params.loading import defaults_yaml, load_params, parse_params, recipe_overrides
from mobitune.params.messages import ParamsError
from mobitune.params.models import (
    EXECUTION_KEYS,
    NUM_BLOCKS,
    PARAMS_FILE,
    S3_URI,
    S3_URI_RULE,
    AugmentParams,
    DataParams,
    EarlyStopParams,
    ModelParams,
    OptimizationParams,
    Params,
    SearchRange,
    field_type,
    get_dotted,
    params_fields,
    params_from_dict,
    parse_override,
    set_dotted,
    sweepable_keys,
    to_override,
)
