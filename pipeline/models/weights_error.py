class WeightsError(Exception):
    """A weights source could not be loaded; the message says how to fix it."""
