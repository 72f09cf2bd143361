"""Hostile inputs, second round (issue 23), the cases beyond `mine run` and `mine embed`: SIGTERM in
every command, config types, sizes and memory, torchrun argument checks, output-name collisions and
the smaller one-line errors."""
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from jobs_util import all_images, cfg, list_file, make_images, one_line, spawn, wait_for
from PIL import Image
from tiny_models import LONG
from typer.testing import CliRunner

from pipeline import Store, exitcodes, run
from pipeline.cli import app, message
from pipeline.pictures.names import safe_name

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
    """command -> (pause point mid-work, arguments). ``atomic-write``: a PNG's temp file is written and
    not yet renamed; ``command``: the (read-only) command is about to start."""
    img = str(d / "imgs" / "a" / "img00.png")
    return {
        "run": ("stream", ["run", "--images", str(d / "imgs"), "--layer", "conv1_2", *UNIT, "--size", "32", "--k", "2",
                           "--workers", "0", "--batch-size", "2", "--quiet", "--out", str(d / "w" / "r.h5")]),
        "merge": ("finalize", ["merge", str(d / "a.h5"), str(d / "b.h5"), "--out", str(d / "w" / "m.h5"),
                               "--device", "cpu"]),
        "render": ("atomic-write", ["render", str(d / "w" / "a.h5"), "--layer", "conv1_2", "--features", "0-1",
                                 "--out", str(d / "w" / "render"), "--device", "cpu", "--quiet"]),
        "visualize": ("atomic-write", ["visualize", "--layer", "conv1_2", "--features", "0-1", *UNIT, "--size", "32",
                                    "--steps", "2", "--out", str(d / "w" / "vis"), "--device", "cpu", "--quiet"]),
        "reconstruct": ("atomic-write", ["reconstruct", img, "--layer", "conv1_2", *UNIT, "--size", "32",
                                      "--out", str(d / "w" / "rec"), "--device", "cpu"]),
        "occlude": ("atomic-write", ["occlude", img, "--layer", "conv1_2", "--feature", "0", *UNIT, "--size", "32",
                                  "--patch", "8", "--stride", "8", "--out", str(d / "w" / "occ"), "--device", "cpu"]),
        "embed": ("embed", ["embed", str(d / "w" / "p.h5"), "--embedding", "pca", "--baseline", "0",
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


# --- 10. config types, sizes, memory, weights and model factories: one line each -----------------

cli = CliRunner()


def run_argv(d, *extra):
    return ["run", "--images", str(d / "imgs"), "--layer", "conv1_2", *UNIT, "--k", "2", "--workers", "0",
            "--quiet", "--out", str(d / "w" / "c.h5"), *extra]


@pytest.mark.parametrize("text,flags,needle", [
    ('k = "nine"', ["--size", "32", "--k", "2"], "k must be an integer (got 'nine')"),
    ("size = 100000", [], "size 100000 is above the largest input size, 4096"),
    ("size = 99999999999999999999", [], "size 99999999999999999999 is above the largest input size"),
    ("size = 2048", ["--batch-size", "16"], "use --batch-size 8"),
    ("pooled = 5", ["--size", "32"], "pooled must be a string or a list of strings"),
    ("pooled = true", ["--size", "32"], "pooled must be a string or a list of strings"),
])
def test_every_config_value_is_checked_even_when_a_flag_overrides_it(work, text, flags, needle):
    (work / "w" / "c.toml").write_text(text + "\n")
    one_line(cli.invoke(app, run_argv(work, "--config", str(work / "w" / "c.toml"), *flags)), exitcodes.BAD_ARGS, needle)
    assert not (work / "w" / "c.h5").exists()


def test_a_config_list_of_pooled_layers_is_accepted(work):
    (work / "w" / "c.toml").write_text('pooled = ["conv1_2"]\nsize = 32\n')
    res = cli.invoke(app, run_argv(work, "--config", str(work / "w" / "c.toml")))
    assert res.exit_code == 0, res.output
    with Store(work / "w" / "c.h5") as s:
        assert list(s.attrs["pooled"]) == ["conv1_2"]


@pytest.mark.parametrize("command", [["layers", "--model", "vgg16"],
                                     ["visualize", "--layer", "conv1_2", *UNIT],
                                     ["reconstruct", "IMG", "--layer", "conv1_2", *UNIT],
                                     ["occlude", "IMG", "--layer", "conv1_2", "--feature", "0", *UNIT]])
@pytest.mark.parametrize("size,needle", [("-5", "--size must be a positive number of pixels (got -5)"),
                                         ("100000", "--size 100000 is above the largest input size, 4096")])
def test_sizes_are_checked_up_front(mined, command, size, needle):
    args = [str(mined / "imgs" / "a" / "img00.png") if a == "IMG" else a for a in command]
    one_line(cli.invoke(app, [*args, "--size", size]), exitcodes.BAD_ARGS, needle)


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 90000000000 bytes.")])
@pytest.mark.parametrize("command", ["run", "visualize", "reconstruct", "occlude"])
def test_out_of_memory_is_one_line(mined, tmp_path, monkeypatch, command, error):
    import importlib

    def oom(*a, **kw):
        raise error
    where = {"run": ("pipeline.runner", "run"), "visualize": ("pipeline.visualize.layer", "visualize_layer"),
             "reconstruct": ("pipeline.analyses.reconstruct", "reconstruct_images"),
             "occlude": ("pipeline.analyses.occlude", "occlude_images")}[command]
    monkeypatch.setattr(importlib.import_module(where[0]), where[1], oom)
    img = str(mined / "imgs" / "a" / "img00.png")
    args = {"run": run_argv(mined, "--size", "32", "--log", str(tmp_path / "log")),
            "visualize": ["visualize", "--layer", "conv1_2", *UNIT, "--size", "32"],
            "reconstruct": ["reconstruct", img, "--layer", "conv1_2", *UNIT, "--size", "32"],
            "occlude": ["occlude", img, "--layer", "conv1_2", "--feature", "0", *UNIT, "--size", "32"]}[command]
    one_line(cli.invoke(app, args), exitcodes.BAD_ARGS, "out of memory", "use a smaller --batch-size or --size")


def test_occlude_without_a_target_is_one_line(mined):
    one_line(cli.invoke(app, ["occlude", str(mined / "imgs" / "a" / "img00.png"), *UNIT, "--size", "32"]),
             exitcodes.BAD_ARGS, "give --layer and --feature for a unit, or --class")


def test_weights_with_integer_keys_or_nan_are_a_weights_error(tmp_path, mined):
    from pipeline.models.weights import load_network

    torch.save({0: torch.zeros(3), 1: torch.zeros(2)}, tmp_path / "ints.pt")
    state = load_network("vgg16", "random", 32).model.state_dict()
    state["features.2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    img = str(mined / "imgs" / "a" / "img00.png")
    for name, needle in (("ints.pt", "key 0 is not a string"), ("nan.pt", "features.2.weight holds NaN or infinite")):
        one_line(cli.invoke(app, ["reconstruct", img, "--layer", "conv1_2", "--model", "vgg16", "--weights",
                                  str(tmp_path / name), "--size", "32", "--out", str(tmp_path / "r")]),
                 exitcodes.MISSING_INPUT, needle)


def test_a_model_factory_that_raises_or_needs_arguments_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "factories.py").write_text("def boom():\n    raise RuntimeError('factory exploded')\n\n"
                                           "def needs(a, b):\n    return None\n\nraise_on_import = 1\n")
    (tmp_path / "broken_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for model, needle in (("factories:boom", "the factory failed: RuntimeError: factory exploded"),
                          ("factories:needs", "the factory failed: TypeError: needs() missing 2 required"),
                          ("broken_module:f", "cannot import f from broken_module (ZeroDivisionError")):
        one_line(cli.invoke(app, ["layers", "--model", model, "--size", "32"]), exitcodes.BAD_ARGS, needle)


# --- 12. output names never collide ------------------------------------------------------------

def test_reconstruct_of_two_files_with_one_name_writes_two_files(mined, tmp_path):
    a, b = mined / "imgs" / "a" / "img00.png", tmp_path / "b" / "img00.png"
    b.parent.mkdir()
    b.write_bytes((mined / "imgs" / "b" / "img07.png").read_bytes())
    res = cli.invoke(app, ["reconstruct", str(a), str(b), "--layer", "conv1_2", *UNIT, "--size", "32",
                           "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "r").glob("img00*.png"))
    assert len(pngs) == 2 and pngs[0] != pngs[1], pngs
    first = [np.asarray(Image.open(tmp_path / "r" / p))[:, :40] for p in pngs]  # the input column of each
    assert not np.array_equal(*first)


def test_safe_name_is_injective_and_short():
    names = ["a/b", "a_b", "a~2fb", "a\\b", "a b", ".x", "~2ex", "", "~", "conv4_3", "features.14", LONG, LONG + "d",
             "é", "~c3~a9"]
    safe = [safe_name(n) for n in names]
    assert len(set(safe)) == len(names), safe
    assert safe[names.index("conv4_3")] == "conv4_3" and safe[names.index("features.14")] == "features.14"
    assert all(len(s) <= 100 and "/" not in s and "\\" not in s and not s.startswith(".") for s in safe)


def test_odd_layer_names_mine_and_render_into_separate_files(tmp_path, monkeypatch):
    from pipeline.render import render_store

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    imgs = make_images(tmp_path / "imgs")
    store = tmp_path / "odd.h5"
    run(cfg(imgs / "a", store, model="tiny_models:odd_names", layer="all", k=2))
    with Store(store) as s:
        assert set(s.layers) == {"a/b", "a_b", LONG}
    out = tmp_path / "render"
    render_store(store, out=out, features=[0], device="cpu", progress=False, crop="rf", overview_features=0)
    feats = sorted(p.name for p in out.glob("*_feat_0.png"))
    assert len(feats) == 3 and all(len(f) < 255 for f in feats), feats


# --- 13. the smaller ones ------------------------------------------------------------------------

def test_occlude_entries_must_be_positive(work):
    for option in ("--entries", "--limit"):  # --limit: its old name, still taken
        one_line(cli.invoke(app, ["occlude", str(work / "w" / "a.h5"), "--layer", "conv1_2", "--feature", "0",
                                  option, "-2"]), exitcodes.BAD_ARGS, "--entries must be >= 1 (got -2)")


def test_occlude_takes_module_paths_like_the_other_commands(mined, tmp_path):
    res = cli.invoke(app, ["occlude", str(mined / "imgs" / "a" / "img00.png"), "--layer", "features.3", "--feature",
                           "0", *UNIT, "--size", "32", "--patch", "8", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "img00.conv1_2_occ_0.png").exists()  # features.3 is conv1_2 (after its ReLU)


@pytest.mark.parametrize("kind,needle", [("folder", "not a regular file (directory)"), ("fifo", "not a regular file (fifo)")])
def test_a_folder_or_fifo_given_as_an_image_says_what_it_is(tmp_path, kind, needle):
    p = tmp_path / "x.png"
    p.mkdir() if kind == "folder" else os.mkfifo(p)
    for cmd in (["reconstruct", str(p), "--layer", "conv1_2"], ["occlude", str(p), "--layer", "conv1_2", "--feature", "0"]):
        one_line(cli.invoke(app, [*cmd, *UNIT, "--size", "32", "--out", str(tmp_path / "o")]), exitcodes.MISSING_INPUT,
                 f"image {p}: unreadable: {needle}")


def test_render_visualize_negative_names_visualize(work):
    one_line(cli.invoke(app, ["render", str(work / "w" / "a.h5"), "--visualize", "-5"]), exitcodes.BAD_ARGS,
             "--visualize must be a number of steps >= 0 (got -5")


def test_error_lines_keep_their_closing_quote(work):
    line = one_line(cli.invoke(app, ["render", str(work / "w" / "a.h5"), "--features", ","]), exitcodes.BAD_ARGS)
    assert line == "error: no feature in ','"
    assert message(KeyError("unknown key 'x'")) == "unknown key 'x'"


def test_a_failed_png_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from pipeline.pictures import montage

    def full_disk(self, fp, *a, **kw):
        Path(fp).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        montage.save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# --- 11. torchrun ranks started with different arguments ---------------------------------------

def test_ranks_started_with_different_arguments_refuse_in_one_line(mined, tmp_path):
    """Two ranks started by hand (the torchrun environment, gloo) with different --k: both exit 2
    before any work, naming the option; rank 0's run record lists both ranks."""
    import json
    import socket
    import subprocess

    from jobs_util import mine_argv

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank, k in ((0, "2"), (1, "3")):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.pop("MINE_TEST_PAUSE_AT", None)
        args = run_argv(mined, "--size", "32", "--device", "cpu", "--out", str(tmp_path / "s.h5"))
        args[args.index("--k") + 1] = k
        procs.append(subprocess.Popen(mine_argv(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == exitcodes.BAD_ARGS, err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "started with different arguments: rank 1 differs from rank 0 in k (2 vs 3)" in lines[0], lines[0]
    assert not (tmp_path / "s.h5").exists() and stale(tmp_path) == []
    record = json.loads((tmp_path / "mine-runs.jsonl").read_text().splitlines()[-1])
    assert record["exit_code"] == exitcodes.BAD_ARGS and record["world_size"] == 2
    assert [r["rank"] for r in record["ranks"]] == [0, 1]
