"""Projections of kept activations to pixel space: rules, the general graph path, the windowed chain path."""
from .entries import Entries
from .graph import backproject, graph_entry_bytes, project_graph
from .lrp import LRP_METHODS, lrp_rules
from .project import Deconvnet, Level, PackedMask, switches_by_module
from .rules import DEFAULT_METHOD, METHODS, auto_method, rectifier_rules

__all__ = ["DEFAULT_METHOD", "Deconvnet", "Entries", "LRP_METHODS", "backproject", "Level", "METHODS", "auto_method",
           "graph_entry_bytes", "lrp_rules", "PackedMask", "project_graph", "rectifier_rules", "switches_by_module"]
