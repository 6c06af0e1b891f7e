"""``mobitune``: the command line, thin over the flows.

mobitune sweep [--recipe FILE] [--set key=value ...] [--backend local|workers] [--parallel N] [--no-cache]
mobitune sweep --dry-run [--set key=value ...]   # the plan: trials, values, seeds, epochs, cached; nothing runs
mobitune sweep --resume SWEEP_ID                 # continue a sweep whose process died
mobitune setup [--pool-type docker [--gpus N]] [--notify URL]   # pools, zombie-run automation, word at a sweep's end
mobitune setup --pool-type kubernetes [--s3-secret NAME] [--cache-claim NAME]   # Jobs: a fixed secret and claim
mobitune push artifacts/sweeps/<sweep_id> [--to s3://bucket/prefix]
mobitune report artifacts/sweeps/<sweep_id>  # rebuild results.csv, figures and report.md from trials/
mobitune report SWEEP_DIR... --into docs/fidelity.md  # the lab report's tables beside those sweeps' trials
mobitune study [--run cpu|gpu] [--only NAME ...]   # run the study's missing or stale sweeps; regenerate the docs
mobitune recipe FILE | xargs dvc exp run     # a recipe as `-S key=value` arguments
mobitune params > params.yaml                # every param at its default, commented
mobitune export artifacts/sweeps/<sweep_id> [--trial ID | --best] [--register NAME]   # ONNX + int8 ONNX; registered
mobitune predict IMAGE_OR_FOLDER... [--model data/models/model.onnx] [--top 3] [--csv FILE]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from mobitune.errors import MobituneError
from mobitune.storage.stores import LOCAL_ROOT


def build_parser() -> argparse.ArgumentParser:
    """The `mobitune` command line (docs/reference/cli.md is generated from it)."""
    parser = argparse.ArgumentParser(prog="mobitune", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="run the sweep of params.yaml's `sweep:` section as a Prefect flow")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, as dvc exp run -S (repeatable): lr=0.002, sweep.lr=[0.05,0.005]",
    )
    sweep.add_argument(
        "--backend",
        choices=["local", "workers"],
        default=None,
        help="local (the default): trials in this process, one per device; workers: flow runs on pool `gpu`. "
        "--resume continues on the backend the sweep was started with unless this says otherwise",
    )
    sweep.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="concurrent trials: local, one per GPU or 1 by default; workers, at most this many slot runs",
    )
    sweep.add_argument(
        "--recipe", default=None, help="a recipe (flat YAML of dotted keys), applied before --set: recipes/tuned.yaml"
    )
    sweep.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="train every trial, even one whose config, data and code match a stored result",
    )
    sweep.add_argument(
        "--resume",
        metavar="SWEEP_ID",
        default=None,
        help="continue a sweep whose process died: finished trials kept, unfinished ones from their checkpoints",
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (mode, axes, each trial with its values and seed, the epochs to train, which trials "
        "the cache holds) and exit: nothing trains, Prefect is not started",
    )
    sweep.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sweep.add_argument("--local-root", default=LOCAL_ROOT, help=f"local artifact folder (default: {LOCAL_ROOT})")
    sweep.add_argument("--deployment", default="trial-slot/gpu", help="trial-slot deployment for --backend workers")
    setup = commands.add_parser(
        "setup", help="create the work pools and the zombie-run automation on the Prefect server (idempotent)"
    )
    setup.add_argument(
        "--heartbeat-timeout-s",
        type=int,
        default=90,
        help="mark a flow run Crashed after this long without a heartbeat (default 90; workers beat every 30 s)",
    )
    setup.add_argument(
        "--notify",
        metavar="URL",
        default=None,
        help="POST a message to this webhook whenever a sweep completes, fails or crashes",
    )
    setup.add_argument(
        "--pool-type",
        choices=["process", "docker", "kubernetes"],
        default="process",
        help="the gpu pool's type: process (workers run slots in the project root), docker (a container of the "
        "worker image per slot), kubernetes (a Job per slot); default process",
    )
    setup.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="docker: the GPUs of each machine of the pool (e.g. $(nvidia-smi -L | wc -l)); a sweep pins its slot "
        "containers one per GPU, round-robin, through the pool's work queues gpu-0 ... gpu-<N-1>; 0 for machines "
        "without a GPU; default 1",
    )
    setup.add_argument(
        "--s3-secret",
        metavar="NAME",
        default=None,
        help="kubernetes: the Kubernetes secret whose keys become each Job's environment (the S3 keys), written "
        "into the pool's template, so no run can name another; default mobitune-s3",
    )
    setup.add_argument(
        "--cache-claim",
        metavar="NAME",
        default=None,
        help="kubernetes: the PersistentVolumeClaim of each Job's artifacts and caches, written into the pool's "
        "template; default mobitune-cache",
    )
    push = commands.add_parser("push", help="publish a finished sweep folder to S3 (after S3 was down)")
    push.add_argument("sweep_dir", type=Path)
    push.add_argument("--to", default=None, help="s3://bucket/prefix (default: the sweep's storage.uri)")
    report = commands.add_parser(
        "report",
        help="rebuild a sweep folder's results.csv, figures and report.md; with --into, the report's tables "
        "beside those of several folders",
    )
    report.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir")
    into = "put the lab report's headline and Tables 1-3 beside these folders' trials in this file's generated section"
    report.add_argument("--into", type=Path, default=None, help=into)
    study = commands.add_parser("study", help="run the study's missing or stale sweeps (--run), regenerate the docs")
    study.add_argument("manifest", type=Path, nargs="?", default=Path("docs/fidelity/study.yaml"))
    study.add_argument("--run", choices=["cpu", "gpu"], help="first run that kind's missing or stale entries")
    study.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these entries")
    study.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="to every run")
    exp_import = commands.add_parser(
        "exp-import", help="save a sweep's trials as DVC experiments (then: dvc exp show, dvc plots diff T1 T2)"
    )
    exp_import.add_argument("sweep", help="a sweep folder (artifacts/sweeps/<id>) or s3://bucket/prefix/sweeps/<id>")
    commands.add_parser("params", help="print params.yaml with every key at its default, each commented")
    recipe = commands.add_parser("recipe", help="print a recipe as `-S key=value` arguments for dvc exp run")
    recipe.add_argument("file", type=Path)
    export = commands.add_parser(
        "export", help="a sweep trial's model as ONNX and int8 ONNX, checked against PyTorch, beside its report"
    )
    export.add_argument("sweep", help="a sweep folder (artifacts/sweeps/<id>) or s3://bucket/prefix/sweeps/<id>")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", default=None, help="the trial to export (its trial_id)")
    which.add_argument("--best", action="store_true", help="the trial with the best test accuracy (the default)")
    export.add_argument(
        "--register",
        metavar="NAME",
        default=None,
        help="register the model in this project's DVC model registry as the next version of NAME "
        "(then: dvc artifacts get . NAME)",
    )
    predict = commands.add_parser("predict", help="the top classes of JPEG/PNG images of any size")
    predict.add_argument("images", nargs="+", type=Path, help="image files, or folders of them (a CSV answers)")
    predict.add_argument(
        "--model",
        type=Path,
        default=Path("data/models/model.onnx"),
        help="an ONNX file of the export stage or mobitune export, or a mobitune checkpoint (.pt)",
    )
    predict.add_argument("--top", type=int, default=3, help="classes per image (default 3)")
    predict.add_argument("--csv", type=Path, default=None, help="write the answers to this CSV file")
    return parser


def main(argv: list[str] | None = None) -> None:
    # Prefect gives its temporary server 20 s to start; on a busy machine that is too short.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sweep":
            print(_sweep(args))
        elif args.command == "recipe":
            print(_recipe_arguments(args.file))
        elif args.command == "params":
            from mobitune.params import defaults_yaml

            print(defaults_yaml(), end="")
        elif args.command == "report":
            print(_report(args.sweep_dirs, args.into))
        elif args.command == "study":
            from mobitune.sweep.study_run import run_study

            print("\n".join(run_study(args.manifest, args.run, args.only, args.overrides, Path(LOCAL_ROOT))))
        elif args.command == "setup":
            print(_setup(args))
        elif args.command == "exp-import":
            print(_exp_import(args.sweep))
        elif args.command == "export":
            print(_export(args.sweep, args.trial, args.register))
        elif args.command == "predict":
            _predict(args)
        else:
            print(_push(args.sweep_dir, args.to))
    except Exception as exc:
        failure = expected_failure(exc)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(failure.exit_code)


def expected_failure(exc: BaseException) -> MobituneError | None:
    """The :class:`MobituneError` behind ``exc``, if any. A flow that fails because the Prefect server does not
    answer cannot report its end to that server either: Prefect's engine then raises its own connection error
    while handling ours, which is the one that says what to do."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MobituneError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _sweep(args: argparse.Namespace) -> str:
    from mobitune.orchestration.sweep_start import start_sweep

    given = {
        "resume": args.resume,
        "overrides": args.overrides,
        "recipe": args.recipe,
        "params_file": args.params,
        "local_root": args.local_root,
        "parallel": args.parallel,
    }
    if args.dry_run and args.resume:
        raise MobituneError("--dry-run previews a new sweep; a resumed one runs the plan it started with: drop one")
    started = start_sweep(**given, backend=args.backend)  # bad params, devices, storage: fail before Prefect
    for note in started.notes:
        print(note, file=sys.stderr)
    if args.dry_run:
        from mobitune.sweep.preview import plan_sweep, plan_text

        return plan_text(plan_sweep(started.params, Path(args.local_root), started.backend, args.cache))
    from pydantic import SecretStr

    from mobitune.orchestration.sweep_flow import sweep
    from mobitune.redaction import redact

    # an override that carries a secret (a URL's token, a configured secret's value) is recorded masked by Prefect
    given["overrides"] = [SecretStr(o) if redact(o) != o else o for o in args.overrides]
    return sweep(**given, backend=started.backend, deployment=args.deployment, cache=args.cache)


