"""Copy the project's own modules into an ``hf`` release, so transformers loads it without ovforge.

transformers' remote code (``trust_remote_code=True``) imports ``modeling_ovforge.py`` and
``processing_ovforge.py`` from the release folder, together with the files beside them that they
import in the form ``from .name import ...`` (the only form it finds and copies). So at release
time this step follows every import of an ovforge package (``curate``, ``shards``, ``train``,
``manifests``; function-level imports too) from the two entry modules, writes each module once as
a flat file named after its dotted path (``train.packing`` -> ``train_packing.py``), and rewrites
those import statements to that relative form; nothing else in a file changes. The released code
is the code that curated and trained, at the release's revision: no second implementation to keep
in step. What the copies import besides one another must be third-party (torch, numpy, av, numba,
scipy, PIL, transformers); heavier ones (boto3 for ``s3://`` videos) only inside the functions
that need them.

Refused, with the module named: ``import pkg.module`` and ``from pkg import module`` (transformers
would not copy the module; import its names), and relative imports in the sources.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

OURS = ("curate", "shards", "train", "manifests")
ENTRIES = {"train.release.modeling": "modeling_ovforge", "train.release.processing": "processing_ovforge"}


class BundleError(ValueError):
    """A source module the copy step cannot turn into a release file."""


def flat_name(module: str, entries: dict[str, str]) -> str:
    return entries.get(module) or module.replace(".", "_")


def _spec(module: str):
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise BundleError(f"{module}: not found")
    return spec


def _is_submodule(package: str, name: str) -> bool:
    spec = _spec(package)
    if spec.submodule_search_locations is None:
        return False
    return any(
        (Path(d) / name).with_suffix(".py").is_file() or (Path(d) / name).is_dir()
        for d in spec.submodule_search_locations
    )


def rewrite(module: str, source: str, entries: dict[str, str]) -> tuple[str, list[str]]:
    """``source`` with its ovforge imports made relative to flat files; the modules it imports."""
    lines = source.splitlines(keepends=True)
    edits, needed = [], []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in OURS for a in node.names):
            raise BundleError(f"{module}, line {node.lineno}: `import {node.names[0].name}`; import its names instead")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            raise BundleError(f"{module}, line {node.lineno}: relative import; use the absolute module name")
        if node.module.split(".")[0] not in OURS:
            continue
        modules = [a.name for a in node.names if _is_submodule(node.module, a.name)]
        if modules:
            raise BundleError(
                f"{module}, line {node.lineno}: `from {node.module} import {', '.join(modules)}` imports "
                "modules, which transformers' remote code does not copy; import their names instead"
            )
        indent, after = lines[node.lineno - 1][: node.col_offset], lines[node.end_lineno - 1][node.end_col_offset :]
        if indent.strip() or after.strip().split("#")[0]:
            raise BundleError(f"{module}, line {node.lineno}: an import must stand on its own line(s)")
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        edits.append(
            (node.lineno, node.end_lineno, f"{indent}from .{flat_name(node.module, entries)} import {names}\n")
        )
        needed.append(node.module)
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1 : end] = [text]
    return "".join(lines), needed


def bundle(out: str | Path, entries: dict[str, str] = ENTRIES, revision: str = "unknown") -> list[str]:
    """Write ``entries`` and every ovforge module they import, transitively, into ``out``; the file names."""
    out = Path(out)
    todo, written = list(entries), {}
    while todo:
        module = todo.pop()
        if module in written:
            continue
        origin = Path(_spec(module).origin)
        text, needed = rewrite(module, origin.read_text(), entries)
        name = f"{flat_name(module, entries)}.py"
        if name in written.values():
            raise BundleError(f"{module}: its flat name {name} is taken by another module")
        note = f"# ovforge's {module} at revision {revision}, copied by train.release.bundle: edit that, not this.\n"
        (out / name).write_text(note + text)
        written[module] = name
        todo.extend(needed)
    return sorted(written.values())
