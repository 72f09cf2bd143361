"""PathList, the compact file list of an ImageSource, against the tuple of Paths it replaces."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pipeline.data.pathlist import PathList
from pipeline.data.sources import ImageSource, printable, resolve_images

BAD = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8, as the OS hands it over


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in ["b.jpg", "a/x.png", "a/deep/y.jpg", "z z.png", "ü.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
        f.write(b"x")
    return root


def brute(root: Path) -> tuple[Path, ...]:
    """The old list: every image file's absolute Path, sorted by its printable relative name."""
    files = [Path(d) / f for d, _, fs in os.walk(root) for f in fs]
    return tuple(sorted(files, key=lambda p: printable(os.path.relpath(p, root))))


def test_resolved_folder_answers_as_the_tuple(tree):
    src = resolve_images(str(tree))
    ref = brute(tree)
    assert isinstance(src.paths, PathList) and len(src.paths) == len(ref) == 6
    assert src.paths == ref and tuple(src.paths) == ref and list(iter(src.paths)) == list(ref)
    assert [src.paths[i] for i in range(-6, 6)] == list(ref[-6:] + ref)
    assert all(type(p) is type(ref[0]) for p in src.paths)
    assert Path(tree, BAD) in tuple(src.paths)
    for sl in (slice(3), slice(0), slice(2, 5), slice(4, 100), slice(-2, None), slice(None, None, 2),
               slice(None, None, -1)):
        assert tuple(src.paths[sl]) == ref[sl], sl
        assert src.paths[sl] == ref[sl]
    assert src.paths[1:5][1:3] == ref[1:5][1:3]
    with pytest.raises(IndexError):
        src.paths[6]
    with pytest.raises(IndexError):
        src.paths[-7]
    assert hash(src.paths) == hash(ref)


def test_relname_is_relpath_of_the_path(tree):
    src = resolve_images(str(tree))
    assert [src.relname(i) for i in range(len(src))] == [src.relpath(p) for p in brute(tree)]
    assert "caf\\xe9.png" in [src.relname(i) for i in range(len(src))]
    head = src.head(3)
    assert head.paths == brute(tree)[:3] and [head.relname(i) for i in range(3)] == \
        [printable(os.path.relpath(p, tree)) for p in brute(tree)[:3]]


def test_any_tuple_given_is_kept_as_given(tmp_path):
    root = tmp_path / "r"
    given = (root / "a.png", root / BAD, tmp_path / "outside.png", Path("/elsewhere/q.jpg"), root / "s" / ".." / "t.png",
             Path("rel/x.png"))
    src = ImageSource("t", root, given)
    assert isinstance(src.paths, PathList) and src.paths == given and tuple(src.paths) == given
    assert [src.relname(i) for i in range(len(given))] == [src.relpath(p) for p in given]
    again = pickle.loads(pickle.dumps(src))
    assert again == src and again.paths == given


def test_blob_is_small():
    names = [f"n{i:06d}/img_{i:08d}.jpg" for i in range(1000)]
    pl = PathList.from_names("/data/set", names)
    assert pl.nbytes == sum(len(n) for n in names) + 8 * 1001
    assert [str(p) for p in pl] == [f"/data/set/{n}" for n in names]
    assert pl[10:20].nbytes == pl.nbytes  # a view, not a copy
