"""Hostile inputs, second round (issue 23): the torchrun rank share and `mine embed` read files
like `mine run` does, embed holds the store's lock for its whole read-modify-write (through
symlinks, keeping the mode), t-SNE of identical vectors never crashes, --labels mistakes are one
line, pooled vectors are validated and never silently inf, and --k is bounded."""
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from jobs_util import leftovers, mine_argv, one_line, spawn, wait_for
from PIL import Image
from test_embed import _brute_knn
from test_hostile_inputs import within
from typer.testing import CliRunner

from pipeline import RunConfig, Store, exitcodes, run
from pipeline.analyses import embed as embed_mod
from pipeline.cli import app
from pipeline.data import ImageDataset, ImageSource, Preprocessing, image_key
from pipeline.jobs.distributed import RankShare, Share
from pipeline.mining.pooled import F16_MAX, PooledVectors, pool
from pipeline.store.schema import StoreError

cli = CliRunner()
LAYER = "conv3_1"


def make_collection(root):
    """red/0-5 and blue/0-5: 36 x 36 noisy squares of two colours."""
    rng = np.random.default_rng(5)
    for cat, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / cat).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(base) + rng.integers(-30, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cat / f"{i}.png")
    return root


def run_cfg(images, out, **kw):
    return RunConfig(images=str(images), layer="conv2_2", model="vgg16", weights="random", size=32, workers=0,
                     batch_size=4, k=2, progress=False, out=str(out), pooled=LAYER, **kw)


def run_args(images, out, *extra):
    return ["run", "--images", str(images), "--layer", "conv2_2", "--model", "vgg16", "--weights", "random",
            "--size", "32", "--workers", "0", "--batch-size", "4", "--k", "2", "--quiet", "--pooled", LAYER,
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def pooled_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    imgs = make_collection(d / "imgs")
    run(run_cfg(imgs, d / "s.h5"))
    return d / "s.h5"


@pytest.fixture
def store(pooled_store, tmp_path):
    """A private copy of the store and its images (tests replace files and rewrite the store)."""
    imgs = shutil.copytree(pooled_store.parent / "imgs", tmp_path / "imgs")
    s = tmp_path / "s.h5"
    shutil.copy(pooled_store, s)
    with h5py.File(s, "a") as f:
        f.attrs["images_root"] = str(imgs)
    return s


def embed_rows_match(path):
    with h5py.File(path) as f:
        return f[f"embed/{LAYER}"].shape[0] == f["images/path"].shape[0]


# --- 1. the torchrun rank share ---------------------------------------------------------------

def test_rank_share_refuses_fifo_and_dev_zero_like_one_process(tmp_path):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    src = ImageSource("t", tmp_path, tuple(sorted(tmp_path.iterdir())))
    prep = Preprocessing("torchvision", 32)
    single = [ImageDataset(src, prep)[i] for i in range(3)]
    shares = [RankShare(src, prep, None, set(), Share(r, 2)) for r in range(2)]
    recs = within(20, lambda: [[ds[i] for i in range(len(ds))] for ds in shares])  # hung forever / ate memory before
    got = [rec for r in recs for rec in r]
    assert sorted(rec["index"] for rec in got) == [0, 1, 2]  # each file read by exactly one rank
    for rec in got:
        one = single[rec["index"]]
        assert rec["key"] == one["key"] and rec["reason"] == one["reason"]
    assert [r["reason"] for r in single] == ["", "unreadable: not a regular file (fifo)",
                                             "unreadable: not a regular file (character device)"]
    assert single[1]["key"] == image_key(hashlib.sha256(b"unreadable:pipe.jpg").hexdigest())


# --- 2. embed reads source files and --labels with the one reader ----------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_embed_with_a_source_replaced_by_a_fifo_or_dev_zero(store, kind):
    img = store.parent / "imgs" / "red" / "0.png"
    img.unlink()
    os.mkfifo(img) if kind == "fifo" else img.symlink_to("/dev/zero")
    res = within(120, lambda: embed_mod.embed_store(store, embed_mod.EmbedOptions(method="pca", baseline=12), write=False))
    assert res.n == 12  # the thumbnail comes from the store's kept pixels or is left out
    assert any("random weights" in w and v != v for w, v in res.knn.items())  # baseline: the file is gone


@pytest.mark.parametrize("kind,code,needle", [
    ("fifo", 2, "unreadable: not a regular file (fifo)"),
    ("dev-zero", 2, "unreadable: not a regular file (character device)"),
    ("folder", 2, "unreadable: not a regular file (directory)"),
    ("non-utf8", 2, "is not UTF-8 text"),
    ("huge-field", 2, "is not a CSV of path,category rows (field larger than field limit"),
    ("missing", 3, "does not exist"),
])
def test_bad_labels_file_is_one_line_naming_it(store, tmp_path, kind, code, needle):
    lab = tmp_path / "labels.csv"
    if kind == "fifo":
        os.mkfifo(lab)
    elif kind == "dev-zero":
        lab.symlink_to("/dev/zero")
    elif kind == "folder":
        lab.mkdir()
    elif kind == "non-utf8":
        lab.write_bytes(b"red/0.png,caf\xe9\n")
    elif kind == "huge-field":
        lab.write_text("red/0.png," + "x" * 200_000 + "\n")
    res = within(60, lambda: cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0",
                                              "--labels", str(lab)]))
    one_line(res, code, f"--labels {lab}", needle)