def _setup(args: argparse.Namespace) -> str:
    from mobitune.orchestration.pool_templates import CACHE_CLAIM, S3_SECRET
    from mobitune.orchestration.server_setup import HEARTBEAT_SECONDS, open_api_warning, setup_server

    heartbeat_timeout_s, notify_url, pool_type = args.heartbeat_timeout_s, args.notify, args.pool_type
    if heartbeat_timeout_s < 2 * HEARTBEAT_SECONDS:
        raise MobituneError(
            f"--heartbeat-timeout-s must be at least {2 * HEARTBEAT_SECONDS} (two heartbeats of "
            f"{HEARTBEAT_SECONDS} s), got {heartbeat_timeout_s}"
        )
    if notify_url is not None and not notify_url.startswith(("http://", "https://")):
        raise MobituneError(f"--notify {notify_url}: give the webhook's http:// or https:// URL")
    kubernetes_names = (("--s3-secret", args.s3_secret), ("--cache-claim", args.cache_claim))
    named = [option for option, value in kubernetes_names if value]
    if named and pool_type != "kubernetes":
        raise MobituneError(f"{' and '.join(named)}: only for --pool-type kubernetes")
    if args.gpus is not None and pool_type != "docker":
        raise MobituneError(
            "--gpus: only for --pool-type docker (process workers: one per GPU under "
            "CUDA_VISIBLE_DEVICES; kubernetes: the gpus job variable)"
        )
    if args.gpus is not None and args.gpus < 0:
        raise MobituneError(f"--gpus must be 0 or more, got {args.gpus}")
    warning = open_api_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    names = {"s3_secret": args.s3_secret or S3_SECRET, "cache_claim": args.cache_claim or CACHE_CLAIM}
    gpus = 1 if args.gpus is None else args.gpus
    return "\n".join(setup_server(heartbeat_timeout_s, notify_url, pool_type, **names, gpus=gpus))


