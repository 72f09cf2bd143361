"""Resolve what the user typed after ``--images`` into a fixed, ordered list of files.

Why a separate, eager step: everything downstream (image ids, resume points, sharding, the
provenance table of the store) needs the *same* list in the *same* order on every run. So the
list is built once, sorted by the path relative to a root (a plain string sort, independent of
the file system's directory order), and frozen in an :class:`ImageSource`. The relative path is
what the store records: a dataset moved to another disk or machine keeps its image paths.

Accepted specs (checked in this order):

* ``caltech/<category>`` (also ``caltech256/``): a Caltech-256 category by name (``dog``,
  ``baseball_bat``, ``car-side``), number (``56``/``056``), folder name (``056.dog``) or
  ``all``. The scheme wins over a local folder of the same name; write ``./caltech/dog`` for
  the latter. The root is the ``256_ObjectCategories`` folder, so stored paths read
  ``056.dog/056_0001.jpg`` whether one category or all were mined, and runs merge cleanly.
* an existing folder: searched recursively for ``.jpg .jpeg .png .bmp .webp`` (any case).
  Hidden files and folders (leading ``.``, e.g. ``.git``, macOS ``._`` files) are skipped;
  other extensions are ignored; symlinked folders are not followed (no cycles).
* an existing file ending in ``.txt``, ``.lst`` or ``.list``: a list of paths, one per line;
  blank lines and lines starting with ``#`` are ignored, relative paths are relative to the
  list's folder, folders listed are expanded as above. Root = common parent of the entries.
* any other existing file: that single image.
* a glob pattern (contains ``*``, ``?`` or ``[``; ``**`` recurses): matching image files.
  Root = the pattern's leading folders that contain no wildcard.
* an array file (``.npz``, ``.npy``, MNIST ``*-images-idx3-ubyte[.gz]``) or, when no such file
  or folder exists, ``package.module:factory`` returning a torch Dataset: each item is one image
  named ``<file>#<index>`` (see ``data.arrays``). Root = the file's folder (``/`` for a Dataset).

Files named explicitly (in a list, or as the spec) are kept even when their extension is not
an image's or when they have gone missing: the user asked for them, so the run records them as
bad images instead of silently dropping them. Only when *none* of the listed files exists is it
an error (almost always a list written on another machine).

Files that are not regular (FIFOs, devices, sockets, also behind symlinks) are listed like any
other file and recorded as skipped when read (``data.safe_read``), never opened blocking. A file name
that is not valid UTF-8 (the OS hands it over with surrogate escapes) is listed too: it is stored
with its bad bytes written as ``\\xNN`` escapes (:func:`printable`) and recorded as skipped, never
fatal; :func:`undecodable` tells such a path.

Every failure raises :class:`SourceError` with one line that says what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .arrays import Collection, item_names, open_collection
from .pathlist import PathList, as_pathlist
from .safe_read import Unreadable, read_file
from .source_error import SourceError

__all__ = [
    "CALTECH_DIRNAME",
    "DATA_ROOT_ENV",
    "IMAGE_EXTENSIONS",
    "LIST_SUFFIXES",
    "ImageSource",
    "SourceError",
    "caltech_categories",
    "find_caltech_root",
    "printable",
    "reopen",
    "resolve_images",
    "undecodable",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
DATA_ROOT_ENV = "MINE_DATA_ROOT"
CALTECH_DIRNAME = "256_ObjectCategories"
_CALTECH_PREFIXES = ("caltech/", "caltech256/")
_GLOB_CHARS = re.compile(r"[*?\[]")
_CATEGORY_DIR = re.compile(r"^(\d+)\.(.+)$")
_FETCH_HINT = "python scripts/fetch_caltech256.py"
NO_STAT = (-1, -1, -1)  # ImageSource.stat of what has no usable file metadata

#: ``MINE_TRACE_READS=FILE``: every ``ImageSource.read`` appends ``pid<TAB>bytes<TAB>relative path``
#: to FILE (one ``write`` on an O_APPEND file, so loader workers and ranks never interleave). A
#: test hook: it shows which process opened which file (tests/test_rank_share.py, test_update_mtime.py).
_TRACE = os.environ.get("MINE_TRACE_READS", "")


def _trace(source: "ImageSource", index: int, n: int) -> None:
    line = f"{os.getpid()}\t{n}\t{source.relname(index)}\n".encode("utf-8", "backslashreplace")
    fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ImageSource:
    """A resolved, ordered image collection.

    ``paths`` are absolute and sorted by :meth:`relpath`; position ``i`` in ``paths`` is the
    image's index for this run. For a :class:`~pipeline.data.arrays.Collection` (an array file
    or a Dataset) the paths are ``root/<name>#<i>`` in index order, names only: :meth:`read`
    takes the item from the collection.

    ``paths`` is a :class:`~pipeline.data.pathlist.PathList` (any sequence of paths given is
    turned into one): it answers as a tuple of ``Path`` would, in a fraction of the memory.
    """

    spec: str
    root: Path
    paths: PathList
    collection: Collection | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", as_pathlist(self.root, self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        """The bytes of image ``index`` (see ``data.safe_read``); :class:`Unreadable` says why not."""
        if self.collection is not None:
            data = self.collection.read(index)
        else:
            path = self.paths[index]
            if undecodable(path):
                raise Unreadable("bad file name: not valid UTF-8")
            data = read_file(path)
        if _TRACE:
            _trace(self, index, len(data))
        return data

    def stat(self, index: int) -> tuple[int, int, int]:
        """``(size, mtime_ns, ctime_ns)`` of file ``index`` (symlinks followed, as ``read`` does),
        without reading it; :data:`NO_STAT` for an array item, a name that is not UTF-8, a file
        that cannot be stat'ed or is not regular (see ``jobs.update``: what an unchanged file is)."""
        if self.collection is not None:
            return NO_STAT
        path = self.paths[index]
        if undecodable(path):
            return NO_STAT
        try:
            st = os.stat(path)
        except OSError:
            return NO_STAT
        if not stat.S_ISREG(st.st_mode):
            return NO_STAT
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def label(self, index: int) -> str | None:
        """The collection's label of image ``index`` (None: the source has no labels)."""
        labels = self.collection.labels if self.collection is not None else None
        return labels[index] if labels is not None else None

    def head(self, n: int) -> "ImageSource":
        """The first ``n`` images (``--limit``)."""
        return dataclasses.replace(self, paths=self.paths[:n])

    def relpath(self, p: str | os.PathLike[str]) -> str:
        """Path of ``p`` relative to :attr:`root`, with ``/`` separators (stored as "path")."""
        return _relposix(os.path.abspath(p), str(self.root))

    def relname(self, index: int) -> str:
        """``relpath(paths[index])`` (the "path" the store records), read from the list's names
        without making a ``Path`` when the name is plainly under the root."""
        rel = self.paths.relative(index)
        root = str(self.root)
        if rel is None or os.sep != "/" or not _plain(rel) or os.path.abspath(root) != root:
            return self.relpath(self.paths[index])
        return printable(rel)