def test_labels_by_absolute_path_as_mine_top_json_prints(store, tmp_path):
    import json

    with Store(store) as s:
        used = [p.decode() for p, st in zip(s.f["images/path"][()], s.f["images/status"][()]) if st == b"ok"]
    top = cli.invoke(app, ["top", str(store), "--feature", "0", "--json"])
    files = {r["path"]: r["file"] for r in json.loads(top.stdout)}
    assert all(os.path.isabs(f) for f in files.values())
    lab = tmp_path / "l.csv"
    root = store.parent / "imgs"
    lab.write_text("".join(f"{root / p},{'warm' if p.startswith('red') else 'cold'}\n" for p in used))
    assert embed_mod.file_labels(used, lab, str(root)) == ["warm" if p.startswith("red") else "cold" for p in used]
    for p, f in files.items():  # the very strings `mine top --json` prints
        assert f == str(root / p)


def test_labels_matching_nothing_is_refused_and_few_is_a_warning(store, tmp_path):
    lab = tmp_path / "l.csv"
    lab.write_text("/elsewhere/red/0.png,warm\n/elsewhere/blue/0.png,cold\n")
    res = cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0", "--labels", str(lab)])
    one_line(res, 2, "names none of the store's 12 images")
    assert "100.0%" not in res.output
    # 8 of 12 labelled: a warning, and k-NN over the 8 labelled images only (brute-force reference)
    with Store(store) as s:
        x, rows = embed_mod.features(s, LAYER)
        used = [s.f["images/path"][r].decode() for r in rows]
    keep = [i for i, p in enumerate(used) if not p.endswith(("4.png", "5.png"))]
    lab.write_text("".join(f"{used[i]},{used[i].split('/')[0]}\n" for i in keep))
    res = cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0", "--labels", str(lab),
                           "--neighbors", "3", "--no-write"])
    assert res.exit_code == 0, res.output
    assert "gives no category for 4 of 12 images" in res.stderr and "k-NN counts the 8 labelled ones only" in res.stderr
    want = _brute_knn(x[keep], [used[i].split("/")[0] for i in keep], 3)
    line = next(x for x in res.stdout.splitlines() if "3-NN, conv3_1 avg (8 images)" in x)
    assert line.split()[-1] == f"{want:.1%}"


def test_knn_label_shows_the_k_used(store):
    res = cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0", "--neighbors", "100000", "--no-write"])
    assert res.exit_code == 0 and "11-NN, conv3_1 avg (12 images)" in res.stdout and "100000-NN" not in res.stdout


@pytest.mark.parametrize("opt", ["--baseline", "--thumbnails", "--perplexity", "--knn-sample"])
def test_negative_embed_numbers_are_refused(store, opt):
    one_line(cli.invoke(app, ["embed", str(store), opt, "-2"]), 2, opt)


# --- 3. the lock over embed's whole read-modify-write -----------------------------------------

