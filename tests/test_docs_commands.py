"""Every shell block of the README, the tutorial and the how-to guides, run as written in a fresh clone.

Run: ``make test-docs`` (``pytest -m docs``). A page's ```` ```bash ```` blocks run in order in one bash process
(``set -e -o pipefail``), so a later block sees the variables, folders and background processes of an earlier
one; the page fails on the first command that exits non-zero. A block that cannot run here carries
``<!-- not-run: REASON -->`` on the line directly above it; the test counts those by reason and prints the counts.
No command is rewritten. What the test prepares, and nothing more:

- the clone: ``git clone`` of this repository, its ``params.yaml`` and ``recipes/`` shrunk (a tiny data set in
  the official format served on 127.0.0.1, one epoch per phase, batches of 50, four trials in the study) and committed;
- ``.venv``: a link to the project's environment, which the docs' ``make install`` (not run) builds;
- the environment the docs introduce: ``$CIFAR10_ARCHIVE`` and ``$PRETRAINED_WEIGHTS`` (docs/how-to/offline.md),
  the ImageNet weights in torch's cache (a stand-in calibrated on the tiny data), ``$AWS_ENDPOINT_URL`` and its
  bucket ``my-bucket`` (moto's S3 server), ``$SWEEP_WEBHOOK_URL`` (a loopback address), a home folder with
  ``Pictures/``, and for the how-to guides ``$PREFECT_API_URL`` (a ``prefect server`` of the test's own).

The README and the tutorial start from the clone; each how-to guide from a copy of the clone after the tutorial
ran (its pipeline committed, its study swept), the state a reader of the guides has.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import CLASSES, learnable_images, write_cifar_archive
from helpers import ROOT, VENV_BIN, PrefectServer, pristine, run, write_params
from PIL import Image

NOT_RUN = re.compile(r"<!-- not-run: (?P<reason>\S.*?) -->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>\S*)\s*$")
SHELL_INFOS = {"bash", "sh", "shell", "console", "zsh"}  # shell fences: only ```bash is used, and run
PAGE_TIMEOUT_S = 600
# the study of the tutorial, shrunk to the lr axis's first four trials, named as in the full study (t000-lr=0.05-s0,
# t001-lr=0.01-s0, t002-base-s0, t003-lr=0.001-s0), so a page may name them; batches of 50 give the tiny data set
# ten steps an epoch (lr 0.05 collapses to chance, as in the report, and lr 0.001 ends well above it)
BATCH = 50
STUDY = {"lr": [0.05, 0.01, 0.005, 0.001], "batch_size": [BATCH], "trainable_layers": [10]}


def pages() -> list[Path]:
    """The pages whose commands must run: the README, the tutorial, the how-to guides (reading order)."""
    docs = ROOT / "docs"
    return [ROOT / "README.md", *sorted((docs / "tutorial").glob("*.md")), *sorted((docs / "how-to").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    text: str
    not_run: str | None  # the reason, for a block that is not run


def shell_blocks(page: Path) -> list[Block]:
    """The ```bash blocks of ``page`` in order, each with the reason of a ``not-run`` marker on the line above."""
    lines = page.read_text().splitlines()
    name = str(page.relative_to(ROOT))
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(
            (i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"),
            None,
        )
        assert end is not None, f"{name}:{index + 1}: a code fence that is never closed"
        if opening["info"] == "bash":
            indent = len(opening["indent"])
            marker = NOT_RUN.fullmatch(lines[index - 1].strip()) if index else None
            text = "\n".join(line[indent:] for line in lines[index + 1 : end])
            blocks.append(Block(name, index + 1, text, marker["reason"] if marker else None))
        index = end + 1
    return blocks


@dataclass
class PageRun:
    blocks: list[Block]
    seconds: float
    block_seconds: list[float] = field(default_factory=list)  # each block run, in order
    failure: str | None = None

    @property
    def not_run(self) -> Counter[str]:
        return Counter(block.not_run for block in self.blocks if block.not_run is not None)

    @property
    def run(self) -> int:
        return sum(block.not_run is None for block in self.blocks)


def _stop_group(pgid: int) -> None:
    """Stop what a page left running in its process group (workers started with ``&``), or the whole page."""
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):  # a process worker needs two SIGINTs
        deadline = time.monotonic() + 3
        try:
            os.killpg(pgid, sig)
            while time.monotonic() < deadline:
                time.sleep(0.1)
                os.killpg(pgid, 0)
        except ProcessLookupError:
            return


def run_page(page: Path, project: Path, env: dict[str, str], logs: Path) -> PageRun:
    """``page``'s runnable blocks in ``project``, in order, in one bash process; its failure names the block."""
    blocks = shell_blocks(page)
    runnable = [block for block in blocks if block.not_run is None]
    marks, log = logs / f"{page.stem}.marks", logs / f"{page.stem}.log"
    script = ["set -e -o pipefail", f"exec 9>{shlex.quote(str(marks))}"]
    for number, block in enumerate(runnable):
        script += [f"printf '%s %s\\n' {number} \"$EPOCHREALTIME\" >&9", block.text]
    script.append("printf '%s %s\\n' end \"$EPOCHREALTIME\" >&9")
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", "\n".join(script)],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = process.wait(timeout=PAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            status = None
        _stop_group(process.pid)
        process.wait()
    stamps = [line.split() for line in marks.read_text().splitlines()] if marks.exists() else []
    times = [float(stamp[1]) for stamp in stamps]
    done = PageRun(blocks, time.monotonic() - started, [b - a for a, b in zip(times, times[1:], strict=False)])
    if status != 0:
        failed = runnable[int(stamps[-1][0])] if stamps and stamps[-1][0] != "end" else None
        where = f"{failed.page}:{failed.line}:\n{failed.text}" if failed else "(before its first block)"
        tail = "\n".join(log.read_text().splitlines()[-60:])
        why = f"timed out after {PAGE_TIMEOUT_S} s" if status is None else f"exit status {status}"
        done.failure = f"the block at {where}\nfailed ({why}); the page's output ends:\n{tail}"
    return done


def shrink(project: Path, archive_url: str) -> None:
    """The clone's params.yaml and recipes at a tiny scale, committed: a tiny data set, one epoch per phase,
    batches of :data:`BATCH`, four trials in the study."""
    params = yaml.safe_load(pristine("params.yaml"))
    params["data"].update(source=archive_url, md5=None)  # not the official archive: no md5 to check
    params["warmup"]["epochs"] = params["finetune"]["epochs"] = 1
    params["warmup"]["batch_size"] = params["batch_size"] = BATCH
    params["sweep"].update(STUDY)
    write_params(project, params)
    for recipe in sorted((project / "recipes").glob("*.yaml")):
        values = yaml.safe_load(pristine(f"recipes/{recipe.name}"))
        tiny = {"epochs": 1, "batch_size": BATCH}
        recipe.write_text(yaml.safe_dump({k: tiny.get(k.rsplit(".", 1)[-1], v) for k, v in values.items()}))
    run(["git", "add", "params.yaml", "recipes"], project)
    run(["git", "commit", "-qm", "docs test: a tiny data set, one epoch per phase, four trials"], project)


@dataclass
class DocsWorld:
    root: Path
    clone: Path  # the fresh clone, shrunk: the README's and the tutorial's start
    env: dict[str, str] = field(repr=False)  # for the README and the tutorial
    guides_env: dict[str, str] = field(repr=False)  # for the how-to guides: env with a Prefect server of the test's own
    tally: dict[str, PageRun] = field(default_factory=dict, repr=False)


def _pictures(home: Path) -> None:
    """A reader's photos: a JPEG and a PNG of the tiny data set's kind, larger than CIFAR's 32 px."""
    pictures = home / "Pictures"
    pictures.mkdir(parents=True)
    labels = [CLASSES.index("cat"), CLASSES.index("ship")]
    images = learnable_images(np.array(labels), np.random.default_rng(0))
    for image, name in zip(images, ("cat.jpg", "ship.png"), strict=True):
        Image.fromarray(image.transpose(1, 2, 0)).resize((96, 96)).save(pictures / name)


@pytest.fixture(scope="module")
def docs_world(
    tmp_path_factory: pytest.TempPathFactory,
    http_root: tuple[str, Path],
    calibrated_weights: Path,
    s3_server,  # noqa: ANN001 (conftest's S3Server)
    pytestconfig: pytest.Config,
) -> Iterator[DocsWorld]:
    root = tmp_path_factory.mktemp("docs")
    base_url, served = http_root
    write_cifar_archive(served / "cifar-10-python.tar.gz", 100, 200)
    archive_url = f"{base_url}/cifar-10-python.tar.gz"
    torch_home = root / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(calibrated_weights, torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    home = root / "home"
    _pictures(home)
    s3_server.bucket("my-bucket")
    clone = root / "clone"
    run(["git", "clone", "-q", str(ROOT), str(clone)], root)
    shrink(clone, archive_url)
    (clone / ".venv").symlink_to(VENV_BIN.parent)  # what `make install` built (not run): `source .venv/bin/activate`
    with (clone / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".venv\n")  # .gitignore's `.venv/` matches a folder, not this link
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "TORCH_HOME": str(torch_home),
        "CIFAR10_ARCHIVE": archive_url,
        "PRETRAINED_WEIGHTS": str(calibrated_weights),
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "SWEEP_WEBHOOK_URL": f"{base_url}/hooks/mobitune",
    }
    server = PrefectServer(root / "prefect-server")
    (root / "prefect-server").mkdir()
    server.start_server(root / "prefect-server")
    server.wait_healthy()
    world = DocsWorld(root, clone, env, {**env, "PREFECT_API_URL": server.api})
    yield world
    server.stop()
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    with pytestconfig.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        for line in _counts(world):
            reporter.write_line(line)


def _counts(world: DocsWorld) -> list[str]:
    """The counts: blocks run and not run (by reason), page by page and in all, and the wall time."""
    lines, not_run, ran, seconds = [], Counter[str](), 0, 0.0
    for name, page in world.tally.items():
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(page.not_run.items()))
        blocks = " ".join(f"{seconds:.0f}" for seconds in page.block_seconds)
        failed = ", FAILED" if page.failure else ""
        lines.append(
            f"  {name}: {page.run} run, {sum(page.not_run.values())} not run ({reasons or '-'}), "
            f"{page.seconds:.0f} s (by block: {blocks or '-'}){failed}"
        )
        not_run += page.not_run
        ran += page.run
        seconds += page.seconds
    reasons = "; ".join(f"{reason}: {count}" for reason, count in sorted(not_run.items()))
    total = f"docs commands: {ran} blocks run, {sum(not_run.values())} not run ({reasons}), {seconds:.0f} s"
    return ["", total, *lines]


@pytest.fixture(scope="module")
def after_tutorial(docs_world: DocsWorld) -> Path:
    """A copy of the clone after the tutorial's commands: the how-to guides' starting point."""
    project = docs_world.root / "tutorial"
    shutil.copytree(docs_world.clone, project, symlinks=True)
    for page in sorted((ROOT / "docs" / "tutorial").glob("*.md")):
        done = docs_world.tally[str(page.relative_to(ROOT))] = run_page(page, project, docs_world.env, docs_world.root)
        assert done.failure is None, done.failure
    return project


@pytest.mark.e2e
@pytest.mark.docs
@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_command_of_the_page_runs(page: Path, docs_world: DocsWorld, request: pytest.FixtureRequest) -> None:
    name = str(page.relative_to(ROOT))
    if page.parent.name == "tutorial":
        request.getfixturevalue("after_tutorial")
        return
    guide = page.parent.name == "how-to"
    start = request.getfixturevalue("after_tutorial") if guide else docs_world.clone
    project = docs_world.root / "pages" / page.stem
    shutil.copytree(start, project, symlinks=True)
    env = docs_world.guides_env if guide else docs_world.env
    done = docs_world.tally[name] = run_page(page, project, env, docs_world.root)
    assert done.failure is None, done.failure


@pytest.mark.docs
def test_the_pages_follow_the_conventions_of_their_commands() -> None:
    """Shell blocks are ```bash (the fence the test runs); a not-run marker stands directly above one; no
    example reaches outside the clone (../shared) or into a removed folder; a value with [ ] { } * ? that
    --set or -S passes is quoted (the shell would expand it); the pages name gpu_check.sh's modes, every one
    and no other, as does the script's own usage line."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    modes = {mode for label in re.findall(r"^  ([a-z|-]+)\)$", script, re.M) for mode in label.split("|")}
    usage = re.search(r"usage: bash benchmarks/gpu_check.sh \[([a-z|-]+)\]", script)
    assert usage is not None and set(usage[1].split("|")) == modes, "gpu_check.sh's usage line names every mode"
    problems, named = [], set()
    for page in pages():
        text = page.read_text()
        lines = text.splitlines()
        name = str(page.relative_to(ROOT))
        for number, line in enumerate(lines, 1):
            fence = FENCE.match(line)
            if fence and fence["info"] in SHELL_INFOS - {"bash"}:
                problems.append(f"{name}:{number}: a ```{fence['info']} fence: shell commands go in ```bash")
            if NOT_RUN.search(line) and not (number < len(lines) and lines[number].strip() == "```bash"):
                problems.append(f"{name}:{number}: a not-run marker with no ```bash block directly below it")
        for stale in ("../shared", "docs/example-sweep"):
            if stale in text:
                problems.append(f"{name}: names {stale}, which a reader's clone does not have")
        for block in shell_blocks(page):
            for value in re.findall(r"(?:--set|-S)\s+([^\s'\"]*[\[\]{}*?][^\s]*)", block.text):
                problems.append(f"{name}:{block.line}: {value} unquoted: the shell expands [ ] {{ }} * ?")
            for mode in re.findall(r"gpu_check\.sh\s+([a-z-]+)", block.text):
                named.add(mode)
                if mode not in modes:
                    problems.append(f"{name}:{block.line}: gpu_check.sh has no mode {mode}")
    if modes - named:
        problems.append(f"gpu_check.sh's modes {sorted(modes - named)} are in no page's commands")
    assert not problems, "\n".join(problems)
