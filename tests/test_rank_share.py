"""Under torchrun each rank opens only its own files, and the store is the single process's (issue 24).

Real torchrun jobs of 2 and 3 processes (gloo, CPU, started as tests/test_distributed.py does)
over twelve files: nine distinct images and three copies named so that every copy falls to
another rank than its original, for 2 and for 3 ranks (so the same content is mined by two
ranks and must still count once). Independent references: the store of one process, the
owner of each name computed here from its sha256, and the files each process opened
(``MINE_TRACE_READS``: one line per read with the reader's pid; the run record maps pid to
rank) with their sizes from ``os.stat``.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from jobs_util import assert_same_store, cli_args, mine_argv
from PIL import Image

DISTINCT = 9


def rank_of(name: str, world: int) -> int:
    """The split as specified (not the code's): first 8 bytes of sha256(name), big-endian, mod world."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % world


def make_collection(root):
    rng = np.random.default_rng(3)
    names = []
    for i in range(DISTINCT):
        low = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((40, 34), Image.BILINEAR)
        arr = np.clip(np.asarray(low).astype(int) + rng.integers(0, 40, (34, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img{i:02d}.png")
        names.append(f"img{i:02d}.png")
    copies = 0
    for i in range(DISTINCT):  # copies of the first originals that land on another rank for 2 and 3
        orig = names[i]
        for j in range(100):
            name = f"dup{i}_{j}.png"
            if all(rank_of(name, w) != rank_of(orig, w) for w in (2, 3)):
                shutil.copy(root / orig, root / name)
                copies += 1
                break
        if copies == 3:
            break
    assert copies == 3
    return root


def torchrun(nproc, args, cwd, trace):
    env = dict(os.environ, OMP_NUM_THREADS="1", MINE_TRACE_READS=str(trace))
    env.pop("MINE_TEST_PAUSE_AT", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "pipeline", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    images = make_collection(tmp_path_factory.mktemp("dups"))
    d = {n: tmp_path_factory.mktemp(n) for n in ("one", "two", "three")}
    procs = {
        "one": subprocess.Popen(mine_argv(*cli_args(images, d["one"] / "s.h5")), cwd=d["one"],
                                env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True),
        "two": torchrun(2, cli_args(images, d["two"] / "s.h5"), d["two"], d["two"] / "reads.txt"),
        "three": torchrun(3, cli_args(images, d["three"] / "s.h5"), d["three"], d["three"] / "reads.txt"),
    }
    for n, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{n}: rc {p.returncode}\n{out}\n{err}"
    return images, d


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_opens_only_its_own_files_and_the_store_is_one_process(world, jobs):
    images, d = jobs
    folder = d["two" if world == 2 else "three"]
    assert_same_store(folder / "s.h5", d["one"] / "s.h5")
    rec = json.loads((folder / "mine-runs.jsonl").read_text().splitlines()[-1])
    rank_of_pid = {r["pid"]: r["rank"] for r in rec["ranks"]}
    opened = defaultdict(list)
    for line in (folder / "reads.txt").read_text().splitlines():
        pid, n, name = line.split("\t")
        assert int(n) == os.path.getsize(images / name)
        opened[rank_of_pid[int(pid)]].append(name)
    names = sorted(p.name for p in images.iterdir())
    for r in range(world):
        share = {n for n in names if rank_of(n, world) == r}
        assert set(opened[r]) == share, (r, opened[r])  # its own files, every one, no other (kept ones again
        # for finalize: read by their owner, sent to whichever rank finalizes them)
        assert rec["ranks"][r]["bytes_read"] == sum(os.path.getsize(images / n) for n in share)
    assert rec["bytes_read"] == sum(os.path.getsize(images / n) for n in names)
    # every content once: the copies are "duplicate", not mined twice
    assert rec["images_new"] == DISTINCT
