"""Errors that the command line turns into one line: usage errors (exit 2), environment faults (exit 1)."""


class UsageError(Exception):
    """Bad input from the user: a one-line message that says what is wrong and what to do."""


class EnvironmentFault(Exception):
    """The machine, not the input, stopped the run (disk full, read-only folder): one line, exit 1."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so that temporary files are removed."""
