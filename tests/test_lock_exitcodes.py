"""Locks, exit codes, the run record, and failures that must leave earlier files valid:
an unwritable output folder, a full disk, truncated stores, bad checkpoints."""
import errno
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

import pytest
from jobs_util import (
    BATCH,
    assert_same_store,
    cfg,
    cli_args,
    crashed_run,
    leftovers,
    list_file,
    spawn,
    write_lock,
)
from typer.testing import CliRunner

from pipeline import exitcodes, run
from pipeline.cli import app
from pipeline.job_errors import LockedError, WriteError
from pipeline.jobs.checkpoint import checkpoint_path, load_checkpoint
from pipeline.jobs.record import LOG_NAME
from pipeline.lock import StoreLock, _proc_start, lock_path

cli = CliRunner()


def records(folder):
    return [json.loads(line) for line in (folder / LOG_NAME).read_text().splitlines()]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- lock ---------------------------------------------------------------------------------

def test_live_lock_exits_4_naming_the_holder(images, tmp_path, live_pid):
    store = tmp_path / "s.h5"
    write_lock(store, live_pid, proc_start=_proc_start(live_pid))
    before = lock_path(store).read_text()
    res = cli.invoke(app, cli_args(images, store))
    assert res.exit_code == exitcodes.LOCKED == 4
    assert f"pid {live_pid}" in res.stderr and "Traceback" not in res.stderr
    assert lock_path(store).read_text() == before and not store.exists()
    (rec,) = records(tmp_path)
    assert rec["status"] == "locked" and rec["exit_code"] == 4 and str(live_pid) in rec["error"]


def test_lock_of_another_host_is_not_broken(images, tmp_path):
    store = tmp_path / "s.h5"
    write_lock(store, 1, host="gpu-node-7")
    res = cli.invoke(app, cli_args(images, store))
    assert res.exit_code == 4 and "gpu-node-7" in res.stderr and "delete" in res.stderr


@pytest.mark.parametrize("how", ["dead pid", "reused pid", "garbled"])
def test_stale_lock_is_taken_over(how, images, net, full, tmp_path, live_pid, caplog):
    store = tmp_path / "s.h5"
    if how == "dead pid":
        write_lock(store, dead_pid())
    elif how == "reused pid":  # the pid runs, but it is not the process that took the lock
        write_lock(store, live_pid, proc_start=_proc_start(live_pid) - 1)
    else:  # a lock file torn by a crash long ago
        lock_path(store).write_text('{"pid": 12')
        old = time.time() - 3600
        os.utime(lock_path(store), (old, old))
    run(cfg(images, store), net=net)
    assert "taking over the stale lock" in caplog.text  # a warning of the "pipeline" logger
    assert not lock_path(store).exists()
    assert_same_store(store, full)


def test_lock_is_exclusive_and_release_keeps_foreign_locks(tmp_path):
    store = tmp_path / "s.h5"
    with StoreLock(store) as held:
        info = json.loads(lock_path(store).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            StoreLock(store).acquire()
        write_lock(store, os.getpid())  # someone replaced it (e.g. an operator): not ours to delete
        held.release()
        assert lock_path(store).exists()


# --- exit codes ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, code", [
    ({"--images": "/no/such/folder"}, exitcodes.MISSING_INPUT),
    ({"--weights": "/no/such/weights.pt"}, exitcodes.MISSING_INPUT),
    ({"--layer": "conv9_9"}, exitcodes.BAD_ARGS),
    ({"--k": "0"}, exitcodes.BAD_ARGS),
    ({"--checkpoint-every": "5 minutes"}, exitcodes.BAD_ARGS),
    ({"--force": None, "--update": "x.h5"}, exitcodes.BAD_ARGS),
])
def test_exit_codes(change, code, images, tmp_path):
    args = cli_args(images, tmp_path / "s.h5")
    for opt, val in change.items():
        if opt in args:
            args[args.index(opt) + 1] = val
        else:
            args += [opt] + ([val] if val is not None else [])
    res = cli.invoke(app, args)
    assert res.exit_code == code, res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert records(tmp_path)[-1]["exit_code"] == code


