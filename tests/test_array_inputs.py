"""Array and dataset inputs: .npz, .npy, MNIST IDX files and a torch Dataset from
``package.module:factory`` give the store that the same images written as PNG files give
(every dataset but the names and labels), resume after kill -9 to the same store, labels reach
the store and ``mine embed``, and what cannot be used is one line with exit code 3.

The reference files are written with PIL directly (``Image.fromarray(a).save(p)``); the IDX
files are written byte by byte from the format's definition.
"""
import gzip
import io
import signal
import zipfile

import numpy as np
import pytest
import tiny_models
from jobs_util import FILE_META, assert_same_store, leftovers, read_all, spawn, wait_for
from PIL import Image
from typer.testing import CliRunner

from pipeline import RunConfig, run
from pipeline.analyses.embed import EmbedOptions, embed_store, stored_labels
from pipeline.cli import app
from pipeline.store.read import Store

S, K, BATCH = 16, 3, 3
NAME_ATTRS = ("created", "seconds", "versions", "images_spec", "images_root", "inputs_id")


def run_cfg(images, out, **kw) -> RunConfig:
    settings = dict(layer="1,4", model="tiny_models:digits", weights="random", size=S, k=K, batch_size=BATCH,
                    workers=0, progress=False, device="cpu", out=out and str(out), pooled="4")
    return RunConfig(images=str(images), **{**settings, **kw})


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0, 0, type 0x08, ndim, then big-endian int32 sizes, then data."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def same_but_names(a, b) -> None:
    """Every dataset equal but /images/path and /images/label; attributes equal but names and timing."""
    da, aa = read_all(a)
    db, ab = read_all(b)
    names = ("images/path", "images/label", *FILE_META)  # file metadata: an array item has none
    assert sorted(k for k in da if k not in names) == sorted(k for k in db if k not in names)
    for n in da:
        if n not in names:
            np.testing.assert_array_equal(da[n], db[n], err_msg=n)
    strip = lambda d: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items() if k not in NAME_ATTRS}
    assert strip(aa) == strip(ab)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits as arrays in every format, and as PNG files named so they sort as the items."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = tiny_models.digit_arrays()
    png = root / "png"
    png.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(png / f"{i:02d}.png")
    rgb = np.stack([images, images[:, ::-1], images[:, :, ::-1]], -1)  # three different channels
    (root / "png_rgb").mkdir()
    for i, a in enumerate(rgb):
        Image.fromarray(a).save(root / "png_rgb" / f"{i:02d}.png")
    np.savez(root / "digits.npz", images=images, labels=labels)
    np.savez(root / "float.npz", images=(images[..., None] / 255.0).astype(np.float32))
    np.savez(root / "rgb.npz", images=rgb)
    np.save(root / "digits.npy", images)
    (root / "mnist").mkdir()
    (root / "mnist" / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (root / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    (root / "gz").mkdir()
    (root / "gz" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (root / "gz" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return root, images, labels


@pytest.fixture(scope="module")
def png_store(digits, tmp_path_factory):
    root, _, _ = digits
    out = tmp_path_factory.mktemp("ref") / "png.h5"
    run(run_cfg(root / "png", out))
    return out


@pytest.mark.parametrize("spec", ["digits.npz", "float.npz", "digits.npy", "mnist/train-images-idx3-ubyte",
                                  "gz/t10k-images-idx3-ubyte.gz", "tiny_models:dataset", "tiny_models:tensor_dataset"])
def test_same_store_as_png_files(spec, digits, png_store, tmp_path):
    root, images, labels = digits
    images_arg = spec if ":" in spec else root / spec
    out = tmp_path / "s.h5"
    result = run(run_cfg(images_arg, out))
    assert (result.images_seen, result.images_skipped) == (len(images), 0)
    same_but_names(out, png_store)
    name = spec.rsplit("/", 1)[-1]
    with Store(out) as s:
        paths = [p.decode() for p in s.f["images/path"][()]]
        assert paths == [f"{name}#{i:02d}" for i in range(len(images))]
        has_labels = spec not in ("float.npz", "digits.npy")
        assert ("label" in s.f["images"]) == has_labels
        if has_labels:
            assert [v.decode() for v in s.f["images/label"][()]] == [str(v) for v in labels]


def test_rgb_array_equals_rgb_pngs(digits, tmp_path):
    root, _, _ = digits
    kw = dict(model="tiny_models:colour")
    run(run_cfg(root / "png_rgb", tmp_path / "a.h5", **kw))
    run(run_cfg(root / "rgb.npz", tmp_path / "b.h5", **kw))
    same_but_names(tmp_path / "b.h5", tmp_path / "a.h5")


def test_labels_are_embed_categories(digits, png_store, tmp_path):
    root, images, labels = digits
    out = tmp_path / "e.h5"
    run(run_cfg(root / "digits.npz", out))
    with Store(out) as s:
        rows = np.flatnonzero([st == b"ok" for st in s.f["images/status"][()]])
        assert stored_labels(s, rows) == [str(labels[r]) for r in rows]
    with Store(png_store) as s:
        assert stored_labels(s, rows) is None  # files: folders stay the categories
    r = CliRunner().invoke(app, ["info", str(out)])
    assert "labels       12 of 12 images, 3 categories" in r.stdout
    res = embed_store(out, EmbedOptions(method="pca", k=1, baseline=20, thumbnails=5), tmp_path / "emb", write=False)
    # the random-weight baseline re-read the array file (a NaN would mean it found nothing)
    assert all(v == v for v in res.knn.values()), res.knn


def test_update_merge_and_limit_over_an_array(digits, tmp_path):
    """--limit takes the first items; merging that store with a whole run, or --update with the whole
    array, equals one run over the array."""
    root, images, _ = digits
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    run(run_cfg(root / "digits.npz", full))
    run(run_cfg(root / "digits.npz", part, limit=5))
    with Store(part) as s:
        assert len(s.f["images/path"]) == 5
    merged = tmp_path / "merged.h5"
    r = CliRunner().invoke(app, ["merge", str(part), str(full), "--out", str(merged), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    same_but_names(merged, full)  # overlapping parts: the union is the whole array
    res = run(run_cfg(root / "digits.npz", None, update=str(part)))
    assert (res.images_known, res.images_new) == (6, 6)  # item 11 is item 2 again: known too
    same_but_names(part, full)


def test_kill9_mid_array_then_resume_is_identical(digits, tmp_path, monkeypatch):
    root, _, _ = digits
    import os

    here = os.path.dirname(tiny_models.__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    store = tmp_path / "s.h5"
    args = ["run", "--images", str(root / "mnist" / "train-images-idx3-ubyte"), "--layer", "1,4", "--model",
            "tiny_models:digits", "--weights", "random", "--size", str(S), "--k", str(K), "--workers", "0",
            "--batch-size", str(BATCH), "--quiet", "--device", "cpu", "--pooled", "4", "--out", str(store),
            "--checkpoint-every", "2"]
    p = spawn(args, tmp_path, pause_at="stream:3", ready=tmp_path / "ready")
    wait_for(tmp_path / "ready", p)
    p.kill()
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert (tmp_path / "s.h5.ckpt").exists() and not store.exists()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    reference = tmp_path / "ref.h5"
    run(run_cfg(root / "mnist" / "train-images-idx3-ubyte", reference, checkpoint_every="2"))
    assert_same_store(store, reference, ignore=("created", "seconds", "versions"))
    assert leftovers(tmp_path) in ([], ["ready"])


def test_a_raising_dataset_item_is_skipped_and_recorded(tmp_path):
    out = tmp_path / "b.h5"
    res = run(run_cfg("tiny_models:broken_dataset", out))
    assert res.images_skipped == 1
    with Store(out) as s:
        status = [v.decode() for v in s.f["images/status"][()]]
        assert status[4] == "skipped: unreadable: dataset item 4: OSError: item 4 is broken"
        assert status.count("ok") == 10  # 12 items: one broken, one duplicate


def _bad_inputs(root):
    z = np.zeros((2, 8, 8), np.uint8)
    np.savez(root / "noimages.npz", pictures=z)
    np.savez(root / "int64.npz", images=z.astype(np.int64))
    np.savez(root / "rank.npz", images=z[:, 0])
    np.savez(root / "float.npz", images=np.full((2, 8, 8), 1.5, np.float32))
    np.savez(root / "labels.npz", images=z, labels=np.arange(3))
    (root / "notzip.npz").write_bytes(b"not a zip")
    header = io.BytesIO()  # a header that declares a terabyte: refused before anything is allocated
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1000, 1000)})
    with zipfile.ZipFile(root / "huge.npz", "w") as archive:
        archive.writestr("images.npy", header.getvalue())
    (root / "magic-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 1]) + bytes(30))
    (root / "cut-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 8, 8)))[:-10])
    (root / "x-images-idx3-ubyte").write_bytes(idx_bytes(z))
    (root / "x-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(5)))
    return {
        "noimages.npz": "has no array 'images' (it has: pictures)",
        "int64.npz": "images has dtype int64; expected uint8, or float",
        "rank.npz": "images has shape (2, 8); expected (N, H, W) or (N, H, W, C)",
        "float.npz": "holds float values 1.5..1.5; expected [0, 1]",
        "labels.npz": "labels has shape (3,) for 2 images; expected (2,)",
        "notzip.npz": "is not a .npz file",
        "huge.npz": "images of shape (1000000, 1000, 1000) would take 1000000000000 bytes",
        "magic-images-idx3-ubyte": "is not an IDX image file: its magic number is 0x00000801, expected 0x00000803",
        "cut-images-idx3-ubyte": "is truncated: its header says 5 x 8 x 8 bytes (336 in all), the file has 326",
        "x-images-idx3-ubyte": "x-labels-idx1-ubyte has shape (5,) for 2 images",
        "tiny_models:nothing": "no dataset factory tiny_models:nothing",
    }


def test_unusable_inputs_are_one_line_exit_3_and_write_nothing(tmp_path):
    cases = _bad_inputs(tmp_path)
    for spec, message in cases.items():
        out = tmp_path / "out" / "s.h5"
        out.parent.mkdir(exist_ok=True)
        arg = spec if ":" in spec else str(tmp_path / spec)
        r = CliRunner().invoke(app, ["run", "--images", arg, "--model", "tiny_models:digits", "--weights", "random",
                                     "--size", "8", "--layer", "4", "--workers", "0", "--quiet", "--out", str(out)])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 3 and len(lines) == 1 and message in lines[0], (spec, r.stderr)
        assert "Traceback" not in r.output
        assert sorted(p.name for p in out.parent.iterdir()) == ["mine-runs.jsonl"], spec  # the failure's record


def test_reopen_reads_a_stores_items_from_any_folder(digits, tmp_path, monkeypatch):
    """What embed uses to read a store's images again: items come back as the PNG files' bytes,
    whatever the current folder (the store keeps the spec as typed and the folder it named)."""
    from pipeline.data.sources import reopen

    root, _, _ = digits
    monkeypatch.chdir(tmp_path)
    src, idx = reopen("digits.npz", str(root), ["digits.npz#03", "digits.npz#11"])
    assert [src.read(i) for i in idx] == [(root / "png" / f"{i}.png").read_bytes() for i in ("03", "11")]
    src, idx = reopen("tiny_models:dataset", "/", ["tiny_models:dataset#05"])
    assert src.read(idx[0]) == (root / "png" / "05.png").read_bytes()
    assert reopen("gone.npz", str(root), ["gone.npz#1"]) is None
    assert reopen("digits.npz", str(root), ["digits.npz#99"]) is None


def test_one_channel_autoencoder_over_an_array_mines_renders_and_embeds(tmp_path):
    """The issue's seed, small: a one-channel convolutional autoencoder (its own preprocessing
    attribute) over 28 px digits in an .npz with labels: code and decoder layers mined, rendered in
    grey, the code layer embedded by label."""
    images, labels = tiny_models.digit_arrays(n=20, size=28, seed=1)
    np.savez(tmp_path / "ae.npz", images=images, labels=labels)
    out = tmp_path / "ae.h5"
    run(run_cfg(tmp_path / "ae.npz", out, model="tiny_models:autoencoder", size=28, layer="7,14", pooled="7"))
    r = CliRunner().invoke(app, ["render", str(out), "--layer", "14", "--features", "0", "--quiet", "--device", "cpu",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(tmp_path / "r" / "14_0.png").convert("RGB")).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    res = embed_store(out, EmbedOptions("7", method="pca", k=3, baseline=0, thumbnails=5), tmp_path / "e", write=False)
    assert res.n == 19 and (tmp_path / "e" / "7_categories.png").exists()  # 20 items, one duplicate
