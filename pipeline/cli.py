"""The `mine` command: a thin typer layer over the Python API.

Every failure a user can cause ends as one line on stderr and a documented exit
code (see ``exitcodes``), never a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from . import exitcodes
from .config import check_size
from .deconv.rules import AUTO_STRIDED, DEFAULT_METHOD, METHODS
from .models.registry import DEFAULT_MODEL, MODELS
from .runner import RunConfig
from .store.schema import StoreError


class _FlagsTakeNoValue:
    """Typer's rich help shows a flag's type as if it took a value (``--json <bool>``, ``--help <bool>``);
    a flag takes none, so its metavar is empty."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class _Command(_FlagsTakeNoValue, typer.core.TyperCommand):
    def collect_usage_pieces(self, ctx) -> list[str]:
        """The usage line in click's convention: a required argument as its metavar (``STORE``), an
        optional one in brackets (``[STORE]``), a repeated one with ``...`` once (typer writes
        ``{STORE}``, and ``[[STORE]]`` for an optional metavar written with its brackets)."""
        rv = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if not isinstance(p, typer.core.TyperArgument):
                rv.extend(p.get_usage_pieces(ctx))
                continue
            name = p.metavar or p.name.upper()
            if p.nargs != 1 and "..." not in name:
                name += "..."
            rv.append(name if p.required else f"[{name}]")
        return rv


class _Group(_FlagsTakeNoValue, typer.core.TyperGroup):
    pass


class _Typer(typer.Typer):
    def command(self, *args, cls=None, **kw):
        """Every command's help in the same grammar (``_Command``)."""
        return super().command(*args, cls=cls or _Command, **kw)


app = _Typer(add_completion=False, no_args_is_help=True, cls=_Group,
                  help="Mine the top-k activations of every feature map of a CNN and render deconvnet montages.")


# Help texts that list models or methods come from their registries, so they cannot go stale.
MODEL_HELP = f"Model: {' | '.join(MODELS)} | package.module:factory (`mine layers --model M` lists its layers)."
_METHOD_NOTES = {"guided": "guided backprop", "deconvnet": "Zeiler & Fergus, exactly", "gradient": "saliency",
                 "excitation_backprop": "LRP z+ everywhere", "epsilon_plus_flat": "LRP, flat first layer"}
METHOD_HELP = "Projection: " + " | ".join(f"{m} ({_METHOD_NOTES[m]})" if m in _METHOD_NOTES else m for m in METHODS) + "."
RENDER_METHOD_HELP = (f"Projection: {DEFAULT_METHOD} (guided where the model's first layer has stride 1, e.g. VGG; "
                      f"{AUTO_STRIDED} where it is strided, e.g. MobileNetV2, ResNet) | " + METHOD_HELP[len("Projection: "):])
WEIGHTS_HELP = "imagenet | hed (offline VGG16) | random | PATH to a state dict."
STORE_HELP = "A store written by `mine run`."


class _StderrLines(logging.Handler):
    """The library's warnings as ``warning: ...`` lines on stderr (looked up per record, so
    whatever stderr is current, a test runner's included, gets them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


@app.callback()
def _setup() -> None:
    from .allocator import keep_freed_memory

    keep_freed_memory()  # CPU forward passes at up to half the cost (allocator.py says why)
    logger = logging.getLogger("pipeline")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines(logging.WARNING))
    from .faults import pause_point

    pause_point("command")  # tests: a command about to start, under the process's signal handler


def fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def classify(e: BaseException) -> int:
    """Exit code for a known failure, None for a bug (which should show its traceback)."""
    from .data import SourceError
    from .job_errors import (
        CheckpointError,
        CheckpointMismatch,
        IncompatibleError,
        Interrupted,
        LockedError,
        SourceChanged,
        StoreExistsError,
        WriteError,
    )
    from .mining.finalize import KeptImagesChanged, ReproduceError
    from .models.weights_error import WeightsError

    if isinstance(e, LockedError):
        return exitcodes.LOCKED
    if isinstance(e, Interrupted):
        return exitcodes.INTERRUPTED
    if isinstance(e, (StoreExistsError, IncompatibleError, CheckpointMismatch)):
        return exitcodes.BAD_ARGS
    if isinstance(e, (CheckpointError, WriteError)):
        return exitcodes.STORE_ERROR
    if isinstance(e, (SourceError, WeightsError, FileNotFoundError, SourceChanged, KeptImagesChanged)):
        return exitcodes.MISSING_INPUT
    if isinstance(e, StoreError):
        return exitcodes.STORE_ERROR
    if isinstance(e, ReproduceError):
        return exitcodes.FAILED
    if out_of_memory(e):
        return exitcodes.BAD_ARGS
    if isinstance(e, (ValueError, KeyError)):
        return exitcodes.BAD_ARGS
    if isinstance(e, OSError):
        return exitcodes.STORE_ERROR
    return None


def out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU allocator's RuntimeError."""
    import torch

    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def message(e: BaseException) -> str:
    """The one line for a mapped failure: a KeyError without the quotes ``str`` adds (and nothing else
    stripped: a message may end in a quote), out of memory with what to change."""
    if out_of_memory(e):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"out of memory ({first.rstrip('. ')}): use a smaller --batch-size or --size"
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    return str(e).strip()


