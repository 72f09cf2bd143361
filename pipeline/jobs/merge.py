"""``mine merge A.h5 B.h5 ... -o C.h5``: one store equal to a single run over the union.

Sharded runs (one GPU per slice of a collection) and collections mined separately
meet here. The inputs may be disjoint or overlap (an image in two shards counts
once). All inputs must share model, weights hash, preprocessing, k, layers and
streaming precision; anything else is refused, naming the difference.

How: every input becomes a ``combine.Part`` (its images table, its top-k read
back from the entries, its ``/kept/pixels``), the parts are combined, and
finalize re-runs the network over the union's kept images from those stored
pixels. No source image file is needed, but the weights are (the store names
them; ``--weights`` points elsewhere if they moved, and their hash must match).
The re-run is what makes values and switches equal a single run bit for bit; it
costs one forward pass per kept image, a few seconds on a GPU.

The output is written atomically under its own lock. It may be one of the
inputs (fold a shard into the main store); any other existing store is only
replaced with ``--force``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..data.preprocess import Preprocessing
from ..devices import resolve_device
from ..job_errors import StoreExistsError
from ..lock import StoreLock
from ..models.weights import load_network
from ..models.weights_error import WeightsError
from ..store.read import Store
from ..store.write import write_store
from ..versions import versions
from .checkpoint import fingerprint_id
from .combine import check_compatible, combine, config_of_run, config_of_store, part_from_store
from .output import remove_stale_temps, store_target, write_isolated
from .record import JobStats
from .unitstats import MiningSetup


@dataclass
class MergeResult:
    store: Path
    inputs: int
    images_seen: int
    images_skipped: int
    kept: int
    seconds: float

    def summary(self) -> str:
        return (f"merged {self.inputs} stores: {self.images_seen} images ({self.images_skipped} skipped), "
                f"{self.kept} kept images, {self.seconds:.1f} s -> {self.store}")


def merge_stores(inputs: list[str | Path], out: str | Path, weights: str | None = None, device: str = "auto",
                 force: bool = False, stats: JobStats | None = None) -> MergeResult:

    t0 = time.perf_counter()
    stats = stats if stats is not None else JobStats(command="merge")
    stats.mode = "merge"
    inputs = [Path(p) for p in inputs]
    out = store_target(Path(out))
    stats.store = str(out)
    if len(inputs) < 2:
        raise ValueError("mine merge needs at least two stores")
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; name the merged store file, e.g. {out / 'merged.h5'}")
    if len({p.resolve() for p in inputs}) < len(inputs):
        raise ValueError("the same store is given twice")
    dev = resolve_device(device)
    with StoreLock(out):
        remove_stale_temps(out)
        if out.exists() and not force and out.resolve() not in {p.resolve() for p in inputs}:
            raise StoreExistsError(f"{out} already exists; pass --force to replace it with the merge")
        stores = []
        try:
            for p in inputs:
                stores.append(Store(p))
            ref = stores[0]
            ref_cfg = config_of_store(ref.attrs)
            for s in stores[1:]:
                check_compatible(ref_cfg, str(ref.path), config_of_store(s.attrs), str(s.path))
            a = ref.attrs
            net = load_network(a["model"], weights or a["weights"], int(a["input_size"]),
                               Preprocessing.from_dict(a["preprocessing"]))
            if net.weights_hash != a["weights_hash"]:
                raise WeightsError(
                    f"weights {weights or a['weights']!r} (hash {net.weights_hash[:12]}) are not the ones the stores "
                    f"were mined with (hash {a['weights_hash'][:12]}); pass --weights with the original file")
            layers = list(a["layers"])
            pp = a["preprocessing"]
            prep = Preprocessing.from_dict(pp)
            if config_of_run(net, prep, ref.k, layers, a.get("precision", "fp32"), a.get("pooled") or []) != ref_cfg:
                raise WeightsError(f"the network rebuilt from {ref.path} does not match its attributes")
            net.to(dev)
            parts = [part_from_store(s, layers) for s in stores]
            combined = combine(parts, MiningSetup(net, layers, ref.k, prep, dev, a.get("precision", "fp32")))
            ids = sorted(str(s.attrs.get("inputs_id") or s.attrs.get("created")) for s in stores)
        finally:
            for s in stores:
                s.close()
        stats.images_seen, stats.images_skipped = combined.images_seen, combined.images_skipped
        attrs = {k: a[k] for k in ("model", "weights", "weights_hash", "preprocessing", "k", "input_size",
                                   "layers", "precision", "pooled") if k in a}
        attrs.update({
            "images_spec": combined.spec, "images_root": combined.root, "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_seen": combined.images_seen, "images_skipped": combined.images_skipped,
            "seconds": time.perf_counter() - t0, "inputs_id": fingerprint_id({"merge": ids}),
        })
        write_isolated(out, lambda: write_store(out, net, attrs, combined.table, combined.fin, combined.stats),
                       "the input stores and any previous output are unchanged")
    return MergeResult(out, len(inputs), combined.images_seen, combined.images_skipped,
                       len(combined.fin.kept_keys), time.perf_counter() - t0)
