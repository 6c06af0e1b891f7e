"""The one base class for failures whose message tells the user what to do."""


class MobituneError(Exception):
    """An expected failure (bad input, unreachable source): shown without a traceback.

    ``exit_code`` is the CLI's exit status for it: 2 for bad input; subclasses
    whose results are kept on disk say so with their own code.
    """

    exit_code = 2


class StorageError(MobituneError):
    """S3 or the local artifact folder cannot be used; the message says what to do."""


class EndpointUnreachable(StorageError):
    """The S3 endpoint did not answer, even after retries with back-off."""
