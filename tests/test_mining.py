"""End-to-end mining against a brute-force reference that keeps every activation."""
import random

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import RunConfig, Store, run
from pipeline.data import ImageDataset, Preprocessing, make_loader, normalize, resolve_images
from pipeline.mining.stream import new_state, stream
from pipeline.mining.taps import layer_maxima

LAYERS = ["conv1_2", "pool2", "conv3_1", "conv4_2"]
SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """14 smooth random images of assorted sizes, one exact duplicate, one broken file."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(7)
    for i in range(14):
        h, w = rng.integers(24, 80, size=2)
        low = rng.random((4, 4, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((int(w), int(h)), Image.BILINEAR)
        noise = rng.integers(0, 40, (int(h), int(w), 3))
        arr = np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img{i:02d}.png")
    (root / "sub").mkdir()
    (root / "sub" / "copy_of_03.png").write_bytes((root / "img03.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def mine(folder, tmp_path, net, **kw):
    cfg = RunConfig(images=str(folder), layer=",".join(LAYERS), model="vgg16", weights="random",
                    size=SIZE, workers=0, progress=False, out=str(tmp_path / f"s{random.random()}.h5"))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return run(cfg, net=net).store


def brute_force(folder, net, k):
    """Every image alone through ``features[:end+1]``; sort all channel maxima."""
    src = resolve_images(str(folder))
    prep = Preprocessing("torchvision", SIZE)
    ds = ImageDataset(src, prep)
    items = [ds[i] for i in range(len(ds))]
    seen, good = set(), []
    for it in items:
        if it["ok"] and it["key"] not in seen:
            seen.add(it["key"])
            good.append(it)
    out = {}
    for name in LAYERS:
        li = net.layers[name]
        vals, poss = [], []
        for it in good:
            with torch.no_grad():
                a = net.model.features[: net.chain_index(name) + 1](normalize(it["pixels"][None], prep))[0]
            flat = a.flatten(1).numpy()
            vals.append(flat.max(1))
            poss.append(flat.argmax(1))  # first occurrence
        vals, poss = np.array(vals), np.array(poss)
        keys = np.array([it["key"] for it in good])
        res = []
        for c in range(li.channels):
            order = sorted(range(len(good)), key=lambda i: (-vals[i, c], keys[i]))[:k]
            res.append([(vals[i, c], keys[i], poss[i, c] // li.out_size, poss[i, c] % li.out_size) for i in order])
        out[name] = res
    return out


def read_all(path):
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        attrs = {k: v for k, v in f.attrs.items() if k not in ("created", "seconds")}
    return data, attrs


@pytest.mark.parametrize("k", [1, 9])
def test_topk_equals_brute_force(folder, tmp_path, net, k):
    store = mine(folder, tmp_path, net, k=k, batch_size=3)
    ref = brute_force(folder, net, k)
    with Store(store) as s:
        for name in LAYERS:
            a = s.arrays(name)
            for c in range(net.layers[name].channels):
                want = ref[name][c]
                assert a["key"][c].tolist() == [w[1] for w in want], (name, c)
                assert a["y"][c].tolist() == [w[2] for w in want], (name, c)
                assert a["x"][c].tolist() == [w[3] for w in want], (name, c)
                np.testing.assert_allclose(a["value"][c], [w[0] for w in want], rtol=1e-5, atol=1e-6)


def test_batch_sizes_give_identical_stores(folder, tmp_path, net):
    stores = [read_all(mine(folder, tmp_path, net, batch_size=b)) for b in (1, 3, 16)]
    for data, attrs in stores[1:]:
        assert attrs == stores[0][1]
        assert data.keys() == stores[0][0].keys()
        for n in data:
            np.testing.assert_array_equal(data[n], stores[0][0][n], err_msg=n)


def test_shuffled_order_gives_same_topk(folder, net):
    src = resolve_images(str(folder))
    prep = Preprocessing("torchvision", SIZE)
    results = []
    for order in (list(range(len(src.paths))), random.Random(3).sample(range(len(src.paths)), len(src.paths))):
        st = new_state(net, LAYERS, 9, torch.device("cpu"))
        stream(net, st, make_loader(ImageDataset(src, prep, order), 4, 0, False), prep, torch.device("cpu"))
        results.append({n: st.tops[n].result() for n in LAYERS})
    for n in LAYERS:
        assert torch.equal(results[0][n]["keys"], results[1][n]["keys"])
        assert torch.equal(results[0][n]["pos"], results[1][n]["pos"])
        torch.testing.assert_close(results[0][n]["values"], results[1][n]["values"], rtol=1e-5, atol=1e-6)


def test_images_table_counts_bad_and_duplicates(folder, tmp_path, net):
    with Store(mine(folder, tmp_path, net)) as s:
        t = s.images()
        status = dict(zip([p.decode() for p in t["path"]], [x.decode() for x in t["status"]]))
    assert status["broken.jpg"].startswith("skipped")
    assert status["img03.png"] == "ok" and status["sub/copy_of_03.png"] == "duplicate"
    assert sum(v == "ok" for v in status.values()) == 14


def test_fewer_images_than_k_marks_empty_slots(folder, tmp_path, net):
    with Store(mine(folder, tmp_path, net, k=20)) as s:
        a = s.arrays("conv3_1")
        assert (a["kept"][:, :14] >= 0).all() and (a["kept"][:, 14:] == -1).all()
        assert np.isnan(a["value"][:, 14:]).all() and (a["y"][:, 14:] == -1).all()
        assert (a["box"][:, 14:] == -1).all()
        assert len(s.entries("conv3_1", 0)) == 14


@pytest.mark.parametrize("layer", ["conv3_1", "conv4_2"])
def test_boxes_and_crops_follow_geometry(folder, tmp_path, net, layer):
    """R <= input: R x R tile at the unclipped corner, padded where it leaves the image;
    R > input (conv4_2: R=76 at 32 px): the tile is the whole input, never larger."""
    with Store(mine(folder, tmp_path, net, layer="conv3_1,conv4_2")) as s:
        li = net.layers[layer]
        for e in s.entries(layer, 5):
            top, left = e.y * li.stride - li.padding, e.x * li.stride - li.padding
            assert e.box == (max(top, 0), max(left, 0), min(top + li.rf, SIZE), min(left + li.rf, SIZE))
            crop = s.crop(e)
            px = s.pixels(e.kept)
            if li.rf > SIZE:
                np.testing.assert_array_equal(crop, px)
                continue
            assert crop.shape == (li.rf, li.rf, 3)
            for yy in range(li.rf):  # pixel by pixel against the unclipped coordinates
                for xx in (0, li.rf // 2, li.rf - 1):
                    iy, ix = top + yy, left + xx
                    inside = 0 <= iy < SIZE and 0 <= ix < SIZE
                    assert (crop[yy, xx] == (px[iy, ix] if inside else 0)).all()


def test_inplace_relu_taps_see_rectified_values(net):
    """A hook on the conv module would see negatives; ours reads the ReLU output before a
    later in-place op can touch it, and equals relu(conv(x)) computed without in-place ops."""
    x = torch.randn(2, 3, SIZE, SIZE)
    got = layer_maxima(net, ["conv1_1", "conv2_2", "conv3_3"], x)
    plain = [torch.nn.ReLU(inplace=False) if isinstance(m, torch.nn.ReLU) else m for m in net.model.features]
    for name in ("conv1_1", "conv2_2", "conv3_3"):
        end = net.chain_index(name)
        with torch.no_grad():
            h = x
            for m in plain[: end + 1]:
                h = m(h)
            pre = torch.nn.Sequential(*plain[:end])(x)
        assert (pre < 0).any() and (h >= 0).all()  # the conv module's own output is not the layer
        v, p = h.flatten(2).max(2)
        torch.testing.assert_close(got[name][0], v)
        assert torch.equal(got[name][1], p)


@pytest.mark.parametrize("size", [(5, 7), (64, 70)])
def test_positions_only_above_the_floor_equal_numpy_first_argmax(size):
    """``spatial_max_above``: values equal the spatial max; every map not below the floor (the
    ones that can enter a top-k) gets numpy's first arg-max, with ties, NaN and -inf maps, on all
    of its paths (few maps above: per-map arg-max; many: one max pass, or on maps of at least
    ``ROW_SEARCH`` positions the search row by row)."""
    from pipeline.mining.taps import ROW_SEARCH, spatial_max_above

    assert (size[0] * size[1] >= ROW_SEARCH) == (size[0] > 5)
    g = torch.Generator().manual_seed(0)
    for trial in range(60 if size[0] < 10 else 12):
        x = torch.randn(8, 6, *size, generator=g).round()  # many ties
        x[1, 2, 1, 1] = float("nan")
        x[2, 3] = float("-inf")
        floor = torch.randn(6, generator=g) + (3.0 if trial % 2 else 0.0)  # few or many above
        floor[0] = float("-inf")
        values, pos = spatial_max_above(x, lambda v, floor=floor: ~(torch.nan_to_num(v, nan=float("-inf")) < floor))
        flat = x.flatten(2).numpy()
        ref_v = np.max(flat, axis=2)  # NaN propagates, as in torch
        ref_p = np.argmax(np.where(np.isnan(flat), np.inf, flat), axis=2)  # first NaN, else first max
        np.testing.assert_array_equal(values.numpy(), ref_v)
        need = ~(np.nan_to_num(ref_v, nan=-np.inf) < floor.numpy()[None])
        np.testing.assert_array_equal(pos.numpy()[need], ref_p[need])