def _exp_import(source: str) -> str:
    from mobitune.pipeline.exp_import import import_sweep

    saved = import_sweep(source)
    if not saved:
        raise MobituneError(f"{source}: no trial of this sweep has a history to import (all failed?)")
    return "\n".join([f"saved {len(saved)} experiment(s): " + " ".join(saved), "compare them: dvc exp show"])


def _export(source: str, trial_id: str | None, register: str | None) -> str:
    from mobitune.release.registry import open_registry
    from mobitune.release.sweep_export import export_trial, register_export

    if register is not None:
        open_registry(Path.cwd(), register)  # a wrong name or folder fails before the export's minutes
    folder, report = export_trial(source, trial_id)
    fp32, int8 = report["fp32"], report["int8"]
    lines = [
        f"{folder}: model.onnx (test accuracy {fp32['test_accuracy']:.2%}, agrees with PyTorch on "
        f"{fp32['agreement_with_pytorch']:.2%}), model.int8.onnx (test accuracy {int8['test_accuracy']:.2%}, "
        f"{report['int8_smaller']:.1f}x smaller), export.json",
        f"classify images with it: mobitune predict IMAGE... --model {folder / 'model.onnx'}",
    ]
    if register is not None:
        done = register_export(folder, register, Path.cwd())
        lines += [
            f"registered {done.name}@{done.version} at commit {done.commit[:7]}: {done.path} (sha256 {done.sha256})",
            f"fetch it: dvc artifacts get . {done.name} --rev {done.version}",
        ]
    return "\n".join(lines)


