"""Pictures that render, visualize and the analyses share: PNG writing, montages and overview
grids, labelled sheets, scatter maps, sensitivity overlays and boxes, and the names of the files
they go to.

Why a package of its own: ``render/`` and ``visualize/`` both make these pictures, and
``render --visualize`` calls ``visualize/``; with the pictures in either of them, the two would
import each other. Nothing here runs a network or reads a store: arrays in, pictures out.
"""
