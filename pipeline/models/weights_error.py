"""The one error of a weights source that cannot be loaded (its own module: ``weights`` and ``hed`` raise it,
and ``hed`` is imported by ``weights``)."""


class WeightsError(Exception):
    """A weights source could not be loaded; the message says how to fix it."""
