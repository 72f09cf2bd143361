"""One run strategy (issue 22): ``runner.py`` follows one path for one process and for a torchrun
rank; where they differ it calls a method that ``jobs.strategy.Solo`` and ``jobs.distributed.Dist``
both have. The behaviour of both is tested by the job tests (test_resume, test_distributed, ...)."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import pipeline.runner as runner_module
from pipeline.jobs.distributed import Dist
from pipeline.jobs.strategy import Solo
from pipeline.mining.peers import ALONE

RUNNER = Path(runner_module.__file__)


def _is_none_tests(tree: ast.AST) -> list[str]:
    """``x is None`` / ``x is not None`` where x names the torchrun group (dist, ..._dist)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            text = ast.unparse(node)
            if "dist" in ast.unparse(node.left).lower():
                found.append(f"line {node.lineno}: {text}")
    return found


def test_runner_has_no_torchrun_branch():
    tree = ast.parse(RUNNER.read_text())
    assert _is_none_tests(tree) == []
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in ("dist", "distributed")})
    assert names == [], f"runner.py names {names}: go through job.strategy instead"


def test_the_check_finds_a_branch():
    """The check above is not vacuous: it finds the branches runner.py had."""
    old = "def f(dist=None):\n    if dist is None:\n        pass\n    x = 1 if dist is not None else 2\n"
    assert len(_is_none_tests(ast.parse(old))) == 2


def test_solo_and_dist_answer_every_call_of_the_runner():
    """Every attribute runner.py reads from the strategy exists on both classes."""
    tree = ast.parse(RUNNER.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and ast.unparse(n.value).split(".")[-1] == "strategy"}
    assert {"rank", "device", "load_checkpoints", "dataset", "combine_stream", "agree"} <= used
    dist_fields = {f.name for f in dataclasses.fields(Dist)}
    solo = Solo(device=None)
    missing = {"Solo": sorted(a for a in used if not hasattr(solo, a)),
               "Dist": sorted(a for a in used if not hasattr(Dist, a) and a not in dist_fields)}
    assert missing == {"Solo": [], "Dist": []}


def test_solo_collectives_are_the_identity():
    solo = Solo(device=None)
    assert solo.gather_all({"a": 1}) == [{"a": 1}] and (solo.rank, solo.world) == (0, 1)
    solo.agree(None)
    solo.barrier()
    with pytest.raises(ValueError, match="^mine$"):
        solo.agree(ValueError("mine"))
    assert solo.capture(lambda: "made") == "made"
    peers = solo.peers  # finalize's: every batch its own, every gather itself (a failure raised: agree above)
    assert peers.share(3) == [0, 1, 2] and peers.gather_all("x") == ["x"] and peers.gather_to_root("x") == ["x"]
    assert ALONE.share(3) == [0, 1, 2] and ALONE.gather_to_root("x") == ["x"]
    with pytest.raises(ValueError, match="^re-run$"):
        ALONE.agree(ValueError("re-run"))


def test_finalize_has_no_one_process_branch():
    """mining/finalize.py asks its peers (``mining.peers.ALONE`` or a torchrun ``Dist``) and never whether it has any."""
    text = (Path(__file__).resolve().parents[1] / "pipeline" / "mining" / "finalize.py").read_text()
    assert "is None" not in "".join(line for line in text.splitlines(True) if "dist" in line)
