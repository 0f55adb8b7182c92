"""Exceptions and warnings raised by nnscore (leaf module: stdlib only)."""


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why and how to fix it."""


class NNScoreWarning(UserWarning):
    """Base class of nnscore's warnings."""


class FallbackWarning(NNScoreWarning):
    """A slower backend was chosen because a faster one is unavailable."""


class PrecisionWarning(NNScoreWarning):
    """An input was up-cast or a result may be less accurate than requested."""
