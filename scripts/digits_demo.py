"""Offline digits demo: the seeds' digit CNN and convolutional autoencoder, trained here, explored with `mine`.

The data is scikit-learn's bundled 8x8 digits (1,797 images, ``sklearn.datasets.load_digits``,
no download), upsampled to look like MNIST: bicubic to 20 x 20 inside a 4 px black frame, 28 x 28
uint8 (MNIST's digits are 20 px in a 28 px frame). They are blurrier than MNIST: 64 pixels of
information each. The script

1. writes them to ``OUT/digits.npz`` (``images`` (N, 28, 28) uint8, ``labels`` (N,));
2. trains, seeded and deterministic on CPU, on 1,500 of them (297 held out) the two models of
   ``scripts/digits_models.py``: the digit CNN (cross-entropy) and the convolutional autoencoder
   (binary cross-entropy, as seed 002), and saves their state dicts ``OUT/cnn.pth``, ``OUT/ae.pth``;
3. runs the real CLI (``python -m pipeline``, with ``scripts/`` on ``PYTHONPATH`` so that
   ``--model digits_models:cnn`` imports): ``mine layers --size 28``, ``mine run`` over all 1,797
   digits (conv layers; the autoencoder's code and decoder layers too, the code pooled),
   ``mine render``, ``mine embed`` of the code layer (t-SNE coloured by digit, k-NN accuracy of
   trained against random weights; ``mine embed`` maps each code map's average and max, 16
   numbers, so the script also prints the k-NN accuracy of the whole 128-number code, the seed's
   t-SNE input) and ``mine reconstruct`` of a few held-out digits;
4. draws ``OUT/ae_outputs.png``: held-out digits, their codes and the autoencoder's outputs (the
   seed's figure).

    scripts/digits_demo.py [--out out/digits] [--quick]     (--quick: a few steps, for the test)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import digits_models  # noqa: E402

HELD_OUT = 297  # digits kept out of training (1,500 train)
QUICK_IMAGES = 300  # digits mined with --quick
SAMPLES = 5  # held-out digits reconstructed by `mine reconstruct`
CNN_LAYERS = "conv1,conv2,conv3"
AE_LAYERS = "conv1,conv2,code,up1,dec2,dec3"  # encoder, the code, ConvTranspose2d, the conv after an Upsample, output


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0..16) as (1797, 28, 28) uint8 and their labels: each
    bicubic-upsampled to 20 x 20 and framed by 4 black pixels, as MNIST centres 20 px digits in 28."""
    from sklearn.datasets import load_digits

    d = load_digits()
    inner = 20
    out = np.zeros((len(d.images), 28, 28), np.uint8)
    for i, a in enumerate(d.images):
        up = Image.fromarray((a / 16).astype(np.float32), mode="F").resize((inner, inner), Image.Resampling.BICUBIC)
        out[i, 4:4 + inner, 4:4 + inner] = np.round(np.clip(np.asarray(up), 0, 1) * 255).astype(np.uint8)
    return out, d.target.astype(np.int64)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out indices."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[HELD_OUT:]), np.sort(order[:HELD_OUT])


def _batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i:i + size] for i in range(0, n, size)]


def train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn, epochs: int, seed: int,  # noqa: PLR0913
          steps: int | None = None, lr: float = 2e-3, batch: int = 32) -> nn.Module:
    """Adam over shuffled mini-batches (seeded); ``steps`` stops early (the test's short run)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    done = 0
    for _ in range(epochs):
        for idx in _batches(len(x), batch, gen):
            opt.zero_grad()
            loss_fn(model(x[idx]), target[idx]).backward()
            opt.step()
            done += 1
            if steps is not None and done >= steps:
                return model.eval()
    return model.eval()


def to_input(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> (N, 1, 28, 28) normalised as the model's ``preprocessing`` says."""
    return (torch.from_numpy(images).float().div(255).unsqueeze(1) - mean) / std