def test_update_cannot_slip_between_embeds_read_and_write(store, monkeypatch):
    imgs = store.parent / "imgs"
    (imgs / "green").mkdir()
    for i in range(3):  # new contents for the update
        Image.new("RGB", (36, 36), (30, 200 - 20 * i, 30)).save(imgs / "green" / f"{i}.png")
    tried = []

    def update_meanwhile(name):  # embed has the store open and its lock held
        tried.append(cli.invoke(app, run_args(imgs, store, "--update", str(store), "--log", str(store.parent / "l"))))

    monkeypatch.setattr(embed_mod, "pause_point", update_meanwhile)
    res = cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0"])
    assert res.exit_code == 0, res.output
    assert tried[0].exit_code == exitcodes.LOCKED, tried[0].output
    assert embed_rows_match(store)
    # The other order: the update holds the lock (paused at its first batch), embed is refused.
    run_mod = sys.modules["pipeline.runner"]
    embeds = []

    def embed_meanwhile(name, until=None):
        if name == "stream" and not embeds:
            embeds.append(cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0"]))

    monkeypatch.setattr(embed_mod, "pause_point", lambda name: None)
    monkeypatch.setattr(run_mod, "pause_point", embed_meanwhile)
    up = cli.invoke(app, run_args(imgs, store, "--update", str(store), "--log", str(store.parent / "l")))
    assert up.exit_code == 0, up.output
    assert embeds[0].exit_code == exitcodes.LOCKED, embeds[0].output
    with h5py.File(store) as f:
        assert len(f["images/path"]) == 15 and "embed" not in f  # the rewrite drops stale coordinates
    assert cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0"]).exit_code == 0
    assert embed_rows_match(store)


def test_embed_rows_that_do_not_match_images_are_a_damaged_store(store):
    assert cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0"]).exit_code == 0
    with h5py.File(store, "a") as f:
        xy = f[f"embed/{LAYER}"][()]
        del f[f"embed/{LAYER}"]
        f[f"embed/{LAYER}"] = xy[:-2]  # what the unlocked embed left after an --update
    one_line(cli.invoke(app, ["info", str(store)]), exitcodes.STORE_ERROR, f"/embed/{LAYER} has shape (10, 2)")


# --- 4. symlinks and modes ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o600, 0o444])
def test_embed_through_a_symlink_writes_the_target_and_keeps_its_mode(store, mode):
    real = store.parent / "2026-11-25.h5"
    store.rename(real)
    link = store.parent / "latest.h5"
    link.symlink_to(real.name)
    real.chmod(mode)
    res = cli.invoke(app, ["embed", str(link), "--embedding", "pca", "--baseline", "0"])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == real.name
    assert stat.S_IMODE(real.stat().st_mode) == mode
    assert embed_rows_match(real)
    assert leftovers(store.parent) == []


def test_run_update_keeps_a_private_store_private(store):
    store.chmod(0o600)
    res = cli.invoke(app, run_args(store.parent / "imgs", store, "--update", str(store), "--log",
                                   str(store.parent / "l")))
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


# --- 5. t-SNE of identical vectors ---------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_tsne_of_identical_vectors_is_finite_and_never_a_crash(scale):
    """In a child: before the fix all-zero vectors ended in SIGSEGV (exit -11), which would take
    the test runner down with it."""
    code = (f"import numpy as np\nfrom pipeline.analyses.embed import tsne\n"
            f"x = np.tile(np.abs(np.random.default_rng(1).normal(size=512)).astype(np.float32) * {scale}, (6, 1))\n"
            f"y = tsne(x)\nassert y.shape == (6, 2) and (y == 0).all(), y\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "identical" in p.stderr


def test_embed_of_identical_images_by_the_command(store):
    root = store.parent / "imgs"
    with h5py.File(store, "a") as f:  # six copies of one photo: identical pooled vectors
        v = f[f"images/pooled_{LAYER}"][()]
        v[:] = v[0]
        del f[f"images/pooled_{LAYER}"]
        f[f"images/pooled_{LAYER}"] = v
    assert root.exists()
    p = subprocess.run(mine_argv("embed", store, "--baseline", "0"), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    with h5py.File(store) as f:
        assert (f[f"embed/{LAYER}"][()] == 0).all()


# --- 7. pooled vectors validated; float16 never silently inf -----------------------------------

@pytest.mark.parametrize("damage,needle", [
    ("fewer-rows", f"/images/pooled_{LAYER} has shape (10, 2, 256), expected (12, 2, *)"),
    ("attr-5", "attribute pooled = 5 is not a list of distinct layer names"),
    ("attr-str", "attribute pooled = 'conv3_1' is not a list of distinct layer names"),
    ("nan", f"/images/pooled_{LAYER} holds NaN or infinity on a used image"),
])
def test_damaged_pooled_vectors_are_exit_6(store, damage, needle):
    with h5py.File(store, "a") as f:
        v = f[f"images/pooled_{LAYER}"][()]
        if damage == "fewer-rows":
            del f[f"images/pooled_{LAYER}"]
            f[f"images/pooled_{LAYER}"] = v[:10]
        elif damage == "attr-5":
            f.attrs["pooled"] = "5"
        elif damage == "attr-str":
            f.attrs["pooled"] = '"conv3_1"'
        else:
            v[3, 0, 7] = np.nan
            del f[f"images/pooled_{LAYER}"]
            f[f"images/pooled_{LAYER}"] = v
    one_line(cli.invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "0"]),
                   exitcodes.STORE_ERROR, needle)
    if damage != "nan":  # structure: every command refuses the store on open
        with pytest.raises(StoreError, match="is damaged"):
            Store(store)


def test_pooled_float16_overflow_is_clipped_with_one_warning(caplog):
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.6e10  # mean and max 1.6e10: inf in float16
    x[0, 1, 0, 0] = -1e6  # mean -250000, max 0
    x[0, 2] = 3.0
    rows = pool(x)
    want = np.array([[[F16_MAX, -F16_MAX, 3.0]], [[F16_MAX, 0.0, 3.0]]], np.float32).reshape(1, 2, 3)
    assert rows.dtype == torch.float16 and np.isfinite(rows.numpy()).all()
    np.testing.assert_array_equal(rows.float().numpy(), want)
    pv = PooledVectors(3, "conv9")
    pv.add(torch.tensor([7]), rows)
    with caplog.at_level("WARNING", logger="pipeline"):
        pv.result()
        pv.state()
    warns = [r.getMessage() for r in caplog.records]
    assert len(warns) == 1 and "pooled vectors of conv9: 3 of 6 values are beyond float16's range" in warns[0]


# --- 9. --k bounded ---------------------------------------------------------------------------

@pytest.mark.parametrize("k,needle", [("100000", "--k 100000 is above the largest k a store holds, 10000"),
                                      ("1000000000000", "is above the largest k a store holds"),
                                      ("5000", "--k 5000 over 4224 channels is 21120000 slots, above the limit")])
def test_k_is_bounded_up_front(pooled_store, tmp_path, k, needle):
    args = run_args(pooled_store.parent / "imgs", tmp_path / "k.h5", "--log", str(tmp_path / "l"))
    args[args.index("--k") + 1] = k
    args[args.index("--layer") + 1] = "all"
    one_line(cli.invoke(app, args), exitcodes.BAD_ARGS, needle)
    assert not (tmp_path / "k.h5").exists()


# --- 13. embed: SIGTERM, stale temp files -----------------------------------------------------

def test_embed_sigterm_exits_5_without_lock_or_temp(store, tmp_path):
    dead = store.parent / f".{store.name}.tmp-999999999"  # left by a dead embed
    dead.write_bytes(b"half a store")
    p = spawn(["embed", store, "--embedding", "pca", "--baseline", "0"], tmp_path, pause_at="embed", ready=tmp_path / "r")
    wait_for(tmp_path / "r", p)
    assert not dead.exists()  # removed by the lock holder
    assert (store.parent / f"{store.name}.lock").exists()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == exitcodes.INTERRUPTED, err
    assert "Traceback" not in err and [x for x in err.splitlines() if x.startswith("error:")] == ["error: interrupted"]
    assert leftovers(store.parent) == [] and leftovers(tmp_path) == []


def test_embed_on_a_full_disk_is_exit_6_and_the_store_unchanged(store, tmp_path):
    """The coordinates are written by a forked child: HDF5 2.0 segfaults closing a file whose write
    failed (issue 23, item 14), and that must cost the child only, never the command."""
    import resource

    before = store.read_bytes()
    limit = len(before) + 200  # the copy fits, the coordinates do not

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "pictures"
    out.mkdir()
    p = spawn(["embed", store, "--embedding", "pca", "--baseline", "0", "--out", out], tmp_path, preexec_fn=small_disk)
    _, err = p.communicate(timeout=300)
    assert p.returncode == exitcodes.STORE_ERROR, err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {store}" in errors[0] and "the store is unchanged" in errors[0], err
    assert "Traceback" not in err
    assert store.read_bytes() == before and leftovers(store.parent) == []


def test_embed_of_a_missing_store_creates_nothing(tmp_path):
    store = tmp_path / "no" / "such" / "s.h5"
    one_line(cli.invoke(app, ["embed", str(store)]), exitcodes.STORE_ERROR, "does not exist")
    assert not (tmp_path / "no").exists()
    os.mkfifo(tmp_path / "f.h5")
    one_line(within(20, lambda: cli.invoke(app, ["embed", str(tmp_path / "f.h5")])), exitcodes.STORE_ERROR,
                   "is not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_embed_through_a_symlink_is_locked_out_by_the_targets_lock(store, live_pid):
    from jobs_util import write_lock

    from pipeline.lock import _proc_start

    link = store.parent / "latest.h5"
    link.symlink_to(store.name)
    write_lock(store, live_pid, proc_start=_proc_start(live_pid))  # e.g. an --update of the target
    one_line(cli.invoke(app, ["embed", str(link), "--embedding", "pca", "--baseline", "0"]), exitcodes.LOCKED,
                   f"pid {live_pid}")
    assert not (store.parent / "latest.h5.lock").exists()
