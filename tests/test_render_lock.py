"""`mine render` into one folder: the folder lock, options recorded per feature map in the
manifest, and output that does not depend on the batch size.

A small store is mined here (generated images, seeded random VGG16 weights, 32 px), as in
``test_render``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_render import make_images, mine
from typer.testing import CliRunner

from pipeline import exitcodes
from pipeline.cli import app
from pipeline.job_errors import Interrupted
from pipeline.render import feature_files, render_store
from pipeline.render import render as render_mod
from pipeline.render.manifest import LOCK, MANIFEST, RENDER_VERSION, render_lock

cli = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render_lock_store")
    return mine(tmp, make_images(tmp / "images", n=8, seed=3), "conv2_1,conv3_1")


def argv(store: Path, out: Path, *extra: str) -> list[str]:
    return ["render", str(store), "--layer", "conv2_1", "--features", "0-1", "--out", str(out), "--quiet",
            "--device", "cpu", *extra]


def files(out: Path) -> dict[str, bytes]:
    """Every file of a render folder but the manifest, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


# --- the folder lock ------------------------------------------------------------------------
def test_second_render_into_a_locked_folder_exits_4(store, tmp_path):
    out = tmp_path / "o"
    with render_lock(out):  # a render of this process holds the folder
        res = cli.invoke(app, argv(store, out))
        assert res.exit_code == exitcodes.LOCKED == 4
        assert "locked by another mine job" in res.stderr and f"pid {os.getpid()}" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (out / MANIFEST).exists(), "nothing rendered"
    ok = cli.invoke(app, argv(store, out))
    assert ok.exit_code == 0, ok.output
    assert not (out / LOCK).exists(), "released on normal exit"


def test_render_lock_released_on_error_and_sigterm(store, tmp_path, monkeypatch):
    out = tmp_path / "o"

    def boom(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(render_mod, "_render_features", boom)
    with pytest.raises(RuntimeError):
        render_store(store, out=out, layers="conv2_1", features="0", device="cpu", progress=False)
    assert not (out / LOCK).exists(), "released on an exception"

    def sigterm(*a, **kw):
        assert (out / LOCK).exists()
        os.kill(os.getpid(), signal.SIGTERM)  # the guard raises Interrupted at once

    monkeypatch.setattr(render_mod, "_render_features", sigterm)
    with pytest.raises(Interrupted):
        render_store(store, out=out, layers="conv2_1", features="0", device="cpu", progress=False)
    assert not (out / LOCK).exists(), "released on SIGTERM"
    res = cli.invoke(app, argv(store, out))
    assert res.exit_code == exitcodes.INTERRUPTED and not (out / LOCK).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the previous handler is restored"


def test_stale_render_lock_is_taken_over(store, tmp_path, caplog):
    out = tmp_path / "o"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a render killed with -9 left its lock behind
    (out / LOCK).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "started": "earlier",
                                        "proc_start": None, "token": "x", "command": "mine render"}))
    res = render_store(store, out=out, layers="conv2_1", features="0", device="cpu", progress=False)
    assert res.rendered == 1 and not (out / LOCK).exists()
    assert "taking over the stale lock" in caplog.text


# --- options per feature map in the manifest --------------------------------------------------
def test_renders_with_other_options_into_one_folder_match_a_fresh_render(store, tmp_path):
    mixed, fresh = tmp_path / "mixed", tmp_path / "fresh"
    first = render_store(store, out=mixed, layers="conv2_1", features="0-3", method="deconvnet", contrast="max",
                         show="both", save_arrays=True, device="cpu", progress=False)
    assert first.rendered == 4
    second = render_store(store, out=mixed, layers="conv2_1", features="0-1", device="cpu", progress=False)
    assert (second.rendered, second.skipped) == (2, 0), "other options: re-rendered"
    again = render_store(store, out=mixed, layers="conv2_1", features="0-1", device="cpu", progress=False)
    assert (again.rendered, again.skipped) == (0, 2), "the same options: up to date"
    guided = render_store(store, out=mixed, layers="conv2_1", features="2-3", method="deconvnet", contrast="max",
                          show="both", save_arrays=True, device="cpu", progress=False)
    assert (guided.rendered, guided.skipped) == (0, 2), "maps 2-3 are still those of the deconvnet render"
    contrast = render_store(store, out=mixed, layers="conv2_1", features="0-1", contrast="shared", device="cpu",
                            progress=False)
    assert contrast.rendered == 2
    final = render_store(store, out=mixed, layers="conv2_1", features="0-1", device="cpu", progress=False)
    assert final.rendered == 2, "the manifest knows they were last made with contrast shared"
    # the viewer of the last render shows only what its options made (maps 0-1), as a fresh render's

    man = json.loads((mixed / MANIFEST).read_text())
    assert man["version"] == RENDER_VERSION
    recs = man["features"]["conv2_1"]
    assert recs["0"]["options"]["method"] == "guided" and recs["0"]["options"]["contrast"] == "robust"
    assert recs["2"]["options"]["method"] == "deconvnet" and recs["2"]["arrays"], "untouched maps keep theirs"

    render_store(store, out=fresh, layers="conv2_1", features="0-1", device="cpu", progress=False)
    want, got = files(fresh), files(mixed)
    for c in (0, 1):  # no heatmap montage or array left from the guided render
        assert feature_files("conv2_1", c)["heat"] not in got and feature_files("conv2_1", c)["array"] not in got
    leftover = {n for n in got if n not in want}
    assert leftover and all("_2" in n or "_3" in n for n in leftover), "only the guided maps 2-3 besides"
    diff = sorted(n for n in want if got.get(n) != want[n])
    assert not diff, f"differ from a fresh render: {diff}"


# --- batch size ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method,layer,feats", [("deconvnet", "conv3_1", "0-39"), ("guided", "conv2_1", "0-7")])
def test_batch_size_does_not_change_the_files(store, tmp_path, method, layer, feats):
    """``--batch-size 1`` and the default give the same bytes: PNGs and the float32 arrays."""
    got = {}
    for bs in (1, None):
        out = tmp_path / f"bs{bs}"
        render_store(store, out=out, layers=layer, features=feats, method=method, batch_size=bs, save_arrays=True,
                     device="cpu", progress=False)
        got[bs] = files(out)
    assert got[1].keys() == got[None].keys() and any(n.endswith(".npy") for n in got[1])
    diff = sorted(n for n in got[1] if got[1][n] != got[None][n])
    assert not diff, f"{len(diff)} files depend on the batch size: {diff[:6]}"
