"""Names and paths that come from outside (flow parameters, mailbox messages, a bucket's ``manifest.json``),
checked where they enter, so that none of them reaches a file outside the folder it belongs to.

A sweep id, a trial id and a slot name are one pattern, :data:`NAME_PATTERN`, which no path separator and no
``.``/``..`` can match. A relative path read from data (a store key, a manifest entry) is refused when it is
absolute or has a ``..``; :func:`path_inside` then resolves it, links included, and refuses it unless it stays
inside its root: every local writer and ``rmtree`` of the artifact store goes through it.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import StringConstraints

from mobitune.errors import MobituneError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$"
NAME_RULE = "1 to 128 of the characters A-Z a-z 0-9 . _ = -, starting with a letter or digit"
# a path inside the project the flow runs in: relative, each part starting with a letter, digit or _ (no ..)
PROJECT_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._=-]*(/[A-Za-z0-9_][A-Za-z0-9._=-]*)*/?$"
PROJECT_PATH_RULE = "a relative path inside the project (parts of A-Z a-z 0-9 . _ = -, no .. and no leading /)"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]  # a sweep id, trial id or slot name
ProjectPath = Annotated[str, StringConstraints(pattern=PROJECT_PATH_PATTERN, max_length=255)]


class UnsafeName(MobituneError):
    """A name or path from outside would leave the folder it belongs to; nothing was read, written or removed."""


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe sweep id, trial id or slot name (``what`` says which, for the message)."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise UnsafeName(f"{what} {value!r} is not a valid name: use {NAME_RULE}")
    return value


def check_project_path(value: str, what: str) -> str:
    """``value`` if it is a path inside the project (see :data:`PROJECT_PATH_PATTERN`); ``what`` names the
    parameter or option for the message."""
    if not isinstance(value, str) or not re.fullmatch(PROJECT_PATH_PATTERN, value):
        raise UnsafeName(
            f"{what} {value!r}: give {PROJECT_PATH_RULE}; to keep files elsewhere, link a folder into the project"
        )
    return value


def check_relative(key: str, what: str) -> PurePosixPath:
    """``key`` as a relative POSIX path; refused when absolute, empty, or with ``..``, ``\\`` or NUL in it."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key or "\x00" in key or key.startswith("~"):
        raise UnsafeName(f"{what} {key!r}: a path from data must be relative, without .., \\ or a leading / or ~")
    return path


def path_inside(root: Path, key: str, what: str) -> Path:
    """``root / key``, refused unless it stays inside ``root`` once resolved (a link that leads out counts)."""
    target = Path(root) / check_relative(key, what)
    real_root = Path(root).resolve()
    if not target.resolve().is_relative_to(real_root):
        raise UnsafeName(f"{what} {key!r} leads outside {real_root} (through a link); nothing was read or written")
    return target
