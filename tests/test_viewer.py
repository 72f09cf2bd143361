"""Display contrast, activation heatmaps, the viewer in headless Chromium, and the render CLI options.

References: numpy on known arrays (contrast), a brute-force quantile over every activation of a
small set recomputed with a plain ``nn.Sequential`` (heatmap level), and a real browser (viewer).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline import RunConfig, Store, run
from pipeline.cli import app
from pipeline.data import normalize
from pipeline.data.preprocess import Preprocessing
from pipeline.models.weights import load_network
from pipeline.render import feature_files, layer_files, render_store
from pipeline.render.heatmap import BOX, DIM, OUTLINE, composite, overlay, overlays, upsample
from pipeline.render.manifest import MANIFEST
from pipeline.render.normalise import display, scales

SIZE = 32


# --- contrast -------------------------------------------------------------------------------
def tile_with_outlier(amp: float = 1.0) -> np.ndarray:
    """(3, 10, 10): 299 values of +-amp (checkerboard) and one outlier of 1000 * amp."""
    t = np.where((np.indices((3, 10, 10)).sum(0) % 2) == 0, amp, -amp).astype(np.float32)
    t[0, 0, 0] = 1000 * amp
    return t


def test_robust_contrast_fills_the_grey_range_and_clips_outliers():
    t = tile_with_outlier()[None]
    assert scales(t, "robust")[0] == pytest.approx(1.0), "99th percentile of |x| is 1, not the outlier"
    d = display(t, "robust")
    assert d[0, 0, 0, 0] == 255, "the outlier is clipped at white"
    body = d[0].reshape(-1, 3)[1:]
    assert set(np.unique(body)) == {0, 255}, "+-1 span the whole range"
    m = display(t, "max")
    assert scales(t, "max")[0] == pytest.approx(1000.0)
    assert set(np.unique(m[0].reshape(-1, 3)[1:])) == {127, 128}, "max: the structure stays at mid-grey"
    assert m[0, 0, 0, 0] == 255


def test_shared_contrast_is_one_robust_scale_per_montage():
    t = np.stack([tile_with_outlier(1.0), np.full((3, 10, 10), 0.25, np.float32)])
    s = scales(t, "shared")
    assert s[0] == s[1] == pytest.approx(np.percentile(np.abs(t), 99))
    d = display(t, "shared")
    assert (d[1] == round(0.25 / (2 * s[1]) * 255 + 127.5)).all(), "the weak tile keeps its relative strength"
    assert (display(t, "robust")[1] == 255).all(), "on its own scale the weak tile is white"


def test_sparse_and_zero_tiles():
    t = np.zeros((2, 3, 10, 10), np.float32)
    t[0, 1, 4, 4] = -2.0  # 1 of 300 values: the 99th percentile is 0, so the max sets the scale
    d = display(t, "robust")
    assert tuple(d[0, 4, 4]) == (128, 0, 128) and (d[1] == 128).all()
    with pytest.raises(ValueError, match="contrast"):
        display(t, "bright")


# --- heatmaps -------------------------------------------------------------------------------
def images(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        img[rng.integers(0, 20):, rng.integers(0, 20):] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"im {i}<&>.png")  # names to escape
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """6 images, k = 8: every image is in every unit's top-k, so 'the top-k images' = 'all images'."""
    tmp = tmp_path_factory.mktemp("viewer")
    cfg = RunConfig(images=str(images(tmp / "images")), layer="conv2_1,conv3_1", model="vgg16", weights="random",
                    size=SIZE, workers=0, k=8, batch_size=4, out=str(tmp / "s.h5"), progress=False, device="cpu")
    return Path(run(cfg).store)


