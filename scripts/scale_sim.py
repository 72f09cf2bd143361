"""Scale simulation of `mine run` (issue 24): where time and memory go as a collection grows.

Writes a synthetic collection of N small distinct PNGs (16 x 16 random pixels, 1000 per
folder) under --dir, then times, each phase in a fresh process (so its peak memory is its
own, ``resource.getrusage`` of the process and of its loader workers):

    list      resolve_images: walk the folders, sort the paths
    stat      size/mtime/ctime of every file (what --update compares)
    hash      read + sha256 every file, one process
    mine      `mine run` (tiny 3-channel CNN, --size 16): list, read, hash, decode, forward,
              top-k, statistics, finalize, store write
    open      Store(path) (validation) and the kept paths
    info      `mine info`            top   `mine top --feature 0`
    write@R, open@R, info@R, top@R   the same store with /images grown to R synthetic rows
              (--big, default 1.28M): writing that table, then opening, info, top
    update    `--update` after adding 1% new files (unchanged files skipped by metadata)
    rehash    the same `--update --rehash` (every file read and hashed, as before issue 24)

and prints a table (seconds, per-file microseconds, peak RSS). No GPU needed; on a GPU server
add ``--device cuda --model vgg16 --weights imagenet --layer conv5_3 --size 224`` to time a real
network (see docs/scaling.md).

    PYTHONPATH=$PWD python scripts/scale_sim.py --n 200000            # ~ the table in docs/scaling.md
    PYTHONPATH=$PWD python scripts/scale_sim.py --n 20000 --keep      # smaller; keep the files
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_FOLDER = 1000


def tiny():
    """The simulated model: two 3x3 convolutions, 8 and 16 channels (``--model scale_sim:tiny``)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU())


def write_images(root: Path, start: int, n: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        folder = root / f"d{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0 or i == start:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:08d}.png",
                                                                               compress_level=1)


