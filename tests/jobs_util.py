"""Shared helpers of the nightly-job tests (test_resume, test_update_merge, test_lock_exitcodes).

Tiny runs: a seeded random VGG16 at 32 x 32, three layers, k=4 (fewer than the
images, so which images win matters; 16 files, 14 distinct images), batch size 3, no loader workers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pipeline import RunConfig

LAYERS = "conv1_2,pool2,conv3_1"
SIZE, K, BATCH = 32, 4, 3
TIMING_ATTRS = ("created", "seconds", "versions")
FILE_META = ("images/size", "images/mtime_ns", "images/ctime_ns")  # jobs.update


def make_images(root: Path) -> Path:
    """a/img00-06, b/img07-13 (smooth random PNGs), b/copy_of_03 (a duplicate), a/broken.jpg."""
    rng = np.random.default_rng(11)
    for i in range(14):
        h, w = (int(v) for v in rng.integers(24, 70, size=2))
        low = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        arr = np.clip(np.asarray(low).astype(int) + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        sub = root / ("a" if i < 7 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(sub / f"img{i:02d}.png")
    shutil.copy(root / "a" / "img03.png", root / "b" / "copy_of_03.png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def all_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg"))


def list_file(path: Path, files: list[Path]) -> Path:
    path.write_text("".join(f"{f}\n" for f in files))
    return path


def cfg(images, out, **kw) -> RunConfig:
    c = RunConfig(images=str(images), layer=LAYERS, model="vgg16", weights="random", size=SIZE, workers=0,
                  batch_size=BATCH, k=K, progress=False, out=str(out) if out else None)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def cli_args(images, out, *extra) -> list[str]:
    return ["run", "--images", str(images), "--layer", LAYERS, "--model", "vgg16", "--weights", "random",
            "--size", str(SIZE), "--workers", "0", "--batch-size", str(BATCH), "--k", str(K), "--quiet",
            "--out", str(out), *extra]


def mine_argv(*args) -> list[str]:
    """The `mine` command as a subprocess of this interpreter."""
    return [sys.executable, "-c", "from pipeline.cli import main; main()", *map(str, args)]


def spawn(args, cwd: Path, pause_at: str | None = None, ready: Path | None = None, **popen) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("MINE_TEST_PAUSE_AT", None)
    env.setdefault("OMP_NUM_THREADS", "1")  # several runs share 2 cores; avoid oversubscription
    if pause_at:
        env.update(MINE_TEST_PAUSE_AT=pause_at, MINE_TEST_PAUSE_FILE=str(ready))
    return subprocess.Popen(mine_argv(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll until the paused process has created ``path`` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before pausing:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def read_all(path) -> tuple[dict, dict]:
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        attrs = dict(f.attrs.items())
    return data, attrs


def assert_same_store(a, b, ignore=TIMING_ATTRS) -> None:
    """Every dataset equal (NaN == NaN) and every attribute but ``ignore`` equal."""
    da, aa = read_all(a)
    db, ab = read_all(b)
    assert sorted(da) == sorted(db)
    for n in da:
        if n in FILE_META:  # the files' metadata, not the results: copies of a collection differ in it,
            continue  # a resumed run has none for its restored rows (tests/test_update_mtime.py checks it)
        np.testing.assert_array_equal(da[n], db[n], err_msg=n)
    strip = lambda d: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items() if k not in ignore}
    assert strip(aa) == strip(ab)


def assert_same_but_pooled_rounding(a, b, ignore=TIMING_ATTRS) -> None:
    """Equal stores, except that pooled vectors may differ by float32 rounding: a convolution
    rounds differently depending on which images share its batch (top-k values are re-run by
    finalize, pooled vectors are not)."""
    da, aa = read_all(a)
    db, ab = read_all(b)
    assert sorted(da) == sorted(db)
    for n in da:
        if n in FILE_META:
            continue
        if n.startswith("images/pooled_"):
            x, y = da[n].astype(np.float32), db[n].astype(np.float32)
            np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-3 * np.nanmax(np.abs(y)), err_msg=n)
        else:
            np.testing.assert_array_equal(da[n], db[n], err_msg=n)
    assert {k: v for k, v in aa.items() if k not in ignore}.keys() == {k: v for k, v in ab.items() if k not in ignore}.keys()
    assert list(aa["pooled"]) == list(ab["pooled"])


def write_lock(store: Path, pid: int, host: str | None = None, proc_start: int | None = None) -> None:
    """A lock file as a job with ``pid`` on ``host`` (default: this one) would have left it."""
    import json
    import socket

    from pipeline.lock import lock_path

    lock_path(store).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier",
                                            "proc_start": proc_start, "token": "x", "command": "mine run"}))


def leftovers(folder: Path) -> list[str]:
    """Lock, checkpoint and temp files still in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".ckpt")) or ".tmp-" in p.name)


def crash_in_stream(monkeypatch, after_batches: int, exc: BaseException | None = None):
    """Make the next in-process run fail right after ``after_batches`` batches (between
    batches, like an out-of-memory error in the next forward pass would)."""
    import sys

    run_module = sys.modules["pipeline.runner"]  # the package attribute "run" is the function
    count = {"n": 0}

    def fake_pause(name, until=None):
        if name == "stream":
            count["n"] += 1
            if count["n"] == after_batches:
                raise exc or RuntimeError("simulated crash")

    monkeypatch.setattr(run_module, "pause_point", fake_pause)


def crashed_run(monkeypatch, config: RunConfig, net, after_batches: int = 2) -> None:
    """Run ``config`` in process and let it crash after ``after_batches`` batches (see
    :func:`crash_in_stream`; give it ``checkpoint_every="1"`` to leave a checkpoint behind), then
    undo the test's monkeypatches, so the next run is a real one."""
    import pytest

    from pipeline import run

    crash_in_stream(monkeypatch, after_batches)
    with pytest.raises(RuntimeError):
        run(config, net=net)
    monkeypatch.undo()


def one_line(res, code, *needles) -> str:
    """A CliRunner result that failed with exit ``code`` and exactly one ``error:`` line holding ``needles``."""
    assert res.exit_code == code, res.output
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
