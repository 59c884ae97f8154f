"""Errors that the command line turns into one line: usage errors (exit 2), environment faults (exit 1)."""


class UsageError(Exception):
    """Bad input from the user: a one-line message that says what is wrong and what to do."""


class EnvironmentFault(Exception):
    """The machine, not the input, stopped the run (disk full, read-only folder): one line, exit 1."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so that temporary files are removed."""


# torch is not a dependency of the runtime install (DESIGN.md principle 7), nor of the `export`
# extra: its pinned build is installed on its own (run.py), so the hint names both.
TORCH_INSTALL_HINT = "pip install torch 'retinanet-trt[export]'"


def require_torch(feature: str) -> None:
    """Raise a one-line UsageError naming `feature` (e.g. "--compare torch") when torch cannot be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or blocked torch (sys.modules["torch"] = None)
        found = False
    if not found:
        raise UsageError(f"{feature} needs torch, which is not installed here ({TORCH_INSTALL_HINT})")