def test_exit_code_table_is_documented():
    root = os.path.join(os.path.dirname(__file__), "..")
    docs = [os.path.join(root, "README.md"), os.path.join(root, "docs", "operations.md")]
    doc = "".join(open(p).read() for p in docs if os.path.exists(p))
    for name in ("OK", "BAD_ARGS", "MISSING_INPUT", "LOCKED", "INTERRUPTED", "STORE_ERROR", "FAILED"):
        assert f"| {getattr(exitcodes, name)} |" in doc, name


# --- run record ---------------------------------------------------------------------------

def test_run_record_lines(images, tmp_path):
    store = tmp_path / "out" / "s.h5"
    assert cli.invoke(app, cli_args(images / "a", store)).exit_code == 0
    assert cli.invoke(app, cli_args(images, store, "--update", str(store))).exit_code == 0
    assert cli.invoke(app, cli_args(images, store)).exit_code == 2  # exists: refused
    custom = tmp_path / "custom.jsonl"
    assert cli.invoke(app, cli_args(images, store, "--update", str(store), "--log", str(custom))).exit_code == 0
    r1, r2, r3 = records(store.parent)
    assert set(r1) == {"start", "end", "command", "status", "exit_code", "error", "mode", "store", "images_seen",
                       "images_skipped", "images_new", "images_known", "images_resumed", "seconds",
                       "images_per_s", "world_size", "ranks", "version", "host", "pid", "bytes_read"}
    assert (r1["world_size"], r1["ranks"]) == (1, None)  # a single process (torchrun: see test_distributed)
    assert (r1["status"], r1["mode"], r1["images_seen"], r1["images_new"], r1["images_skipped"]) == \
        ("ok", "fresh", 8, 7, 1)
    assert (r2["mode"], r2["images_seen"], r2["images_new"], r2["images_known"]) == ("update", 16, 7, 8)
    assert r3["status"] == "bad-args" and "--update" in r3["error"]
    assert r1["store"] == str(store) and r1["start"] <= r1["end"] and r1["images_per_s"] > 0
    (c,) = [json.loads(line) for line in custom.read_text().splitlines()]
    assert c["images_new"] == 0 and c["images_known"] == 15


# --- unwritable folder, full disk -----------------------------------------------------------

