"""Which feature maps a layer overview shows, and how dead and border units are reported.

The selection rules are checked on hand-made arrays with hand-worked answers; the reporting
(`mine info`, `mine top`, unit pages, the overview) on a store mined with a checkpoint built
here: conv1_1 unit 3 can never fire (bias -1e6) and unit 5 fires most at the bottom-right
corner of every bright image (its kernel reads only the pixels right of and below the centre,
negatively, so the corner, where padding leaves one of them, is its best position).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from jobs_util import cfg
from PIL import Image
from typer.testing import CliRunner

from pipeline import Store, run
from pipeline.cli import app
from pipeline.models.weights import build_model
from pipeline.pictures.montage import MIN_WIDTH
from pipeline.render import feature_files, layer_files, render_store
from pipeline.store.read import border_units, live_units, overview_channels, strongest_channels

K = 4


def arrays(units: list[list[tuple[float, int, int, int]]], k: int = K) -> dict:
    """Layer arrays from, per channel, its filled slots as (value, image, y, x), best first."""
    c = len(units)
    a = {"value": np.full((c, k), np.nan, np.float32), "kept": np.full((c, k), -1), "y": np.full((c, k), -1),
         "x": np.full((c, k), -1)}
    for i, slots in enumerate(units):
        for r, (v, m, y, x) in enumerate(slots):
            a["value"][i, r], a["kept"][i, r], a["y"][i, r], a["x"][i, r] = v, m, y, x
    return a


# channel: slots (value, image, y, x); map 7 x 7
HAND = arrays([
    [(10, 0, 3, 3), (9, 1, 2, 4), (8, 2, 3, 1), (7, 3, 4, 4)],  # 0 strongest
    [(9.5, 0, 3, 3), (9, 1, 3, 3), (8, 2, 2, 2), (1, 7, 5, 5)],  # 1 shares 3 of its 4 images with 0: a repeat
    [(9, 0, 1, 1), (8, 1, 1, 1), (7, 8, 1, 2), (6, 9, 1, 1)],  # 2 shares 2 of 4 with 0: half is not most
    [(0, 10, 0, 0), (0, 11, 0, 0), (0, 12, 0, 0), (0, 13, 0, 0)],  # 3 dead: every value 0 (ties at (0, 0))
    [(8.5, 20, 0, 6), (8, 21, 0, 6), (7, 22, 0, 6), (6, 23, 0, 6)],  # 4 border: all at (0, 6)
    [(5, 30, 3, 3), (4, 31, 1, 1)],  # 5 two slots filled
    [],  # 6 no slot filled: dead
    [(4, 30, 2, 2), (3, 40, 2, 2), (2, 41, 2, 2)],  # 7 one place, but inside the map; shares 1 of 3 with 5
    [(3, 60, 0, 0)],  # 8 one slot at a corner: not evidence of a border unit
    [(2, 70, 0, 0), (1, 71, 0, 1)],  # 9 two border positions, not one
])


def test_live_and_border_units_by_hand():
    assert live_units(HAND).tolist() == [True, True, True, False, True, True, False, True, True, True]
    assert np.flatnonzero(border_units(HAND, 7)).tolist() == [4]
    assert not border_units(HAND, 2).any(), "a map without an interior has no border"
    shifted = {n: v.copy() for n, v in HAND.items()}
    shifted["x"][4] = 5  # (0, 5) is still the top edge; (3, 5) is inside
    assert border_units(shifted, 7)[4]
    shifted["y"][4] = 3
    assert not border_units(shifted, 7)[4]
    assert strongest_channels(HAND, 20) == [0, 1, 2, 4, 5, 7, 8, 9], "dead units are never among the strongest"


def test_two_thirds_at_one_edge_position_is_a_border_unit():
    """MobileNetV2 features.11 unit 84 keeps eight of nine at (0, 13) and one at (0, 0): a padding
    responder, though not every entry sits at one place."""
    two_thirds = arrays([
        [(2, 80, 6, 6), (1.5, 81, 6, 6), (1, 82, 0, 0)],  # border: two of three at (6, 6)
        [(2, 90, 6, 6), (1.5, 91, 6, 6), (1, 92, 3, 3), (0.5, 93, 0, 0)],  # half at (6, 6): not two thirds
        [(2, 95, 3, 3), (1.5, 96, 3, 3), (1, 97, 0, 0)],  # two thirds at (3, 3), inside the map
        [(1, 98, 0, 5), (2, 99, 0, 5), (3, 99, 6, 0)],  # best entry elsewhere; two of three at (0, 5)
    ])
    assert border_units(two_thirds, 7).tolist() == [True, False, False, True]


@pytest.mark.parametrize("n,picked", [
    (1, [0]), (2, [0, 2]), (6, [0, 2, 5, 7, 8, 9]),
    (7, [0, 2, 5, 7, 8, 9, 4]),  # then the border unit (new images)
    (8, [0, 2, 5, 7, 8, 9, 4, 1]),  # then the repeat
    (20, [0, 2, 5, 7, 8, 9, 4, 1]),  # never the dead ones
])
def test_overview_skips_repeats_and_border_units_and_never_dead_ones(n, picked):
    assert overview_channels(HAND, n, 7) == picked


def test_overview_never_picks_a_dead_unit_on_random_layers():
    rng = np.random.default_rng(0)
    for trial in range(30):
        c, k, size = 40, 5, 4
        units = []
        for _ in range(c):
            filled = rng.integers(0, k + 1)
            vals = np.sort(rng.choice([0.0, 0.0, 1.0, 2.0, 3.5], filled))[::-1]
            imgs = rng.choice(12, filled, replace=False)
            pos = rng.integers(0, 2, (filled, 2)) if rng.random() < 0.5 else np.zeros((filled, 2), int)
            units.append([(float(v), int(m), int(y), int(x)) for v, m, (y, x) in zip(vals, imgs, pos)])
        a = arrays(units, k)
        dead = {i for i, slots in enumerate(units) if all(v <= 0 for v, *_ in slots)}
        for n in (1, 5, 16, 60):
            got = overview_channels(a, n, size)
            assert not dead & set(got), trial
            assert len(got) == len(set(got)) == min(n, c - len(dead))


# --- a mined store with a dead and a border unit -------------------------------------------------
SIZE = 32


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(4)
    (tmp / "images").mkdir()
    for i in range(20):  # bright (positive after normalisation), each its own texture and tint
        img = rng.integers(150, 256, (SIZE, SIZE, 3)) * rng.uniform(0.8, 1.0, 3)
        Image.fromarray(img.astype(np.uint8)).save(tmp / "images" / f"img{i:02d}.png")
    feats = build_model("vgg16", seed=3)[1].features
    with torch.no_grad():
        feats[0].bias[3] = -1e6
        feats[0].weight[5].zero_()
        feats[0].weight[5, :, 1:, 1:] = -1.0
        feats[0].bias[5] = 30.0
    ckpt = tmp / "odd.pt"
    torch.save(feats.state_dict(), ckpt)
    out = run(cfg(tmp / "images", tmp / "odd.h5", layer="conv1_1", size=SIZE, weights=str(ckpt))).store
    return out, ckpt


def odd_units(store) -> tuple[set[int], set[int]]:
    """(dead, border) units of conv1_1, by looking at each channel's slots one by one."""
    with Store(store) as s:
        a = s.arrays("conv1_1")
    dead, border = set(), set()
    for c in range(len(a["value"])):
        slots = [(a["value"][c, r], a["y"][c, r], a["x"][c, r]) for r in range(K) if a["kept"][c, r] >= 0]
        if all(v <= 0 for v, _, _ in slots):
            dead.add(c)
        elif len(slots) > 1:  # two thirds or more of the slots at one position on the edge
            places = [(y, x) for _, y, x in slots]
            top = max(sorted(set(places)), key=places.count)
            if 3 * places.count(top) >= 2 * len(slots) and set(top) & {0, SIZE - 1}:
                border.add(c)
    return dead, border