def cli(*args: str) -> None:
    """``mine ARGS`` as a user runs it (this Python, ``scripts/`` importable for ``digits_models``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(HERE.parent), env.get("PYTHONPATH")) if p)
    print("$ mine " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, env=env)


def ae_figure(ae: nn.Module, images: np.ndarray, path: Path, zoom: int = 4) -> None:
    """The seed's figure, one column per digit: the digit, its code (the 8 maps of 4 x 4, 4 rows x 2
    columns, each map 3x enlarged, the code scaled to its own max) and the autoencoder's output."""
    x = to_input(images, 0.0, 1.0)
    with torch.no_grad():
        code = digits_models.encoder(ae)(x)
        out = ae(x)
    code = code / code.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    maps = code.repeat_interleave(3, 2).repeat_interleave(3, 3)  # (N, 8, 12, 12)
    cell, gap = 28, 2
    tall = 4 * 12 + 3  # the code cell: 4 rows of maps, 1 px apart
    canvas = np.full((2 * cell + tall + 2 * gap, len(x) * (cell + gap) - gap), 255, np.uint8)
    for i in range(len(x)):
        left = i * (cell + gap)
        canvas[:cell, left:left + cell] = (x[i, 0] * 255).round()
        canvas[cell + gap:cell + gap + tall, left:left + cell] = 0
        for m in range(8):
            top, col = cell + gap + (m // 2) * 13, left + 1 + (m % 2) * 14
            canvas[top:top + 12, col:col + 12] = (maps[i, m] * 255).round()
        canvas[cell + tall + 2 * gap:, left:left + cell] = (out[i, 0].clamp(0, 1) * 255).round()
    Image.fromarray(canvas).resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.Resampling.NEAREST).save(path)


def flat_code_knn(images: np.ndarray, labels: np.ndarray, weights: Path) -> dict[str, float]:
    """5-NN accuracy (``mine embed``'s rule) of the seed's t-SNE input, the code flattened to 128
    numbers, for the trained and for ``mine``'s random weights, and of the raw pixels: ``mine embed``
    pools each code map over its 4 x 4 positions, which loses where a stroke is."""
    from pipeline.analyses.embed import knn_accuracy
    from pipeline.models.weights import load_network

    cats = [str(v) for v in labels]
    res = {}
    for name, w in (("trained", str(weights)), ("random", "random")):
        net = load_network("digits_models:autoencoder", w, 28)
        with torch.no_grad():
            res[name] = knn_accuracy(digits_models.encoder(net.model)(to_input(images, 0.0, 1.0)).flatten(1).numpy(), cats)
    res["pixels"] = knn_accuracy(images.reshape(len(images), -1).astype(np.float32), cats)
    return res


