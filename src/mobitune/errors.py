"""The one base class for failures whose message tells the user what to do."""

from mobitune.redaction import redact


class MobituneError(Exception):
    """An expected failure (bad input, unreachable source): shown without a traceback.

    ``exit_code`` is the CLI's exit status for it: 2 for bad input; subclasses
    whose results are kept on disk say so with their own code.
    """

    exit_code = 2

    def __init__(self, *args: object) -> None:
        # a message may quote a URL or value the user gave: it reaches logs, Prefect states and terminals redacted
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class StorageError(MobituneError):
    """S3 or the local artifact folder cannot be used; the message says what to do."""


class ServiceUnavailable(MobituneError):
    """A service of the fleet (the S3 endpoint, the Prefect server) did not answer for longer than its outage
    setting. Not a trial's own failure: the trial is never recorded as failed for it, and ``--resume`` runs it
    again once the service is back."""

    exit_code = 5


class EndpointUnreachable(StorageError, ServiceUnavailable):
    """The S3 endpoint did not answer, even after retries with back-off for ``storage.outage_s``."""