def guarded(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", exitcodes.INTERRUPTED)
    except Exception as e:
        code = classify(e)
        if code is None:
            raise
        fail(message(e), code)


PREP_HELP = "Preprocessing preset: torchvision (RGB, ImageNet mean/std) | caffe (BGR, 0..255 minus the mean pixel)."
PREP_DEFAULT = "the weights' own: caffe for hed, else the model's preprocessing attribute, else torchvision"
CHANNELS_HELP = "Input channels the network was trained with: 1 (images converted to grey) or 3 (RGB)."
MEAN_HELP = "Mean per channel subtracted from pixels in [0, 1], e.g. 0.1307 or 0.485,0.456,0.406."
STD_HELP = "Std per channel dividing pixels in [0, 1] after the mean, e.g. 0.3081."
# `mine run`'s defaults are RunConfig's (the Python API's): one source, shown as typer's [default: ...].
RUN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _given(ctx: typer.Context, values: dict) -> dict:
    """The options given on the command line (a config file's values stand unless a flag overrides them)."""
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"}


def _prep(preprocessing, channels, mean, std):
    from .data.preprocess import options

    return options(preprocessing, channels, mean, std)


@app.command()
def run(
    ctx: typer.Context,
    layer: str = typer.Option(RUN_DEFAULTS["layer"], help="Layer(s): conv4_4 | conv4_4,conv5_2 | all | 'conv*' (names or module paths; see `mine layers`)."),
    images: Optional[str] = typer.Option(None, help="Folder, text file of paths, glob, caltech/<category|number|all>, "
                                         "an array file (.npz with images[, labels], .npy, MNIST *-images-idx3-ubyte[.gz]) "
                                         "or package.module:factory returning a torch Dataset."),
    model: str = typer.Option(RUN_DEFAULTS["model"], help=MODEL_HELP),
    weights: str = typer.Option(RUN_DEFAULTS["weights"], help=WEIGHTS_HELP),
    k: int = typer.Option(RUN_DEFAULTS["k"], help="Entries kept per channel."),
    batch_size: int = typer.Option(RUN_DEFAULTS["batch_size"], help="Images per forward pass."),
    workers: int = typer.Option(RUN_DEFAULTS["workers"], help="Decoding worker processes (0 = in-process)."),
    device: str = typer.Option(RUN_DEFAULTS["device"], help="auto | cpu | cuda."),
    size: int = typer.Option(RUN_DEFAULTS["size"], help="Network input size in pixels."),
    resize: str = typer.Option(RUN_DEFAULTS["resize"], help="center-crop (shorter side to SIZE, centre crop) | squash | pad."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images (in path order).", show_default="all"),
    data_root: Optional[str] = typer.Option(None, help="Caltech-256 root.", show_default="$MINE_DATA_ROOT or the config"),
    out: Optional[str] = typer.Option(None, help="Store path.", show_default="mine-<model>-<layers>-<images>.h5"),
    precision: str = typer.Option(RUN_DEFAULTS["precision"], help="fp32 | bf16 | fp16 for the streaming pass; finalize is float32."),
    config: Optional[Path] = typer.Option(None, help="TOML file with any of these options; flags override it."),
    update: Optional[str] = typer.Option(None, metavar="STORE", help="Extend STORE: mine only images whose content it does not hold, merge exactly, rewrite it atomically (created if missing). Output is STORE unless --out is given."),
    force: bool = typer.Option(False, "--force", help="Replace an existing complete store (without it, an existing store is refused)."),
    rehash: bool = typer.Option(False, "--rehash", help="With --update: read and hash every file, also those whose size, mtime and ctime match the store's record (by default those are not read)."),
    checkpoint_every: str = typer.Option(RUN_DEFAULTS["checkpoint_every"], help="Checkpoint the streaming pass every N batches (50) or every period (90s, 5m, 1h). Always on SIGINT/SIGTERM and before finalize."),
    discard_checkpoint: bool = typer.Option(False, "--discard-checkpoint", help="Delete STORE.ckpt instead of resuming from it."),
    log: Optional[str] = typer.Option(None, help="Append the JSON-lines run record here.", show_default="mine-runs.jsonl next to the store"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    pooled: Optional[str] = typer.Option(None, help="Also store per image the global average and max of these layer(s) (float16, /images/pooled_<L>) for `mine embed`."),
    preprocessing: Optional[str] = typer.Option(None, help=PREP_HELP, show_default=PREP_DEFAULT),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
) -> None:
    """Stream images through the model and store each channel's top-k activations.

    Safe to schedule: re-running the same command after a crash or kill resumes from
    STORE.ckpt; STORE.lock keeps two jobs off one store; exit codes: 0 ok, 2 bad
    arguments, 3 missing images/weights, 4 locked, 5 interrupted (resumable),
    6 store unwritable/corrupt/disk full, 7 a check failed.
    """
    from .config import load_config
    from .jobs.record import JobStats
    from .runner import run as run_job

    overrides = _given(ctx, dict(layer=layer, images=images, model=model, weights=weights, k=k, batch_size=batch_size,
                     workers=workers, device=device, size=size, resize=resize, limit=limit,
                     data_root=data_root, out=out, precision=precision, update=update, force=force or None, rehash=rehash or None,
                     checkpoint_every=checkpoint_every, discard_checkpoint=discard_checkpoint or None, log=log,
                     quiet=quiet or None, pooled=pooled, preprocessing=preprocessing, channels=channels, mean=mean,
                     std=std))
    stats = JobStats(command="run", store=out or update)
    loaded = {}

    def job(stats):
        cfg = load_config(config, overrides)
        loaded["cfg"] = cfg
        stats.store = stats.store or cfg.out or cfg.update
        return run_job(cfg, stats=stats)

    result = _recorded(job, stats, lambda: log or getattr(loaded.get("cfg"), "log", None))
    from .jobs.distributed import is_secondary

    if not is_secondary():
        typer.echo(result.summary())


def _recorded(job, stats, log_path):
    """Run ``job(stats)`` and append its run record (one JSON line) whatever the outcome:
    success, a mapped failure (one line on stderr + its exit code) or a bug (traceback)."""
    import time

    from .jobs.distributed import is_secondary
    from .jobs.record import append_record, default_log, make_record

    t0 = time.perf_counter()
    code, msg = exitcodes.OK, None
    try:
        return job(stats)
    except KeyboardInterrupt as e:
        code, msg = exitcodes.INTERRUPTED, str(e) or "interrupted"
    except Exception as e:
        code = classify(e)
        if code is None:
            code, msg = 1, f"{type(e).__name__}: {e}"
            raise
        msg = message(e)
    finally:
        # Next to the store; a run that failed before it knew its store (no --out, e.g. images
        # not found) has nowhere sensible to log unless --log was given.
        target = log_path() or (default_log(stats.store) if stats.store else None)
        if target and not is_secondary():  # a torchrun job's record is written by rank 0
            append_record(target, make_record(stats, code, msg, time.perf_counter() - t0))
    fail(msg, code)


@app.command()
def merge(
    stores: list[Path] = typer.Argument(..., metavar="STORE...", help="Two or more stores of the same model, weights, preprocessing, k and layers."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged store (may be one of the inputs)."),
    weights: Optional[str] = typer.Option(None, help="Weights file if it moved since mining (its hash must match)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (finalize re-runs the kept images)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing store at --out."),
    log: Optional[str] = typer.Option(None, help="Append the JSON-lines run record here.",
                                      show_default="mine-runs.jsonl next to --out"),
) -> None:
    """Merge stores of disjoint or overlapping image sets into one, equal to one run over the union."""
    from .jobs.merge import merge_stores
    from .jobs.record import JobStats

    stats = JobStats(command="merge", store=str(out))
    result = _recorded(lambda st: merge_stores(stores, out, weights=weights, device=device, force=force, stats=st),
                       stats, lambda: log)
    typer.echo(result.summary())


@app.command()
def layers(
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    size: int = typer.Option(224, help="Input size used for output sizes."),
    every: bool = typer.Option(False, "--every", help="Every module output, not only what --layer all mines."),
    preprocessing: Optional[str] = typer.Option(None, help=PREP_HELP, show_default=PREP_DEFAULT),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
) -> None:
    """List layers: name, module path, channels, output size, receptive field R, stride S, padding P.

    Rows marked * are what `--layer all` mines; any listed name or module path can be mined.
    """
    from .models.weights import build_network

    guarded(check_size, size)
    net = guarded(lambda: build_network(model, size, _prep(preprocessing, channels, mean, std)))
    default = set(net.default or net.layers)
    rows = [li for li in net.layers.values() if every or li.name in default]
    width = max([len(li.name) for li in rows] + [5]) + 2
    mwidth = max([len(li.module) for li in rows] + [6]) + 2
    typer.echo(f"  {'layer':<{width}}{'module':<{mwidth}}{'channels':>9}{'out':>6}{'R':>6}{'S':>6}{'P':>5}")
    for li in rows:
        mark = "*" if li.name in default else " "
        typer.echo(f"{mark} {li.name:<{width}}{li.module:<{mwidth}}{li.channels:>9}{li.out_size:>6}"
                   f"{li.rf:>6}{li.geometry.stride_text:>6}{li.padding:>5}")
    if any(li.geometry.period > 1 for li in rows):
        typer.echo("(S = a/b: decoder layer, boxes repeat every b units, a pixels on; each unit's box is exact, "
                   "R the largest, P minus the top of unit 0's box)")
    if not every:
        typer.echo(f"({len(rows)} of {len(net.layers)} layers; --every lists all module outputs)")


@app.command()
def info(store: Path = typer.Argument(..., metavar="STORE", help=STORE_HELP)) -> None:
    """Show what a store holds."""
    from .store.read import Store

    with guarded(Store, store) as s:
        a = s.attrs
        n = s.image_counts()  # from attributes: no /images rows read
        typer.echo(f"store        {s.path}")
        typer.echo(f"status       {a.get('status')}")
        typer.echo(f"model        {a['model']}  weights {a['weights']}  hash {a['weights_hash'][:16]}")
        typer.echo(f"preprocess   {json.dumps(a['preprocessing'])}  precision {a.get('precision')}")
        typer.echo(f"images       {a['images_spec']}: {n['files']} files, {n['ok']} used, "
                   f"{n['skipped']} skipped, {n['duplicate']} duplicate")
        typer.echo(f"k            {s.k}   kept images {s.n_kept}")
        w = max([len(n) for n in s.layers] + [8])  # the layer columns line up whatever the names' lengths
        for name in s.layers:
            li, geo = s.layer_info(name), s.geometry(name)
            typer.echo(f"layer        {name:<{w}} {li['channels']:>4} channels  R={geo.rf} S={geo.stride_text} P={geo.padding}")
        if a.get("pooled"):
            typer.echo(f"pooled       {', '.join(a['pooled'])} (average and max per image, for `mine embed`)")
        labels = s.labels()
        if labels is not None:
            typer.echo(f"labels       {sum(map(bool, labels))} of {len(labels)} images, {len(set(labels) - {''})} "
                       f"categories (`mine embed` colours by them)")
        _echo_unit_stats(s, n["ok"], w)
        _echo_border_units(s, w)
        typer.echo(f"created      {a.get('created')}  mine {(a.get('versions') or {}).get('mine')}")


def _echo_border_units(s, w: int) -> None:
    """``mine info``'s border lines: per layer, the units whose top entries sit at one edge position."""
    from .store.read import border_places

    for name in s.layers:
        places = border_places(s.arrays(name), int(s.layer_info(name)["out_size"]))
        units = sorted(places)
        shown = ", ".join(f"{c} at ({places[c][0]}, {places[c][1]})" for c in units[:8]) + (", ..." if len(units) > 8 else "")
        typer.echo(f"border units {name:<{w}} {len(units):>4}" + (f"  ({shown})" if len(units) else ""))


def _echo_unit_stats(s, used: int, w: int) -> None:
    """``mine info``'s statistics lines: images counted, and the dead units of each layer."""
    if not s.has_stats():
        typer.echo("statistics   no statistics (store written before mine kept unit statistics)")
        return
    n = s.stats_images()
    note = f" ({n - used} counted twice: see mine merge in docs/scaling.md)" if n != used else ""
    typer.echo(f"statistics   activation histograms over {n} images{note}")
    summaries = {name: s.unit_stats(name) for name in s.layers}
    if None in summaries.values():  # counted into other bins than this mine's (the Store's warning says which)
        typer.echo("dead units   unknown: the statistics are of another bins version (mine run --force rebuilds them)")
        return
    for name, u in summaries.items():
        dead = u.dead
        shown = ", ".join(map(str, dead[:20])) + (", ..." if len(dead) > 20 else "")
        typer.echo(f"dead units   {name:<{w}} {len(dead):>4}" + (f"  ({shown})" if dead else ""))


def plural(n: int, word: str) -> str:
    """``1 unit``, ``2 units``."""
    return f"{n} {word}{'s' * (n != 1)}"


def _store_layer(store: Path, layer: Optional[str]) -> str:
    """The store's name of ``--layer`` (a name or module path), or the one-line error."""
    from .store.read import Store

    with guarded(Store, store) as s:
        return guarded(s.layer_name, layer)


def source_file(root: str, path: str) -> str:
    """A stored image path that opens as it is: absolute paths stay, relative ones join the images root."""
    p = Path(path)
    return str(p if p.is_absolute() or not root else Path(root) / p)


@app.command()
def top(
    store: Path = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    layer: Optional[str] = typer.Option(None, help="Layer, by name or module path (needed when the store has several).",
                                        show_default="the store's only layer"),
    feature: int = typer.Option(..., help="Channel index."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of entries (stable format; `file` is the "
                                 "image path joined to the store's images root, openable as it is)."),
) -> None:
    """List a channel's kept entries (rank, value, image, position, receptive-field box); says when the unit
    is dead or a border unit."""
    from .store.read import Store, border_places, live_units

    with guarded(Store, store) as s:
        name = guarded(s.layer_name, layer)
        entries = guarded(s.entries, name, feature)
        if as_json:
            root = str(s.attrs.get("images_root") or "")
            rows = [dict(e.to_json(), images_root=root, file=source_file(root, e.path)) for e in entries]
            sys.stdout.write(json.dumps(rows) + "\n")
            return
        a = s.arrays(name)
        if not live_units(a)[feature]:
            typer.echo(f"unit {feature} of {name} is dead: " + (
                f"every kept value is <= 0, so the {len(entries)} images below are ties, not what the unit sees"
                if entries else "it kept no entry"))
        elif feature in (places := border_places(a, int(s.layer_info(name)["out_size"]))):
            y, x, there, n = places[feature]
            which = "every entry" if there == n else f"{there} of {n} entries"
            typer.echo(f"unit {feature} of {name} is a border unit: {which} at (y, x) = ({y}, {x}) on the map's "
                       f"edge, a response to the image border more than to the images")
        for e in entries:
            typer.echo(f"{e.rank:>3} {e.value:>12.5g}  y={e.y:<3} x={e.x:<3} box={list(e.box)}  {e.path}")


def only_store(folder: Path) -> Path:
    """The one store (``*.h5`` of format mine-store) in ``folder``; otherwise an error naming the candidates."""
    from .store.read import is_store

    found = sorted(p for p in folder.glob("*.h5") if is_store(p))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"no store (*.h5 of format mine-store) in {folder}: give one, mine render STORE")
    raise ValueError(f"{len(found)} stores in {folder}: give one of " + ", ".join(p.name for p in found))


@app.command()
def render(
    store_arg: Optional[Path] = typer.Argument(None, metavar="STORE", help=STORE_HELP,
                                               show_default="the one store in the current folder"),
    store: Optional[Path] = typer.Option(None, "--store", hidden=True, help="The store (old spelling of the argument)."),
    layer: Optional[str] = typer.Option(None, help="Layer(s), by name or module path: conv4_3 | conv4_3,conv5_1 | 'conv5_*'.",
                                        show_default="every layer in the store"),
    feature: Optional[str] = typer.Option(None, "--feature", "--features", help="Channel(s): 171 | 0-63,171.",
                                          show_default="every channel"),
    out: Optional[Path] = typer.Option(None, help="Output folder.", show_default="<stem>-render next to the store"),
    weights: Optional[str] = typer.Option(None, help="Weights; must match the store's weights hash.",
                                          show_default="the store's"),
    method: str = typer.Option(DEFAULT_METHOD, help=RENDER_METHOD_HELP),
    crop: str = typer.Option("effective", help="effective: each tile is the square holding 90% of its feature map's projection energy (at least 32 px) | rf: the whole theoretical receptive field (Zeiler & Fergus)."),
    shifts: Optional[int] = typer.Option(None, help="Average each projection over the N x N one-pixel moves of the image (cancels a strided stem's grid: MobileNetV2 and ResNet have stride 2, VGG 1).",
                                         show_default="the stride of the model's first layer for every method but the deconvnet, 1 for the deconvnet"),
    contrast: str = typer.Option("robust", help="robust: per tile, a high percentile of |x| sets the scale (clipped "
                                 "beyond) | max: per tile, max |x| | shared: one robust scale per montage."),
    show: str = typer.Option("patch", help="Beside the projections: patch (the crop of the image) | heatmap (the unit's "
                             "activation over the whole image, top-quantile region outlined) | both."),
    quantile: float = typer.Option(0.99, help="Heatmap level: the unit's activation quantile over all positions."),
    shared_scale: bool = typer.Option(False, "--shared-scale", hidden=True, help="Deprecated: --contrast shared."),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write float32 (k,3,T,T) projections as .npy (the crop's own pixels, never resampled) and each tile's box in input pixels (_box_C.npy)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: Optional[int] = typer.Option(None, help="Projections per batch; the output does not depend on it.",
                                             show_default="from a memory budget"),
    overview: Optional[int] = typer.Option(None, help="Also make each layer's top-9 across feature maps and an overview "
                                           "grid of its N strongest feature maps.", show_default="16 when no feature is selected"),
    force: bool = typer.Option(False, "--force", help="Re-render even what is up to date."),
    visualize: int = typer.Option(0, metavar="STEPS", help="Also synthesise, with STEPS optimisation steps (e.g. 512), an image that maximises each rendered unit (mine visualize) and show it on the unit's page."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Render projections (see --method), patches and heatmaps of a store's top activations.

    One render per output folder (OUT/.mine-render.lock): a second one exits with code 4.
    """
    from .jobs.distributed import is_secondary
    from .render import RenderConfig

    path = store or store_arg
    if path is None:
        path = guarded(only_store, Path.cwd())
    if store is not None and store_arg is not None and Path(store) != Path(store_arg):
        fail(f"two different stores given: {store_arg} and --store {store}", exitcodes.BAD_ARGS)
    if batch_size is not None and batch_size < 1:
        fail("--batch-size must be >= 1", exitcodes.BAD_ARGS)
    if visualize < 0:
        fail(f"--visualize must be a number of steps >= 0 (got {visualize}; 0: none)", exitcodes.BAD_ARGS)
    if shared_scale:
        typer.echo("warning: --shared-scale is deprecated; use --contrast shared", err=True)
        contrast = "shared"
    if feature is not None:
        _check_feature_ranges(path, feature)
    config = RenderConfig(out=out, layers=layer, features=feature, weights=weights, contrast=contrast,
                          save_arrays=save_arrays, device=device, batch_size=batch_size, overview_features=overview,
                          progress=not quiet, force=force, method=method, show=show, quantile=quantile,
                          visualize=visualize, crop=crop, shifts=shifts)
    result = guarded(_render_here, path, config)
    if not is_secondary():  # under torchrun rank 0 speaks for the job
        typer.echo(result.summary())


def _render_here(path: Path, config):
    """``render_store`` as this process's share: a rank of the torchrun job (process group opened
    here and closed on the way out, errors included), else the one process. The CLI composes the
    two so that render/ does not depend on the job machinery (jobs/)."""
    from .jobs.distributed import join, leave, under_torchrun
    from .render import render_store
    from .render.ranks import One, Ranks

    if not under_torchrun():
        return render_store(path, config, ranks=One(config.device))
    try:
        return render_store(path, config, ranks=Ranks(join(config.device)))
    finally:
        leave()


@app.command()
def visualize(
    layer: str = typer.Option(..., help="One layer, e.g. conv4_3 or features.14 (see `mine layers`)."),
    features: str = typer.Option("0-15", "--feature", "--features", help="Units (channels): 171 | 0-15,171."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    weights: str = typer.Option("imagenet", help=WEIGHTS_HELP),
    objective: str = typer.Option("channel", help="channel: the mean of the unit's map | neuron: the unit at the map's centre."),
    steps: int = typer.Option(512, help="Optimisation steps (Adam)."),
    size: int = typer.Option(224, help="Image size (the network input)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same images."),
    batch_size: int = typer.Option(16, help="Units optimised together (one image each)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    out: Path = typer.Option(Path("visualize"), help="Output folder."),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write float32 (3,H,W) RGB images in [0,1] as .npy."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    preprocessing: Optional[str] = typer.Option(None, help=PREP_HELP, show_default=PREP_DEFAULT),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
) -> None:
    """Synthesise, for each unit, an input image that maximises it (decorrelated Fourier images, random jitter/scale/rotation,
    shown to the network at 1-2x its size, Lucid's redirected ReLU gradient for the first 20% of steps, Adam)."""
    from .visualize.layer import LayerJob, visualize_layer
    from .visualize.optimize import VisualizeConfig

    guarded(check_size, size, max(batch_size, 1))
    job = LayerJob(model=model, weights=weights, layer=layer, features=features, out=out, size=size, batch_size=batch_size,
                   device=device, save_arrays=save_arrays, preprocessing=_prep(preprocessing, channels, mean, std))
    paths = guarded(visualize_layer, job, VisualizeConfig(objective=objective, steps=steps, seed=seed, progress=not quiet))
    typer.echo(f"visualised {plural(len(paths) - 1, 'unit')} of {layer} -> {paths[-1]}")


def _check_feature_ranges(store: Path, spec: str) -> None:
    """Refuse feature numbers beyond the store's channels before a range is expanded
    (``0-999999999`` must not build a billion-element list first)."""
    from .store.read import Store

    numbers = [int(n) for n in re.findall(r"\d+", spec)]
    if not numbers:
        return  # not a list of numbers at all: render's own parser says what is wrong
    with guarded(Store, store) as s:
        channels = max(s.channels(n) for n in s.layers)
    if max(numbers) >= channels:
        fail(f"--features {spec}: feature {max(numbers)} is out of range; the store's layers have at most "
             f"{channels} channels (0-{channels - 1})", exitcodes.BAD_ARGS)


@app.command()
def reconstruct(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="One or more image files."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    weights: str = typer.Option("imagenet", help=WEIGHTS_HELP),
    layer: str = typer.Option(..., help="Layer(s), lower to upper: conv3_3 | conv1_2,conv3_3,conv5_3 | 'conv5*' | all."),
    feature: Optional[int] = typer.Option(None, help="Only this feature map.", show_default="every map of the layer"),
    top: Optional[int] = typer.Option(None, help="Only the N maps with the largest activation in the image."),
    method: str = typer.Option("deconvnet", help=METHOD_HELP),
    size: int = typer.Option(224, help="Network input size in pixels."),
    resize: str = typer.Option("center-crop", help="center-crop | squash | pad, as in `mine run`."),
    out: Path = typer.Option(Path("reconstruct"), help="Output folder."),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write float32 (3,H,W) RGB projections as .npy."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    preprocessing: Optional[str] = typer.Option(None, help=PREP_HELP, show_default=PREP_DEFAULT),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
) -> None:
    """Project an image back to pixels from a layer: what the layer keeps of the image.

    Writes IMAGE.LAYER.png (network input beside the projection) per image and layer, and
    sheet.png (rows images, columns layers) when there are several.
    """
    from .analyses.reconstruct import ReconstructOptions, reconstruct_images
    from .devices import resolve_device
    from .models.weights import load_network

    if feature is not None and top is not None:
        fail("give --feature or --top, not both", exitcodes.BAD_ARGS)
    guarded(check_size, size)

    def job():
        net = load_network(model, weights, size, _prep(preprocessing, channels, mean, std))
        return reconstruct_images(net, [str(p) for p in images], net.select(layer), out, ReconstructOptions(
            feature=feature, top=top, method=method, resize=resize, save_arrays=save_arrays, device=resolve_device(device)))

    typer.echo(guarded(job).summary())


@app.command()
def occlude(
    inputs: list[Path] = typer.Argument(..., metavar="IMAGE...|STORE", help="Image files, or one store (the unit's top-k images)."),
    layer: Optional[str] = typer.Option(None, help="Layer of the unit, by name or module path, e.g. conv5_3 or layer4.1."),
    feature: Optional[int] = typer.Option(None, help="Channel of the unit: the map is its maximum activation."),
    klass: Optional[int] = typer.Option(None, "--class", help="Class index of a classifier (resnet18, mobilenet_v2, ...): the map is its probability."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP + " For image files: a store names its own."),
    weights: Optional[str] = typer.Option(None, help=WEIGHTS_HELP + " For a store: where its weights are now.",
                                          show_default="imagenet for image files, the store's for a store"),
    patch: int = typer.Option(32, help="Side of the grey (mean-colour) square in input pixels."),
    stride: int = typer.Option(8, help="Step of the square in input pixels."),
    size: int = typer.Option(224, help="Network input size in pixels (image files)."),
    resize: str = typer.Option("center-crop", help="center-crop | squash | pad (image files)."),
    batch_size: int = typer.Option(32, help="Occluded copies per forward pass."),
    entries: Optional[int] = typer.Option(None, help="Store: only the unit's N best entries.", show_default="all k"),
    limit: Optional[int] = typer.Option(None, "--limit", hidden=True, help="Old name of --entries."),
    out: Optional[Path] = typer.Option(None, help="Output folder.",
                                       show_default="occlude/, or <stem>-render/occlude for a store"),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    preprocessing: Optional[str] = typer.Option(None, help=PREP_HELP, show_default=PREP_DEFAULT),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
) -> None:
    """Occlusion sensitivity: slide a grey square over the image and map how much a unit (or a class) drops.

    Writes one PNG (picture with the unit's receptive-field box, heatmap: red where hiding the
    region lowers the score) and a .npy per image of the (n, n) scores, one per square position.
    """
    from .analyses.occlude import check_target, occlude_images, occlude_store
    from .devices import resolve_device
    from .models.weights import load_network

    if batch_size < 1:
        fail("--batch-size must be >= 1", exitcodes.BAD_ARGS)
    entries = entries if entries is not None else limit
    if entries is not None and entries < 1:
        fail(f"--entries must be >= 1 (got {entries})", exitcodes.BAD_ARGS)
    guarded(check_size, size, batch_size)
    kw = dict(layer=layer, feature=feature, klass=klass, patch=patch, stride=stride, batch_size=batch_size)
    prep = _prep(preprocessing, channels, mean, std)
    if len(inputs) == 1 and inputs[0].suffix.lower() in (".h5", ".hdf5"):
        if prep:
            fail("a store records its preprocessing: --preprocessing/--channels/--mean/--std are for image files",
                 exitcodes.BAD_ARGS)
        kw["layer"] = _store_layer(inputs[0], layer) if layer is not None else None
        res = guarded(lambda: occlude_store(inputs[0], out, weights, limit=entries, device=resolve_device(device), **kw))
    else:
        guarded(check_target, layer, feature, klass)  # before loading the network
        res = guarded(lambda: occlude_images(load_network(model, weights or "imagenet", size, prep), [str(p) for p in inputs],
                                             out or Path("occlude"), resize=resize, device=resolve_device(device), **kw))
    typer.echo(res.summary())


@app.command()
def embed(
    store: Path = typer.Argument(..., help="A store mined with `mine run ... --pooled LAYER`."),
    layer: Optional[str] = typer.Option(None, help="Pooled layer (default: the store's first)."),
    embedding: str = typer.Option("tsne", help="tsne (default; PCA to 50 dimensions first; openTSNE from 5000 images) | pca."),
    pool: str = typer.Option("avg", help="avg (default) | max | both: which pooled vector."),
    labels: Optional[Path] = typer.Option(None, help="CSV of path,category rows (default: each file's folder)."),
    seed: int = typer.Option(0, help="Seed of t-SNE, the baseline sample and the thumbnail choice."),
    perplexity: Optional[float] = typer.Option(None, help="t-SNE perplexity (default min(30, (n-1)/3))."),
    neighbors: int = typer.Option(5, help="Neighbours of the leave-one-out k-NN accuracy."),
    knn_sample: int = typer.Option(10000, help="Query images (a seeded sample) of the k-NN accuracy, each against all images; 0: all (O(n^2))."),
    baseline: int = typer.Option(500, help="Images (a seeded sample) re-read for the random-weight k-NN baseline; 0: none."),
    thumbnails: int = typer.Option(300, help="At most this many thumbnails on the map."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default <store>-render/embed)."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write the coordinates into the store."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (k-NN matrix products, the random-weight baseline)."),
    old_k: Optional[str] = typer.Option(None, "--k", hidden=True),
    old_method: Optional[str] = typer.Option(None, "--method", hidden=True),
) -> None:
    """Map a collection in 2-D by a layer's pooled features; report k-NN category accuracy.

    Writes /embed/LAYER (N, 2) into the store, LAYER_map.png (thumbnails at their positions) and
    LAYER_categories.png (points coloured by category, with a legend).
    """
    from .analyses.embed import EmbedOptions, embed_store
    from .devices import resolve_device

    for old, new, given in (("--k", "--neighbors", old_k), ("--method", "--embedding", old_method)):
        if given is not None:
            fail(f"mine embed: {old} is now {new} ({new} {given})", exitcodes.BAD_ARGS)
    if neighbors < 1:
        fail("--neighbors must be >= 1", exitcodes.BAD_ARGS)
    for name, value in (("--baseline", baseline), ("--thumbnails", thumbnails), ("--knn-sample", knn_sample)):
        if value < 0:
            fail(f"{name} must be >= 0 (got {value})", exitcodes.BAD_ARGS)
    if perplexity is not None and not perplexity > 0:
        fail(f"--perplexity must be > 0 (got {perplexity})", exitcodes.BAD_ARGS)
    opts = EmbedOptions(layer=layer, method=embedding, pool=pool, labels=labels, seed=seed, perplexity=perplexity, k=neighbors,
                        baseline=baseline, thumbnails=thumbnails, knn_sample=knn_sample)
    res = guarded(lambda: embed_store(store, dataclasses.replace(opts, device=resolve_device(device)), out, write=not no_write))
    typer.echo(res.summary())


def main() -> None:
    """The ``mine`` program (``python -m pipeline`` and the ``mine`` script): the commands under one
    SIGINT/SIGTERM handler for the whole process (``pipeline.signals.ProcessSignals``), so a signal at
    any moment, shutting down included, ends with exit 5 and never kills the process (143)."""
    from .faults import pause_point
    from .signals import ProcessSignals

    signals = ProcessSignals().install()
    code = 130  # a signal that ends the command before typer returns (see below)
    try:
        try:
            app(prog_name="mine")
            code = exitcodes.OK
        except SystemExit as e:  # typer ends every command with one (a KeyboardInterrupt that escaped it: 130)
            code = e.code if isinstance(e.code, int) else (exitcodes.OK if e.code is None else 1)
        pause_point("exit")  # tests: the command is done, its lock released, the process not yet gone
        received = signals.settle()
    except KeyboardInterrupt:  # the first signal landed while the command was returning
        received = signals.settle()
    except BaseException:  # a bug: its traceback is printed with signals ignored
        signals.settle()
        raise
    if received and code in (exitcodes.OK, 130):
        done = " after the command finished (its output is complete)" if code == exitcodes.OK else ""
        sys.stderr.write(f"error: interrupted by {received}{done}\n")
        code = exitcodes.INTERRUPTED
    sys.exit(code)
