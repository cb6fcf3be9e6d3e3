"""One exception type for every error a user can cause.

The CLI turns it into a single line on stderr and exit code 2; nothing else in the
package prints or exits, so library callers get a normal exception.
"""


class LlmEvoError(Exception):
    """Base class: a user-facing problem described in one line."""


class ConfigError(LlmEvoError):
    """Bad config, flag, path, model or task. The message names the field or file."""


class InvalidGenotypeError(LlmEvoError):
    """A genotype that maps to no valid merge (e.g. normalised weights summing to ~0)."""
