"""The one exception users see: what was wrong and what to do, in one sentence."""


class YoloPruneError(ValueError):
    """Bad input or an impossible request; the CLI prints it without a traceback and exits 2."""