def train_both(images: np.ndarray, labels: np.ndarray, out: Path, a: argparse.Namespace) -> dict:
    """Train the CNN and the autoencoder on the training split, save ``cnn.pth`` / ``ae.pth`` and the
    seed's figure; returns the held-out CNN accuracy and autoencoder losses."""
    tr, te = split(len(images), a.seed)
    steps = 20 if a.quick else None
    res: dict = {}
    t = time.perf_counter()
    cnn = digits_models.cnn()
    x, y = to_input(images, digits_models.MEAN, digits_models.STD), torch.from_numpy(labels)
    train(cnn, x[tr], y[tr], nn.functional.cross_entropy, a.cnn_epochs, a.seed, steps)
    with torch.no_grad():
        res["cnn_accuracy"] = float((cnn(x[te]).argmax(1) == y[te]).float().mean())
    torch.save(cnn.state_dict(), out / "cnn.pth")
    print(f"CNN: {len(tr)} digits, {a.cnn_epochs} epochs: held-out accuracy {res['cnn_accuracy']:.1%} "
          f"on {len(te)} digits ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    ae = digits_models.autoencoder()
    x01 = to_input(images, 0.0, 1.0)
    train(ae, x01[tr], x01[tr], nn.functional.binary_cross_entropy, a.ae_epochs, a.seed, steps)
    with torch.no_grad():
        res["ae_bce"] = float(nn.functional.binary_cross_entropy(ae(x01[te]), x01[te]))
        res["ae_mse"] = float(nn.functional.mse_loss(ae(x01[te]), x01[te]))
    torch.save(ae.state_dict(), out / "ae.pth")
    print(f"autoencoder: {a.ae_epochs} epochs: held-out BCE {res['ae_bce']:.4f}, MSE {res['ae_mse']:.4f} "
          f"({time.perf_counter() - t:.0f} s)")
    res["held_out_firsts"] = [int(te[labels[te] == d][0]) for d in range(10)]  # one held-out digit of each class
    ae_figure(ae, images[res["held_out_firsts"]], out / "ae_outputs.png")
    return res


def explore(out: Path, npz: Path, mined: int, samples: list[Path], quick: bool) -> None:
    """The CLI on both models, as a user types it (see the module doc)."""
    common = ["--size", "28", "--device", "cpu"]
    cli("layers", "--model", "digits_models:cnn", "--size", "28")
    cli("layers", "--model", "digits_models:autoencoder", "--size", "28")
    run = ["run", "--images", str(npz), "--limit", str(mined), "--workers", "0", "--force", "--quiet",
           "--log", str(out / "mine-runs.jsonl")]
    cli(*run, "--model", "digits_models:cnn", "--weights", str(out / "cnn.pth"), "--layer", CNN_LAYERS,
        "--out", str(out / "cnn.h5"), *common)
    cli(*run, "--model", "digits_models:autoencoder", "--weights", str(out / "ae.pth"), "--layer", AE_LAYERS,
        "--pooled", "code", "--out", str(out / "ae.h5"), *common)
    features = ["--features", "0-1", "--overview", "4"] if quick else ["--overview", "16"]
    cli("render", str(out / "cnn.h5"), "--out", str(out / "render-cnn"), "--quiet", "--device", "cpu", *features)
    cli("render", str(out / "ae.h5"), "--out", str(out / "render-ae"), "--quiet", "--device", "cpu", *features)
    cli("embed", str(out / "ae.h5"), "--layer", "code", "--pool", "both", "--baseline", str(mined),
        "--out", str(out / "embed"), "--device", "cpu")
    cli("reconstruct", *map(str, samples), "--model", "digits_models:autoencoder", "--weights", str(out / "ae.pth"),
        "--layer", AE_LAYERS, "--out", str(out / "reconstruct-ae"), *common)
    cli("reconstruct", *map(str, samples), "--model", "digits_models:cnn", "--weights", str(out / "cnn.pth"),
        "--layer", CNN_LAYERS, "--out", str(out / "reconstruct-cnn"), *common)


def demo(a: argparse.Namespace) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images, labels = digits_28()
    npz = out / "digits.npz"
    np.savez(npz, images=images, labels=labels)
    mean, std = images.mean() / 255, images.std() / 255
    assert abs(mean - digits_models.MEAN) < 1e-3 and abs(std - digits_models.STD) < 1e-3, (mean, std)
    print(f"data: scikit-learn's {len(images)} 8x8 digits upsampled to 28 px (bicubic to 20 px in a 4 px frame, "
          f"as MNIST) -> {npz}; pixel mean {mean:.4f}, std {std:.4f}")
    res = train_both(images, labels, out, a)
    res["train_s"] = time.perf_counter() - start
    print(f"training in all {res['train_s']:.0f} s")
    (out / "samples").mkdir(exist_ok=True)
    samples = [out / "samples" / f"digit{d}.png" for d in range(SAMPLES)]
    for d, path in enumerate(samples):
        Image.fromarray(images[res["held_out_firsts"][d]]).save(path)
    explore(out, npz, QUICK_IMAGES if a.quick else len(images), samples, a.quick)
    flat = flat_code_knn(images, labels, out / "ae.pth")
    res.update({f"flat_knn_{k}": v for k, v in flat.items()})
    print(f"for comparison (computed by this script, mine embed's 5-NN rule): the code flattened to 128 numbers, "
          f"as the seed's t-SNE takes it: {flat['trained']:.1%} trained, {flat['random']:.1%} random weights; "
          f"raw pixels {flat['pixels']:.1%}")
    res["total_s"] = time.perf_counter() - start
    print(f"\ndigits demo finished in {res['total_s']:.0f} s (training {res['train_s']:.0f} s): pictures in {out}/")
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/digits", help="output folder (default out/digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cnn-epochs", type=int, default=8)
    p.add_argument("--ae-epochs", type=int, default=30)
    p.add_argument("--quick", action="store_true",
                   help="20 training steps per model, the first 300 digits mined, fewer pictures (the test)")
    a = p.parse_args(argv)
    was = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):  # seeded here, the caller's random state untouched
        torch.manual_seed(a.seed)
        torch.use_deterministic_algorithms(True)
        try:
            return demo(a)
        finally:
            torch.use_deterministic_algorithms(was)


if __name__ == "__main__":
    main()
