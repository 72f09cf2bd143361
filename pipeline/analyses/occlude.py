"""``mine occlude``: occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

Why: a montage shows *where* a unit fired; occlusion tests whether that part of the image is
what *drives* it ("is the unit really looking at the dog's face?"), without any backward rule.

A grey square of ``patch`` pixels (the mean colour of the weights' preprocessing: exactly 0
after normalisation, so it adds no signal) is moved over the image with ``stride``; starts are
``0, stride, 2*stride, ...`` while the square fits, as Captum's ``Occlusion`` places its windows.
For every position the score is re-measured:

* a unit: the spatial maximum of feature map C of layer L (the ranking ``mine run`` uses); the
  forward pass stops after L (``mining.taps``);
* a class (``klass``, classifiers only): the softmax probability of class N.

All occluded copies go through the network in batches (``batch_size`` copies per forward), which
is what makes it fast: one copy at a time is the slow baseline of ``scripts/bench_occlude.py``.

Results: ``scores`` (n, n) the score with the square at each position, ``base`` the score of the
intact image, and ``pixels`` (S, S): for every pixel the mean drop ``base - score`` over the
positions whose square covers it (0 where none does). ``pixels`` equals Captum's ``Occlusion``
attribution with baseline 0 (tests check it); it is what the heatmap shows, red where hiding the
region lowers the score.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.preprocess import Preprocessing
from ..durable import save_array
from ..mining.taps import spatial_max
from ..models.hooks import hooked, run_to
from ..models.network import Network
from ..pictures.montage import save_png
from ..pictures.names import safe_name
from ..pictures.sensitivity import draw_box, overlay
from ..pictures.sheet import labelled_grid
from .inputs import as_input, load_pixels, preprocessing

Score = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) normalised -> (B,)


def starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Top (= left) coordinates of the square along one side."""
    if not 1 <= patch <= size:
        raise ValueError(f"--patch must be between 1 and the input size {size}, got {patch}")
    if stride < 1:
        raise ValueError("--stride must be at least 1")
    return np.arange(0, size - patch + 1, stride)


def check_target(layer: str | None, feature: int | None, klass: int | None) -> None:
    """Refuse (``ValueError``) anything but a unit (--layer and --feature) or a class (--class)."""
    if (klass is None) == (feature is None):
        raise ValueError("give --layer and --feature for a unit, or --class for a class score")
    if feature is not None and layer is None:
        raise ValueError("--feature needs --layer")


def one_layer(net: Network, layer: str) -> str:
    """The layer's name in ``net`` for a name or module path (as every command takes), exactly one."""
    names = net.select(layer)
    if len(names) != 1:
        raise ValueError(f"--layer {layer} names {len(names)} layers; occlude takes one, e.g. {names[0]}")
    return names[0]


def unit_score(net: Network, layer: str, feature: int) -> Score:
    """Spatial maximum of map ``feature`` of ``layer``; the forward stops after the layer."""
    layer = one_layer(net, layer)
    c = net.layers[layer].channels
    if not 0 <= feature < c:
        raise ValueError(f"feature {feature} out of range: {layer} has {c} channels")

    def score(x: torch.Tensor) -> torch.Tensor:
        got = {}
        with torch.inference_mode(), hooked(net, [layer], lambda n, out: got.setdefault(n, out[:, feature:feature + 1])):
            run_to(net, x)
        return spatial_max(got[layer])[0][:, 0].float()
    return score


def class_score(net: Network, klass: int) -> Score:
    """Softmax probability of class ``klass``; refuses networks built without a classifier head."""
    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = net.model(x)
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
            raise ValueError(f"--class needs a classifier: {net.arch} is built as a convolutional trunk without its "
                             "classifier head (VGG, AlexNet and ZFNet are); use --layer/--feature, or a model with a "
                             "head such as resnet18 or mobilenet_v2")
        if not 0 <= klass < logits.shape[1]:
            raise ValueError(f"--class {klass} out of range: {net.arch} has {logits.shape[1]} classes")
        return logits.float().softmax(1)[:, klass]
    return score


