"""How a sweep starts, the same from ``mobitune sweep`` and from the Prefect flow: its params (a resumed sweep's
own, or the params file with a recipe and overrides), its backend, and the checks that must pass before anything
runs (the devices of local trials, the storage). No Prefect here: the CLI runs it before Prefect starts, so bad
params, a device this machine lacks or a missing bucket fail in a second."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.orchestration.local_runner import local_devices
from mobitune.params import Params, load_params, params_from_dict
from mobitune.storage.names import check_name, check_project_path
from mobitune.storage.stores import check_storage
from mobitune.sweep.run import load_record, resume_backend
from mobitune.sweep.scheduler import Scheduler


@dataclass(frozen=True)
class SweepStart:
    params: Params
    backend: str
    devices: list[str]  # the local backend's trial slots ("cpu", "cuda:0", ...); empty on workers
    notes: list[str]  # for the user: the resumed sweep's backend, a storage that does not answer yet


def check_paths(*, params_file: str, recipe: str | None, local_root: str, resume: str | None) -> None:
    """The files a sweep reads and writes, as the CLI or a flow parameter names them: inside the project, and a
    resumed sweep's id a name, so that no caller of the API reads or writes any other file of the worker."""
    check_project_path(params_file, "params_file (--params)")
    check_project_path(local_root, "local_root (--local-root)")
    if recipe is not None:
        check_project_path(recipe, "recipe (--recipe)")
    if resume is not None:
        check_name(resume, "resume (--resume)")


def start_sweep(
    *,
    resume: str | None,
    overrides: list[str],
    recipe: str | None,
    settings: dict[str, Any] | None = None,
    params_file: str,
    local_root: str,
    backend: str | None,
    parallel: int | None,
) -> SweepStart:
    """The params, backend and devices of a sweep about to run, checked; raises :class:`MobituneError` naming
    what is wrong. ``settings``: typed values of dotted keys (the sweep form's), set after the recipe."""
    if parallel is not None and parallel < 1:
        raise MobituneError(f"--parallel must be at least 1, got {parallel}")
    check_paths(params_file=params_file, recipe=recipe, local_root=local_root, resume=resume)
    notes = []
    if resume:
        if overrides or recipe or settings:
            raise MobituneError("--resume continues a sweep with the params it started with: drop --set and --recipe")
        record = load_record(Path(local_root), resume)
        params = params_from_dict(record["params"])
        backend, note = resume_backend(record, backend)
        notes.append(note)
    else:
        params = load_params(params_file, overrides, recipe, settings)
        backend = backend or "local"
    devices = []
    if backend == "local":  # on workers, the device is each worker's
        devices = local_devices(params, parallel, [trial.params for trial in Scheduler.create(params).planned])
    warning = check_storage(params.storage.uri, allow_unreachable=backend == "local")
    if warning:
        notes.append(f"warning: {warning}")
    return SweepStart(params, backend, devices, notes)
