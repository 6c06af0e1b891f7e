"""Which code made a result: a module's import closure (the DVC stage deps and the trial cache's code fingerprint
come from it), a fingerprint of the source that ran, and the provenance every result file carries.

The closure is read from the source (``ast``), not by importing it: a cached sweep asks for a fingerprint
without importing torch. ``tests/test_stage_deps.py`` holds it equal to grimp's import graph and ``dvc.yaml``'s
deps to it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
COMPUTING = ("torch", "torchvision", "numpy", "Pillow")  # whose versions change what a trial computes
VERSIONED = (*COMPUTING, "dvc", "prefect")  # and what a result file records of its run
# the machine's indices of the GPUs a container was given, comma-separated as CUDA_VISIBLE_DEVICES: inside, CUDA
# numbers them from 0 again. Set by the docker pool's slot runs and the compose stack's GPU workers
HOST_GPUS_ENV = "MOBITUNE_HOST_GPUS"


def module_file(module: str) -> Path | None:
    """The source file of one of our modules (a package's ``__init__.py``), or None for another package's."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def _imports(module: str, path: Path) -> set[str]:
    """The modules ``module`` imports anywhere in its file (top level or inside a function), absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
    return found


@functools.cache
def import_closure(module: str) -> tuple[Path, ...]:
    """Every source file of ours that running ``module`` may execute: what it imports, transitively, and the
    ``__init__.py`` of each package on the way (Python runs them first). Sorted, relative to the project root
    (``src/mobitune/...``), as ``dvc.yaml`` lists them."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # the module and its parent packages
            current = ".".join(parts[:depth])
            path = module_file(current)
            if path is None or current in seen:
                continue
            seen[current] = path
            todo.extend(_imports(current, path))
    root = PACKAGE_DIR.parents[1]
    return tuple(sorted(path.relative_to(root) for path in seen.values()))


def files_fingerprint(files: tuple[Path, ...]) -> str:
    """A hash of these project files' paths and bytes."""
    root = PACKAGE_DIR.parents[1]
    digest = hashlib.sha256()
    for relative in files:
        digest.update(relative.as_posix().encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint(module: str) -> str:
    """A hash of the code ``module`` runs (its :func:`import_closure`): what a cached result was computed by."""
    return files_fingerprint(import_closure(module))


@functools.cache
def source_fingerprint() -> str:
    """A hash of every source file of the package, whatever git says of the work tree."""
    root = PACKAGE_DIR.parents[1]
    return files_fingerprint(tuple(sorted(p.relative_to(root) for p in PACKAGE_DIR.rglob("*.py"))))


@functools.cache
def git_commit() -> str | None:
    """The commit checked out where the package's source lies (None outside a git checkout). Local changes are
    told by :func:`source_fingerprint`, not by a flag."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def computing_versions() -> dict[str, str | None]:
    """The versions of the packages a trial's numbers depend on: part of every cached result's key."""
    return {name: _version(name) for name in COMPUTING}


def machine_gpu(local_index: int) -> int | str:
    """The machine's index of the GPU this process sees as ``cuda:<local_index>``: CUDA_VISIBLE_DEVICES renumbers
    the GPUs a process sees from 0, and so does a container given GPUs by Docker, whose machine indices
    :data:`HOST_GPUS_ENV` lists. A GPU named by its UUID there comes back as that string."""
    gpu: int | str = local_index
    for variable in ("CUDA_VISIBLE_DEVICES", HOST_GPUS_ENV):  # the process's view inside the container's, first
        listed = [entry.strip() for entry in os.environ.get(variable, "").split(",") if entry.strip()]
        if isinstance(gpu, int) and gpu < len(listed):
            gpu = int(listed[gpu]) if listed[gpu].isdigit() else listed[gpu]
    return gpu


def provenance(
    *,
    device: str | None = None,
    device_index: int | None = None,
    threads: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What every result file records of the run that made it: the code (commit and source fingerprint), the
    versions, the machine (device name and, on a GPU, its index on the machine, CPU model and cores, compute
    threads) and the seed. ``device``, ``device_index`` (CUDA's, in this process) and ``threads`` come from whoever
    ran torch; None where nothing was trained."""
    return {
        "git_commit": git_commit(),
        "source_fingerprint": source_fingerprint(),
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in VERSIONED}},
        "device": device,
        "device_index": None if device_index is None else machine_gpu(device_index),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads": threads,
        "seed": seed,
    }
