"""Hostile inputs to whole jobs (issue 13): FIFOs and stuck reads vs. signals, kept files that
change or vanish, symlinked stores, bad option values, sizes too small, --limit, --out."""
import json
import os
import shutil
import signal
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from jobs_util import (
    BATCH,
    TIMING_ATTRS,
    assert_same_store,
    cfg,
    cli_args,
    crashed_run,
    leftovers,
    list_file,
    read_all,
    spawn,
    wait_for,
    write_lock,
)
from PIL import Image
from typer.testing import CliRunner

from pipeline import exitcodes, run
from pipeline.cli import app
from pipeline.jobs.checkpoint import checkpoint_path, load_checkpoint

cli = CliRunner()
run_module = sys.modules["pipeline.runner"]


@pytest.fixture
def mine_dir(images, tmp_path):
    """A private copy of the shared test images (tests here edit and delete files)."""
    d = tmp_path / "imgs"
    shutil.copytree(images, d)
    return d


def repaint(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)


def statuses(store):
    data, _ = read_all(store)
    return {p.decode(): s.decode() for p, s in zip(data["images/path"], data["images/status"])}


# --- 1. FIFOs and stuck reads ---------------------------------------------------------------

def test_fifo_in_folder_sigterm_exits_5_within_seconds_then_completes(mine_dir, tmp_path):
    os.mkfifo(mine_dir / "a" / "x.jpg")
    store = tmp_path / "s.h5"
    args = cli_args(mine_dir, store, "--checkpoint-every", "0")
    args[args.index("--workers") + 1] = "2"  # real loader workers, as in production
    p = spawn(args, tmp_path, pause_at="stream:1", ready=tmp_path / "ready")
    wait_for(tmp_path / "ready", p)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    seconds = time.monotonic() - t0
    assert p.returncode == exitcodes.INTERRUPTED, err
    assert seconds < 15, seconds  # ~1 s on an idle machine
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert len(load_checkpoint(checkpoint_path(store)).records) == BATCH
    assert not (tmp_path / "s.h5.lock").exists()
    # The same command again finishes; the FIFO is one skipped file, named in the warning.
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert statuses(store)["a/x.jpg"] == "skipped: unreadable: not a regular file (fifo)"
    assert "warning: 2 of 17 images skipped" in res.stderr and "a/x.jpg (unreadable" in res.stderr


def test_special_files_as_weights_config_or_list(images, tmp_path):
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    for args, code, needle in (
            (["--weights", str(fifo)], exitcodes.MISSING_INPUT, "is not a regular file"),
            (["--weights", "/dev/zero"], exitcodes.MISSING_INPUT, "is not a regular file"),
            (["--config", str(fifo)], exitcodes.BAD_ARGS, "is not a regular file")):
        res = cli.invoke(app, cli_args(images, tmp_path / "s.h5", *args))
        assert res.exit_code == code and needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_malicious_checkpoint_is_one_line_without_unsafe_advice(images, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"0.weight": Evil()}, evil)
    res = cli.invoke(app, cli_args(images, tmp_path / "s.h5", "--weights", str(evil)))
    assert res.exit_code == exitcodes.MISSING_INPUT
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot load {evil}")
    assert "weights_only=False" not in res.stderr and "pwned" not in res.stdout


# --- 3. kept files that change or vanish -----------------------------------------------------

def test_kept_file_edited_after_an_interruption_is_mined_again(mine_dir, net, tmp_path, monkeypatch):
    store = tmp_path / "s.h5"
    crashed_run(monkeypatch, cfg(mine_dir, store, checkpoint_every="1"), net)
    assert len(load_checkpoint(checkpoint_path(store)).records) == 2 * BATCH  # a/img01 is among them
    repaint(mine_dir / "a" / "img01.png", 99)  # every distinct image is kept at k=4 (see full)
    res = cli.invoke(app, cli_args(mine_dir, store))  # used to exit 7 on every re-run
    assert res.exit_code == 0, res.stderr
    assert "a/img01.png (changed since it was mined)" in res.stderr and "mining all images again" in res.stderr
    ref = tmp_path / "ref.h5"
    run(cfg(mine_dir, ref), net=net)  # a plain run over the files as they are now
    assert_same_store(store, ref)
    assert leftovers(tmp_path) == []


def test_edited_original_of_a_duplicate_is_read_from_the_duplicate(mine_dir, net, full, tmp_path, monkeypatch,
                                                                   caplog):
    store = tmp_path / "s.h5"
    crashed_run(monkeypatch, cfg(mine_dir, store, checkpoint_every="1"), net)
    repaint(mine_dir / "a" / "img03.png", 98)  # mined already; b/copy_of_03.png still holds its content
    r = run(cfg(mine_dir, store), net=net)
    assert r.mode == "resume" and "mining all images again" not in caplog.text
    # The collection as it was read (the edit came after): the uninterrupted run's store.
    assert_same_store(store, full, ignore=TIMING_ATTRS + ("images_spec", "images_root", "inputs_id"))