@pytest.fixture(scope="module")
def site(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    render_store(small, out=out, layers="conv2_1", features="0-5", overview_features=3, show="both",
                 method="guided", device="cpu", progress=False)
    return out


def _overlay_by_hand(amap: np.ndarray, level: float, size: int, box) -> np.ndarray:
    """An overlay pixel by pixel: the region is the upsampled map above the level (compared in float32, as
    a float32 map against a Python float); its contour the pixels within ``width`` steps (|dy| + |dx|) of a
    pixel outside it or off the picture; the box's border the same for its rectangle."""
    up = torch.nn.functional.interpolate(torch.as_tensor(amap)[None, None], size=(size, size), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
    region = up > np.float32(level) if np.isfinite(level) else np.zeros((size, size), bool)
    width = max(1, size // 112)
    frame = np.zeros((size, size), bool)
    if box is not None and box[0] >= 0:
        frame[box[0]:box[2], box[1]:box[3]] = True
    steps = [(dy, dx) for dy in range(-width, width + 1) for dx in range(-width, width + 1) if abs(dy) + abs(dx) <= width]

    def edge(m: np.ndarray, i: int, j: int) -> bool:
        return m[i, j] and any(not (0 <= i + dy < size and 0 <= j + dx < size) or not m[i + dy, j + dx]
                               for dy, dx in steps)

    out = np.zeros((size, size, 4), np.uint8)
    for i in range(size):
        for j in range(size):
            out[i, j] = ((*BOX, 255) if edge(frame, i, j) else (*OUTLINE, 255) if edge(region, i, j)
                         else (0, 0, 0, 0 if region[i, j] else DIM))
    return out


def test_overlays_of_many_maps_are_each_drawn_by_hand():
    """``overlays`` draws a whole chunk's maps at once (one upsampling call); each overlay is the one drawn
    pixel by pixel, and the composite the alpha blend of each pixel."""
    rng = np.random.default_rng(3)
    size, n = 48, 5
    maps = rng.standard_normal((n, 6, 6)).astype(np.float32)
    levels = np.array([0.3, -0.2, np.nan, 1.0, float(np.float32(0.5) + np.float32(1e-8))])
    boxes = np.array([[4, 6, 30, 20], [0, 0, 48, 48], [10, 10, 11, 12], [-1, -1, -1, -1], [40, 2, 48, 9]])
    got = overlays(maps, levels, size, boxes)
    assert got.shape == (n, size, size, 4)
    for i in range(n):
        want = _overlay_by_hand(maps[i], float(levels[i]), size, boxes[i])
        np.testing.assert_array_equal(got[i], want)
        np.testing.assert_array_equal(overlay(maps[i], float(levels[i]), size, boxes[i]), want)
    px = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    a = got[..., 3:4] / 255
    np.testing.assert_array_equal(composite(px, got), np.rint(px * (1 - a) + got[..., :3] * a).astype(np.uint8))


def test_heatmap_level_is_the_brute_force_quantile(small, site):
    net = load_network("vgg16", "random", SIZE)
    end = net.chain_index("conv2_1")
    with Store(small) as s:
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        pix = s.pixels(np.arange(len(s.kept_keys())))
        assert (s.arrays("conv2_1")["kept"][:6] >= 0).sum() == 6 * 6, "every image kept for every unit"
        a = s.arrays("conv2_1")
        box = a["box"]
    with torch.no_grad():
        maps = torch.nn.Sequential(*net.chain_modules()[:end + 1])(normalize(torch.from_numpy(pix), prep)).numpy()
    units = json.loads((site / MANIFEST).read_text())["units"]["conv2_1"]
    for c in range(6):
        grid = maps[:, c, ::-(-maps.shape[2] // 6), ::-(-maps.shape[3] // 6)]  # the positions counted
        want = np.quantile(grid.astype(np.float64), 0.99)
        # from the store's unit histograms: within their stated bound (mining/stats.py: 1/8 of the value)
        assert abs(units[str(c)]["level"] - want) <= abs(want) / 8
        assert units[str(c)]["source"] == "histogram"
    # The overlay marks exactly the upsampled map above the level.
    c, rank = 2, 0
    m = a["kept"][c, rank]
    crop = units[str(c)]["crop"]  # the box drawn is the tile's: here the effective crop, inside the field's box
    assert crop["kind"] == "effective"
    t, l, b, r = crop["boxes"][rank]
    assert box[c, rank][0] <= t < b <= box[c, rank][2] and box[c, rank][1] <= l < r <= box[c, rank][3]
    ov = overlay(maps[m, c], units[str(c)]["level"], SIZE, crop["boxes"][rank])
    above = upsample(maps[m, c], SIZE) > units[str(c)]["level"]
    assert above.any()
    assert (ov[above, 3] != DIM).all(), "inside the region: clear, or its contour / the box"
    assert (ov[~above, 3] != 0).all(), "outside: dimmed (or the box)"
    strip = np.asarray(Image.open(site / feature_files("conv2_1", c)["overlay"]))
    assert strip.shape == (SIZE, 8 * SIZE, 4)
    np.testing.assert_array_equal(strip[:, :SIZE], ov)



def test_quantile_option_sets_the_heatmap_level(small, tmp_path):
    """--quantile q: each unit's level is the brute-force q-quantile of the positions the statistics count
    (within their stated bound, 1/8 of the value), so 0.5 and 0.99 give different levels."""
    net = load_network("vgg16", "random", SIZE)
    end = net.chain_index("conv2_1")
    with Store(small) as s:
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        pix = s.pixels(np.arange(len(s.kept_keys())))
    with torch.no_grad():
        maps = torch.nn.Sequential(*net.chain_modules()[:end + 1])(normalize(torch.from_numpy(pix), prep)).numpy()
    levels = {}
    for q in (0.5, 0.99):
        out = tmp_path / str(q)
        render_store(small, out=out, layers="conv2_1", features="0-2", quantile=q, method="deconvnet", crop="rf",
                     device="cpu", progress=False)
        units = json.loads((out / MANIFEST).read_text())["units"]["conv2_1"]
        for c in range(3):
            grid = maps[:, c, ::-(-maps.shape[2] // 6), ::-(-maps.shape[3] // 6)]
            want = np.quantile(grid.astype(np.float64), q)
            assert abs(units[str(c)]["level"] - want) <= abs(want) / 8 + 1e-6, (q, c)
            levels[q, c] = units[str(c)]["level"]
    assert any(levels[0.5, c] < levels[0.99, c] for c in range(3))

def test_show_options_and_manifest(small, site, tmp_path):
    fs = feature_files("conv2_1", 1)
    both = np.asarray(Image.open(site / fs["pair"]))
    feat = np.asarray(Image.open(site / fs["feat"]))
    assert (site / fs["heat"]).exists() and both.shape[1] > 2 * feat.shape[1], "projections | patches | heatmaps"
    man = json.loads((site / MANIFEST).read_text())
    assert man["options"]["method"] == "guided" and man["options"]["show"] == "both"
    assert man["options"]["contrast"] == "robust"
    index = (site / "index.html").read_text()
    assert "guided backpropagation" in index and "contrast robust" in index
    patch = render_store(small, out=tmp_path, layers="conv2_1", features="1", device="cpu", progress=False)
    assert not (patch.out / fs["heat"]).exists()
    assert np.asarray(Image.open(patch.out / fs["pair"])).shape[1] < both.shape[1]


# --- CLI ------------------------------------------------------------------------------------
def test_cli_method_contrast_and_store_in_current_folder(small, tmp_path, monkeypatch):
    r = CliRunner()
    folder = tmp_path / "here"
    folder.mkdir()
    (folder / "other.h5").write_bytes(b"not hdf5")
    store = folder / "only.h5"
    store.write_bytes(small.read_bytes())
    monkeypatch.chdir(folder)
    ok = r.invoke(app, ["render", "--feature", "3", "--layer", "conv3_1", "--method", "gradient", "--contrast", "max",
                        "--show", "heatmap", "--out", "o", "--quiet"])
    assert ok.exit_code == 0, ok.output
    man = json.loads((folder / "o" / MANIFEST).read_text())
    assert man["options"]["method"] == "gradient" and man["options"]["contrast"] == "max"
    assert "gradient (saliency)" in (folder / "o" / "index.html").read_text()
    dep = r.invoke(app, ["render", "--feature", "3", "--layer", "conv3_1", "--shared-scale", "--out", "o2", "--quiet"])
    assert dep.exit_code == 0 and "deprecated" in dep.output
    assert json.loads((folder / "o2" / MANIFEST).read_text())["options"]["contrast"] == "shared"
    bad = r.invoke(app, ["render", "--feature", "3", "--method", "lrp", "--quiet"])
    assert bad.exit_code == 2 and "unknown method" in bad.output
    (folder / "second.h5").write_bytes(small.read_bytes())
    two = r.invoke(app, ["render", "--feature", "3", "--quiet"])
    assert two.exit_code == 2 and "only.h5" in two.output and "second.h5" in two.output
    monkeypatch.chdir(tmp_path)
    none = r.invoke(app, ["render", "--feature", "3", "--quiet"])
    assert none.exit_code == 2 and "no store" in none.output


def test_top_json_paths_open_as_they_are(small):
    r = CliRunner().invoke(app, ["top", str(small), "--layer", "conv2_1", "--feature", "0", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows and all(Path(e["file"]).is_file() for e in rows)
    assert all(Path(e["file"]) == Path(e["images_root"]) / e["path"] for e in rows)


# --- the viewer in a real browser -------------------------------------------------------------
ALL_IMAGES_LOAD = """Promise.all(Array.from(document.images).map(i => new Promise(r => {
  const j = new Image(); j.onload = () => r(j.naturalWidth > 0 ? null : i.src); j.onerror = () => r(i.src);
  j.src = i.src; }))).then(a => a.filter(x => x))"""


@pytest.fixture(scope="module")
def browser():
    from cdp import Browser, find_browser

    binary = find_browser()
    if binary is None:
        pytest.skip("headless Chromium not found (Debian package `chromium`; scripts/setup.sh installs it with "
                    "apt-get where apt is available): the viewer's browser test cannot run")
    try:
        b = Browser(binary)
    except Exception as e:  # noqa: BLE001 - a browser that cannot start here is a skip, not a failure
        pytest.skip(f"chromium is installed but could not be started headless: {e}")
    yield b
    b.close()


def test_viewer_in_headless_chromium(site, browser, tmp_path):
    b = browser
    b.goto((site / "index.html").as_uri())
    assert b.js("document.title").startswith("mine")
    assert b.js(ALL_IMAGES_LOAD) == []
    # index -> layer page -> a unit page, by clicking links
    b._drop("Page.loadEventFired")
    b.js(f"document.querySelector('a[href=\"{layer_files('conv2_1')['page']}\"]').click()")
    b.wait_load()
    assert b.js("location.pathname").endswith(layer_files("conv2_1")["page"])
    assert b.js(ALL_IMAGES_LOAD) == []
    assert b.js("document.querySelectorAll('#units .card').length") == 128
    b.js("var s = document.getElementById('sort'); s.value = 'max'; s.dispatchEvent(new Event('change'))")
    order = b.js("Array.from(document.querySelectorAll('#units .card')).map(c => +c.dataset.max || -1)")
    assert order == sorted(order, reverse=True), "sorted by max activation"
    b._drop("Page.loadEventFired")
    b.js("document.querySelector('#units a[href$=\"_unit_2.html\"]').click()")
    b.wait_load()
    assert b.js("location.pathname").endswith("conv2_1_unit_2.html")
    assert b.js(ALL_IMAGES_LOAD) == []
    assert b.js("document.querySelectorAll('.entry').length") == 6, "its filled slots"
    assert "im 0<&>.png" in b.js("document.body.innerText") or "<&>.png" in b.js("document.body.innerText")
    # every entry's table in the same place: below its pictures, at the same offset (not beside some)
    places = b.js("Array.from(document.querySelectorAll('.entry')).map(e => { const d = e.querySelector('dl')"
                  ".getBoundingClientRect(), p = e.querySelector('.pics').getBoundingClientRect(), "
                  "r = e.getBoundingClientRect(); return [d.left - r.left, d.top - r.top, d.top >= p.bottom]; })")
    assert len({tuple(x) for x in places}) == 1 and places[0][2], places
    # keyboard: right arrow goes to the next rendered unit
    b.key("ArrowRight", 39)
    b.wait_load()
    assert b.js("location.pathname").endswith("conv2_1_unit_3.html")
    # the search box finds a unit, and says when one is not rendered
    b._drop("Page.loadEventFired")
    b.js("var f = document.getElementById('search'); f.elements.layer.value = 'conv2_1'; "
         "f.elements.unit.value = '5'; f.requestSubmit()")
    b.wait_load()
    assert b.js("location.pathname").endswith("conv2_1_unit_5.html")
    b.js("var f = document.getElementById('search'); f.elements.unit.value = '99'; f.requestSubmit()")
    assert "not rendered" in b.js("document.getElementById('search-status').textContent")
    b.screenshot(tmp_path / "unit.png")
    assert Image.open(tmp_path / "unit.png").size[0] > 0
    assert b.errors() == [], "console errors, exceptions or failed loads"


def test_histogram_plot_draws_the_occupied_bins_with_breaks_and_places_the_level_by_hand():
    """``hist_svg`` on hand-made histograms: only the occupied stretch, a long empty run as one
    break, the level inside its bin; the store's log bins with the zero bin in the middle."""
    import re

    from pipeline.mining.stats import BINS, ZERO
    from pipeline.render.index_html import hist_svg

    # 10 linear bins of width 1; bins 1..7 empty (7 > GAP_BINS): slots bin 0 | break | bin 8 | bin 9
    svg = hist_svg({"edges": list(range(11)), "counts": [5, 0, 0, 0, 0, 0, 0, 0, 2, 1], "over": "top-k"}, 8.25,
                   width=320, height=90)
    rects = re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)">', svg)
    assert [float(r[0]) for r in rects] == [0.0, 160.0, 240.0]  # 4 slots of 80 px, the break is the 2nd
    heights = [float(r[3]) for r in rects]
    assert heights[0] == 76.0 and abs(heights[1] - 76 * np.log(3) / np.log(6)) < 0.01
    assert svg.count('class="gap"') == 1 and "nothing from 1 to 8" in svg
    assert 'x1="180.00"' in svg  # 8.25: a quarter into bin 8, the third slot
    assert ">0</text>" in svg and ">10</text>" in svg and "linear axis" in svg
    assert "<line" not in hist_svg({"edges": list(range(11)), "counts": [1] * 10}, 12.0)
    assert "<line" not in hist_svg({"edges": list(range(11)), "counts": [1] * 10}, None)
    assert "nothing counted" in hist_svg({"edges": list(range(11)), "counts": [0] * 10}, 1.0)

    # the unit's max beyond the counted bins (the statistics count a grid of positions, the top-1 may
    # sit elsewhere): the axis goes on to the max's bin. Bins 0, 1 counted, 2..7 empty (a break), bin
    # 8 holds the max 8.5: 4 slots of 80 px, the axis ends at 9, the max's tick half into the 4th.
    hist = {"edges": list(range(11)), "counts": [5, 2, 0, 0, 0, 0, 0, 0, 0, 0], "over": "all"}
    assert ">2</text>" in hist_svg(hist, None)  # without the max: the last counted bin's edge
    svg = hist_svg(hist, None, top=8.5)
    assert ">9</text>" in svg and svg.count('class="gap"') == 1 and 'class="max" x1="280.00"' in svg

    # store bins: -3 (bin of [-3.25, -3)), zero, 3 ([3, 3.25)): breaks between, 0 labelled in the middle
    counts = np.zeros(len(BINS.edges) - 1)
    neg, pos = np.searchsorted(BINS.edges, -3.0, side="left") - 1, np.searchsorted(BINS.edges, 3.0, side="right") - 1
    assert BINS.edges[pos] == 3.0 and BINS.edges[neg + 1] == -3.0
    counts[[neg, ZERO, pos]] = [4, 100, 7]
    svg = hist_svg({"edges": BINS.edges.tolist(), "counts": counts.tolist(), "over": "all"}, 3.0)
    assert len(re.findall("<rect", svg)) == 3 and svg.count('class="gap"') == 2
    assert ">-3.25</text>" in svg and ">3.25</text>" in svg and 'text-anchor="middle">0</text>' in svg
    assert 'x1="256.00"' in svg  # 5 slots of 64 px: -3 | break | 0 | break | 3; the level starts the last
    assert "symmetric log axis" in svg and "at most 6 x 6 per map" in svg
