"""The one redaction of secrets, applied to everything mobitune writes or sends: result records, reports,
error messages (every :class:`~mobitune.errors.MobituneError`), Prefect parameters, artifacts and logs.

What counts as a secret: the user name, password, query string and fragment of any URL in the text (a
``user:pass@`` or a presigned URL's token), and the value of every configured secret: the environment variables
of :data:`SECRET_VARIABLES`, any variable whose name ends like a credential's (:data:`SECRET_SUFFIXES`), and
values registered while the process runs (:func:`register_secret`, e.g. the notification webhook's URL).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
)
SECRET_SUFFIXES = ("_SECRET", "_SECRET_KEY", "_PASSWORD", "_TOKEN", "_AUTH_STRING", "_WEBHOOK_URL")
SHORTEST_SECRET = 8  # shorter values ("1", "true") would mask ordinary text, and guess in a few tries anyway
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")

_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` from now on in this process, wherever it appears."""
    if len(value) >= SHORTEST_SECRET:
        _registered.add(value)


def configured_secrets() -> list[str]:
    """The secret values to mask, longest first (so a secret that contains another is masked whole)."""
    found = set(_registered)
    for name, value in os.environ.items():
        if (name in SECRET_VARIABLES or name.endswith(SECRET_SUFFIXES)) and len(value) >= SHORTEST_SECRET:
            found.add(value)
    return sorted(found, key=len, reverse=True)


def public_url(url: str) -> str:
    """``url`` without its user name, password, query and fragment; the scheme, host and path kept."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a URL after all (a bad port): mask all but its scheme
        return url.split("://", 1)[0] + "://" + MASK
    netloc = f"{MASK}@{host}{port}" if parts.username or parts.password else parts.netloc
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, MASK if parts.query else "", MASK if parts.fragment else "")
    )


def redact(text: str) -> str:
    """``text`` with every URL made public (:func:`public_url`) and every configured secret masked."""
    text = URL.sub(lambda match: public_url(match.group(0)), text)
    for secret in configured_secrets():
        text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like data) with :func:`redact` applied to every string in it, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts each record a handler emits: its message is formatted and masked before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def redact_logs() -> None:
    """Add a :class:`RedactingFilter` to every logging handler there is now (the console's, Prefect's API log
    handler that sends a run's logs to the server); once per handler."""
    loggers = [
        logging.getLogger(),
        *(item for item in logging.root.manager.loggerDict.values() if isinstance(item, logging.Logger)),
    ]
    for handler in {handler for logger in loggers for handler in logger.handlers}:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
