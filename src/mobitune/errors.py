"""The one base class for failures whose message tells the user what to do."""


class MobituneError(Exception):
    """An expected failure (bad input, unreachable source): shown without a traceback."""
