"""``--update`` and ``mine merge`` equal one run over the union of the images.

Splits: by folder (different roots, re-rooted to the common folder), overlapping
lists (images in both parts count once, the duplicate file keeps its status), and
several steps. "Equal" means every dataset of the store (entries, images table,
kept pixels, switches, boxes) and every attribute except timing, the image spec
(which names the parts) and inputs_id (which identifies the inputs).
"""
import shutil

import pytest
import torch
from jobs_util import TIMING_ATTRS, all_images, assert_same_store, cfg, cli_args, list_file
from typer.testing import CliRunner

from pipeline import run
from pipeline.cli import app
from pipeline.data import Preprocessing, resolve_images
from pipeline.job_errors import IncompatibleError, StoreExistsError
from pipeline.jobs.merge import merge_stores
from pipeline.jobs.update import KNOWN, SkipKnown

UNION_IGNORE = TIMING_ATTRS + ("images_spec", "inputs_id")


def subsets(images, tmp_path, name):
    """The image specs of each step of a split (folders or list files)."""
    files = all_images(images)  # 16 files, sorted: a/broken.jpg, a/img00..06, b/copy_of_03, b/img07..13
    return {
        "folders": [images / "a", images / "b"],
        "overlap": [list_file(tmp_path / "l1.txt", files[:10]), list_file(tmp_path / "l2.txt", files[5:])],
        "steps": [list_file(tmp_path / "s1.txt", files[:4]), list_file(tmp_path / "s2.txt", files[2:11]),
                  images],
    }[name]


@pytest.mark.parametrize("split", ["folders", "overlap", "steps"])
def test_update_equals_full_run(split, images, net, full, tmp_path):
    store = tmp_path / "u.h5"
    specs = subsets(images, tmp_path, split)
    seen = set()
    for i, spec in enumerate(specs):
        files = {str(p) for p in (resolve_images(str(spec)).paths)}
        r = run(cfg(spec, None, update=str(store)), net=net)
        assert r.mode == ("fresh" if i == 0 else "update")
        # every file seen before with good content is recognised as known, not mined again
        good_before = {f for f in seen if "broken" not in f}
        known_content = {open(f, "rb").read() for f in good_before}
        expect_known = sum(open(f, "rb").read() in known_content for f in files if "broken" not in f)
        assert r.images_known == expect_known
        seen |= files
    assert_same_store(store, full, ignore=UNION_IGNORE)


def test_update_with_nothing_new_mines_nothing(images, net, full, tmp_path):
    store = tmp_path / "u.h5"
    shutil.copy(full, store)
    r = run(cfg(images, None, update=str(store)), net=net)
    assert r.images_new == 0 and r.images_known == 15  # 14 contents, one of them twice; broken re-tried
    assert_same_store(store, full, ignore=TIMING_ATTRS + ("inputs_id",))


def test_update_into_another_store_leaves_the_base(images, net, full, tmp_path):
    base, out = tmp_path / "base.h5", tmp_path / "out.h5"
    run(cfg(images / "a", base), net=net)
    before = base.read_bytes()
    run(cfg(images, out, update=str(base)), net=net)
    assert base.read_bytes() == before
    assert_same_store(out, full, ignore=UNION_IGNORE)


def test_update_missing_store_starts_it(images, net, full, tmp_path, caplog):
    store = tmp_path / "new.h5"
    r = run(cfg(images, None, update=str(store)), net=net)
    assert r.mode == "fresh" and "no such store yet" in caplog.text
    assert_same_store(store, full, ignore=TIMING_ATTRS + ("inputs_id",))


def test_update_needs_no_old_source_files(images, net, tmp_path):
    """Kept pixels come from the store: old files may be gone (they stay counted, see update.py)."""
    coll = tmp_path / "coll"
    shutil.copytree(images / "a", coll)
    store = tmp_path / "u.h5"
    run(cfg(coll, store), net=net)
    for f in coll.glob("img0[0-3].png"):
        f.unlink()
    for f in (images / "b").glob("img*.png"):
        shutil.copy(f, coll)
    r = run(cfg(coll, None, update=str(store)), net=net)
    assert r.images_new == 7
    from pipeline import Store
    with Store(store) as s:
        paths = [p.decode() for p in s.images()["path"]]
    assert "img00.png" in paths and "img13.png" in paths


