"""Hostile inputs, second round (issue 23), the cases beyond `mine run` and `mine embed`: SIGTERM in
every command, config types, sizes and memory, torchrun argument checks, output-name collisions and
the smaller one-line errors."""
import signal
from pathlib import Path

import pytest
from jobs_util import all_images, cfg, list_file, make_images, spawn, wait_for

from pipeline import exitcodes, run

UNIT = ["--model", "vgg16", "--weights", "random"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """Two small stores of disjoint halves of one collection (random VGG16 at 32 px)."""
    d = tmp_path_factory.mktemp("round2")
    imgs = make_images(d / "imgs")
    files = all_images(imgs)
    for name, part in (("a", files[::2]), ("b", files[1::2])):
        run(cfg(list_file(d / f"{name}.txt", part), d / f"{name}.h5"))
    return d


def stale(folder: Path, keep_checkpoint: bool = False) -> list[str]:
    """Locks and temp files anywhere under ``folder`` (checkpoints too, unless a resumable run keeps one)."""
    bad = [p for p in folder.rglob("*") if p.name.endswith(".lock") or ".tmp-" in p.name
           or (p.name.endswith(".ckpt") and not keep_checkpoint)]
    return sorted(str(p.relative_to(folder)) for p in bad)


def sigterm_at(point: str, args: list, cwd: Path) -> tuple[int, str]:
    """Start ``mine ARGS``, wait until it pauses at ``point``, send SIGTERM; (exit code, stderr)."""
    ready = cwd / f"ready-{point}"
    ready.unlink(missing_ok=True)
    p = spawn(args, cwd, pause_at=point, ready=ready)
    wait_for(ready, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=90)
    return p.returncode, err


def commands(d: Path) -> dict:
    """command -> (pause point mid-work, arguments). ``png-write``: a PNG's temp file is written and
    not yet renamed; ``command``: the (read-only) command is about to start."""
    img = str(d / "imgs" / "a" / "img00.png")
    return {
        "run": ("stream", ["run", "--images", str(d / "imgs"), "--layer", "conv1_2", *UNIT, "--size", "32", "--k", "2",
                           "--workers", "0", "--batch-size", "2", "--quiet", "--out", str(d / "w" / "r.h5")]),
        "merge": ("finalize", ["merge", str(d / "a.h5"), str(d / "b.h5"), "--out", str(d / "w" / "m.h5"),
                               "--device", "cpu"]),
        "render": ("png-write", ["render", str(d / "w" / "a.h5"), "--layer", "conv1_2", "--features", "0-1",
                                 "--out", str(d / "w" / "render"), "--device", "cpu", "--quiet"]),
        "visualize": ("png-write", ["visualize", "--layer", "conv1_2", "--features", "0-1", *UNIT, "--size", "32",
                                    "--steps", "2", "--out", str(d / "w" / "vis"), "--device", "cpu", "--quiet"]),
        "reconstruct": ("png-write", ["reconstruct", img, "--layer", "conv1_2", *UNIT, "--size", "32",
                                      "--out", str(d / "w" / "rec"), "--device", "cpu"]),
        "occlude": ("png-write", ["occlude", img, "--layer", "conv1_2", "--feature", "0", *UNIT, "--size", "32",
                                  "--patch", "8", "--stride", "8", "--out", str(d / "w" / "occ"), "--device", "cpu"]),
        "embed": ("embed", ["embed", str(d / "w" / "p.h5"), "--method", "pca", "--baseline", "0",
                            "--out", str(d / "w" / "emb")]),
        "info": ("command", ["info", str(d / "w" / "a.h5")]),
        "top": ("command", ["top", str(d / "w" / "a.h5"), "--layer", "conv1_2", "--feature", "0"]),
        "layers": ("command", ["layers", "--model", "vgg16", "--size", "32"]),
    }


@pytest.fixture
def work(mined, tmp_path):
    """A private folder ``w`` with a copy of store a.h5 and a pooled store p.h5."""
    import shutil

    w = mined / "w"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir()
    shutil.copy(mined / "a.h5", w / "a.h5")
    return mined


@pytest.mark.parametrize("command", ["run", "merge", "render", "visualize", "reconstruct", "occlude", "embed",
                                     "info", "top", "layers"])
def test_every_command_fed_sigterm_mid_work_exits_5_without_lock_or_temp(work, command):
    if command == "embed":
        run(cfg(work / "a.txt", work / "w" / "p.h5", pooled="conv1_2"))
    point, args = commands(work)[command]
    code, err = sigterm_at(point, args, work)
    assert code == exitcodes.INTERRUPTED, err
    assert "Traceback" not in err and err.count("error:") == 1 and "interrupted" in err, err
    assert stale(work, keep_checkpoint=command == "run") == []


def test_sigterm_after_the_work_is_done_exits_5_not_143(work):
    """The lock is released and the store complete; the process is shutting down."""
    args = commands(work)["run"][1]
    code, err = sigterm_at("exit", args, work)
    assert code == exitcodes.INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "error: interrupted by SIGTERM after the command finished (its output is complete)"
    assert stale(work) == [] and (work / "w" / "r.h5").exists()


def test_sigterm_as_the_store_lock_is_released_does_not_say_re_run(work, tmp_path):
    """At exactly the release (pause ``store-written``: the store in place) the message must not
    claim the streaming pass still needs finishing."""
    args = commands(work)["run"][1]
    code, err = sigterm_at("store-written", args, work)
    assert code == exitcodes.INTERRUPTED, err
    assert "is complete" in err and "re-run" not in err, err
    assert (work / "w" / "r.h5").exists()