@dataclass
class OcclusionMap:
    base: float  # score of the intact image
    scores: np.ndarray  # (n, n) score with the square at each position
    pixels: np.ndarray  # (S, S) mean drop over the squares covering each pixel
    patch: int
    stride: int


def occlusion_map(score: Score, x: torch.Tensor, patch: int, stride: int, batch_size: int = 32) -> OcclusionMap:
    """The occlusion map of one normalised image ``x`` (3, S, S) (see the module docstring)."""
    size = x.shape[-1]
    pos = starts(size, patch, stride)
    n = len(pos)
    tops, lefts = np.repeat(pos, n), np.tile(pos, n)
    base = float(score(x[None])[0])
    out = torch.empty(n * n)
    rows = torch.arange(size, device=x.device)
    for i in range(0, n * n, batch_size):
        t = torch.as_tensor(tops[i:i + batch_size], device=x.device)
        l_ = torch.as_tensor(lefts[i:i + batch_size], device=x.device)
        iny = (rows[None] >= t[:, None]) & (rows[None] < t[:, None] + patch)  # (B, S)
        inx = (rows[None] >= l_[:, None]) & (rows[None] < l_[:, None] + patch)
        keep = ~(iny[:, :, None] & inx[:, None, :])  # (B, S, S): False inside the square
        out[i:i + len(t)] = score(x[None] * keep[:, None].to(x.dtype)).cpu()
    scores = out.numpy().reshape(n, n)
    drop_sum = np.zeros((size, size))
    count = np.zeros((size, size))
    for (t, l_), s in zip(zip(tops, lefts), scores.reshape(-1)):
        drop_sum[t:t + patch, l_:l_ + patch] += base - s
        count[t:t + patch, l_:l_ + patch] += 1
    pixels = np.divide(drop_sum, count, out=np.zeros_like(drop_sum), where=count > 0)
    return OcclusionMap(base, scores.astype(np.float32), pixels.astype(np.float32), patch, stride)


@dataclass
class OccludeResult:
    files: list[Path] = field(default_factory=list)
    arrays: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.arrays)
        return f"{n} occlusion map{'s' * (n != 1)} -> {', '.join(str(f) for f in self.files)}"


def _figure(pixels: np.ndarray, maps: list[OcclusionMap], boxes: list, names: list[str], what: str) -> np.ndarray:
    cells = []
    for px, m, box in zip(pixels, maps, boxes):
        shown = px if box is None else draw_box(px, box)
        heat = overlay(px, m.pixels)
        cells.append([shown, heat if box is None else draw_box(heat, box)])
    rows = [f"{nm}: {what} {m.base:.3g}, min {m.scores.min():.3g}" for nm, m in zip(names, maps)]
    return labelled_grid(cells, cols=["image", f"drop when occluded ({maps[0].patch}px/{maps[0].stride})"], rows=rows)


@dataclass(frozen=True)
class OccludeOptions:
    """What to occlude and how: a unit (``layer`` and ``feature``) or a class (``klass``), the square's
    ``patch`` side and ``stride`` in input pixels, ``batch_size`` occluded copies per forward pass,
    the ``device``."""

    layer: str | None = None
    feature: int | None = None
    klass: int | None = None
    patch: int = 32
    stride: int = 8
    batch_size: int = 32
    device: torch.device | str = "cpu"


