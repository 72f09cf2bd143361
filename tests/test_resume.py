"""Crash and resume: kill -9 at named points, SIGINT/SIGTERM, then the same command again.

The killed runs are real ``mine run`` processes, paused deterministically with
MINE_TEST_PAUSE_AT (see pipeline/faults.py) and killed once they report the
pause. All of them start at once (they are independent) to keep the suite short.
Whatever the point, the resumed store must equal an uninterrupted run's, dataset
for dataset (timing attributes aside), and no lock, checkpoint or temp file remains.
"""
import json
import signal
import sys

import numpy as np
import pytest
from jobs_util import BATCH, FILE_META, assert_same_store, cfg, cli_args, leftovers, read_all, spawn, wait_for
from typer.testing import CliRunner

from pipeline import run
from pipeline.cli import app
from pipeline.jobs.checkpoint import checkpoint_path, load_checkpoint

# point -> extra CLI options; "stream:3" with checkpoints every 2 batches dies one batch
# after a checkpoint, "checkpoint-write:2" with the second checkpoint half written, ...
KILL_POINTS = {
    "stream:1": ["--checkpoint-every", "0"],  # before any checkpoint: resume = start over
    "stream:3": ["--checkpoint-every", "2"],
    "checkpoint-write:2": ["--checkpoint-every", "1"],
    "finalize:3": [],
    "store-written": [],
}


@pytest.fixture(scope="module")
def killed(images, tmp_path_factory):
    """Start one paused run per kill point, then SIGKILL each once it has paused."""
    procs = {}
    for point, extra in KILL_POINTS.items():
        d = tmp_path_factory.mktemp(point.replace(":", "_"))
        procs[point] = (d, spawn(cli_args(images, d / "s.h5", *extra), d, pause_at=point, ready=d / "ready"))
    for d, p in procs.values():
        wait_for(d / "ready", p)
        p.kill()  # SIGKILL
        p.communicate()
        assert p.returncode == -signal.SIGKILL
    return {point: d for point, (d, _) in procs.items()}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill9_then_resume_equals_uninterrupted(point, killed, images, net, full, capsys, caplog):
    d = killed[point]
    store = d / "s.h5"
    left = leftovers(d)
    assert "s.h5.lock" in left  # the dead job's lock is still there
    ck = checkpoint_path(store)
    if point == "stream:1":
        assert not ck.exists()
    else:
        state = load_checkpoint(ck)
        assert state.complete == point.startswith(("finalize", "store-written"))
        if point == "stream:3":
            assert len(state.records) == 2 * BATCH  # the checkpoint before the killed batch
    if point == "checkpoint-write:2":
        assert any(".s.h5.ckpt.tmp-" in n for n in left)
        assert len(load_checkpoint(ck).records) == BATCH  # the first checkpoint is intact
    assert store.exists() == (point == "store-written")

    result = run(cfg(images, store, checkpoint_every=KILL_POINTS[point][1] if KILL_POINTS[point] else "5m"),
                 net=net)
    err = capsys.readouterr().err + caplog.text  # the "pipeline" logger prints to stderr once the CLI set it up
    assert "taking over the stale lock" in err and "dead pid" in err
    expected_mode = {"stream:1": "fresh", "store-written": "already-complete"}.get(point, "resume")
    assert result.mode == expected_mode
    if expected_mode == "resume":
        assert result.images_resumed > 0
    assert_same_store(store, full)
    assert leftovers(d) == ["ready"] or leftovers(d) == []


def test_sigint_checkpoints_exits_5_and_resumes(images, full, tmp_path):
    store = tmp_path / "s.h5"
    args = cli_args(images, store, "--checkpoint-every", "0")
    p = spawn(args, tmp_path, pause_at="stream:2", ready=tmp_path / "ready")
    wait_for(tmp_path / "ready", p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 5, err
    assert "interrupted by SIGINT" in err and "re-run the same command" in err
    assert "Traceback" not in err
    assert len(load_checkpoint(checkpoint_path(store)).records) == 2 * BATCH  # written on the signal
    assert not (tmp_path / "s.h5.lock").exists() and not store.exists()

    res = CliRunner().invoke(app, args)  # the same command again, in-process to save an interpreter start
    assert res.exit_code == 0, res.stderr
    assert_same_store(store, full)
    assert leftovers(tmp_path) == []
    log = [json.loads(line) for line in (tmp_path / "mine-runs.jsonl").read_text().splitlines()]
    assert [(r["status"], r["exit_code"], r["mode"]) for r in log] == [("interrupted", 5, "fresh"), ("ok", 0, "resume")]
    assert log[1]["images_resumed"] == 2 * BATCH
    assert log[0]["images_new"] + log[1]["images_new"] == 14  # 16 files: one duplicate, one broken


def test_sigterm_during_finalize_exits_5_store_untouched(images, net, full, tmp_path):
    store = tmp_path / "s.h5"
    store.write_bytes(b"previous")  # stands for an earlier store being replaced (--force)
    p = spawn(cli_args(images, store, "--force"), tmp_path, pause_at="finalize:2", ready=tmp_path / "ready")
    wait_for(tmp_path / "ready", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 5, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert store.read_bytes() == b"previous"
    assert load_checkpoint(checkpoint_path(store)).complete
    assert leftovers(tmp_path) == ["s.h5.ckpt"]  # no lock, no temp store
    # The same command again (--force included) finishes from the checkpoint.
    result = run(cfg(images, store, force=True), net=net)
    assert result.mode == "resume" and result.images_new == 0
    assert_same_store(store, full)


def test_failure_mid_stream_saves_progress_and_resume_may_change_batch_size(images, net, full, tmp_path,
                                                                          monkeypatch):
    """A job that dies of an error between batches (here a fake out-of-memory raised after
    the 2nd batch) checkpoints what it folded; it may resume with a smaller batch, since
    the top-k does not depend on the order or grouping of images."""
    run_module = sys.modules["pipeline.runner"]  # (the package attribute "run" is the function)

    def oom_after_two(name, until=None):
        if name == "stream" and oom_after_two.batches == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        oom_after_two.batches += name == "stream"

    oom_after_two.batches = 0
    store = tmp_path / "s.h5"
    monkeypatch.setattr(run_module, "pause_point", oom_after_two)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(cfg(images, store, checkpoint_every="0"), net=net)
    monkeypatch.undo()
    assert len(load_checkpoint(checkpoint_path(store)).records) == 2 * BATCH
    assert leftovers(tmp_path) == ["s.h5.ckpt"]
    result = run(cfg(images, store, batch_size=2), net=net)
    assert result.mode == "resume" and result.images_resumed == 2 * BATCH
    da, _ = read_all(store)
    db, _ = read_all(full)
    for n in da:  # entries, images, pixels, switches identical; float values to rounding
        if n in FILE_META:  # the files' metadata (jobs.update): restored rows have none
            continue
        if da[n].dtype.kind == "f":
            np.testing.assert_allclose(da[n], db[n], rtol=1e-6, err_msg=n)
        else:
            np.testing.assert_array_equal(da[n], db[n], err_msg=n)
