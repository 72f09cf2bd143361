"""The `mine` command: a thin typer layer over the Python API.

Every failure a user can cause ends as one line on stderr and a documented exit
code (see ``exitcodes``), never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import exitcodes
from .store.schema import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mine the top-k activations of every feature map of a CNN and render deconvnet montages.")


def fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def classify(e: BaseException) -> int:
    """Exit code for a known failure, None for a bug (which should show its traceback)."""
    from .data import SourceError
    from .mining.finalize import ReproduceError
    from .models.errors import WeightsError

    if isinstance(e, (SourceError, WeightsError, FileNotFoundError)):
        return exitcodes.MISSING_INPUT
    if isinstance(e, StoreError):
        return exitcodes.STORE_ERROR
    if isinstance(e, ReproduceError):
        return exitcodes.FAILED
    if isinstance(e, (ValueError, KeyError)):
        return exitcodes.BAD_ARGS
    if isinstance(e, OSError):
        return exitcodes.STORE_ERROR
    return None


def guarded(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", exitcodes.INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - mapped to one line + exit code below
        code = classify(e)
        if code is None:
            raise
        fail(str(e).strip("'\""), code)


@app.command()
def run(
    layer: Optional[str] = typer.Option(None, help="Layer(s): conv4_4 | conv4_4,conv5_2 | all | 'conv*'. Default conv4_4."),
    images: Optional[str] = typer.Option(None, help="Folder, text file of paths, glob, or caltech/<category|number|all>."),
    model: Optional[str] = typer.Option(None, help="vgg19 (default) or vgg16."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default) | hed (offline VGG16) | random | PATH to a checkpoint."),
    k: Optional[int] = typer.Option(None, help="Entries kept per channel (default 9)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass (default 32)."),
    workers: Optional[int] = typer.Option(None, help="Decoding worker processes (default 2; 0 = in-process)."),
    device: Optional[str] = typer.Option(None, help="auto (default) | cpu | cuda."),
    size: Optional[int] = typer.Option(None, help="Network input size in pixels (default 224)."),
    resize: Optional[str] = typer.Option(None, help="center-crop (default: shorter side to SIZE, centre crop) | squash | pad."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images (in path order)."),
    data_root: Optional[str] = typer.Option(None, help="Caltech-256 root (else $MINE_DATA_ROOT or the config)."),
    out: Optional[str] = typer.Option(None, help="Store path (default mine-<model>-<layers>-<images>.h5)."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) | bf16 | fp16 for the streaming pass; finalize is float32."),
    config: Optional[Path] = typer.Option(None, help="TOML file with any of these options; flags override it."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Stream images through the model and store each channel's top-k activations."""
    from .config import load_config
    from .run import run as run_job

    overrides = dict(layer=layer, images=images, model=model, weights=weights, k=k, batch_size=batch_size,
                     workers=workers, device=device, size=size, resize=resize, limit=limit,
                     data_root=data_root, out=out, precision=precision)
    cfg = guarded(load_config, config, overrides)
    cfg.progress = not quiet
    result = guarded(run_job, cfg)
    typer.echo(result.summary())


@app.command()
def layers(
    model: str = typer.Option("vgg19", help="vgg19 or vgg16."),
    size: int = typer.Option(224, help="Input size used for output sizes."),
) -> None:
    """List layer names with channels, receptive field R, stride S, padding P and output size."""
    from .models.network import Network
    from .models.vgg import build_features

    net = guarded(lambda: Network(model, build_features(model), "none", "", "torchvision", size))
    typer.echo(f"{'layer':<9}{'channels':>9}{'R':>6}{'S':>5}{'P':>5}{'out':>6}")
    for li in net.layers.values():
        typer.echo(f"{li.name:<9}{li.channels:>9}{li.rf:>6}{li.stride:>5}{li.padding:>5}{li.out_size:>6}")


@app.command()
def info(store: Path = typer.Argument(..., help="A store written by `mine run`.")) -> None:
    """Show what a store holds."""
    from .store.read import Store

    with guarded(Store, store) as s:
        a = s.attrs
        st = s.images()["status"]
        st = [x.decode() if isinstance(x, bytes) else x for x in st]
        typer.echo(f"store        {s.path}")
        typer.echo(f"status       {a.get('status')}")
        typer.echo(f"model        {a['model']}  weights {a['weights']}  hash {a['weights_hash'][:16]}")
        typer.echo(f"preprocess   {json.dumps(a['preprocessing'])}  precision {a.get('precision')}")
        typer.echo(f"images       {a['images_spec']}: {len(st)} files, {st.count('ok')} used, "
                   f"{sum(x.startswith('skipped') for x in st)} skipped, {st.count('duplicate')} duplicate")
        typer.echo(f"k            {s.k}   kept images {len(s.f['kept/key'])}")
        for name in s.layers:
            li = s.layer_info(name)
            typer.echo(f"layer        {name:<8} {li['channels']:>4} channels  R={li['rf']} S={li['stride']} P={li['padding']}")
        typer.echo(f"created      {a.get('created')}  mine {a['versions'].get('mine')}")


@app.command()
def top(
    store: Path = typer.Argument(..., help="A store written by `mine run`."),
    layer: Optional[str] = typer.Option(None, help="Layer (default: the store's only/first layer)."),
    feature: int = typer.Option(..., help="Channel index."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of entries (stable format)."),
) -> None:
    """List a channel's kept entries (rank, value, image, position, receptive-field box)."""
    from .store.read import Store

    with guarded(Store, store) as s:
        name = layer or s.layers[0]
        entries = guarded(s.entries, name, feature)
        if as_json:
            sys.stdout.write(json.dumps([e.to_json() for e in entries]) + "\n")
            return
        for e in entries:
            typer.echo(f"{e.rank:>3} {e.value:>12.5g}  y={e.y:<3} x={e.x:<3} box={list(e.box)}  {e.path}")


def main() -> None:  # pragma: no cover
    app()