def test_kept_file_deleted_during_the_run(mine_dir, net, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINE_CAPTURE_MB", "0")  # finalize re-reads every kept file (no capture)
    real = run_module.combine

    def delete_then_combine(*a, **kw):
        (mine_dir / "a" / "img05.png").unlink(missing_ok=True)
        return real(*a, **kw)

    monkeypatch.setattr(run_module, "combine", delete_then_combine)
    listed = list_file(tmp_path / "all.txt", sorted(p for p in mine_dir.rglob("*") if p.is_file()))
    store = tmp_path / "s.h5"
    run(cfg(mine_dir, store), net=net)
    assert "a/img05.png (unreadable: No such file or directory)" in caplog.text
    monkeypatch.undo()
    ref = tmp_path / "ref.h5"
    run(cfg(listed, ref), net=net)  # the same paths, a/img05.png missing from the start
    assert statuses(ref)["a/img05.png"] == "skipped: unreadable: No such file or directory"
    assert_same_store(store, ref, ignore=TIMING_ATTRS + ("images_spec",))


def test_kept_file_that_keeps_changing_is_exit_3_and_never_a_stuck_resume(mine_dir, net, tmp_path, monkeypatch):
    monkeypatch.setenv("MINE_CAPTURE_MB", "0")  # finalize re-reads every kept file (no capture)
    real, seeds = run_module.combine, iter(range(100, 200))

    def edit_then_combine(*a, **kw):
        repaint(mine_dir / "b" / "img09.png", next(seeds))
        return real(*a, **kw)

    monkeypatch.setattr(run_module, "combine", edit_then_combine)
    store = tmp_path / "s.h5"
    args = cli_args(mine_dir, store)
    res = cli.invoke(app, args)
    assert res.exit_code == exitcodes.MISSING_INPUT, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "b/img09.png (changed since it was mined)" in err[0] and "re-run" in err[0]
    assert leftovers(tmp_path) == [] and not store.exists()  # no checkpoint to get stuck on
    monkeypatch.undo()
    assert cli.invoke(app, args).exit_code == 0  # once the file is left alone


# --- 5. file names that are not UTF-8 ---------------------------------------------------------

def test_undecodable_file_name_is_skipped_and_recorded_not_fatal(images, tmp_path):
    d = tmp_path / "imgs"
    shutil.copytree(images, d)
    shutil.copy(d / "a" / "img00.png", os.path.join(os.fsencode(d / "a"), b"caf\xe9.png"))
    store = tmp_path / "s.h5"
    res = cli.invoke(app, cli_args(d, store))
    assert res.exit_code == 0, res.stderr
    assert statuses(store)["a/caf\\xe9.png"] == "skipped: bad file name: not valid UTF-8"
    assert "a/caf\\xe9.png (bad file name" in res.stderr


# --- 4b/7/9/10. symlinked stores, --limit, --out ---------------------------------------------

def test_update_through_a_symlink_writes_the_target_and_locks_it(images, net, full, tmp_path, live_pid):
    from pipeline.lock import _proc_start

    real = tmp_path / "2026-11-25.h5"
    fewer = list_file(tmp_path / "l.txt", sorted(images.rglob("*.png"))[:9])
    run(cfg(fewer, real), net=net)
    link = tmp_path / "latest.h5"
    link.symlink_to(real.name)
    # Another job holding the target's lock keeps a job that names the link out.
    write_lock(real, live_pid, proc_start=_proc_start(live_pid))
    res = cli.invoke(app, cli_args(images, link, "--update", str(link)))
    assert res.exit_code == exitcodes.LOCKED and f"pid {live_pid}" in res.stderr
    (tmp_path / "2026-11-25.h5.lock").unlink()
    res = cli.invoke(app, cli_args(images, link, "--update", str(link)))
    assert res.exit_code == 0, res.stderr
    assert link.is_symlink() and os.readlink(link) == real.name  # still the same link
    assert_same_store(real, full, ignore=TIMING_ATTRS + ("inputs_id", "images_spec"))


@pytest.mark.parametrize("limit,ok", [("0", False), ("-2", False), ("3", True)])
def test_limit_must_be_positive(images, tmp_path, limit, ok):
    res = cli.invoke(app, cli_args(images, tmp_path / "s.h5", "--limit", limit))
    if not ok:
        assert res.exit_code == exitcodes.BAD_ARGS and f"--limit must be at least 1 (got {limit})" in res.stderr
        assert leftovers(tmp_path) == [] and not (tmp_path / "s.h5").exists()
    else:
        assert res.exit_code == 0, res.stderr
        assert list(statuses(tmp_path / "s.h5")) == ["a/broken.jpg", "a/img00.png", "a/img01.png"]


def test_out_naming_a_folder_fails_before_mining(images, full, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "stream", lambda *a, **kw: pytest.fail("mining started"))
    for args in (cli_args(images, tmp_path), ["merge", full, full, "-o", tmp_path]):
        res = cli.invoke(app, [str(a) for a in args])
        assert res.exit_code == exitcodes.BAD_ARGS and "is a folder" in res.stderr, res.stderr
    assert leftovers(tmp_path) == []


# --- 6. option values ---------------------------------------------------------------------

@pytest.mark.parametrize("line,needle", [
    ('k = "nine"', "k must be an integer (got 'nine')"),
    ("k = 2.5", "k must be an integer (got 2.5)"),
    ("k = 0", "--k must be at least 1 (got 0)"),
    ('batch_size = "8"', "batch_size must be an integer (got '8')"),
    ("workers = -1", "--workers must be at least 0"),
    ("images = 42", "images must be a string (got 42)"),
    ('size = "big"', "size must be an integer (got 'big')"),
    ('layer = ["conv1_2", 5]', "layer must be a string or a list of strings"),
    ("limit = 0", "--limit must be at least 1"),
    ('force = "yes"', "force must be true or false"),
    ('quiet = "yes"', "quiet must be true or false"),
    ("checkpoint_every = [1]", "checkpoint_every must be"),
])
def test_config_values_of_the_wrong_type_are_one_line(images, tmp_path, line, needle):
    conf = tmp_path / "job.toml"
    base = {"images": f'"{images}"', "model": '"vgg16"', "weights": '"random"', "layer": '"conv1_1"',
            "size": "32", "workers": "0", "out": f'"{tmp_path / "c.h5"}"'}
    base[line.split(" = ")[0]] = line.split(" = ", 1)[1]
    conf.write_text("[run]\n" + "".join(f"{k} = {v}\n" for k, v in base.items()))
    res = cli.invoke(app, ["run", "--config", str(conf)])
    assert res.exit_code == exitcodes.BAD_ARGS, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_api_paths_may_be_path_objects_but_specs_are_text():
    from pathlib import Path

    from pipeline.config import check_options

    check_options({"out": Path("s.h5"), "update": Path("s.h5"), "log": Path("l"), "data_root": Path("d")})
    with pytest.raises(ValueError, match="images must be a string"):
        check_options({"images": Path("photos")})


def test_quiet_and_a_layer_list_in_a_config_file(images, tmp_path):
    conf = tmp_path / "job.toml"
    conf.write_text(f'[run]\nimages = "{images}"\nmodel = "vgg16"\nweights = "random"\nsize = 32\nworkers = 0\n'
                    f'layer = ["conv1_1", "conv1_2"]\nk = 2\nquiet = true\nout = "{tmp_path / "c.h5"}"\n')
    res = cli.invoke(app, ["run", "--config", str(conf)])
    assert res.exit_code == 0, res.stderr
    assert "mining" not in res.stderr  # no progress bar
    with h5py.File(tmp_path / "c.h5") as f:
        assert json.loads(f.attrs["layers"]) == ["conv1_1", "conv1_2"]


def test_size_too_small_for_the_network_is_refused_up_front(images, tmp_path):
    # VGG16 halves the input five times: 7 -> 3 -> 1 -> 0 at pool3, nothing left for conv4/conv5.
    for args in (["layers", "--model", "vgg16", "--size", "7"],
                 cli_args(images, tmp_path / "s.h5", "--size", "7", "--layer", "conv5_3")):
        res = cli.invoke(app, args)
        assert res.exit_code == exitcodes.BAD_ARGS
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "a 7 px input does not fit this network" in lines[0]
    assert not (tmp_path / "s.h5").exists()
    # `mine layers` says what a size that fits gives each layer: 32 / 16 = 2 at conv5_3.
    res = cli.invoke(app, ["layers", "--model", "vgg16", "--size", "32"])
    row = next(ln.split() for ln in res.stdout.splitlines() if "conv5_3" in ln)
    assert row[row.index("conv5_3") + 3] == "2"


def test_feature_ranges_are_checked_before_expansion(full, tmp_path):
    t0 = time.monotonic()
    res = cli.invoke(app, ["render", str(full), "--features", "0-999999999", "--out", str(tmp_path / "r")])
    assert res.exit_code == exitcodes.BAD_ARGS
    assert "feature 999999999 is out of range" in res.stderr and "at most 256 channels" in res.stderr
    assert time.monotonic() - t0 < 10 and not (tmp_path / "r").exists()


def test_docs_state_the_limits_and_what_happens_to_changed_files():
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = "".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    for phrase in ("256 MiB", "100 megapixels", "25 megapixels", "changed since it was mined", "regular files"):
        assert phrase in readme, phrase
