"""A Python environment holding only named distributions and what they require: the release test's
"clean virtual environment", made of links into this one instead of a second install of torch.

Each distribution's top-level files (packages, modules, its ``.dist-info``, shared-library folders)
are linked into one folder; the interpreter runs isolated (``-I``, no user or project site) with only
that folder and the standard library on its path, so ovforge and everything it pulls in beyond these
distributions cannot be imported.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement


def closure(roots: list[str]) -> set[str]:
    """The roots and every distribution their unconditional requirements name, recursively."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                try:
                    md.distribution(req.name)
                except md.PackageNotFoundError:
                    continue  # optional on this platform (not installed here, so not needed either)
                todo.append(req.name)
    return seen


def build(folder: Path, roots: list[str]) -> Path:
    """Link the closure of ``roots`` into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(closure(roots)):
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            link, target = folder / top, base / top
            if target.exists() and not link.exists():
                link.symlink_to(target)
    return folder


def command(folder: Path, code: str) -> list[str]:
    """Run ``code`` isolated, with ``folder`` as the only site of third-party packages."""
    prelude = f"import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{str(folder)!r}]\n"
    return [sys.executable, "-I", "-c", prelude + code]
