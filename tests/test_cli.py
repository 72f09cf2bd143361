"""The `mine` command: options, clear one-line errors with documented exit codes, stable JSON."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import exitcodes
from pipeline.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def store(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s.h5"
    r = runner.invoke(app, ["run", "--images", str(photos), "--layer", "conv2_1,conv3_2", "--model", "vgg16",
                            "--weights", "random", "--size", "32", "--workers", "0", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "5 images seen, 0 skipped" in r.output and str(out) in r.output
    return out


def test_help_lists_every_option():
    r = runner.invoke(app, ["run", "--help"])
    for opt in ("--layer", "--images", "--model", "--weights", "--k", "--batch-size", "--workers", "--device",
                "--size", "--resize", "--limit", "--data-root", "--out", "--precision", "--config"):
        assert opt in r.output, opt


def test_layers_table():
    r = runner.invoke(app, ["layers", "--model", "vgg19"])
    assert r.exit_code == 0
    row = next(line.split() for line in r.output.splitlines() if line.startswith("* conv4_4"))
    assert row == ["*", "conv4_4", "features.26", "512", "28", "116", "8", "54"]  # by hand: 48+4=52 after pool3, +4x16
    v16 = runner.invoke(app, ["layers", "--model", "vgg16"]).output
    assert "conv5_3" in v16 and "conv4_4" not in v16


@pytest.mark.parametrize("model", ["vgg11", "vgg13_bn", "vgg19_bn", "alexnet", "zfnet", "resnet18", "resnet34",
                                   "resnet50", "resnet101", "resnet152", "mobilenet_v2", "mobilenet_v3_large",
                                   "mobilenet_v3_small", "googlenet", "densenet121", "efficientnet_b0"])
def test_layers_table_for_every_model(model):
    r = runner.invoke(app, ["layers", "--model", model])
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines() if line.startswith("* ")]
    assert len(rows) >= 5 and all(int(row[3]) > 0 and int(row[5]) >= 1 for row in rows)


def test_unknown_model_and_layer_name_what_exists():
    r = runner.invoke(app, ["layers", "--model", "resnet9"])
    assert r.exit_code == exitcodes.BAD_ARGS and "resnet18" in r.output and "googlenet" in r.output
    from pipeline.models.weights import build_network

    with pytest.raises(ValueError, match="layer4.1"):
        build_network("resnet18").select("layer5")
    assert build_network("resnet18").select("all") == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert build_network("vgg16").select("features.22,conv1_1") == ["conv1_1", "conv4_3"]
    assert build_network("googlenet").select("inception4*")[:2] == ["inception4a.branch1.conv", "inception4a.branch1.bn"]


def test_top_json_is_stable(store):
    r = runner.invoke(app, ["top", str(store), "--layer", "conv3_2", "--feature", "7", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 5  # fewer images than k: only the filled slots
    assert [e["rank"] for e in rows] == list(range(5))
    for e in rows:
        assert {"rank", "value", "path", "y", "x", "box"} <= set(e)
        assert e["path"].startswith("p") and len(e["box"]) == 4
        top, left = e["y"] * 4 - 14, e["x"] * 4 - 14  # conv3_2: R=32 S=4 P=14
        assert e["box"] == [max(top, 0), max(left, 0), min(top + 32, 32), min(left + 32, 32)]
    assert [e["value"] for e in rows] == sorted((e["value"] for e in rows), reverse=True)


def test_info(store):
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0
    assert "vgg16" in r.output and "conv3_2" in r.output and "5 used" in r.output and "complete" in r.output


@pytest.mark.parametrize("args,code,needle", [
    (["--layer", "conv9_9"], exitcodes.BAD_ARGS, "unknown layer 'conv9_9'"),
    (["--model", "resnet7"], exitcodes.BAD_ARGS, "unknown model 'resnet7'"),
    (["--weights", "/nope/w.pth"], exitcodes.MISSING_INPUT, "neither imagenet"),
    (["--device", "tpu"], exitcodes.BAD_ARGS, "unknown device"),
    (["--resize", "stretchy"], exitcodes.BAD_ARGS, "stretchy"),
])
def test_bad_arguments_are_one_line_errors(photos, tmp_path, args, code, needle):
    base = ["run", "--images", str(photos), "--model", "vgg16", "--weights", "random", "--size", "32",
            "--layer", "conv1_1", "--workers", "0", "--out", str(tmp_path / "x.h5"), "--quiet"]
    # later flags win: the case's own --model/--weights override the defaults above
    r = runner.invoke(app, base + args)
    assert r.exit_code == code, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_caltech_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MINE_DATA_ROOT", raising=False)
    r = runner.invoke(app, ["run", "--images", "caltech/dog", "--weights", "random", "--quiet"])
    assert r.exit_code == exitcodes.MISSING_INPUT and "MINE_DATA_ROOT" in r.output
    cats = tmp_path / "256_ObjectCategories"
    for name in ("056.dog", "159.people"):
        (cats / name).mkdir(parents=True)
    r = runner.invoke(app, ["run", "--images", "caltech/dgo", "--data-root", str(tmp_path), "--weights", "random"])
    assert r.exit_code == exitcodes.MISSING_INPUT and "dog" in r.output and "Traceback" not in r.output


def test_config_file_and_flag_override(photos, tmp_path):
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'[run]\nimages = "{photos}"\nmodel = "vgg16"\nweights = "random"\nlayer = "conv1_1"\n'
                   f'size = 32\nworkers = 0\nk = 2\nout = "{tmp_path / "c.h5"}"\n')
    r = runner.invoke(app, ["run", "--config", str(cfg), "--k", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    from pipeline import Store
    with Store(tmp_path / "c.h5") as s:
        assert s.k == 3 and s.layers == ["conv1_1"]
    cfg.write_text('[run]\nimages = "x"\nbatchsize = 3\n')
    r = runner.invoke(app, ["run", "--config", str(cfg)])
    assert r.exit_code == exitcodes.BAD_ARGS and "batchsize" in r.output


def test_shipped_configs_parse():
    from pathlib import Path

    from pipeline.config import load_config
    for f in sorted((Path(__file__).parents[1] / "configs").glob("*.toml")):
        cfg = load_config(f, {"images": "x"})
        assert cfg.k >= 1, f


def test_imagenet_weights_offline_error_names_the_file(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = runner.invoke(app, ["run", "--images", str(photos), "--weights", "imagenet", "--quiet"])
    assert r.exit_code == exitcodes.MISSING_INPUT
    want = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert str(want) in r.output and "https://" in r.output


def test_local_checkpoint_loads_with_its_own_hash(photos, tmp_path):
    import torch

    from pipeline.models.weights import build_model, load_network

    feats = build_model("vgg16", seed=5)[1].features
    full = {f"features.{k}": v for k, v in feats.state_dict().items()}
    full["classifier.0.weight"] = torch.zeros(2, 2)  # a full-model checkpoint: head ignored
    path = tmp_path / "ckpt.pth"
    torch.save(full, path)
    net = load_network("vgg16", str(path), 32)
    for k, v in feats.state_dict().items():
        assert torch.equal(net.model.features.state_dict()[k], v)
    assert net.weights_hash != load_network("vgg16", "random", 32).weights_hash
    assert net.preprocessing_mode == "torchvision"
    r = runner.invoke(app, ["run", "--images", str(photos), "--model", "vgg19", "--weights", str(path),
                            "--layer", "conv1_1", "--quiet"])
    assert r.exit_code == exitcodes.MISSING_INPUT and "do not fit vgg19" in r.output
