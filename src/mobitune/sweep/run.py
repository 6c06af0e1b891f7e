"""One sweep's run, whatever executes its trials: the scheduler's segments, shared warmups, the sweep folder.

The Prefect flow gives :meth:`SweepRun.drive` a runner (Prefect tasks on
this machine, or flow runs on workers); a runner only starts a
:class:`~mobitune.sweep.trial_files.TrialRequest` and says when it has ended. Nothing here
imports Prefect, so the same decisions run anywhere (``benchmarks/`` drives
trials in-process on a GPU machine that has no Prefect).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import pandas as pd

from mobitune.errors import MobituneError
from mobitune.params import Params, get_dotted, params_from_dict
from mobitune.report.results import SEARCH_RECORD, SWEEP_RECORD, SweepResults, load_results
from mobitune.report.sweep_report import write_report
from mobitune.storage.records import Status, json_safe, write_json
from mobitune.sweep.plan import fixed_axes, new_sweep_id, swept_axes, warmup_key
from mobitune.sweep.publish import write_manifest
from mobitune.sweep.scheduler import STUDY_FILE, Scheduler, Segment
from mobitune.sweep.trial_files import TRIAL_FILES, TrialRequest, record_failure, trial_key


class Runner(Protocol):
    poll_seconds: float

    def start(self, request: TrialRequest) -> Any: ...

    def outcome(self, handle: Any) -> str | None:
        """None while the job runs; "" once it completed; otherwise why it did not."""


@dataclass
class SweepRun:
    """One sweep's bookkeeping: which segments are in flight, which shared warmups exist."""

    sweep_id: str
    sweep_dir: Path
    root: Path
    trial_store: str | None
    scheduler: Scheduler
    record: dict[str, Any]  # sweep.json
    use_cache: bool = True  # reuse stored results of identical trials (see mobitune.sweep.trial_setup.result_cache_key)
    warmed: set[str] = field(default_factory=set)
    waiting: dict[str, list[Segment]] = field(default_factory=dict)  # warmup key -> segments waiting for it
    lock: IO[str] | None = None  # held while this process runs the sweep (see hold_sweep_lock)

    @classmethod
    def start(
        cls,
        params: Params,
        local_root: Path,
        recipe: str | None,
        overrides: list[str],
        backend: str,
        use_cache: bool = True,
        settings: dict[str, Any] | None = None,
    ) -> SweepRun:
        """A new sweep folder under ``local_root/sweeps/`` with its ``sweep.json``; trials on the workers backend
        exchange files through ``storage.uri``, local ones keep them on this disk until publishing."""
        root = Path(local_root).resolve()
        sweep_id = new_sweep_id()
        sweep_dir = root / "sweeps" / sweep_id
        sweep_dir.mkdir(parents=True, exist_ok=False)  # unique: never write into another sweep
        scheduler = Scheduler.create(params, sweep_dir)
        axes = list(swept_axes(params))
        raw = params.to_dict()
        record = {
            "sweep_id": sweep_id,
            "storage_uri": params.storage.uri,
            "recipe": recipe,
            "settings": settings or {},  # the sweep form's typed values, set between recipe and overrides
            "overrides": overrides,
            "backend": backend,
            "cache": use_cache,
            "mode": params.sweep.mode,
            "axes": axes,
            "base": {axis: get_dotted(raw, axis) for axis in axes},
            "fixed": fixed_axes(params),  # the axes of one value: every trial takes it
            "trials": [{"trial_id": t.trial_id, "varied": t.varied} for t in scheduler.planned],
            "params": raw,
        }
        lock = hold_sweep_lock(root, sweep_id)
        write_json(sweep_dir / SWEEP_RECORD, record)
        return cls(
            sweep_id, sweep_dir, root, cls.trial_store_uri(params, backend), scheduler, record, use_cache, lock=lock
        )

    @classmethod
    def resume(cls, local_root: Path, sweep_id: str, backend: str, use_cache: bool = True) -> SweepRun:
        """The sweep ``sweep_id`` again, in its own folder, with the params it started with.

        The scheduler replays the sweep from the start: a segment the sweep
        already finished returns its stored result untouched (see
        :func:`mobitune.sweep.trial.run_trial`), an unfinished one resumes from its
        checkpoint, so the decisions (and a search's samples, from the same
        seed) come out as in an uninterrupted run. The Optuna study is rebuilt
        by that replay.
        """
        root = Path(local_root).resolve()
        record = load_record(root, sweep_id)
        lock = hold_sweep_lock(root, sweep_id)  # before anything of the sweep's folder changes
        params = params_from_dict(record["params"])
        sweep_dir = root / "sweeps" / sweep_id
        (sweep_dir / STUDY_FILE).unlink(missing_ok=True)
        scheduler = Scheduler.create(params, sweep_dir)
        record["backend"] = backend
        return cls(
            sweep_id, sweep_dir, root, cls.trial_store_uri(params, backend), scheduler, record, use_cache, lock=lock
        )

    def release(self) -> None:
        """Let another process (a ``--resume``) run this sweep."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    @staticmethod
    def trial_store_uri(params: Params, backend: str) -> str | None:
        """Where trials keep their files and the cache: the sweep's S3 prefix on workers, else this disk."""
        return params.storage.uri if backend == "workers" else None

    def finish(self) -> SweepResults:
        """The trials actually run into ``sweep.json``, the search record, results, report and manifest."""
        scheduler = self.scheduler
        self.record["trials"] = [{"trial_id": t.trial_id, "varied": t.varied} for t in scheduler.started]
        write_json(self.sweep_dir / SWEEP_RECORD, self.record)
        sweep = scheduler.params.sweep
        if sweep.searched or scheduler.rungs or sweep.budget_epochs or sweep.time_budget_s:
            write_json(self.sweep_dir / SEARCH_RECORD, json_safe(scheduler.summary()))
        results = load_results(self.sweep_dir, self.record)
        write_report(results, self.sweep_dir, self.sweep_id, self.root / "cache" / "figures")
        write_manifest(self.sweep_dir)
        return results

    def request(self, segment: Segment) -> TrialRequest:
        spec = segment.trial
        return TrialRequest(
            sweep_id=self.sweep_id,
            trial_id=spec.trial_id,
            params=spec.params,
            varied=spec.varied,
            store_uri=self.trial_store,
            local_root=str(self.root),
            until=segment.until,
            use_cache=self.use_cache,
            deadline=self.scheduler.deadline,
        )

    def drive(self, runner: Runner, slots: int, logger: logging.Logger | logging.LoggerAdapter) -> None:
        """Run segments until the scheduler has none left: at most ``slots`` jobs at a time, each trial's
        shared warmup trained once before the trials that need it."""
        in_flight: list[tuple[TrialRequest, Segment | None, Any]] = []
        self.scheduler.start_clock()
        while True:
            while len(in_flight) < slots:
                job = self._next_job()
                if job is None:
                    break
                request, segment = job
                in_flight.append((request, segment, runner.start(request)))
            if not in_flight:
                return
            time.sleep(runner.poll_seconds)
            for entry in list(in_flight):
                request, segment, handle = entry
                failure = runner.outcome(handle)
                if failure is None:
                    continue
                in_flight.remove(entry)
                if segment is None:
                    key = request.trial_id.removeprefix("warmup-")
                    if failure:
                        logger.warning("shared warmup %s: %s; its trials will try it themselves", key, failure)
                    self.warmed.add(key)
                    continue
                self._segment_done(request, segment, failure)

    def _next_job(self) -> tuple[TrialRequest, Segment | None] | None:
        """A segment whose warmup exists, or the warmup a new segment needs, or None (for good once the time
        budget is spent: the segments still waiting for a warmup are withdrawn)."""
        if self.scheduler.past_deadline():
            for segment in (s for segments in self.waiting.values() for s in segments):
                self.scheduler.withdraw(segment)
            self.waiting.clear()
            return None
        for key, segments in self.waiting.items():
            if key in self.warmed and segments:
                segment = segments.pop(0)
                return self.request(segment), segment
        while (segment := self.scheduler.next_segment()) is not None:
            key = warmup_key(segment.trial.params)
            if key in self.warmed:
                return self.request(segment), segment
            first_for_key = key not in self.waiting
            self.waiting.setdefault(key, []).append(segment)
            if first_for_key:
                warmup = self.request(segment).model_copy(update={"warmup_only": True, "trial_id": f"warmup-{key}"})
                return warmup, None
        return None

    def _segment_done(self, request: TrialRequest, segment: Segment, failure: str) -> None:
        folder = self.sweep_dir / "trials" / request.trial_id
        if failure or not self._fetch(request, folder):
            record_failure(request, failure or "its run completed but stored no results")
            self._fetch(request, folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        accuracies = history.loc[history["phase"] == "finetune", "test_accuracy"].tolist()
        # a resumed sweep replays the rung decision that stopped a trial: the scheduler makes it again; a trial
        # the time budget stopped short of its segment stays stopped
        status = metrics["status"]
        if status == Status.STOPPED and len(accuracies) >= segment.until:
            status = Status.OK
        self.scheduler.segment_done(segment, status, accuracies)
        if request.trial_id in self.scheduler.stopped:
            write_json(folder / "metrics.json", {**metrics, "status": Status.STOPPED})

    def _fetch(self, request: TrialRequest, folder: Path) -> bool:
        store = request.store()
        return all(store.get_file(trial_key(self.sweep_id, request.trial_id, n), folder / n) for n in TRIAL_FILES)


class SweepLocked(MobituneError):
    """Another process runs this sweep now; nothing of it was changed."""


def hold_sweep_lock(root: Path, sweep_id: str) -> IO[str]:
    """An exclusive lock on the sweep (``locks/<id>.lock`` of the artifact folder: outside the sweep's folder, so
    it is never published, and outside ``sweeps/``, which holds sweeps alone), held
    as long as the returned file is open; the system releases it when the process dies, so a sweep whose process
    died can be resumed at once. The file says who holds it, for the process that is refused."""
    path = Path(root) / "locks" / f"{sweep_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the sweep's run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SweepLocked(
            f"sweep {sweep_id} is being run by {holder}; wait for it to end (or stop it) before --resume {sweep_id}"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    handle.write(f"process {os.getpid()} on {socket.gethostname()}, since {started}\n")
    handle.flush()
    return handle


def load_record(root: Path, sweep_id: str) -> dict[str, Any]:
    """A sweep's ``sweep.json``, or an error that lists the sweeps there are to resume."""
    path = Path(root) / "sweeps" / sweep_id / SWEEP_RECORD
    if not path.exists():
        known = sorted(p.parent.name for p in (Path(root) / "sweeps").glob(f"*/{SWEEP_RECORD}"))[-5:]
        hint = f"; the latest here: {', '.join(known)}" if known else ""
        raise MobituneError(f"--resume {sweep_id}: no sweep of that id under {Path(root) / 'sweeps'}{hint}")
    record = json.loads(path.read_text())
    if "params" not in record:
        raise MobituneError(f"--resume {sweep_id}: {path} predates resumable sweeps (it records no params)")
    return record


def resume_backend(record: dict[str, Any], requested: str | None) -> tuple[str, str]:
    """The backend a resumed sweep runs on: the one it was started with, unless ``requested``; and a line that
    says which, for the user."""
    started_on = record.get("backend", "local")
    backend = requested or started_on
    how = "as it was started; --backend changes it" if backend == started_on else f"it was started on {started_on}"
    return backend, f"resuming sweep {record['sweep_id']} on the {backend} backend ({how})"
