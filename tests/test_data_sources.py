"""resolve_images: folders, list files, globs, Caltech-256 names, and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.data.sources import (
    DATA_ROOT_ENV,
    ImageSource,
    SourceError,
    caltech_categories,
    find_caltech_root,
    resolve_images,
)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(src: ImageSource) -> list[str]:
    return [src.relpath(p) for p in src.paths]


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture
def data_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in [
        "b.jpg",
        "A.JPEG",
        "sub/c.png",
        "sub/deeper/d.Bmp",
        "sub/e.webp",
        "notes.txt",
        "sub/readme.md",
        ".hidden.jpg",
        ".cache/f.jpg",
        "sub/._g.jpg",
    ]:
        touch(root / name)
    return root


# --- folders --------------------------------------------------------------------------------


def test_folder_recursive_sorted_filtered(data_tree):
    src = resolve_images(str(data_tree))
    assert src.root == data_tree.absolute()
    assert rels(src) == ["A.JPEG", "b.jpg", "sub/c.png", "sub/deeper/d.Bmp", "sub/e.webp"]
    assert all(p.is_absolute() for p in src.paths)
    assert len(src) == 5 and src.spec == str(data_tree)


def test_folder_order_is_deterministic(data_tree):
    assert resolve_images(str(data_tree)).paths == resolve_images(str(data_tree) + "/").paths


def test_empty_folder_is_an_error(tmp_path):
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(SourceError) as e:
        resolve_images(str(tmp_path / "empty"))
    assert "no images found" in one_line_error(e) and ".jpg" in str(e.value)


def test_nonexistent_path(tmp_path):
    with pytest.raises(SourceError) as e:
        resolve_images(str(tmp_path / "nope"))
    assert "no such file or folder" in one_line_error(e)


def test_single_explicit_file_kept_even_if_not_image(tmp_path):
    f = touch(tmp_path / "scan.tif")
    src = resolve_images(str(f))
    assert src.paths == (f.absolute(),) and rels(src) == ["scan.tif"]


# --- list files -----------------------------------------------------------------------------


def test_list_file(data_tree, tmp_path):
    other = touch(tmp_path / "elsewhere" / "z.jpg")
    lst = data_tree / "list.txt"
    lst.write_text(
        "# my selection\n"
        "\n"
        "b.jpg\n"
        "  sub/c.png  \n"
        "notes.txt\n"  # listed explicitly: kept, will be recorded as a bad image
        f"{other}\n"
        "b.jpg\n"  # duplicate
        "missing.jpg\n"  # vanished: kept, recorded as unreadable
    )
    src = resolve_images(str(lst))
    assert src.root == tmp_path.absolute()  # common parent of photos/ and elsewhere/
    assert rels(src) == [
        "elsewhere/z.jpg",
        "photos/b.jpg",
        "photos/missing.jpg",
        "photos/notes.txt",
        "photos/sub/c.png",
    ]


def test_list_file_expands_folders(data_tree, tmp_path):
    lst = touch(tmp_path / "l.lst", f"{data_tree / 'sub'}\n".encode())
    assert rels(resolve_images(str(lst))) == ["c.png", "deeper/d.Bmp", "e.webp"]


def test_list_with_no_existing_entry(tmp_path):
    lst = touch(tmp_path / "l.txt", b"a.jpg\nb.jpg\n")
    with pytest.raises(SourceError) as e:
        resolve_images(str(lst))
    assert "none of the 2 paths" in one_line_error(e) and str(tmp_path) in str(e.value)


def test_list_only_comments(tmp_path):
    lst = touch(tmp_path / "l.txt", b"# nothing\n\n")
    with pytest.raises(SourceError, match="names no paths"):
        resolve_images(str(lst))


def test_binary_list_file(tmp_path):
    lst = touch(tmp_path / "l.txt", b"\xff\xfe\x00\x81garbage")
    with pytest.raises(SourceError, match="not a UTF-8 text list"):
        resolve_images(str(lst))


# --- globs ----------------------------------------------------------------------------------


def test_glob_recursive(data_tree):
    src = resolve_images(str(data_tree / "**" / "*.png"))
    assert src.root == data_tree.absolute()
    assert rels(src) == ["sub/c.png"]


def test_glob_root_is_non_glob_prefix(data_tree):
    src = resolve_images(str(data_tree / "sub" / "*"))
    assert src.root == (data_tree / "sub").absolute()
    assert rels(src) == ["c.png", "e.webp"]  # folders and non-images dropped
    src = resolve_images(str(data_tree / "**"))
    assert rels(src) == ["A.JPEG", "b.jpg", "sub/c.png", "sub/deeper/d.Bmp", "sub/e.webp"]


def test_glob_relative_to_cwd(data_tree, monkeypatch):
    monkeypatch.chdir(data_tree)
    src = resolve_images("*.jp*g")
    assert src.root == data_tree.absolute() and rels(src) == ["b.jpg"]  # A.JPEG: glob is case-sensitive


def test_glob_without_match(data_tree):
    with pytest.raises(SourceError) as e:
        resolve_images(str(data_tree / "*.gif"))
    assert "no images match" in one_line_error(e)


# --- Caltech-256 ----------------------------------------------------------------------------

CATEGORIES = ["001.ak47", "056.dog", "057.dolphin-101", "159.people", "252.car-side-101", "257.clutter"]


def make_caltech(base: Path) -> Path:
    for i, cat in enumerate(CATEGORIES):
        num = cat.split(".")[0]
        for j in (2, 1):
            touch(base / cat / f"{num}_{j:04d}.jpg")
        if i == 0:
            touch(base / cat / "RENAME2")  # stray non-image file as in the real archive
    touch(base / "256_ObjectCategories.tar.partial")  # not a category
    return base


@pytest.mark.parametrize(
    "layout", ["256_ObjectCategories", "x/256_ObjectCategories", "x/caltech256/256_ObjectCategories"]
)
def test_caltech_layouts(tmp_path, layout):
    cats = make_caltech(tmp_path / layout)
    given = tmp_path / layout.split("/")[0] if "/" in layout else cats
    assert find_caltech_root(given) == cats.absolute()
    src = resolve_images("caltech/dog", given)
    assert src.root == cats.absolute()
    assert rels(src) == ["056.dog/056_0001.jpg", "056.dog/056_0002.jpg"]


def test_caltech_from_env_and_names(tmp_path, monkeypatch):
    make_caltech(tmp_path / "caltech256" / "256_ObjectCategories")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    dog = rels(resolve_images("caltech/dog"))
    for spec in ("caltech/56", "caltech/056", "caltech/056.dog", "Caltech/DOG", "caltech256/dog"):
        assert rels(resolve_images(spec)) == dog, spec
    assert rels(resolve_images("caltech/people")) == ["159.people/159_0001.jpg", "159.people/159_0002.jpg"]
    assert rels(resolve_images("caltech/car_side"))[0].startswith("252.car-side-101/")
    assert rels(resolve_images("caltech/dolphin"))[0].startswith("057.dolphin-101/")
    every = resolve_images("caltech/all")
    assert len(every) == 2 * len(CATEGORIES)
    assert rels(every)[:2] == ["001.ak47/001_0001.jpg", "001.ak47/001_0002.jpg"]
    assert caltech_categories() == CATEGORIES


def test_caltech_argument_beats_env(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "wrong"))
    cats = make_caltech(tmp_path / "right" / "256_ObjectCategories")
    assert resolve_images("caltech/dog", tmp_path / "right").root == cats.absolute()


def test_caltech_missing_root_message(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(SourceError) as e:
        resolve_images("caltech/dog")
    msg = one_line_error(e)
    assert "--data-root" in msg and DATA_ROOT_ENV in msg and "scripts/fetch_caltech256.py" in msg


def test_caltech_root_without_dataset(tmp_path):
    with pytest.raises(SourceError) as e:
        resolve_images("caltech/dog", tmp_path)
    msg = one_line_error(e)
    assert "not found" in msg and "256_ObjectCategories" in msg and "fetch_caltech256.py" in msg


def test_caltech_unknown_category_suggests(tmp_path):
    make_caltech(tmp_path / "256_ObjectCategories")
    with pytest.raises(SourceError) as e:
        resolve_images("caltech/dgo", tmp_path)
    msg = one_line_error(e)
    assert "unknown Caltech-256 category 'dgo'" in msg and "did you mean dog" in msg
    assert "ak47" in msg  # a few existing ones
    with pytest.raises(SourceError, match="number 300"):
        resolve_images("caltech/300", tmp_path)
    with pytest.raises(SourceError, match="needs a category"):
        resolve_images("caltech/", tmp_path)


def test_caltech_empty_category(tmp_path):
    cats = make_caltech(tmp_path / "256_ObjectCategories")
    (cats / "200.empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        resolve_images("caltech/empty", tmp_path)


def test_caltech_typo_in_scheme_gets_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match="caltech/<category>"):
        resolve_images("caltec/dog")


def test_relpath_is_posix_and_relative(tmp_path):
    f = touch(tmp_path / "a" / "b" / "c.jpg")
    src = resolve_images(str(tmp_path))
    assert src.relpath(f) == "a/b/c.jpg"
    assert src.relpath(str(f)) == "a/b/c.jpg"
    assert os.sep not in src.relpath(f) or os.sep == "/"


def test_empty_spec():
    with pytest.raises(SourceError, match="empty image spec"):
        resolve_images("  ")