def occlude_pixels(net: Network, pixels: np.ndarray, prep: Preprocessing, names: list[str], target: Path,
                   opts: OccludeOptions = OccludeOptions()) -> OccludeResult:
    """Maps of N images (uint8 pixels), one figure ``<target>.png`` (rows images: picture with the
    unit's receptive-field box at its arg-max, heatmap) and ``<target>.<i>.npy`` (the (n, n) scores;
    ``<target>.npy`` for one image)."""
    layer, feature, klass = opts.layer, opts.feature, opts.klass
    check_target(layer, feature, klass)
    if layer is not None:
        layer = one_layer(net, layer)
    net.to(opts.device)
    x = as_input(pixels, prep, net.device)
    score = unit_score(net, layer, feature) if klass is None else class_score(net, klass)
    maps = [occlusion_map(score, xi, opts.patch, opts.stride, opts.batch_size) for xi in x]
    boxes = [None] * len(maps)
    if klass is None:
        geo, w = net.layers[layer].geometry, net.layers[layer].out_size
        with torch.inference_mode():
            got = {}
            with hooked(net, [layer], lambda n, o: got.setdefault(n, o[:, feature:feature + 1])):
                run_to(net, x)
            pos = spatial_max(got[layer])[1][:, 0].cpu().numpy()
        boxes = list(geo.boxes(pos // w, pos % w, prep.size))
    what = f"{layer} map {feature} max" if klass is None else f"p(class {klass})"
    out, stem = Path(target).parent, Path(target).name
    out.mkdir(parents=True, exist_ok=True)
    res = OccludeResult()
    png = out / f"{stem}.png"
    save_png(_figure(pixels, maps, boxes, names, what), png)
    res.files.append(png)
    for i, m in enumerate(maps):
        p = out / f"{stem}.{i}.npy" if len(maps) > 1 else out / f"{stem}.npy"
        save_array(p, m.scores)
        res.arrays.append(p)
    return res


def target_stem(layer: str | None, feature: int | None, klass: int | None) -> str:
    return f"{safe_name(layer)}_occ_{feature}" if klass is None else f"class_{klass}_occ"


def occlude_images(net: Network, images: list[str | Path], out: Path, resize: str = "center-crop", **kw) -> OccludeResult:
    """``mine occlude IMAGE...``: one figure for the named images; ``kw``: :class:`OccludeOptions`' fields."""
    opts = OccludeOptions(**kw)
    prep = preprocessing(net, resize)
    check_target(opts.layer, opts.feature, opts.klass)
    if opts.layer is not None:
        opts = replace(opts, layer=one_layer(net, opts.layer))
    pixels = load_pixels(images, prep)
    names = [Path(p).stem for p in images]
    stem = target_stem(opts.layer, opts.feature, opts.klass)
    if len(images) == 1:
        stem = f"{names[0]}.{stem}"
    return occlude_pixels(net, pixels, prep, names, Path(out) / stem, opts)


def occlude_store(store_path: str | Path, out: Path | None = None, weights: str | None = None,
                  limit: int | None = None, **kw) -> OccludeResult:
    """``mine occlude STORE``: the unit's top-k images from the store's kept pixels, written to
    ``<stem>-render/occlude/<layer>_occ_<C>.png`` by default, where ``mine render``'s index.html
    links it from the unit; ``kw``: :class:`OccludeOptions`' fields."""
    from ..pictures.names import default_out_dir
    from ..render.renderer import load_store_network
    from ..store.read import Store

    opts = OccludeOptions(**kw)
    with Store(store_path) as s:
        layer, feature = opts.layer, opts.feature
        if layer is None or feature is None:
            raise ValueError("mine occlude STORE needs --layer and --feature: the unit whose top images to occlude")
        entries = s.entries(layer, feature)[:limit]
        if not entries:
            raise ValueError(f"{layer} feature {feature} has no entries in {s.path}")
        net = load_store_network(s, weights)
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        pixels = np.stack([s.pixels(e.kept) for e in entries])
        names = [f"#{e.rank} {Path(e.path).name}" for e in entries]
    out = Path(out) if out else default_out_dir(store_path) / "occlude"
    stem = target_stem(layer, feature, None)
    if opts.klass is not None:  # the unit picks the images, the class is what is measured
        stem, opts = f"{stem}_class_{opts.klass}", replace(opts, feature=None)
    return occlude_pixels(net, pixels, prep, names, out / stem, opts)