def test_info_and_top_say_dead_and_border(odd_store):
    store, _ = odd_store
    with Store(store) as s:
        a = s.arrays("conv1_1")
    assert (a["y"][5] == SIZE - 1).all() and (a["x"][5] == SIZE - 1).all() and (a["value"][5] > 0).all()
    assert (a["value"][3] == 0).all()
    dead, border = odd_units(store)
    assert 3 in dead and 5 in border  # (random filters on bright images give a few more of both)
    res = CliRunner().invoke(app, ["info", str(store)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("border units"))
    assert line.split()[2:5] == ["conv1_1", str(len(border)), "(" + str(min(border))]
    assert line.count(" at (") == min(len(border), 8) and f"5 at ({SIZE - 1}, {SIZE - 1})" in line
    dead = CliRunner().invoke(app, ["top", str(store), "--feature", "3"])
    assert dead.output.splitlines()[0].startswith("unit 3 of conv1_1 is dead: every kept value is <= 0")
    assert len(dead.output.splitlines()) == 1 + K
    border = CliRunner().invoke(app, ["top", str(store), "--feature", "5"])
    assert border.output.splitlines()[0].startswith("unit 5 of conv1_1 is a border unit: every entry at (y, x) = (31, 31)")
    plain = CliRunner().invoke(app, ["top", str(store), "--feature", "0"])
    assert len(plain.output.splitlines()) == K, "a live unit inside the map: entries only"


def test_overview_leaves_out_dead_and_border_units_and_pages_mark_them(odd_store, tmp_path):
    store, ckpt = odd_store
    res = render_store(store, out=tmp_path, features=[3, 5], overview_features=4, weights=str(ckpt), device="cpu",
                       progress=False)
    rendered = {int(p.stem.split("_")[-1]) for p in tmp_path.glob("conv1_1_feat_*.png")}
    assert res.rendered == 6 and rendered >= {3, 5}
    dead, border = odd_units(store)
    shown = rendered - {3, 5}  # rendered because the overview shows them
    assert len(shown) == 4 and not shown & (dead | border)
    for name in ("overview", "feat", "im"):
        with Image.open(tmp_path / layer_files("conv1_1")[name]) as img:
            assert img.width >= MIN_WIDTH, name
    page5 = (tmp_path / feature_files("conv1_1", 5)["page"]).read_text()
    assert "border unit: every top entry at position (y, x) = (31, 31)" in page5
    assert "dead: never positive" in (tmp_path / feature_files("conv1_1", 3)["page"]).read_text()
    layer = (tmp_path / layer_files("conv1_1")["page"]).read_text()
    assert layer.count(">border</span>") == len(border) and f"{len(border)} border units" in layer