def test_skip_known_does_not_decode(images, monkeypatch):
    import pipeline.data.dataset as dataset_module

    src = resolve_images(str(images / "a"))
    prep = Preprocessing("torchvision", 32)
    plain = SkipKnown(src, prep)
    keys = [plain[i]["key"] for i in range(len(src))]
    calls = []
    real = dataset_module.decode_with_size
    monkeypatch.setattr(dataset_module, "decode_with_size", lambda *a: calls.append(1) or real(*a))
    ds = SkipKnown(src, prep, known={keys[1], keys[2]})
    recs = [ds[i] for i in range(len(src))]
    assert [r["reason"] == KNOWN for r in recs] == [False, True, True] + [False] * (len(src) - 3)
    assert len(calls) == len(src) - 2
    assert recs[1]["key"] == keys[1] and not recs[1]["ok"] and torch.count_nonzero(recs[1]["pixels"]) == 0


@pytest.mark.parametrize("split", ["folders", "overlap", "steps"])
def test_merge_equals_full_run(split, images, net, full, tmp_path):
    parts = []
    for i, spec in enumerate(subsets(images, tmp_path, split)):
        parts.append(tmp_path / f"p{i}.h5")
        run(cfg(spec, parts[-1]), net=net)
    out = tmp_path / "m.h5"
    r = merge_stores(parts, out, device="cpu")
    assert r.images_seen == 16 and r.images_skipped == 1
    assert_same_store(out, full, ignore=UNION_IGNORE)


def test_merge_cli_into_an_input_and_refusals(images, net, full, tmp_path):
    a, b, other = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "other.h5"
    run(cfg(images / "a", a), net=net)
    run(cfg(images / "b", b), net=net)
    other.write_bytes(b"something else")
    cli = CliRunner()
    res = cli.invoke(app, ["merge", str(a), str(b), "-o", str(other)])
    assert res.exit_code == 2 and "--force" in res.stderr and other.read_bytes() == b"something else"
    res = cli.invoke(app, ["merge", str(a), str(a), "-o", str(other)])
    assert res.exit_code == 2
    res = cli.invoke(app, ["merge", str(a), str(b), "-o", str(a)])  # fold shard b into a
    assert res.exit_code == 0, res.stderr
    assert "merged 2 stores" in res.stdout
    assert_same_store(a, full, ignore=UNION_IGNORE)


def test_incompatible_update_and_merge_are_refused(images, net, tmp_path):
    store = tmp_path / "s.h5"
    run(cfg(images / "a", store), net=net)
    before = store.read_bytes()
    cli = CliRunner()
    for extra, what in ((["--k", "3"], "k ("), (["--layer", "conv1_2,pool2"], "layers ("),
                        (["--resize", "squash"], "preprocessing ("), (["--precision", "bf16"], "precision (")):
        args = cli_args(images, store, "--update", str(store))
        i = args.index(extra[0]) if extra[0] in args else None
        if i is not None:
            args[i + 1] = extra[1]
        else:
            args += extra
        res = cli.invoke(app, args)
        assert res.exit_code == 2, (extra, res.stderr)
        assert "cannot combine" in res.stderr and what in res.stderr and "Traceback" not in res.stderr
    assert store.read_bytes() == before
    # other weights: same architecture, one weight changed
    w = tmp_path / "w.pt"
    state = {k: v.clone() for k, v in net.model.state_dict().items()}
    state["features.0.bias"][0] += 1
    torch.save(state, w)
    with pytest.raises(IncompatibleError, match="weights"):
        run(cfg(images, store, update=str(store), weights=str(w)))
    assert store.read_bytes() == before
    other = tmp_path / "k3.h5"
    run(cfg(images / "b", other, k=3), net=net)
    with pytest.raises(IncompatibleError, match=r"k \("):
        merge_stores([store, other], tmp_path / "m.h5", device="cpu")
    assert not (tmp_path / "m.h5").exists()


def test_existing_store_needs_update_or_force(images, net, full, tmp_path):
    store = tmp_path / "s.h5"
    shutil.copy(full, store)
    before = store.read_bytes()
    with pytest.raises(StoreExistsError, match="--update"):
        run(cfg(images, store), net=net)
    assert store.read_bytes() == before
    r = run(cfg(images / "a", store, force=True), net=net)
    assert r.mode == "fresh" and r.images_seen == 8
