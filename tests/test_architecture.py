"""The package layout's rules, read from the source (every import, function-level ones included):

- no import cycle anywhere in ``manifests``, ``shards``, ``curate`` and ``train`` (importing
  ``a.b.c`` runs ``a/b/__init__.py``, so that counts as an import of ``a.b`` too);
- arrows between packages: ``manifests`` imports none of ours, ``shards`` only ``manifests``,
  ``curate`` and ``train`` only ``shards`` and ``manifests`` (the shard contract is their one
  join), save the named exceptions in ``EXCEPTIONS``;
- inside ``curate`` the layers point one way: the stage base imports no stage, the cluster
  settings and the shared decodes (``curate.decodes``) import nothing of curate, domain code
  (codec, dedup, ocr, concepts) imports no stage, Ray adapter or pipeline module;
- fenced code (``curate.demo``, ``train.experimental``) is never imported by the core;
- release formats build on the native one, never the other way.

How it fails, shown by planting a cycle: add ``from curate.stages import STAGES`` inside any
function of ``curate/stage.py`` and ``test_no_import_cycle`` fails with
``curate.stage -> curate.stages -> curate.stages.codec -> curate.stage``;
``test_the_checker_finds_a_planted_cycle`` does exactly that on a throwaway package, so the
checker itself is tested every run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("manifests", "shards", "curate", "train")
ALLOWED = {
    "manifests": set(),
    "shards": {"manifests"},
    "curate": {"shards", "manifests"},
    "train": {"shards", "manifests"},
}
# (importer prefix, imported prefix): arrows the rules above would forbid, each with its reason
EXCEPTIONS = {
    # the released HF processor cuts codec tokens from a video file exactly as curation does
    ("train.release.processing", "curate.codec"),
    # the experiment fits its small video bank with curate's k-means; it curates through the CLI
    ("train.experimental", "curate.concepts.kmeans"),
    # `python -m curate demo-corpus | motion-bench`: the command line reaches the fenced generators
    ("curate.__main__", "curate.demo"),
}
FENCED = ("curate.demo", "train.experimental")
DOMAIN = ("curate.codec", "curate.dedup", "curate.ocr", "curate.concepts")
APP = ("curate.stage", "curate.stages", "curate.ray_runner", "curate.pipeline", "curate.report", "curate.sink")
APP += ("curate.sources", "curate.sources_shards", "curate.sources_tables", "curate.listing")
APP += ("curate.config", "curate.ledger", "curate.__main__")
CLIS = ("curate.codec.cli", "curate.concepts.cli")  # command lines living beside their domain code


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _targets(name: str, path: Path, node: ast.AST, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = name.split(".")[: None if path.name == "__init__.py" else -1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for target in wanted:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            out.append(target)
    return out


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> modules it imports (anywhere in the file), with the packages each import runs."""
    known = modules(root, packages)
    graph = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(name, path, node, known):
                parents = [target.rsplit(".", k)[0] for k in range(1, target.count(".") + 1)]
                own = {name.rsplit(".", k)[0] for k in range(name.count(".") + 1)}
                graph[name] |= {target, *(p for p in parents if p in known and p not in own)} - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

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
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                cycles.append(_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path through a component, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        step = next((w for w in nxt if w == start), None) or next((w for w in nxt if w not in seen), nxt[0])
        path.append(step)
        if step in seen:
            return path
        seen.add(step)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _excepted(a: str, b: str) -> bool:
    """``a -> b`` is a named exception, or runs a package ``__init__`` on the way to one."""
    return any(_within(a, x) and (_within(b, y) or y.startswith(b + ".")) for x, y in EXCEPTIONS)


def _arrows(graph):
    return [(a, b) for a, targets in sorted(graph.items()) for b in sorted(targets)]


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_packages_import_only_what_the_layout_allows():
    bad = [
        f"{a} -> {b}"
        for a, b in _arrows(import_graph())
        if b.split(".")[0] != a.split(".")[0]
        and b.split(".")[0] not in ALLOWED[a.split(".")[0]]
        and not _excepted(a, b)
    ]
    assert not bad, "forbidden arrows between packages:\n" + "\n".join(bad)


def test_curate_layers_point_one_way():
    graph = import_graph()
    rules = [
        ("curate.stage", lambda b: _within(b, "curate") and b not in ("curate", "curate.isolation", "curate.decodes")),
        ("curate.cluster", lambda b: _within(b, "curate") and b != "curate"),
        ("curate.decodes", lambda b: _within(b, "curate") and b != "curate"),
        ("curate.media", lambda b: _within(b, "curate") and b != "curate"),
    ]
    rules += [(d, lambda b: any(_within(b, x) for x in APP)) for d in DOMAIN]
    bad = [
        f"{a} -> {b}"
        for prefix, forbidden in rules
        for a, b in _arrows(graph)
        if _within(a, prefix) and a not in CLIS and forbidden(b) and not _excepted(a, b)
    ]
    assert not bad, "arrows against curate's layers:\n" + "\n".join(bad)


def test_fenced_code_is_not_imported_by_the_core():
    bad = [
        f"{a} -> {b}"
        for a, b in _arrows(import_graph())
        for fence in FENCED
        if _within(b, fence) and not _within(a, fence) and not _excepted(a, b)
    ]
    assert not bad, "the core imports fenced code:\n" + "\n".join(bad)


def test_release_formats_build_on_the_native_one():
    """hf and ONNX releases build on the native format; only the release CLI reaches all three, so
    ``import train.release`` never loads transformers or ONNX."""
    graph = import_graph()
    formats = {"train.release.hf", "train.release.onnx", "train.release.__main__"}
    for name in ("train.release", "train.release.native", "train.release.processing", "train.release.modeling"):
        assert not graph[name] & formats, f"{name} imports {sorted(graph[name] & formats)}"
    assert "train.release.processing" not in graph["train.release.native"]


def test_the_checker_finds_a_planted_cycle(tmp_path):
    """A cycle through a function-level import and a package ``__init__`` is found and named."""
    pkg = tmp_path / "curate"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("def build():\n    from curate.stages import STAGES\n    return STAGES\n")
    (pkg / "stages" / "__init__.py").write_text("from curate.stages.codec import Codec\nSTAGES = {'codec': Codec}\n")
    (pkg / "stages" / "codec.py").write_text("from curate.stage import build\n\nclass Codec:\n    pass\n")
    (pkg / "media.py").write_text("import curate.stage\n")  # imports into the cycle, is not part of it
    cycles = find_cycles(import_graph(tmp_path, ("curate",)))
    assert cycles == [["curate.stage", "curate.stages", "curate.stages.codec", "curate.stage"]]
    (pkg / "stage.py").write_text("def build():\n    return {}\n")
    assert find_cycles(import_graph(tmp_path, ("curate",))) == []
