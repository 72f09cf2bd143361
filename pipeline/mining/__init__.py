"""The streaming pass: layer maxima, per-channel top-k, unit statistics, pooled vectors, capture and finalize.

Everything here works on tensors from one forward pass at a time, so a run over any number of images holds
only the statistics (``statistic.py`` says what they share), never the activations.
"""
