"""The exception types for every error a user can cause or has to act on.

The CLI turns each into a single line on stderr and the class's `exit_code` (2 for bad
input); nothing else in the package prints or exits, so library callers get a normal
exception.
"""


class LlmEvoError(Exception):
    """Base class: a user-facing problem described in one line."""

    exit_code = 2


class ConfigError(LlmEvoError):
    """Bad config, flag, path, model or task. The message names the field or file."""


class InvalidGenotypeError(LlmEvoError):
    """A genotype that maps to no valid merge (e.g. normalised weights summing to ~0)."""


class WorkersLostError(LlmEvoError):
    """Every evaluation worker died (the Ray cluster was stopped or lost its nodes).

    Not bad input, hence its own exit code: what finished is recorded, and running the
    same command again resumes the run.
    """

    exit_code = 3


def first_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's first line, at most `limit` characters (its type when it has no text):
    what a one-line error or a recorded failure quotes of a library's long message."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
