"""PathList, the compact file list of an ImageSource, against the tuple of Paths it replaces."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pipeline.data.pathlist import PathList
from pipeline.data.sources import ImageSource, printable, resolve_images

BAD = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8, as the OS hands it over


NAMES = ["b.jpg", "a/x.png", "a/deep/y.jpg", "z z.png", "ü.png", "a-b.png", "a.png", "A.png", "日本/x.png", "😀.png",
         "é.png", "\uffef.png", "a/b-c/d.png", "a/b/c.png", "a0.png"]


def make_tree(root: Path, bad: bool) -> Path:
    for name in NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    if bad:
        with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
            f.write(b"x")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "photos", bad=True)


def brute(root: Path) -> tuple[Path, ...]:
    """The old list: every image file's absolute Path, sorted by its printable relative name."""
    files = [Path(d) / f for d, _, fs in os.walk(root) for f in fs]
    return tuple(sorted(files, key=lambda p: printable(os.path.relpath(p, root))))


def test_resolved_folder_answers_as_the_tuple(tree):
    src = resolve_images(str(tree))
    ref = brute(tree)
    n = len(NAMES) + 1
    assert isinstance(src.paths, PathList) and len(src.paths) == len(ref) == n
    assert src.paths == ref and tuple(src.paths) == ref and list(iter(src.paths)) == list(ref)
    assert [src.paths[i] for i in range(-n, n)] == list(ref + ref)
    assert all(type(p) is type(ref[0]) for p in src.paths)
    assert Path(tree, BAD) in tuple(src.paths)
    for sl in (slice(3), slice(0), slice(2, 5), slice(4, 100), slice(-2, None), slice(None, None, 2),
               slice(None, None, -1)):
        assert tuple(src.paths[sl]) == ref[sl], sl
        assert src.paths[sl] == ref[sl]
    assert src.paths[1:5][1:3] == ref[1:5][1:3]
    with pytest.raises(IndexError):
        src.paths[n]
    with pytest.raises(IndexError):
        src.paths[-n - 1]
    assert hash(src.paths) == hash(ref)


@pytest.mark.parametrize("bad", [False, True])
def test_listing_order_is_the_printable_names_order(tmp_path, bad):
    """Sorting the names as bytes (all UTF-8) or as text (some not) gives the order of their text."""
    root = make_tree(tmp_path / "p", bad)
    src = resolve_images(str(root))
    assert tuple(src.paths) == brute(root)
    names = [src.relname(i) for i in range(len(src))]
    assert names == sorted(names) and len(names) == len(NAMES) + bad
    lst = root / "files.txt"  # a list naming the same files: the same order again
    lst.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    listed = resolve_images(str(lst))
    assert [listed.relname(i) for i in range(len(listed))] == sorted(NAMES)


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
