"""`mine run` under torchrun (CPU, gloo): the store equals the single-process store.

Real torchrun jobs (``python -m torch.distributed.run --standalone``) over the tiny set of
jobs_util, compared with ``full`` (one uninterrupted single-process run) dataset for
dataset. Every job of a phase starts at once (they are independent): on a loaded 2-core
machine most of a job's time is starting Python and importing torch.

* 2 and 3 processes give the single-process store; one run record, written by rank 0,
  with every rank's throughput; no lock, checkpoint or temp file left.
* rank 1 killed (SIGKILL) mid-stream after its first checkpoint: the job fails, the rank
  checkpoints stay; re-running the same command, the same with 3 processes, or one
  process, resumes and gives the identical store.
* ``--update`` under torchrun over a distributed store of half the images, and
  ``mine merge`` of two distributed stores, equal the full run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from jobs_util import TIMING_ATTRS, all_images, assert_same_store, cli_args, list_file, mine_argv, wait_for

from pipeline.jobs.checkpoint import load_checkpoint
from pipeline.jobs.distributed import OTHER, checkpoint_files

UNION_IGNORE = TIMING_ATTRS + ("images_spec", "inputs_id")


def left(folder) -> list[str]:
    """Lock, checkpoint (any rank) and temp files still in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".ckpt" in p.name or p.name.endswith(".lock") or ".tmp-" in p.name)


def torchrun(nproc: int, args, cwd, pause_at: str | None = None, pause_rank: int = 1, ready=None):
    env = dict(os.environ)
    env.pop("MINE_TEST_PAUSE_AT", None)
    env["OMP_NUM_THREADS"] = "1"
    if pause_at:
        env.update(MINE_TEST_PAUSE_AT=pause_at, MINE_TEST_PAUSE_FILE=str(ready), MINE_TEST_PAUSE_RANK=str(pause_rank))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "pipeline", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, ok: bool = True) -> tuple[str, str]:
    out, err = p.communicate(timeout=300)
    if ok:
        assert p.returncode == 0, f"rc {p.returncode}\n{out}\n{err}"
    return out, err