def peak_mb() -> float:
    """Peak RSS of this process and of its (waited-for) children, whichever is larger, MB."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


def phase(args) -> dict:
    """One timed phase in this process; returns what the table shows."""
    root, store = Path(args.dir) / "images", Path(args.dir) / args.store
    extra: dict = {}
    if args.phase in ("list", "stat", "hash"):
        from pipeline.data import resolve_images

        t = time.perf_counter()
        src = resolve_images(str(root))
        if args.phase == "stat":
            from pipeline.jobs.update import list_stats

            t = time.perf_counter()
            list_stats(src, range(len(src.paths)))
        elif args.phase == "hash":
            t = time.perf_counter()
            n = 0
            for i in range(len(src.paths)):
                data = src.read(i)
                hashlib.sha256(data).digest()
                n += len(data)
            extra["bytes"] = n
        seconds = time.perf_counter() - t
        extra["files"] = len(src.paths)
    elif args.phase in ("mine", "update", "rehash"):
        from pipeline import RunConfig, run
        from pipeline.jobs.record import JobStats

        sys.path.insert(0, str(HERE))
        cfg = RunConfig(images=str(root), model=args.model, weights=args.weights, layer=args.layer, size=args.size,
                        k=9, batch_size=args.batch, workers=args.workers, device=args.device, progress=False,
                        out=str(store), checkpoint_every="0")
        if args.phase == "mine":
            cfg.force = True
        else:
            cfg.update, cfg.rehash = str(store), args.phase == "rehash"
        stats = JobStats()
        t = time.perf_counter()
        res = run(cfg, stats=stats)
        seconds = time.perf_counter() - t
        extra.update(files=res.images_seen, new=res.images_new, known=res.images_known, bytes=stats.bytes_read)
    elif args.phase == "open":
        from pipeline.store.read import Store

        t = time.perf_counter()
        with Store(store) as s:
            s.kept_path(0)
        seconds = time.perf_counter() - t
    elif args.phase in ("info", "top"):
        from typer.testing import CliRunner

        from pipeline.cli import app
        from pipeline.store.read import Store

        with Store(store) as s:
            first = s.layers[0]
        argv = ["info", str(store)] if args.phase == "info" else ["top", str(store), "--layer", first, "--feature", "0"]
        t = time.perf_counter()
        res = CliRunner().invoke(app, argv)
        seconds = time.perf_counter() - t
        assert res.exit_code == 0, res.output
    elif args.phase == "big":  # the store with its /images table grown to --rows rows
        seconds, extra = grow_table(store, Path(args.dir) / f"big{args.rows}.h5", args.rows)
    elif args.phase in ("bigopen", "biginfo", "bigtop"):
        from typer.testing import CliRunner

        from pipeline.cli import app
        from pipeline.store.read import Store

        big = Path(args.dir) / f"big{args.rows}.h5"
        if args.phase == "bigtop":
            with Store(big) as s:
                first = s.layers[0]  # untimed: what a user types
        t = time.perf_counter()
        if args.phase == "bigopen":
            with Store(big) as s:
                s.kept_path(0)
        else:
            res = CliRunner().invoke(app, ["info", str(big)] if args.phase == "biginfo"
                                     else ["top", str(big), "--layer", first, "--feature", "0"])
            assert res.exit_code == 0, res.output
        seconds = time.perf_counter() - t
        extra["files"] = args.rows
    else:
        raise SystemExit(f"unknown phase {args.phase}")
    return {"phase": args.phase, "seconds": seconds, "peak_mb": peak_mb(), **extra}


def grow_table(store: Path, out: Path, n: int) -> tuple[float, dict]:
    """A copy of ``store`` whose /images has ``n`` rows: its own rows first (so /kept still names
    them), then synthetic ones (distinct names and keys, status ok). Times writing the table as
    ``write_store`` does (chunked, compressed columns)."""
    import h5py
    import numpy as np

    from pipeline.store.read import Store
    from pipeline.store.write import _write_column

    with Store(store) as s:
        cols = s.images()
    m = len(cols["path"])
    extra_rows = np.arange(m, n)
    rng = np.random.default_rng(0)
    strings = lambda fmt: np.array([fmt(i) for i in extra_rows], dtype=object)
    grown = {
        "path": np.concatenate([cols["path"].astype(object), strings(lambda i: f"z{i // PER_FOLDER:05d}/{i:08d}.png")]),
        "sha256": np.concatenate([cols["sha256"].astype(object), strings(lambda i: f"{i:064x}")]),
        "key": np.concatenate([cols["key"], rng.integers(0, 2**62, n - m)]),
        "status": np.concatenate([cols["status"].astype(object), np.full(n - m, "ok", dtype=object)]),
    }
    for c in ("width", "height", "size", "mtime_ns", "ctime_ns"):
        grown[c] = np.concatenate([cols[c], np.full(n - m, cols[c][0], dtype=cols[c].dtype)])
    shutil.copy(store, out)
    t = time.perf_counter()
    with h5py.File(out, "a") as f:
        del f["images"]
        g = f.create_group("images")
        for c, arr in grown.items():
            _write_column(g, c, arr)
        f.attrs["images_seen"] = n
    seconds = time.perf_counter() - t
    return seconds, {"files": n, "bytes": out.stat().st_size}


def run_phase(args, name: str, store: str, rows: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--dir", args.dir, "--store", store, "--size", str(args.size),
           "--model", args.model, "--weights", args.weights, "--layer", args.layer,
           "--batch", str(args.batch), "--workers", str(args.workers), "--device", args.device, "--rows", str(rows)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"phase {name} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="files in the collection")
    ap.add_argument("--dir", default="/tmp/mine-scale-sim")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--model", default="scale_sim:tiny", help="any `mine run --model` (default: the tiny CNN here)")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--layer", default="all")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the collection and stores afterwards")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="s.h5", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--big", default="1280000", help="also grow the store's /images table to these row counts "
                    "(comma-separated; synthetic rows) and time writing it, opening the store, info and top")
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return
    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    write_images(d / "images", 0, args.n, seed=1)
    print(f"wrote {args.n} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    table = []

    def timed(name: str, store: str = "s.h5", rows: int = 0, label: str | None = None) -> None:
        r = run_phase(args, name, store, rows)
        r["phase"] = label or name
        table.append(r)
        print(r, file=sys.stderr)

    for name in ("list", "stat", "hash", "mine", "open", "info", "top"):
        timed(name)
    for rows in [int(x) for x in args.big.split(",") if x]:  # the same store, /images grown to `rows`
        for name in ("big", "bigopen", "biginfo", "bigtop"):
            timed(name, rows=rows, label=f"{'write' if name == 'big' else name[3:]}@{rows}")
        (d / f"big{rows}.h5").unlink(missing_ok=True)
    shutil.copy(d / "s.h5", d / "r.h5")
    new = max(1, args.n // 100)
    write_images(d / "images", args.n, new, seed=2)  # 1% new files, in new folders
    time.sleep(0.05)  # past the 10 ms "racy" window of the new files: not needed for correctness
    timed("update")
    timed("rehash", "r.h5")
    print(f"\n{args.n} files of 16x16 px PNG (+{new} new for update/rehash), --model {args.model} --size {args.size}, "
          f"batch {args.batch}, {args.workers} workers, {args.device}")
    print(f"{'phase':<14} {'seconds':>9} {'us/file':>9} {'peak MB':>8}  notes")
    for r in table:
        files = r.get("files") or args.n
        notes = ", ".join(f"{k} {r[k]}" for k in ("new", "known", "bytes") if r.get(k) is not None)
        print(f"{r['phase']:<14} {r['seconds']:>9.2f} {r['seconds'] / files * 1e6:>9.2f} {r['peak_mb']:>8.0f}  {notes}")
    size = (d / "s.h5").stat().st_size
    print(f"store {size / 2**20:.1f} MiB ({size / (args.n + new):.0f} B per file)")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
