"""The data stage's one error for an image spec that cannot be used (sources and arrays raise it)."""


class SourceError(Exception):
    """The image spec cannot be resolved; the message is one line meant for the user."""
