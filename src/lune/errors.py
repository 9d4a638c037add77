"""The one exception type lune raises for bad input; the CLI prints it as a one-line error."""


class LuneError(Exception):
    """Bad input or an unusable environment (missing file, malformed record, unknown model, ...)."""
