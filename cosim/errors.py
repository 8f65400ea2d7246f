"""The errors a user causes: scripts report them as one line, without a traceback (exit code 2)."""


class CosimError(Exception):
    """Base of every error that scripts report as one line, without a traceback."""


class ConfigError(CosimError, ValueError):
    """A configuration key, type or value is not allowed."""
