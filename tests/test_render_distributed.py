"""`mine render` under torchrun, and its writer threads.

Two ranks are started by hand with the torchrun environment (gloo on the CPU), as torchrun would:
their folder must hold the same files, byte for byte, as one process's render of the same store
(the independent reference), manifest included. A tiny store (32 px, random VGG16 weights) keeps
it to seconds.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from jobs_util import mine_argv
from test_render import make_images, mine

from pipeline.render import feature_files, render_store
from pipeline.render import writer as writer_mod
from pipeline.render.manifest import LOCK, MANIFEST
from pipeline.render.writer import WriteError, Writer

LAYERS, FEATURES = "conv1_1,conv2_1", "0-4"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render_dist_store")
    return mine(tmp, make_images(tmp / "images", n=6, seed=5), LAYERS)


def options(out: Path) -> dict:
    # one unit per chunk (batch of 9 entries): the chunks alternate between the two ranks
    return dict(out=out, layers=LAYERS, features=FEATURES, overview_features=3, show="both", save_arrays=True,
                batch_size=9, device="cpu")


def argv(store: Path, out: Path) -> list:
    return ["render", store, "--layer", LAYERS, "--features", FEATURES, "--overview", "3", "--show", "both",
            "--save-arrays", "--batch-size", "9", "--device", "cpu", "--quiet", "--out", out]


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def two_ranks(store: Path, out: Path, cwd: Path) -> list[tuple[int, str, str]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.pop("MINE_TEST_PAUSE_AT", None)
        procs.append(subprocess.Popen(mine_argv(*argv(store, out)), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        out_, err = p.communicate(timeout=240)
        done.append((p.returncode, out_, err))
    return done


def test_two_ranks_write_the_folder_of_one_process(store, tmp_path):
    one = render_store(store, progress=False, **options(tmp_path / "one"))
    assert one.rendered >= 10
    ran = two_ranks(store, tmp_path / "two", tmp_path)
    for code, _, err in ran:
        assert code == 0, err
    (_, out0, _), (_, out1, _) = ran
    assert "by 2 processes" in out0 and f"rendered {one.rendered} feature maps" in out0, out0
    assert out1.strip() == "", "rank 1 prints nothing: rank 0 speaks for the job"
    a, b = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(a) == sorted(b)
    assert LOCK not in b and MANIFEST in b
    assert any(k.endswith(".npy") for k in b) and any(k.startswith("images/") for k in b)
    differ = [k for k in a if a[k] != b[k]]
    assert differ == [], f"files that differ from one process's: {differ}"
    # the manifest of the two ranks is complete: a re-run in one process finds everything up to date
    again = render_store(store, progress=False, **options(tmp_path / "two"))
    assert again.rendered == 0 and again.skipped == one.rendered
    assert files(tmp_path / "two") == b


def test_a_failed_write_surfaces_and_its_unit_is_not_recorded(store, tmp_path, monkeypatch):
    real = writer_mod.save_png
    bad = feature_files("conv1_1", 1)["pair"]

    def flaky(img, path):
        if Path(path).name == bad:
            raise OSError(28, "No space left on device")
        real(img, path)

    monkeypatch.setattr(writer_mod, "save_png", flaky)
    out = tmp_path / "o"
    with pytest.raises(WriteError, match=f"could not write .*{bad}.*No space left"):
        render_store(store, out=out, layers="conv1_1", features="0-3", overview_features=0, device="cpu",
                     batch_size=9, progress=False)
    assert not (out / LOCK).exists(), "the folder lock is released"
    man = json.loads((out / MANIFEST).read_text())
    assert "1" not in man["features"].get("conv1_1", {}), "a unit whose files failed is not in the manifest"
    assert not list(out.rglob(".*.tmp-*")), "no temp file left behind"
    monkeypatch.setattr(writer_mod, "save_png", real)
    res = render_store(store, out=out, layers="conv1_1", features="0-3", overview_features=0, device="cpu",
                       batch_size=9, progress=False)
    assert 1 <= res.rendered <= 4 and (out / bad).exists()


def test_writer_raises_the_error_of_a_thread_and_waits_for_the_rest(tmp_path):
    def fail(path):
        raise ValueError(f"cannot encode {path}")

    w = Writer(threads=2, pending=2)
    written = []
    for i in range(6):
        w.submit(("u", i), lambda p: written.append(p), tmp_path / f"{i}")
    w.submit(("u", 9), fail, tmp_path / "bad.png")
    with pytest.raises(WriteError, match="bad.png"):
        w.drain()
    w.close(failed=True)
    assert sorted(written) == sorted(tmp_path / f"{i}" for i in range(6))
    with pytest.raises(WriteError):  # the end of a `with` block raises it too
        with Writer() as w2:
            w2.submit("x", fail, "x.png")
    ok = Writer()
    ok.submit("a", np.save, tmp_path / "a.npy", np.arange(3))
    assert ok.drain() == ["a"] and ok.finished() == []
    ok.close()


def test_one_forward_per_image_gives_the_maps_and_masks_of_separate_passes(store):
    """``render.forward``'s shared forward pass (every layer, masks bit-packed) against the
    per-layer paths it replaces: ``Renderer.maps`` and ``Deconvnet.relu_masks`` per batch."""
    import torch

    from pipeline.data import normalize
    from pipeline.render.forward import Forwards
    from pipeline.render.renderer import Renderer, load_store_network
    from pipeline.store.read import Store

    with Store(store) as s:
        rnd = Renderer(s, load_store_network(s), "cpu", method="guided", shifts=1)
        units = {"conv1_1": [0, 3, 5], "conv2_1": [1, 2, 7, 9]}
        arrays = {n: s.arrays(n) for n in units}
        fw = Forwards(rnd, units, arrays)
        assert fw.groups == [["conv1_1", "conv2_1"]] and fw.depth_layer == "conv2_1"
        for n, chans in units.items():
            got = fw.maps(n)
            kept = arrays[n]["kept"][chans]
            ci, ri = np.nonzero(kept >= 0)
            ch = np.asarray(chans)[ci]
            ref = rnd.maps(n, kept[ci, ri], ch)
            for c in chans:
                np.testing.assert_array_equal(got[c], ref[ch == c])
        end = rnd.net.chain_index("conv2_1")
        rows = np.unique(np.concatenate([arrays[n]["kept"][cs].ravel() for n, cs in units.items()]))
        rows = rows[rows >= 0][:3]
        mine = fw.masks(rows, end)
        px = torch.from_numpy(np.ascontiguousarray(rnd.pixels(rows)))
        ref = rnd.chain.relu_masks(normalize(px, rnd.prep), end)
        assert sorted(mine) == sorted(ref) and mine
        for i in ref:  # kept bit-packed: the whole maps and each entry's window are the reference's bits
            assert torch.equal(mine[i].rows(torch.arange(len(rows))), ref[i]), i
            img, oy, ox = torch.tensor([2, 0, 2]), torch.tensor([-1, 3, 30]), torch.tensor([5, -2, 0])
            want = ref[i][img[:, None, None], :, (oy[:, None] + torch.arange(4)).clamp(0, ref[i].shape[2] - 1)[:, :, None],
                          (ox[:, None] + torch.arange(4)).clamp(0, ref[i].shape[3] - 1)[:, None, :]]
            assert torch.equal(mine[i].window(img, oy, ox, 4), want.permute(0, 3, 1, 2)), i
        assert fw.masks(np.array([10 ** 6]), end) is None, "an image not kept: the walker computes it"
