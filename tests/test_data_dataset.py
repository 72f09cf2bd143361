"""ImageDataset over the bad-image corpus: never raises, records reasons, stable content keys."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

import pipeline.data.dataset as dataset_module
from pipeline.data import (
    BACKGROUND_RGB,
    ImageDataset,
    ImageSource,
    Preprocessing,
    collate,
    image_key,
    make_loader,
    resolve_images,
)

SIZE = 32
PREP = Preprocessing("torchvision", SIZE, "squash")


@pytest.fixture(scope="module")
def data_corpus_source(data_corpus, tmp_path_factory):
    """Every corpus file, named explicitly in a list file (a folder scan would skip the GIF)."""
    listing = tmp_path_factory.mktemp("data_list") / "corpus.txt"
    names = sorted(set(data_corpus.bad) | set(data_corpus.good))
    listing.write_text("".join(f"{data_corpus.path(n)}\n" for n in names))
    return resolve_images(str(listing))


@pytest.fixture(scope="module")
def data_records(data_corpus_source):
    src = data_corpus_source
    ds = ImageDataset(src, PREP)
    return src, {src.relpath(src.paths[r["index"]]): r for r in (ds[i] for i in range(len(ds)))}


def test_every_corpus_file_is_listed(data_corpus, data_records):
    _, records = data_records
    assert set(records) == set(data_corpus.bad) | set(data_corpus.good)
    assert len(data_corpus.bad) + len(data_corpus.good) >= 14


def test_bad_files_are_records_not_exceptions(data_corpus, data_records):
    _, records = data_records
    for name, reason in data_corpus.bad.items():
        r = records[name]
        assert r["ok"] is False, name
        assert r["reason"].split(":")[0] == reason, (name, r["reason"])
        assert r["pixels"].shape == (SIZE, SIZE, 3) and r["pixels"].dtype == torch.uint8
        assert not r["pixels"].any()
        assert r["width"] == 0 and r["height"] == 0
        assert r["sha256"] == hashlib.sha256(data_corpus.bytes(name)).hexdigest()
        assert r["key"] == image_key(r["sha256"])


def test_good_files_decode(data_corpus, data_records):
    _, records = data_records
    for name in data_corpus.good:
        r = records[name]
        assert r["ok"] is True and r["reason"] == "", (name, r["reason"])
        assert r["pixels"].shape == (SIZE, SIZE, 3) and r["pixels"].dtype == torch.uint8
        assert r["width"] > 0 and r["height"] > 0
    assert (records["exif_rotated.jpg"]["width"], records["exif_rotated.jpg"]["height"]) == (40, 60)
    assert (records["gray16.png"]["width"], records["gray16.png"]["height"]) == (256, 8)
    px = records["rgba.png"]["pixels"].numpy().astype(int)
    assert np.abs(px[16, 2] - (220, 20, 20)).max() <= 2  # opaque red
    assert tuple(px[16, 29]) == BACKGROUND_RGB  # transparent -> documented background
    ramp = records["gray16.png"]["pixels"].numpy()[4, :, 0].astype(int)
    assert ramp[0] <= 5 and ramp[-1] >= 250 and np.all(np.diff(ramp) >= 0)


def test_keys_follow_content_not_names(data_corpus, tmp_path):
    a = tmp_path / "one" / "first.jpg"
    b = tmp_path / "two" / "deeper" / "renamed.jpeg"
    c = tmp_path / "one" / "other.png"
    for dst, name in ((a, "plain.jpg"), (b, "plain.jpg"), (c, "plain.png")):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_corpus.path(name), dst)
    recs = {p.name: ImageDataset(ImageSource("t", p.parent, (p,)), PREP)[0] for p in (a, b, c)}
    assert recs["first.jpg"]["key"] == recs["renamed.jpeg"]["key"]
    assert recs["first.jpg"]["sha256"] == recs["renamed.jpeg"]["sha256"]
    assert recs["first.jpg"]["key"] != recs["other.png"]["key"]
    assert torch.equal(recs["first.jpg"]["pixels"], recs["renamed.jpeg"]["pixels"])


def test_keys_unique_and_int63(data_records):
    _, records = data_records
    keys = [r["key"] for r in records.values()]
    assert len(set(keys)) == len(keys)
    assert all(isinstance(k, int) and 0 <= k < 2**63 for k in keys)


def test_image_key_definition():
    assert image_key("f" * 64) == 2**63 - 1
    assert image_key("0" * 64) == 0
    h = hashlib.sha256(b"abc").hexdigest()  # ba7816bf8f01cfea...
    assert image_key(h) == 0xBA7816BF8F01CFEA >> 1


def test_unreadable_file_gets_path_key(tmp_path):
    f = tmp_path / "gone.jpg"
    f.write_bytes(b"soon gone")
    src = resolve_images(str(tmp_path))
    f.unlink()
    r = ImageDataset(src, PREP)[0]
    assert r["ok"] is False and r["reason"].startswith("unreadable: ")
    assert "No such file" in r["reason"] and r["sha256"] == ""
    expected = image_key(hashlib.sha256(b"unreadable:gone.jpg").hexdigest())
    assert r["key"] == expected  # stable: depends on the relative path only
    # A folder where a file was expected is unreadable too, and still never raises.
    d = tmp_path / "dir.jpg"
    d.mkdir()
    r = ImageDataset(ImageSource("t", tmp_path, (d,)), PREP)[0]
    assert r["ok"] is False and r["reason"].startswith("unreadable: ")


def test_unexpected_decoder_error_is_recorded(data_corpus, monkeypatch):
    def broken(data, size):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(dataset_module, "decode_with_size", broken)
    p = data_corpus.path("plain.jpg")
    r = ImageDataset(ImageSource("t", p.parent, (p,)), PREP)[0]
    assert r["ok"] is False and r["reason"] == "corrupt: RuntimeError: decoder bug"
    assert r["sha256"] != ""


def test_indices_select_and_report_source_index(data_corpus_source):
    src = data_corpus_source
    ds = ImageDataset(src, PREP, indices=np.array([5, 2]))
    assert len(ds) == 2
    assert [ds[0]["index"], ds[1]["index"]] == [5, 2]
    with pytest.raises(IndexError):
        ImageDataset(src, PREP, indices=[len(src)])


def test_collate_shapes_and_types(data_corpus_source):
    src = data_corpus_source
    ds = ImageDataset(src, PREP)
    batch = collate([ds[i] for i in range(4)])
    assert batch["pixels"].shape == (4, SIZE, SIZE, 3) and batch["pixels"].dtype == torch.uint8
    for name in ("index", "key", "width", "height"):
        assert batch[name].dtype == torch.int64 and batch[name].shape == (4,)
    assert batch["ok"].dtype == torch.bool
    assert isinstance(batch["sha256"], list) and isinstance(batch["reason"], list)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def _run_loader(ds, workers):
    return list(make_loader(ds, batch_size=5, workers=workers, pin_memory=False))


def test_loader_settings_and_worker_equivalence(data_corpus_source):
    src = data_corpus_source
    ds = ImageDataset(src, PREP)
    loader = make_loader(ds, batch_size=5, workers=2, pin_memory=False)
    assert isinstance(loader.sampler, SequentialSampler)
    assert loader.prefetch_factor == 4 and loader.persistent_workers is False
    assert make_loader(ds, 5, 0, False).prefetch_factor is None
    serial, parallel = _run_loader(ds, 0), _run_loader(ds, 2)
    assert len(serial) == len(parallel) == -(-len(src) // 5)
    for s, p in zip(serial, parallel):
        assert torch.equal(s["pixels"], p["pixels"])
        assert torch.equal(s["key"], p["key"]) and torch.equal(s["ok"], p["ok"])
        assert s["reason"] == p["reason"] and s["sha256"] == p["sha256"]
    assert torch.cat([b["index"] for b in serial]).tolist() == list(range(len(src)))
    with pytest.raises(ValueError):
        make_loader(ds, 0, 0, False)
