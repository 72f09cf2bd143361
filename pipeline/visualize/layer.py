"""``mine visualize`` as Python: load the model, optimise units in batches, write the files."""
from __future__ import annotations

from pathlib import Path

from ..devices import resolve_device
from ..models.weights import load_network
from ..pictures.names import parse_features
from .files import vis_files, write_layer_grid, write_unit_images
from .optimize import VisualizeConfig, visualize_units


def visualize_layer(model: str, weights: str, layer: str, features, out: Path, objective: str = "channel",  # noqa: PLR0913
                    steps: int = 512, size: int = 224, seed: int = 0, batch_size: int = 16, device: str = "auto",
                    save_arrays: bool = False, progress: bool = True, preprocessing=None) -> list[Path]:
    """Write ``{layer}_vis_{c}.png`` per unit and ``{layer}_vis.png``; returns their paths (grid last)."""
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    net = load_network(model, weights, size, preprocessing).to(resolve_device(device))
    name = net.select(layer)
    if len(name) != 1:
        raise ValueError(f"give one layer, not {len(name)} ({', '.join(name[:5])})")
    name = name[0]
    channels = parse_features(features)
    prep = net.prep(size)
    cfg = VisualizeConfig(objective=objective, steps=steps, seed=seed, progress=progress)
    out = Path(out)
    for start in range(0, len(channels), batch_size):
        chunk = channels[start:start + batch_size]
        images = visualize_units(net, name, chunk, prep, cfg).numpy()
        write_unit_images(out, name, chunk, images, save_arrays)
    return [out / vis_files(name, c)["png"] for c in channels] + [write_layer_grid(out, name, channels)]
