"""The docs cannot go stale: docs/cli.md is the CLI's help, docs/store.md names every part of the store.

References: the CLI's own --help pages (regenerated in memory), the layout declared in
``pipeline/store/schema.py`` (its docstring and ``validate.py``'s tables), an actual store written
by ``mine run`` walked with h5py, and the codes of ``pipeline/exitcodes.py``.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import h5py

from pipeline import exitcodes
from pipeline.store import schema, validate

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_up_to_date():
    gen = _gen_cli_docs()
    text = gen.render()
    assert (DOCS / "cli.md").read_text() == text, "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
    for name in gen.command_names():  # every command has its section, with its own usage line
        assert f"## mine {name}\n" in text and f"Usage: mine {name} " in text


def _strip_parentheses(text: str) -> str:
    while True:
        out = re.sub(r"\([^()]*\)", " ", text)
        if out == text:
            return out
        text = out


def schema_names() -> tuple[set[str], set[str]]:
    """(dataset/group paths, attribute names) that pipeline/store/schema.py's layout declares."""
    doc = schema.__doc__
    paths: set[str] = set()
    attrs: set[str] = set(re.findall(r"attrs?\s+``(\w+)``", doc))  # "(attr ``pooled`` lists them)"
    entries = re.findall(r"^ {4}(/.*\n(?: {5,}.*\n)*)", doc, re.M)  # a path line and its indented continuation
    for entry in entries:
        m = re.match(r"(/[\w<>/]*)((?:, \w+)*)", entry)
        first = m.group(1)
        paths.add(first)
        paths.update(first.rsplit("/", 1)[0] + "/" + sib for sib in re.findall(r"\w+", m.group(2)))
        listed = re.search(r"\battrs?:?\s+(.*)", _strip_parentheses(entry), re.S)
        for piece in re.split(r"[,;]", listed.group(1)) if listed else []:
            words = piece.split("=")[0].split()
            if "also" in words:  # "decoder layers also period"
                words = words[words.index("also") + 1:]
            if not words or not re.fullmatch(r"[a-z_]+", words[0]):
                break
            attrs.add(words[0])
            if len(words) > 1:  # "edges float64": the list ended with this name
                break
    attrs.update(validate.JSON_ATTRS)
    paths.update(f"/images/{c}" for c in validate.IMAGE_COLUMNS)
    paths.update(f"/layers/<name>/{a}" for a in validate.LAYER_ARRAYS)
    return paths, attrs


def _placeholders(text: str) -> str:
    return re.sub(r"<\w+>", "<>", text)


def test_schema_parser_finds_the_layout():
    """Guard against a parser that finds nothing: names counted by hand from schema.py."""
    paths, attrs = schema_names()
    assert {"/", "/images/path", "/images/width", "/images/height", "/images/label", "/images/pooled_<L>", "/embed/<L>",
            "/kept/pixels", "/switches/<pool>", "/layers/<name>/y", "/layers/<name>/x", "/layers/<name>/hist",
            "/layers/<name>/fires", "/stats"} <= paths
    assert {"format", "schema_version", "weights_hash", "inputs_id", "images_skipped", "kernel", "dilation", "module",
            "out_size", "period", "box_lo", "box_hi", "edges", "bins_version", "grid", "pooled"} <= attrs
    assert not attrs & {"the", "float64", "decoder", "layers_also"}


def test_store_doc_names_every_part_of_the_schema():
    doc = (DOCS / "store.md").read_text()
    paths, attrs = schema_names()
    missing = [p for p in sorted(paths) if f"`{_placeholders(p)}`" not in _placeholders(doc)]
    assert not missing, f"docs/store.md does not name these datasets/groups: {missing}"
    missing = [a for a in sorted(attrs) if f"`{a}`" not in doc]
    assert not missing, f"docs/store.md does not name these attributes: {missing}"


def test_store_doc_names_every_part_of_a_real_store(full):
    """Every group, dataset and attribute of a store `mine run` wrote appears in docs/store.md."""
    doc = _placeholders((DOCS / "store.md").read_text())
    found: dict[str, set[str]] = {}
    with h5py.File(full, "r") as f:
        found["/"] = set(f.attrs)

        def visit(name, obj):
            parts = name.split("/")
            if parts[0] in ("layers", "switches") and len(parts) > 1:
                parts[1] = "<>"
            found.setdefault("/" + "/".join(parts), set()).update(obj.attrs)

        f.visititems(visit)
    assert any(p.startswith("/switches/") for p in found) and "/layers/<>/hist" in found
    for path, names in found.items():
        assert f"`{path}`" in doc, f"docs/store.md does not name {path}"
        for a in names:
            assert f"`{a}`" in doc, f"docs/store.md does not name attribute {a} of {path}"


def test_operations_doc_lists_every_exit_code():
    doc = (DOCS / "operations.md").read_text()
    codes = {n: v for n, v in vars(exitcodes).items() if n.isupper() and isinstance(v, int)}
    assert len(codes) >= 7
    for name, value in codes.items():
        assert re.search(rf"^\| {value} \| {name} \|", doc, re.M), f"docs/operations.md lacks exit code {value} {name}"


def _anchors(md: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", md, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_and_image_resolves():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert len(pages) >= 10
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, frag = link.partition("#")
            target = page.parent / path if path else page
            if not target.exists() or (frag and target.suffix == ".md" and frag not in _anchors(target.read_text())):
                broken.append(f"{page.name}: {link}")
    assert not broken, broken


def test_readme_gives_the_one_test_command_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/test.sh" in readme
    assert len(readme.splitlines()) <= 220, "README grows: move reference material to docs/"


def test_every_figure_is_made_by_a_script():
    """Each picture README.md or docs/ shows is remade by scripts/readme_figures.sh or scripts/digits_demo.py (which
    name it), and no picture sits in docs/img unused."""
    shown = set()
    for doc in [ROOT / "README.md", *DOCS.glob("*.md")]:
        shown.update(Path(m).name for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text()))
    makers = (ROOT / "scripts" / "readme_figures.sh").read_text() + (ROOT / "scripts" / "digits_demo.py").read_text()
    made = {name for name in shown if name in makers or (name.startswith("digits_") and "docs/img" in makers)}
    assert shown - made == set(), "figures no script makes"
    assert {p.name for p in (DOCS / "img").iterdir()} == shown, "docs/img holds exactly the figures shown"