def _plain(rel: str) -> bool:
    """True if ``rel`` has no empty, ``.`` or ``..`` part (``abspath`` would change it)."""
    return not any(part in ("", ".", "..") for part in rel.split("/"))


def _relposix(abspath: str, root: str) -> str:
    prefix = root if root.endswith(os.sep) else root + os.sep
    if abspath.startswith(prefix):
        rel = abspath[len(prefix) :]
    else:  # not under root (cannot happen for resolved paths): fall back to the general case
        rel = os.path.relpath(abspath, root)
    return printable(rel.replace(os.sep, "/"))


def undecodable(path: str | os.PathLike[str]) -> bool:
    """True if the name holds bytes that are not UTF-8 (surrogate escapes from the OS)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes the OS could not decode become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def resolve_images(spec: str, data_root: str | Path | None = None) -> ImageSource:
    """Turn ``spec`` into an :class:`ImageSource` (see module docstring for the syntax).

    ``data_root`` locates Caltech-256 for ``caltech/...`` specs; when ``None`` the environment
    variable ``MINE_DATA_ROOT`` is used.
    """
    text = spec.strip()
    if not text:
        raise SourceError("empty image spec: give a folder, a list file, a glob or caltech/<category>")
    if text.lower().startswith(_CALTECH_PREFIXES):
        return _resolve_caltech(spec, text.split("/", 1)[1], data_root)
    collection = open_collection(text)
    if collection is not None:
        names = PathList.from_names(collection.root, item_names(collection.name, len(collection)))
        return ImageSource(spec, collection.root, names, collection)

    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return _resolve_folder(spec, path)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return _resolve_list(spec, path)
        absolute = Path(os.path.abspath(path))
        return ImageSource(spec=spec, root=absolute.parent, paths=(absolute,))
    if path.exists():
        raise SourceError(f"{text} is neither a file nor a folder")
    if _GLOB_CHARS.search(text):
        return _resolve_glob(spec, os.path.expanduser(text))
    raise SourceError(f"no such file or folder: {text}{_caltech_typo_hint(text)}")


def reopen(spec: str, root: str | Path, names: list[str]) -> tuple[ImageSource, list[int]] | None:
    """The images a store names again, for reading (``mine embed``'s baseline and thumbnails):
    ``(source, indices)`` with ``source.read(indices[j])`` the bytes of ``names[j]`` (relative to
    ``root``), or None when they are no longer all there."""
    root = Path(root)
    paths = [root / n for n in names]
    if all(p.is_file() for p in paths):
        return ImageSource(spec, root, tuple(paths)), list(range(len(paths)))
    heads = {n.rpartition("#")[0] for n in names}
    if len(heads) != 1 or not all(n.rpartition("#")[2].isdigit() for n in names):
        return None
    head = heads.pop()
    try:  # an array file beside the others, else a Dataset factory (its name is the spec)
        collection = (open_collection(str(root / head)) if (root / head).is_file()
                      else open_collection(head) if head == spec.strip() else None)
    except SourceError:
        return None
    indices = [int(n.rpartition("#")[2]) for n in names]
    if collection is None or max(indices) >= len(collection):
        return None
    return ImageSource(spec, root, tuple(paths), collection), indices


# --- folders --------------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: str) -> list[str]:
    """Absolute paths of the image files under ``folder`` (hidden entries skipped)."""
    return list(_iter_images(folder))


def _iter_images(folder: str) -> Iterator[str]:
    """:func:`_walk_images` one path at a time (a folder of millions is never a list of them)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        yield from (os.path.join(dirpath, f) for f in filenames if not _is_hidden(f) and _is_image_name(f))


def _make_source(spec: str, root: str, files: Iterable[str]) -> ImageSource:
    """Deduplicate, sort by relative posix path and freeze.

    The names under the root are kept as the OS's bytes while sorting: for valid UTF-8 their
    byte order is the order of the text (what :func:`_relposix` gives), so no second string per
    file is made. Names that are not UTF-8 (stored with ``\\xNN`` escapes, which sort otherwise)
    or files outside the root (cannot happen) take the general way."""
    root = os.path.abspath(root)
    prefix = root if root.endswith(os.sep) else root + os.sep
    names: set[bytes] = set()
    others: set[str] = set()  # absolute paths not under the root
    plain = os.sep == "/"
    for f in files:
        path = os.path.abspath(f)
        if path.startswith(prefix) and len(path) > len(prefix):
            rel = path[len(prefix):]
            plain = plain and (rel.isascii() or not undecodable(rel))
            names.add(rel.encode("utf-8", "surrogateescape"))
        else:
            others.add(path)
    if plain and not others:
        return ImageSource(spec=spec, root=Path(root), paths=PathList.from_names(root, sorted(names)))
    everything = [prefix + n.decode("utf-8", "surrogateescape") for n in names] + list(others)
    del names
    ordered = sorted(everything, key=lambda f: _relposix(f, root))
    return ImageSource(spec=spec, root=Path(root), paths=PathList.of(root, ordered))


def _resolve_folder(spec: str, folder: Path) -> ImageSource:
    source = _make_source(spec, str(folder), _iter_images(str(folder)))
    if not len(source):
        raise SourceError(
            f"no images found in folder {folder} "
            f"(searched recursively for {_extensions_text()}; hidden files skipped)"
        )
    return source


def _extensions_text() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))


