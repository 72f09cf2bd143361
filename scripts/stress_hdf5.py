#!/usr/bin/env python
"""Hunt for the libhdf5 segfault of issue 23 (item 14): run the signal, fork and store paths
concurrently, many times, and report every process that died of a signal plus every new
``dmesg`` line that names libhdf5.

    python scripts/stress_hdf5.py --rounds 10        # about 10 s a round on two busy cores

Each round runs, at the same time:

* ``mine run --update`` with two fork()ed loader workers while the base store is open,
  SIGTERM at a pause point inside the streaming pass (handler + checkpoint path), then the
  same command again to completion;
* ``mine run --force`` with loader workers, SIGTERM after a random delay (any phase: setup,
  streaming, finalize, the forked store writer);
* ``mine embed`` (lock, read, isolated write), SIGTERM after a random delay;
* in this process, two threads reading one open ``Store`` (arrays, pixels, pooled vectors).

The SIGTERMs are sent a random delay after the command took its lock (so it is at work, its
handler installed). Expected exit codes are 0 (finished before the signal) and 5
(interrupted); anything that ends by a signal (-11 SIGSEGV, -6 SIGABRT, -15: no handler) is
listed. A SIGTERM after the work is done and the lock released, while the command writes its
run record and Python shuts down, is exit 5 as well ("... after the command finished"; it was -15
before the process-wide handler of ``cli.main``); any other code then is noted "after the lock".
The control (``--disk-full``) writes a store under a small ``RLIMIT_FSIZE``: that is a known, designed crash of the
isolated writer child (HDF5 2.0 segfaults when a failed write is closed), reported by the
parent as exit 6, and it leaves the same kind of dmesg line.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--layer", "conv2_2", "--model", "vgg16", "--weights", "random", "--size", "32", "--batch-size", "2",
       "--k", "3", "--quiet", "--pooled", "conv3_1"]


def mine(*args) -> list[str]:
    return [sys.executable, "-c", "from pipeline.cli import main; main()", *map(str, args)]


def env(**extra) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    e.update(extra)
    return e


def dmesg_hdf5() -> list[str]:
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [x for x in out.splitlines() if "libhdf5" in x]


def images(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{seed}_{i}.png")
    return folder


def signalled(p: subprocess.Popen, lock: Path, delay: float) -> int | str:
    """SIGTERM ``delay`` seconds after ``lock`` appeared (the command is at work, its handler
    installed), or never if it ended first; its exit code, noted "after the lock" when the
    signal came once the work was done and the lock released (the command's teardown)."""
    while not lock.exists() and p.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    late = False
    if p.poll() is None:
        late = not lock.exists()
        p.send_signal(signal.SIGTERM)
    p.communicate(timeout=300)
    return f"{p.returncode} after the lock" if late and p.returncode not in (0, 5) else p.returncode


def round_(work: Path, r: int, base: Path, rng: random.Random) -> dict[str, int | str]:
    codes: dict[str, int | str] = {}
    imgs = images(work / f"imgs{r}", 6, r)
    shutil.copytree(base.parent / "imgs", imgs, dirs_exist_ok=True)
    upd = work / f"u{r}.h5"
    shutil.copy(base, upd)
    ready = work / f"ready{r}"
    p_upd = subprocess.Popen(mine("run", "--images", imgs, *RUN, "--workers", "2", "--update", upd, "--out", upd),
                             env=env(MINE_TEST_PAUSE_AT="stream:1", MINE_TEST_PAUSE_FILE=str(ready)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    p_run = subprocess.Popen(mine("run", "--images", imgs, *RUN, "--workers", "2", "--force", "--out", work / f"f{r}.h5"),
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    emb = work / f"e{r}.h5"
    shutil.copy(base, emb)
    p_emb = subprocess.Popen(mine("embed", emb, "--embedding", "tsne", "--baseline", "4"), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    d_run, d_emb = rng.uniform(0, 4), rng.uniform(0, 4)
    t_run = threading.Thread(target=lambda: codes.__setitem__(
        "run --force + SIGTERM", signalled(p_run, work / f"f{r}.h5.lock", d_run)))
    t_emb = threading.Thread(target=lambda: codes.__setitem__(
        "embed + SIGTERM", signalled(p_emb, work / f"e{r}.h5.lock", d_emb)))
    t_run.start()
    t_emb.start()
    deadline = time.monotonic() + 300
    while not ready.exists() and p_upd.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if p_upd.poll() is None:
        p_upd.send_signal(signal.SIGTERM)
    p_upd.communicate(timeout=300)
    codes["run --update, SIGTERM in stream"] = p_upd.returncode
    again = subprocess.run(mine("run", "--images", imgs, *RUN, "--workers", "2", "--update", upd, "--out", upd),
                           env=env(), capture_output=True, text=True, timeout=600)
    codes["run --update, resumed"] = again.returncode
    t_run.join()
    t_emb.join()
    return codes


def threads_on_one_store(path: Path, seconds: float) -> int:
    """Two threads reading one open Store; returns how many reads they made."""
    sys.path.insert(0, str(ROOT))
    from pipeline import Store

    count = [0]
    stop = time.monotonic() + seconds
    with Store(path) as s:
        def reader():
            while time.monotonic() < stop:
                for name in s.layers:
                    s.arrays(name)
                s.pixels(0)
                s.pooled("conv3_1")
                count[0] += 1

        ts = [threading.Thread(target=reader) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return count[0]


def disk_full(work: Path, base: Path) -> int:
    limit = base.stat().st_size // 3
    p = subprocess.run(mine("run", "--images", base.parent / "imgs", *RUN, "--workers", "0", "--force", "--out",
                            work / "full.h5"), env=env(), capture_output=True, text=True, timeout=600,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    return p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk-full", action="store_true", help="also run the known-crash control")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    before = set(dmesg_hdf5())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base" / "s.h5"
        images(work / "base" / "imgs", 10, 1000)
        subprocess.run(mine("run", "--images", work / "base" / "imgs", *RUN, "--workers", "0", "--out", base),
                       env=env(), check=True, capture_output=True)
        bad, reads = [], 0
        for r in range(args.rounds):
            reads += threads_on_one_store(base, 1.0)
            codes = round_(work, r, base, rng)
            print(f"round {r}: {codes}", flush=True)
            bad += [(r, what, c) for what, c in codes.items() if c not in (0, 5)]
        if args.disk_full:
            c = disk_full(work, base)
            print(f"disk-full control: exit {c} (6 expected; its writer child crashes by design)")
    new = [x for x in dmesg_hdf5() if x not in before]
    print(f"{args.rounds} rounds, {reads} two-thread store reads; unexpected exit codes: {bad or 'none'}")
    print(f"new dmesg lines naming libhdf5: {len(new)}")
    for x in new:
        print("  " + x)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
