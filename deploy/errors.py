"""Errors that the command line turns into one line and exit status 2 (usage errors)."""


class UsageError(Exception):
    """Bad input from the user: a one-line message that says what is wrong and what to do."""
