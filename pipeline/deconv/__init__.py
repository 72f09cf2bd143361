"""Deconvnet projections of kept activations to pixel space (see ``project``)."""
from .project import Deconvnet, Level, switches_by_module

__all__ = ["Deconvnet", "Level", "switches_by_module"]
