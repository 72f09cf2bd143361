"""Projections of kept activations to pixel space: rules, the general graph path, the windowed chain path."""
from .graph import backproject, graph_entry_bytes, project_graph
from .project import Deconvnet, Level, switches_by_module
from .rules import DEFAULT_METHOD, METHODS, rectifier_rules

__all__ = ["DEFAULT_METHOD", "Deconvnet", "backproject", "Level", "METHODS", "graph_entry_bytes", "project_graph",
           "rectifier_rules", "switches_by_module"]