def test_unwritable_output_folder(images, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    store = blocker / "night" / "s.h5"
    log = tmp_path / "runs.jsonl"
    res = cli.invoke(app, cli_args(images, store, "--log", str(log)))
    assert res.exit_code == exitcodes.STORE_ERROR, res.stderr
    assert "cannot create the output folder" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(log.read_text())["status"] == "store-error"
    # the default log next to the store cannot be written either: a warning, same exit code
    res = cli.invoke(app, cli_args(images, store))
    assert res.exit_code == 6 and "could not append the run record" in res.stderr


def test_disk_full_keeps_previous_store_and_checkpoint(images, full, tmp_path):
    store = tmp_path / "s.h5"
    shutil.copy(full, store)
    before = store.read_bytes()
    limit = 120_000  # the checkpoint (~45 kB) fits, the store (~245 kB) does not
    assert len(before) > limit

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = spawn(cli_args(images, store, "--force"), tmp_path, preexec_fn=small_disk)
    out, err = p.communicate(timeout=120)
    assert p.returncode == exitcodes.STORE_ERROR, err
    assert f"cannot write {store}" in err and "unchanged" in err and "Traceback" not in err
    assert store.read_bytes() == before
    assert load_checkpoint(checkpoint_path(store)).complete
    assert leftovers(tmp_path) == ["s.h5.ckpt"]  # no temp file, no lock
    res = cli.invoke(app, cli_args(images, store, "--force"))  # space freed: the same command finishes
    assert res.exit_code == 0, res.stderr
    assert records(tmp_path)[-1]["mode"] == "resume"
    assert_same_store(store, full)


def test_checkpoint_write_failure_keeps_previous_checkpoint(images, net, tmp_path, monkeypatch):
    import pipeline.jobs.checkpoint as ckmod

    store = tmp_path / "s.h5"
    real, calls = ckmod.np.savez, []

    def savez(fh, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, **arrays)

    monkeypatch.setattr(ckmod.np, "savez", savez)
    with pytest.raises(WriteError, match="no space left on device.*previous checkpoint"):
        run(cfg(images, store, checkpoint_every="1"), net=net)
    assert len(load_checkpoint(checkpoint_path(store)).records) == BATCH
    assert leftovers(tmp_path) == ["s.h5.ckpt"]


# --- corrupt inputs -----------------------------------------------------------------------

def test_truncated_store_is_a_clear_error_and_untouched(images, full, tmp_path):
    bad = tmp_path / "s.h5"
    bad.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    before = bad.read_bytes()
    for args, code in ((["info", str(bad)], 6),
                       (cli_args(images, bad, "--update", str(bad)), 6),
                       (["merge", str(bad), str(full), "-o", str(tmp_path / "m.h5")], 6),
                       (cli_args(images, bad), 2)):  # not --update: refused, --force would replace it
        res = cli.invoke(app, args)
        assert res.exit_code == code, (args, res.stderr)
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
        assert bad.read_bytes() == before
    assert "not a readable HDF5 store" in cli.invoke(app, ["info", str(bad)]).stderr


def test_corrupt_checkpoint(images, net, full, tmp_path):
    store = tmp_path / "s.h5"
    checkpoint_path(store).write_bytes(b"PK\x03\x04 not really a zip")
    res = cli.invoke(app, cli_args(images, store))
    assert res.exit_code == exitcodes.STORE_ERROR and "--discard-checkpoint" in res.stderr
    res = cli.invoke(app, cli_args(images, store, "--discard-checkpoint"))
    assert res.exit_code == 0, res.stderr
    assert_same_store(store, full)


def test_checkpoint_of_another_configuration(images, net, full, tmp_path, monkeypatch, caplog):
    store = tmp_path / "s.h5"
    crashed_run(monkeypatch, cfg(images, store, checkpoint_every="1"), net)
    res = cli.invoke(app, cli_args(images, store, "--k", "3"))
    assert res.exit_code == 2 and "different k" in res.stderr and "--discard-checkpoint" in res.stderr
    assert checkpoint_path(store).exists()
    # only the image list changed (new files arrived after the crash): start over, with a warning
    fewer = list_file(tmp_path / "l.txt", sorted(images.rglob("*.png"))[:9])
    r = run(cfg(fewer, store), net=net)
    assert r.mode == "fresh" and "image list changed" in caplog.text
    ref = tmp_path / "ref.h5"
    run(cfg(fewer, ref), net=net)
    assert_same_store(store, ref, ignore=("created", "seconds", "versions"))


def test_store_writer_crash_or_bug_is_contained(tmp_path):
    """HDF5 may segfault on a failed write; the job survives it (the writer is a forked child)."""
    import signal

    from pipeline.jobs.output import write_isolated

    target = tmp_path / "s.h5"

    def crash():
        (tmp_path / f".s.h5.tmp-{os.getpid()}").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(WriteError, match=r"died \(signal SIGSEGV\).*MB free.*previous store is fine"):
        write_isolated(target, crash, "the previous store is fine")
    assert list(tmp_path.iterdir()) == []  # the child's temp file is gone
    with pytest.raises(RuntimeError, match="KeyError"):
        write_isolated(target, lambda: {}["missing"], "x")
    write_isolated(target, lambda: target.write_bytes(b"ok"), "x")
    assert target.read_bytes() == b"ok"


def test_early_failure_without_store_or_log_writes_no_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["run", "--images", "/no/such/folder", "--weights", "random", "--quiet"])
    assert res.exit_code == exitcodes.MISSING_INPUT
    assert not (tmp_path / LOG_NAME).exists()
    res = cli.invoke(app, ["run", "--images", "/no/such/folder", "--weights", "random", "--log", "x.jsonl"])
    assert json.loads((tmp_path / "x.jsonl").read_text())["status"] == "missing-input"
