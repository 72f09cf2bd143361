"""Capture keeps exactly the images that are in some layer's top-k (the reference: a brute-force top-k per
channel over everything offered, by sorting), whichever layer keeps them."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.mining.capture import Capture
from pipeline.mining.topk import RunningTopK


def brute_kept(values: dict[str, np.ndarray], keys: np.ndarray, k: int) -> set[int]:
    """Keys in the top-k of some channel of some layer: larger value first, then smaller key."""
    out: set[int] = set()
    for v in values.values():
        for c in range(v.shape[1]):
            order = sorted(range(len(keys)), key=lambda i: (-v[i, c], keys[i]))
            out.update(int(keys[i]) for i in order[:k])
    return out


def test_captured_set_is_the_union_of_every_layers_kept_images():
    rng = np.random.default_rng(0)
    k, n, batch = 2, 24, 6
    keys = rng.permutation(1000)[:n].astype(np.int64)
    values = {"shallow": rng.normal(size=(n, 3)).astype(np.float32), "deep": rng.normal(size=(n, 4)).astype(np.float32)}
    values["shallow"][5] = 50.0  # image 5 is kept by the shallow layer only, from the first batch on
    values["deep"][5] = -50.0
    tops = {name: RunningTopK(v.shape[1], k) for name, v in values.items()}
    cap = Capture([], switches=False)
    for s in range(0, n, batch):
        kb = torch.from_numpy(keys[s:s + batch])
        for name, v in values.items():
            vb = torch.from_numpy(v[s:s + batch])
            tops[name].add(vb, kb, torch.zeros(vb.shape, dtype=torch.int64))
        cap.add(kb, torch.zeros(len(kb), 2, 2, 3, dtype=torch.uint8), {}, tops)
        seen = keys[:s + batch]
        want = brute_kept({nm: v[:s + batch] for nm, v in values.items()}, seen, k)
        assert set(cap.items) == want, f"after {s + batch} images"
    assert int(keys[5]) in cap.items
