"""``mine visualize`` as Python: load the model, optimise units in batches, write the files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.preprocess import Preprocessing
from ..devices import resolve_device
from ..models.weights import load_network
from ..pictures.names import parse_features
from .files import vis_files, write_layer_grid, write_unit_images
from .optimize import VisualizeConfig, visualize_units


@dataclass(frozen=True)
class LayerJob:
    """The units to visualise and where their images go: the network (``model``, ``weights``, input
    ``size``, ``preprocessing``: None for the weights' own), its ``layer`` and ``features`` (a list
    or a ``--features`` text), the ``out`` folder, ``batch_size`` units optimised together, the
    ``device``, ``save_arrays`` (float32 .npy beside each PNG)."""

    model: str
    weights: str
    layer: str
    features: str | list[int]
    out: Path
    size: int = 224
    batch_size: int = 16
    device: str = "auto"
    save_arrays: bool = False
    preprocessing: Preprocessing | None = None


def visualize_layer(job: LayerJob, cfg: VisualizeConfig | None = None) -> list[Path]:
    """Write ``{layer}_vis_{c}.png`` per unit and ``{layer}_vis.png``; returns their paths (grid last).
    ``cfg``: the optimisation (objective, steps, seed, progress; default ``VisualizeConfig()``)."""
    if job.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    net = load_network(job.model, job.weights, job.size, job.preprocessing).to(resolve_device(job.device))
    name = net.select(job.layer)
    if len(name) != 1:
        raise ValueError(f"give one layer, not {len(name)} ({', '.join(name[:5])})")
    name = name[0]
    channels = parse_features(job.features)
    prep = net.prep(job.size)
    cfg = cfg or VisualizeConfig()
    out = Path(job.out)
    for start in range(0, len(channels), job.batch_size):
        chunk = channels[start:start + job.batch_size]
        images = visualize_units(net, name, chunk, prep, cfg).numpy()
        write_unit_images(out, name, chunk, images, job.save_arrays)
    return [out / vis_files(name, c)["png"] for c in channels] + [write_layer_grid(out, name, channels)]
