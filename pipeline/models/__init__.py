"""Networks and what is known about them without running them: the model registry, weights, layer names and
aliases, forward hooks, and receptive-field geometry (``geometry.py``, the one home of boxes)."""
