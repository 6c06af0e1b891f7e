"""Prefect flow ``sweep`` (deployment entry point ``flows/sweep.py``); the ``trial`` flow it fans out to is in
:mod:`mobitune.orchestration.trial_flow`.

``sweep`` asks its :class:`~mobitune.sweep.scheduler.Scheduler` for trial segments
(enumerated or sampled trials, early-stopping rungs, a budget), trains each
distinct warmup once before the trials that share it, fans the segments out,
gathers, aggregates and publishes. Two backends, same results:

- ``local``: trials are Prefect tasks in this process, one per device at a time
  (one per GPU; on a CPU-only machine one at a time unless ``parallel`` says
  otherwise);
- ``workers``: trials run in long-lived flow runs of the ``trial-slot``
  deployment on work pool ``gpu`` (:class:`~mobitune.orchestration.slots.SlotRunner`), each trial a ``trial``
  task run there. A trial whose slot crashed (worker killed) is given to another slot
  and resumes from its last per-epoch checkpoint in the artifact store.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from mobitune.errors import MobituneError
from mobitune.orchestration.form import SweepSettings
from mobitune.orchestration.presentation import display_table, inline_figures
from mobitune.orchestration.slots import SlotRunner
from mobitune.orchestration.sweep_start import start_sweep
from mobitune.redaction import redact_logs
from mobitune.report.sweep_report import outcome
from mobitune.storage.names import Name, ProjectPath
from mobitune.storage.records import json_safe
from mobitune.storage.stores import LOCAL_ROOT
from mobitune.sweep.preview import plan_headline
from mobitune.sweep.publish import publish
from mobitune.sweep.run import SweepRun

SEARCH_IN_FLIGHT = 4  # random/tpe trials in flight on workers unless --parallel says: each waits for feedback


@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner())
def sweep(
    settings: SweepSettings | None = None,
    overrides: list[str | SecretStr] | None = None,
    recipe: ProjectPath | None = None,
    params_file: ProjectPath = "params.yaml",
    backend: Literal["local", "workers"] = "local",
    parallel: int | None = None,
    local_root: ProjectPath = LOCAL_ROOT,
    deployment: str = "trial-slot/gpu",
    cache: bool = True,
    resume: Name | None = None,
) -> State:
    """The whole study of ``params.sweep`` (``recipe``, then ``settings``, then ``overrides``, on
    ``params_file``); a call returns its folder. ``settings`` is the deployment form's typed view of the main keys.
    The flow run takes the sweep's id as its name, and ends Completed with the sweep's outcome as the state's
    message (what ``mobitune setup --notify`` sends).

    An override given as a ``SecretStr`` (``mobitune sweep`` passes those that carry a URL's credentials or a
    configured secret so) reaches the run whole while Prefect records it masked.

    ``cache``: reuse the stored result of a trial whose config, data and training code are unchanged
    (False trains every trial and its warmup again, and refreshes what is stored). ``resume``: the id of
    a sweep whose process died; it continues in its own folder with the params it started with. Paths are
    inside the project and ``resume`` a sweep id (:mod:`mobitune.storage.names`): Prefect refuses others.
    """
    redact_logs()
    logger = get_run_logger()
    overrides = [o.get_secret_value() if isinstance(o, SecretStr) else o for o in overrides or []]
    typed = settings.values() if settings else {}
    started = start_sweep(
        resume=resume,
        overrides=overrides,
        recipe=recipe,
        settings=typed,
        params_file=params_file,
        local_root=local_root,
        backend=backend,
        parallel=parallel,
    )
    for note in started.notes:
        logger.warning(note)
    params = started.params
    if resume:
        run = SweepRun.resume(Path(local_root), resume, backend, cache)
    else:
        run = SweepRun.start(params, Path(local_root), recipe, overrides, backend, cache, settings=typed)
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=run.sweep_id)
        # the count and axes `mobitune sweep --dry-run` prints first
        logger.info(
            "sweep %s: %s, %s backend -> %s", run.sweep_id, plan_headline(run.scheduler), backend, run.sweep_dir
        )
        if backend == "local":
            from mobitune.orchestration.local_runner import (
                LocalRunner,
            )  # only a local sweep runs trials in this process

            run.drive(LocalRunner(started.devices), len(started.devices), logger)
        else:
            # enumerated trials may all be in flight at once; sampled ones wait for feedback
            slots = parallel or (SEARCH_IN_FLIGHT if params.sweep.searched else len(run.scheduler.planned))
            with get_client(sync_client=True) as client:
                runner = SlotRunner(
                    run,
                    deployment,
                    client,
                    params.sweep.worker_timeout_s,
                    slots,
                    logger,
                    server_outage_s=params.sweep.server_outage_s,
                    store_outage_s=params.storage.outage_s,
                )
                try:
                    run.drive(runner, slots, logger)
                finally:
                    runner.close()
        results = run.finish()
        sweep_id, sweep_dir = run.sweep_id, run.sweep_dir
        table = json_safe(display_table(results).to_dict(orient="records"))
        key = artifact_key(sweep_id)
        create_table_artifact(table, key=f"{key}-results", description=f"Sweep {sweep_id}: one row per trial")
        report = inline_figures((sweep_dir / "report.md").read_text(), sweep_dir)
        create_markdown_artifact(report, key=f"{key}-report", description=f"Sweep {sweep_id} report")
        where = publish(sweep_dir, params.storage.uri) if params.storage.uri else str(sweep_dir)
        logger.info("published to %s" if params.storage.uri else "results in %s", where)
        given_up = [t for t in runner.timed_out if not t.startswith("warmup-")] if backend == "workers" else []
        if given_up:
            raise NoWorkerError(
                f"{len(given_up)} trial(s) never started: no worker polled work pool '{runner.pool}' "
                f"for {params.sweep.worker_timeout_s} s (sweep.worker_timeout_s). The trials that finished are in "
                f"{sweep_dir}. Start a worker in the project root with: {runner.start_worker}"
            )
        return Completed(message=f"{outcome(results, sweep_id)}; report: {where}/report.md", data=str(sweep_dir))
    finally:
        run.release()  # a --resume of this sweep may start now


def artifact_key(sweep_id: str) -> str:
    """``sweep-<id>``: each sweep's artifacts under keys of their own (Prefect allows a-z, 0-9 and dashes)."""
    return "sweep-" + re.sub(r"[^a-z0-9-]+", "-", sweep_id.lower())


class NoWorkerError(MobituneError):
    """Trials were given up because no worker polled their work pool; the sweep's other results are kept."""

    exit_code = 4
