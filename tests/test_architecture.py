"""The layer map of docs/architecture.md, checked: imports point down the map and never form a cycle.

Every ``import`` and ``from ... import`` in ``pipeline/`` is read with ``ast`` -- at module level and
inside functions alike, so a lazy import cannot hide a cycle -- and resolved to the module it loads.
Importing ``pipeline.a.b`` also runs ``pipeline/a/__init__.py``, so each import counts as an import
of its enclosing packages too (all but the root ``pipeline``, the API facade every import passes).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# docs/architecture.md "The layer map", bottom first: a module may import its own layer and those
# before it, never one after it.
LAYERS = [
    ["pipeline.durable", "pipeline.devices", "pipeline.exitcodes", "pipeline.versions", "pipeline.allocator",
     "pipeline.job_errors", "pipeline.faults", "pipeline.lock", "pipeline.signals"],
    ["pipeline.pictures"],
    ["pipeline.data"],
    ["pipeline.models"],
    ["pipeline.mining"],
    ["pipeline.store"],
    ["pipeline.runner", "pipeline.config", "pipeline.jobs"],
    ["pipeline.deconv"],
    ["pipeline.visualize"],
    ["pipeline.render"],
    ["pipeline.analyses"],
    ["pipeline", "pipeline.cli", "pipeline.__main__"],
]
# Downward imports the map still rules out: deconv works on a network and pixels, never a store
# or the mining pass (forward hooks live in models/); render takes its lock and signal handling
# from the low-level modules, not from the job machinery.
FORBIDDEN = [("pipeline.deconv", "pipeline.store"), ("pipeline.deconv", "pipeline.mining"),
             ("pipeline.render", "pipeline.jobs")]


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every import of a pipeline module, implied packages included."""
    edges = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from pkg import sub`` loads the submodule; ``from mod import name`` loads mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t != "pipeline" and not t.startswith("pipeline."):
                    continue
                assert t in mods, f"{path}:{node.lineno} imports {t}, which is not a module of pipeline/"
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the enclosing packages run first
                    implied = ".".join(parts[:i])
                    if implied != name and not name.startswith(implied + "."):
                        edges.append((name, implied, node.lineno))
                if t == "pipeline" and name != "pipeline":
                    edges.append((name, t, node.lineno))
    return sorted(set(edges))


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{module} is in no layer of the map; add it to LAYERS and docs/architecture.md"
    return layer


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_lazy_relative_and_implied_imports(tmp_path, monkeypatch):
    """The walker itself, on a hand-made package whose imports are known."""
    pkg = tmp_path / "pipeline"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from pipeline.a import x\nimport os\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    mods = modules()
    assert set(mods) == {"pipeline", "pipeline.a", "pipeline.a.x", "pipeline.b"}
    edges = {(a, b) for a, b, _ in imports(mods)}
    assert edges == {("pipeline.a", "pipeline.a.x"), ("pipeline.a.x", "pipeline.b"),
                     ("pipeline.b", "pipeline.a"), ("pipeline.b", "pipeline.a.x")}
    assert cycles(imports(mods)) == [["pipeline.a", "pipeline.a.x", "pipeline.b"]]


def test_no_import_cycles():
    found = cycles(imports(modules()))
    assert not found, "import cycles between modules of pipeline/:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layer_map():
    up = [f"{a} (line {line}) imports {b}: layer {layer_of(a)} -> {layer_of(b)}"
          for a, b, line in imports(modules()) if layer_of(b) > layer_of(a)]
    assert not up, "imports pointing up the layer map of docs/architecture.md:\n" + "\n".join(up)


def test_no_forbidden_imports():
    bad = [f"{a} (line {line}) imports {b}" for a, b, line in imports(modules())
           for low, high in FORBIDDEN if _under(a, low) and _under(b, high)]
    assert not bad, "\n".join(bad)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_private_names_imported_from_another_module():
    """A name used by another module is part of its home's interface: public, without a leading ``_``."""
    bad = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                bad += [f"{name} (line {node.lineno}) imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def test_the_map_in_the_docs_names_every_layer():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for prefixes in LAYERS:
        for p in prefixes:
            short = p.removeprefix("pipeline.").replace(".", "/")
            assert short == "pipeline" or short in doc, f"{short} is not in docs/architecture.md's map"


def test_no_two_modules_share_a_name():
    """A name says what a module is: two ``project.py`` or two ``run.py`` make a reader ask which one is meant."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    seen: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*.py")):
        if p.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(p.name, []).append(str(p.relative_to(root)))
    assert {n: ps for n, ps in seen.items() if len(ps) > 1} == {}


def test_every_module_says_why():
    """Each module opens with a docstring: a newcomer reads why it exists before reading how."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    missing = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
               if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


MAX_LINES = 60  # a function a reader holds in view; longer ones are steps waiting for names


def test_no_function_over_sixty_lines():
    """Every function of pipeline/ fits in ``MAX_LINES`` lines of body (its docstring not counted). The parameter limit is
    ruff's PLR0913 (max-args 6, cli.py exempt: a command takes one parameter per option)."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    long = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                lines = node.end_lineno - body[0].lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{p.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def store_file_uses(source: str) -> list[int]:
    """Lines where code reads an attribute ``f`` (``s.f["kept/key"]``, ``store.f.attrs``, ``"label" in
    s.f["images"]``, ``self.store.f["switches"][pool]``): a ``Store``'s open HDF5 file, whose paths only
    ``pipeline/store/`` may know (its methods and ``store/schema.py``'s path constants). A plain name ``f``
    (``with h5py.File(p) as f``) is not an attribute and is not counted."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Attribute) and node.attr == "f" and isinstance(node.ctx, ast.Load)})


def test_the_store_file_check_sees_every_way_in():
    """Each way ``mine`` reached into a store's file before issue 22 (cli, heatmap, renderer, embed), and
    none of the ways that are fine."""
    caught = ['len(s.f["kept/key"])', 'if "label" in s.f["images"]: pass', 'int(s.f["stats"].attrs["images"])',
              'x = self.store.f["switches"][pool]', 'rows(store.f["images/path"], r)', 'store.f.attrs["k"]',
              'g = s.f\ng["layers"]']
    fine = ['s.kept_keys()', 'with h5py.File(p) as f:\n    f["kept/key"][()]', 'self.f = h5py.File(p)', 'f.attrs["k"]']
    assert [bool(store_file_uses(c)) for c in caught] == [True] * len(caught)
    assert [store_file_uses(c) for c in fine] == [[]] * len(fine)


def test_only_the_store_package_touches_a_store_file():
    """``store/`` owns the HDF5 layout: nothing outside it indexes ``store.f`` (issue 22)."""
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}" for name, path in modules().items()
           if not _under(name, "pipeline.store") for line in store_file_uses(path.read_text())]
    assert not bad, "reads a store's HDF5 file outside pipeline/store/ (add a Store method): " + ", ".join(bad)


def test_no_complexity_or_parameter_waiver_in_the_package():
    """Ruff's limits hold without exceptions in pipeline/: a waiver is a function waiting for its option object."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    waived = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
              for i, line in enumerate(p.read_text().splitlines(), 1) if "noqa: PLR0913" in line or "noqa: C901" in line]
    assert waived == []