def _predict(args: argparse.Namespace) -> None:
    """Answers on stdout (a CSV for folders or --csv), one error line per image that could not be read on
    stderr, and exit status 1 if there was any: the other images are answered all the same."""
    from mobitune.export.predict import csv_rows, image_files, load_predictor, predict
    from mobitune.storage.records import to_csv, write_csv

    if args.top < 1:
        raise MobituneError(f"--top must be at least 1, got {args.top}")
    predictor = load_predictor(args.model)
    top = min(args.top, len(predictor.classes))
    answers = predict(predictor, image_files(args.images), top)
    rows = csv_rows(answers, top)
    columns = list(rows[0]) if rows else ["image", "error"]
    if args.csv is not None:
        write_csv(args.csv, rows, columns)
        print(f"{len(answers)} image(s) answered in {args.csv}")
    elif any(path.is_dir() for path in args.images):
        print(to_csv(rows, columns), end="")
    else:
        for answer in answers:
            if answer.top:
                print(f"{answer.image}: " + ", ".join(f"{name} {p:.1%}" for name, p in answer.top))
    failed = [answer for answer in answers if answer.error]
    for answer in failed:
        print(f"error: {answer.error}", file=sys.stderr)
    if failed:
        sys.exit(1)


def _recipe_arguments(path: Path) -> str:
    """One ``-S key=value`` per line, shell-quoted: ``mobitune recipe FILE | xargs dvc exp run``."""
    from mobitune.params import recipe_overrides

    return "\n".join(f"-S {shlex.quote(override)}" for override in recipe_overrides(path))


def _report(sweep_dirs: list[Path], into: Path | None) -> str:
    """The report of a finished sweep again, from its trials' files (e.g. after a newer mobitune), and what was
    written (the report's path last); with ``into``, the lab report's tables beside several sweeps' trials,
    written into that document."""
    from mobitune.report.results import load_results, read_sweep_record
    from mobitune.report.sweep_report import write_report
    from mobitune.sweep.publish import write_manifest

    if into is not None:
        from mobitune.report.lab_document import lab_document, recipes_in, write_into
        from mobitune.sweep.study_run import states_now

        for sweep_dir in sweep_dirs:
            read_sweep_record(sweep_dir)
        write_into(into, lab_document(sweep_dirs, states_now(sweep_dirs), recipes_in(Path("recipes")), into.parent))
        return str(into)
    if len(sweep_dirs) > 1:
        raise MobituneError("report: give one sweep folder, or several with --into FILE")
    sweep_dir = sweep_dirs[0]
    record = read_sweep_record(sweep_dir)
    results = load_results(sweep_dir, record)
    written = write_report(results, sweep_dir, record["sweep_id"])
    write_manifest(sweep_dir)
    figures = [path for path in written if path.suffix == ".png"]
    return "\n".join(
        [
            f"{sweep_dir}: wrote results.csv ({len(results.table)} trials), {len(figures)} figures in figures/, "
            "report.md and manifest.json",
            str(sweep_dir / "report.md"),
        ]
    )


def _push(sweep_dir: Path, to: str | None) -> str:
    from mobitune.report.results import read_sweep_record
    from mobitune.sweep.publish import publish, write_manifest

    uri = to or read_sweep_record(sweep_dir)["storage_uri"]
    if not uri:
        raise MobituneError(f"{sweep_dir}: the sweep had no storage.uri; give one with --to s3://bucket/prefix")
    write_manifest(sweep_dir)
    return publish(sweep_dir, uri)


if __name__ == "__main__":
    main()