# --- list files -----------------------------------------------------------------------------


def _resolve_list(spec: str, list_file: Path) -> ImageSource:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise SourceError(f"{list_file} is not a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise SourceError(f"cannot read list file {list_file}: {exc.strerror or exc}") from None

    base = os.path.abspath(list_file.parent)
    entries: list[str] = []
    for line in lines:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        item = os.path.expanduser(item)
        entries.append(os.path.abspath(os.path.join(base, item)))
    if not entries:
        raise SourceError(f"list file {list_file} names no paths (only blank lines or # comments)")

    files: list[str] = []
    existing = 0
    for entry in entries:
        if os.path.isdir(entry):
            files.extend(_walk_images(entry))
            existing += 1
        else:
            files.append(entry)  # kept even if missing or not an image: recorded as bad later
            existing += os.path.exists(entry)
    if existing == 0:
        raise SourceError(
            f"none of the {len(entries)} paths in {list_file} exists "
            f"(first: {entries[0]}); relative paths are read relative to {base}"
        )
    if not files:
        raise SourceError(f"the folders listed in {list_file} contain no images ({_extensions_text()})")
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    return _make_source(spec, root, files)


# --- globs ----------------------------------------------------------------------------------


def _resolve_glob(spec: str, pattern: str) -> ImageSource:
    absolute = os.path.abspath(pattern)
    parts = Path(absolute).parts
    prefix: list[str] = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        prefix.append(part)
    root = os.path.join(*prefix) if prefix else os.path.abspath(os.sep)
    files = [
        f
        for f in glob.glob(absolute, recursive=True)
        if not os.path.isdir(f) and _is_image_name(f) and not _has_hidden_part(f, root)
    ]
    if not files:
        raise SourceError(f"no images match the pattern {pattern} ({_extensions_text()})")
    return _make_source(spec, root, files)


def _has_hidden_part(path: str, root: str) -> bool:
    return any(_is_hidden(p) for p in _relposix(path, root).split("/"))


# --- Caltech-256 ----------------------------------------------------------------------------


def find_caltech_root(data_root: str | Path | None = None) -> Path:
    """Locate the ``256_ObjectCategories`` folder from ``data_root`` or ``$MINE_DATA_ROOT``.

    Accepts the folder itself, its parent, or torchvision's download layout
    ``<root>/caltech256/256_ObjectCategories``.
    """
    given = data_root if data_root not in (None, "") else os.environ.get(DATA_ROOT_ENV, "")
    if not given:
        raise SourceError(
            f"Caltech-256 location not set: pass --data-root DIR or set {DATA_ROOT_ENV}=DIR "
            f"(the folder that holds {CALTECH_DIRNAME}); to download it once, run "
            f"{_FETCH_HINT} ~/data"
        )
    root = Path(os.path.expanduser(str(given))).absolute()
    candidates = [root, root / CALTECH_DIRNAME, root / "caltech256" / CALTECH_DIRNAME]
    for cand in candidates:
        if cand.is_dir() and (cand.name == CALTECH_DIRNAME or _category_dirs(cand)):
            return cand
    source = "--data-root" if data_root not in (None, "") else DATA_ROOT_ENV
    raise SourceError(
        f"Caltech-256 not found under {root} ({source}): looked for {root / CALTECH_DIRNAME} "
        f"and {root / 'caltech256' / CALTECH_DIRNAME}; point --data-root or {DATA_ROOT_ENV} at "
        f"the folder that holds {CALTECH_DIRNAME}, or download it with {_FETCH_HINT} {root}"
    )


def _category_dirs(folder: Path) -> dict[str, tuple[int, str]]:
    """``{folder name: (number, name)}`` for the ``NNN.name`` sub-folders of ``folder``."""
    found: dict[str, tuple[int, str]] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        m = _CATEGORY_DIR.match(entry.name)
        if m and entry.is_dir():
            found[entry.name] = (int(m.group(1)), m.group(2))
    return found


def caltech_categories(data_root: str | Path | None = None) -> list[str]:
    """Folder names (``"001.ak47"``, ...) of the Caltech-256 categories, sorted."""
    return sorted(_category_dirs(find_caltech_root(data_root)))


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _resolve_caltech(spec: str, query: str, data_root: str | Path | None) -> ImageSource:
    categories_dir = find_caltech_root(data_root)
    categories = _category_dirs(categories_dir)
    if not categories:
        raise SourceError(f"{categories_dir} holds no Caltech-256 category folders (NNN.name)")
    q = _norm(query.strip("/"))
    if not q:
        raise SourceError("caltech/ needs a category: a name (caltech/dog), a number (caltech/56) or all")

    if q == "all":
        chosen = sorted(categories)
    else:
        chosen = _match_category(q, categories)
        if not chosen:
            raise SourceError(_unknown_category_message(query, q, categories, categories_dir))

    files: list[str] = []
    for folder in chosen:
        files.extend(_walk_images(str(categories_dir / folder)))
    if not files:
        raise SourceError(
            f"no images found in {categories_dir / chosen[0]}"
            + (f" and {len(chosen) - 1} other categories" if len(chosen) > 1 else "")
        )
    return _make_source(spec, str(categories_dir), files)


def _match_category(q: str, categories: dict[str, tuple[int, str]]) -> list[str]:
    if q.isdigit():
        return [d for d, (num, _) in categories.items() if num == int(q)]
    by_folder = [d for d in categories if d.lower() == q]
    if by_folder:
        return by_folder
    by_name = [d for d, (_, name) in categories.items() if _norm(name) == q]
    if by_name:
        return by_name
    # Caltech-256 inherited a few classes from Caltech-101 and suffixed them "-101".
    return [d for d, (_, name) in categories.items() if _norm(name) == q + "-101"]


def _unknown_category_message(
    query: str, q: str, categories: dict[str, tuple[int, str]], categories_dir: Path
) -> str:
    if q.isdigit():
        numbers = sorted(num for num, _ in categories.values())
        return (
            f"no Caltech-256 category number {int(q)} in {categories_dir} "
            f"(numbers run {numbers[0]}..{numbers[-1]})"
        )
    names = sorted({_norm(name) for _, name in categories.values()})
    close = difflib.get_close_matches(q, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    sample = ", ".join(names[:6])
    return (
        f"unknown Caltech-256 category {query.strip('/')!r}; {hint}"
        f"categories include {sample}, ... ({len(names)} in {categories_dir}); "
        f"use a name, a number (caltech/56) or caltech/all"
    )


def _caltech_typo_hint(text: str) -> str:
    head = text.split("/", 1)[0].lower()
    if "/" in text and head not in ("caltech", "caltech256"):
        if difflib.get_close_matches(head, ["caltech", "caltech256"], n=1, cutoff=0.7):
            return " (for Caltech-256 write caltech/<category>)"
    return ""
