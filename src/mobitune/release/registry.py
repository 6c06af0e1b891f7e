"""A sweep's model in the project's model registry: DVC's ``artifacts:`` in ``dvc.yaml`` and GTO's version tags,
so that ``dvc artifacts get . NAME`` (``--rev vX.Y.Z`` for an earlier one) gives its bytes back wherever the repo
and its DVC cache or remote reach.

``mobitune export SWEEP --best --register NAME`` copies the exported ``model.onnx`` to ``models/NAME.onnx``,
tracks it with DVC, declares it an artifact of type ``model`` whose meta holds the sweep, the trial and its
metrics, commits those files alone (whatever else the user has staged stays staged), and registers that commit as
the next GTO version of NAME (``NAME@v0.0.1``, then ``v0.0.2``, ...).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.training.data import file_digest

REGISTRY_FOLDER = Path("models")  # registered models, tracked by DVC: models/NAME.onnx


class RegistryError(MobituneError):
    pass


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    path: Path  # relative to the project
    sha256: str
    commit: str


def open_registry(project: Path, name: str) -> Any:
    """The DVC repo at ``project`` (a ``dvc.repo.Repo``), checked to be able to register ``name``: a valid
    artifact name, a DVC project, in git. Called before the export, so a wrong name or folder costs nothing."""
    from dvc.exceptions import InvalidArgumentError, NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.artifacts import check_name_format
    from scmrepo.noscm import NoSCM

    try:
        check_name_format(name)
    except InvalidArgumentError as exc:
        raise RegistryError(f"--register {name}: {exc}") from None
    try:
        repo = Repo(str(project))
    except NotDvcRepoError:
        raise RegistryError(
            f"--register {name}: {project.resolve()} is not a DVC project; run `git init && dvc init` there first"
        ) from None
    if isinstance(repo.scm, NoSCM):
        raise RegistryError(f"--register {name}: {repo.root_dir} is not a git repository; run `git init` first")
    return repo


def register_model(model: Path, name: str, meta: dict[str, Any], project: Path) -> Registered:
    """Register ``model`` (an ONNX file) as the next version of artifact ``name`` of the git and DVC project at
    ``project``, with ``meta`` (JSON-safe: the sweep, the trial, its metrics) as the artifact's metadata."""
    import gto.api
    from dvc.annotations import Artifact

    repo = open_registry(project, name)
    root = Path(repo.root_dir)
    target = REGISTRY_FOLDER / f"{name}.onnx"
    (root / REGISTRY_FOLDER).mkdir(exist_ok=True)
    shutil.copyfile(model, root / target)
    sha256 = file_digest(root / target, "sha256")
    description = f"MobileNetV2 fine-tuned on CIFAR-10, sweep {meta['sweep_id']} trial {meta['trial_id']} (ONNX)"
    repo.scm_context.autostage = True  # dvc add stages its files rather than printing how to
    repo.add(str(root / target))
    repo.artifacts.add(
        name, Artifact(path=target.as_posix(), type="model", desc=description, meta={**meta, "sha256": sha256})
    )
    tracked = [f"{target}.dvc", str(REGISTRY_FOLDER / ".gitignore"), "dvc.yaml"]
    _git(root, "add", "--", *tracked)
    changed = _git(root, "diff", "--cached", "--name-only", "--", *tracked).split()
    if not changed:
        raise RegistryError(
            f"--register {name}: {target} and its artifact entry are already committed as they are; "
            f"`gto show {name}` lists its versions"
        )
    _git(root, "commit", "--quiet", "-m", f"register {name}: {description}", "--", *changed)
    registration = gto.api.register(
        str(root), name, "HEAD", message=f"sweep {meta['sweep_id']}, trial {meta['trial_id']}"
    )
    return Registered(name, registration.version, target, sha256, registration.commit_hexsha)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RegistryError(f"git {' '.join(args[:2])} in {root} failed: {done.stderr.strip()}")
    return done.stdout
