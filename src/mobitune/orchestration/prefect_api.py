"""Calls to the Prefect server that must not hang on it: how long Prefect's client retries them, which failures
mean the server (or its database) did not answer rather than refused what was asked, and :class:`ServerCalls`,
which rides out an outage for a caller that has other work meanwhile."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from mobitune.errors import ServiceUnavailable

T = TypeVar("T")


def server_unreachable(exc: BaseException) -> bool:
    """No answer (refused, reset, timed out) or a 5xx: the server or its database is down or restarting."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def unanswered_reason(exc: BaseException) -> str:
    """What came back instead of an answer: the status and request of a 5xx, else the error's type."""
    if isinstance(exc, httpx.HTTPStatusError):
        request, response = exc.request, exc.response
        return f"{response.status_code} {response.reason_phrase} to {request.method} {request.url.path}"
    return type(exc).__name__


@contextlib.contextmanager
def client_retries(retries: int) -> Iterator[None]:
    """Prefect's client retries each call in this block ``retries`` times (its default, 5, waits up to a minute
    per call with back-off: for a caller that has other work while the server is away, too long)."""
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: retries}):
        yield


def api_url() -> str:
    return PREFECT_API_URL.value() or "Prefect's temporary server"


class ServerCalls:
    """Calls to the Prefect server for a caller that has other work while the server is away: each fails fast,
    answering None when the server does not answer. The outage is logged as it begins (with ``meanwhile``: what
    goes on without the server) and as it ends; past ``outage_s`` (``sweep.server_outage_s``) without an answer,
    :class:`ServiceUnavailable` says so and ``then`` (what the user does once the server is back)."""

    def __init__(self, outage_s: float, logger: logging.Logger | logging.LoggerAdapter, meanwhile: str, then: str):
        self.outage_s, self.logger, self.meanwhile, self.then = outage_s, logger, meanwhile, then
        self.down_since: float | None = None

    @property
    def answering(self) -> bool:
        return self.down_since is None

    def __call__(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            with client_retries(0):
                result = call(*args, **kwargs)
        except Exception as exc:
            if not server_unreachable(exc):
                raise
            self._unanswered(exc)
            return None
        if self.down_since is not None:
            self.logger.warning("the Prefect server answers again after %.0f s", time.monotonic() - self.down_since)
            self.down_since = None
        return result

    def _unanswered(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.logger.warning(
                "the Prefect server at %s does not answer (%s): %s (the sweep stops after sweep.server_outage_s=%s s)",
                api_url(),
                unanswered_reason(exc),
                self.meanwhile,
                self.outage_s,
            )
        elif now - self.down_since > self.outage_s:
            raise ServiceUnavailable(
                f"the Prefect server at {api_url()} did not answer for {self.outage_s} s (sweep.server_outage_s); "
                + self.then
            )
