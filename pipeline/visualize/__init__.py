"""Feature visualisation: an input image that maximises a unit (``mine visualize``).

``fourier`` (the decorrelated image parameterisation), ``transforms`` (random jitter, scale and
rotation per unit), ``optimize`` (Adam over a batch of units, one image each).
"""
from .fourier import FourierImage
from .optimize import VisualizeConfig, unit_seed, visualize_units

__all__ = ["FourierImage", "VisualizeConfig", "unit_seed", "visualize_units"]
