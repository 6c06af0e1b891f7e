"""Calls to the Prefect server that must not hang on it: how long Prefect's client retries them, and which
failures mean the server (or its database) did not answer rather than refused what was asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings


def server_unreachable(exc: BaseException) -> bool:
    """No answer (refused, reset, timed out) or a 5xx: the server or its database is down or restarting."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


@contextlib.contextmanager
def client_retries(retries: int) -> Iterator[None]:
    """Prefect's client retries each call in this block ``retries`` times (its default, 5, waits up to a minute
    per call with back-off: for a caller that has other work while the server is away, too long)."""
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: retries}):
        yield


def api_url() -> str:
    return PREFECT_API_URL.value() or "Prefect's temporary server"