@pytest.fixture(scope="module")
def jobs(images, tmp_path_factory):
    """Phase 1 (in parallel): 2 and 3 processes; a 2-process job with rank 1 killed; a
    2-process store of folder a/ and one of folder b/. Phase 2: resume with 2, 3 and 1
    processes, --update of the a/ store with everything, mine merge of a/ and b/."""
    d = {n: tmp_path_factory.mktemp(n) for n in ("two", "three", "killed", "a", "b")}
    ready = d["killed"] / "ready"
    procs = {
        "two": torchrun(2, cli_args(images, d["two"] / "s.h5"), d["two"]),
        "three": torchrun(3, cli_args(images, d["three"] / "s.h5"), d["three"]),
        "killed": torchrun(2, cli_args(images, d["killed"] / "s.h5", "--checkpoint-every", "1"), d["killed"],
                           pause_at="stream:2", pause_rank=1, ready=ready),
        "a": torchrun(2, cli_args(images / "a", d["a"] / "s.h5"), d["a"]),
        "b": torchrun(2, cli_args(images / "b", d["b"] / "s.h5"), d["b"]),
    }
    wait_for(ready, procs["killed"], timeout=240)
    os.kill(int(ready.read_text()), signal.SIGKILL)
    res = {"killed_rc": procs["killed"].wait(timeout=240)}
    res["killed_out"] = procs["killed"].communicate()
    res["killed_left"] = left(d["killed"])
    res["killed_cks"] = [load_checkpoint(p) for p in checkpoint_files(d["killed"] / "s.h5")]
    log = d["killed"] / "mine-runs.jsonl"
    res["killed_record"] = json.loads(log.read_text().splitlines()[-1]) if log.exists() else None
    for n in ("two", "three", "a", "b"):
        res[n] = finish(procs[n])
    # phase 2
    for n in ("killed3", "killed1"):
        d[n] = tmp_path_factory.mktemp(n)
        for p in d["killed"].iterdir():
            if p.name != "ready":
                shutil.copy(p, d[n] / p.name)
    d["update"] = tmp_path_factory.mktemp("update")
    shutil.copy(d["a"] / "s.h5", d["update"] / "u.h5")
    procs = {
        "resume": torchrun(2, cli_args(images, d["killed"] / "s.h5", "--checkpoint-every", "1"), d["killed"]),
        "resume3": torchrun(3, cli_args(images, d["killed3"] / "s.h5", "--checkpoint-every", "1"), d["killed3"]),
        "resume1": subprocess.Popen(mine_argv(*cli_args(images, d["killed1"] / "s.h5")), cwd=d["killed1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, OMP_NUM_THREADS="1")),
        "update": torchrun(2, cli_args(images, d["update"] / "u.h5", "--update", d["update"] / "u.h5"), d["update"]),
        "merge": subprocess.Popen(mine_argv("merge", d["a"] / "s.h5", d["b"] / "s.h5", "-o", d["b"] / "m.h5",
                                            "--device", "cpu"), cwd=d["b"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True),
    }
    for n, p in procs.items():
        res[n] = finish(p)
    return d, res


@pytest.mark.parametrize("n", ["two", "three"])
def test_torchrun_equals_single_process(n, jobs, full):
    d, res = jobs
    assert_same_store(d[n] / "s.h5", full)
    assert left(d[n]) == []
    records = [json.loads(line) for line in (d[n] / "mine-runs.jsonl").read_text().splitlines()]
    assert len(records) == 1  # rank 0 only
    rec = records[0]
    world = 2 if n == "two" else 3
    assert rec["status"] == "ok" and rec["world_size"] == world and len(rec["ranks"]) == world
    assert [r["rank"] for r in rec["ranks"]] == list(range(world))
    assert sum(r["images_new"] for r in rec["ranks"]) == rec["images_new"] == 14
    assert "14 mined" in res[n][0]  # the summary, printed once
    assert res[n][0].count("images seen") == 1


def test_rank_killed_then_same_command_resumes(jobs, full):
    d, res = jobs
    assert res["killed_rc"] != 0  # torchrun reports the failed rank
    assert res["killed_left"] == ["s.h5.ckpt.rank0", "s.h5.ckpt.rank1", "s.h5.lock"] or \
        res["killed_left"] == ["s.h5.ckpt.rank0", "s.h5.ckpt.rank1"]  # rank 0 stopped cleanly
    assert len(res["killed_cks"]) == 2
    # rank 1 paused after its 2nd batch, before checkpointing it: its checkpoint holds the 1st
    assert any(not c.complete for c in res["killed_cks"])
    rec = res["killed_record"]  # rank 0's, written as it stopped: every rank listed (issue 23, item 11)
    assert rec is not None and rec["world_size"] == 2 and [r["rank"] for r in rec["ranks"]] == [0, 1], rec
    for n in ("killed", "killed3", "killed1"):  # the same command; 3 processes; one process
        assert_same_store(d[n] / "s.h5", full)
        assert left(d[n]) == []
        rec = json.loads((d[n] / "mine-runs.jsonl").read_text().splitlines()[-1])
        assert rec["status"] == "ok" and rec["mode"] == "resume" and rec["images_resumed"] > 0


def test_update_and_merge_of_distributed_stores(jobs, full, images):
    d, _ = jobs
    assert_same_store(d["update"] / "u.h5", full, ignore=UNION_IGNORE)
    rec = json.loads((d["update"] / "mine-runs.jsonl").read_text().splitlines()[-1])
    # a/'s 7 good images, and b/copy_of_03 (the content of a/img03) are known, not mined again
    assert rec["mode"] == "update" and rec["images_known"] == len(all_images(images / "a")) - 1 + 1
    assert_same_store(d["b"] / "m.h5", full, ignore=UNION_IGNORE)


def test_rank_share_reads_only_its_own_files(images, tmp_path):
    """Unit check of the split: every image has exactly one owner, by name (tests/test_rank_share.py
    runs real jobs)."""
    from pipeline.data import ImageDataset, Preprocessing, resolve_images
    from pipeline.jobs.distributed import RankShare, Share, owner

    src = resolve_images(str(list_file(tmp_path / "l.txt", all_images(images))))
    prep = Preprocessing("torchvision", 32)
    shares = [RankShare(src, prep, None, set(), Share(r, 3)) for r in range(3)]
    owners = {}
    for r, ds in enumerate(shares):
        for i in range(len(ds)):
            rec = ds[i]
            assert rec["index"] not in owners and rec["reason"] != OTHER
            assert rec["key"] == ImageDataset(src, prep)[rec["index"]]["key"]
            owners[rec["index"]] = r
    assert sorted(owners) == list(range(len(src.paths)))
    assert all(owner(src.relpath(src.paths[i]), 3) == r for i, r in owners.items())


def test_capture_path_equals_rerun_path(images, tmp_path, monkeypatch):
    """Finalize from what the streaming pass captured (switches, values, pixels) gives the
    same store as re-running every kept image; the probe finds the CPU forward
    batch-invariant at 112 px (not at 32 or 64 px: there finalize re-runs everything)."""
    from jobs_util import assert_same_store, cfg

    from pipeline import run

    run_module = sys.modules["pipeline.runner"]  # the package attribute "run" is the function
    from pipeline.mining.capture import batch_invariant
    from pipeline.models.weights import load_network

    net = load_network("vgg16", "random", 112)
    layers = net.select("conv1_2,pool2,conv3_1")
    from pipeline.data import Preprocessing

    assert batch_invariant(net, layers, Preprocessing("torchvision", 112), torch.device("cpu"))
    seen = {}
    real = run_module.fresh_part

    def spy(spec, source, prep, state, table):
        part = real(spec, source, prep, state, table)
        seen[os.environ.get("MINE_CAPTURE_MB")] = len(part.captured)
        return part

    monkeypatch.setattr(run_module, "fresh_part", spy)
    monkeypatch.setenv("MINE_CAPTURE_MB", "0")
    run(cfg(images, tmp_path / "rerun.h5", size=112), net=net)
    monkeypatch.setenv("MINE_CAPTURE_MB", "64")
    run(cfg(images, tmp_path / "captured.h5", size=112), net=net)
    assert seen == {"0": 0, "64": seen["64"]} and seen["64"] >= 8
    assert_same_store(tmp_path / "captured.h5", tmp_path / "rerun.h5")


def test_pooled_under_torchrun_equals_single_process(images, net, tmp_path):
    """``--pooled`` with 2 processes: every rank's vectors reach the one store (rounding aside:
    a convolution rounds differently with other batch companions)."""
    from jobs_util import assert_same_but_pooled_rounding, cfg

    from pipeline import run

    pooled = "conv2_2,conv4_1"
    one = tmp_path / "one.h5"
    run(cfg(images, one, pooled=pooled), net=net)
    (tmp_path / "two").mkdir()
    finish(torchrun(2, cli_args(images, tmp_path / "two" / "s.h5", "--pooled", pooled), tmp_path / "two"))
    assert left(tmp_path / "two") == []
    assert_same_but_pooled_rounding(tmp_path / "two" / "s.h5", one)


def test_merge_checkpoints_keeps_pooled_vectors():
    from pipeline.mining.pooled import PooledVectors
    from pipeline.mining.statistic import merge_layer_states

    a = {"l": {"keys": torch.tensor([1, 5]), "rows": torch.ones(2, 2, 3, dtype=torch.float16)}}
    b = {"l": {"keys": torch.tensor([3, 5]), "rows": torch.full((2, 2, 3), 2.0, dtype=torch.float16)}}
    m = merge_layer_states(PooledVectors, [a, b])["l"]
    assert m["keys"].tolist() == [1, 3, 5]
    assert m["rows"][:, 0, 0].tolist() == [1.0, 2.0, 1.0]


def test_statistics_of_overlapping_checkpoints_count_every_image_once(tmp_path):
    """A job of 2 ranks killed, resumed by 2 ranks, killed again before rank 1 saved: the
    files then are rank 0's new checkpoint (both first-run contributions inherited plus its
    own) and rank 1's stale one. Their union counts every image once: the reference is the
    histogram of all images' activations counted directly."""
    from pipeline.jobs.checkpoint import Checkpoint, save_checkpoint
    from pipeline.jobs.distributed import merge_checkpoints
    from pipeline.mining.stats import UnitStats
    from pipeline.mining.stream import StreamState
    from pipeline.mining.topk import RunningTopK

    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]  # first run r0, r1; resumed r0
    fp = {"images": {"count": 6}}

    def rank_state(base: dict, out: torch.Tensor) -> StreamState:
        s = StreamState({"l": RunningTopK(3, 2)}, {"l": UnitStats(3)}, stats_base=dict(base))
        s.stats["l"].add(out)
        return s

    def saved(state: StreamState, name: str) -> Checkpoint:
        ck = Checkpoint(fp, False, 1, {}, {"l": state.tops["l"].state()}, {}, state.stats_parts())
        save_checkpoint(tmp_path / name, ck)
        return load_checkpoint(tmp_path / name)

    first0, first1 = rank_state({}, outs[0]), rank_state({}, outs[1])
    a0, a1 = saved(first0, "a0"), saved(first1, "a1")
    inherited = merge_checkpoints([a0, a1]).stats
    b0 = saved(rank_state(inherited, outs[2]), "b0")
    resumed = StreamState({"l": RunningTopK(3, 2)}, {"l": UnitStats(3)})
    resumed.restore({}, merge_checkpoints([b0, a1]).tops, None, merge_checkpoints([b0, a1]).stats)
    total = resumed.total_stats()["l"].result()

    ref = UnitStats(3)
    ref.add(torch.cat(outs))
    np.testing.assert_array_equal(total["hist"], ref.result()["hist"])
    np.testing.assert_array_equal(total["fired"], ref.result()["fired"])
    assert total["images"] == 6
