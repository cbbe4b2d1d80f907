"""``train.release.bundle``: the copy step turns ovforge imports into the relative ones transformers follows."""

import re

import pytest

from train.release.bundle import ENTRIES, BundleError, bundle, rewrite

# the only import form transformers' remote code copies files for (dynamic_module_utils.get_relative_imports)
TRANSFORMERS_FINDS = re.compile(r"^\s*from\s+\.(\S+)\s+import", re.M)


def test_imports_become_relative_to_flat_files_function_level_ones_included():
    source = (
        '"""doc."""\n\nfrom __future__ import annotations\n\nimport numpy as np\n\n'
        "from train.packing import (\n    CLIP_MEAN,\n    pack as packed,\n)\n\n\n"
        "def f():\n    from shards.format import encode_json  # lazy\n\n    return encode_json, np\n"
    )
    text, needed = rewrite("m", source, ENTRIES)
    assert needed == ["train.packing", "shards.format"]
    assert "from .train_packing import CLIP_MEAN, pack as packed\n" in text
    assert "    from .shards_format import encode_json\n" in text
    assert text.count("\n") == source.count("\n") - 3 and "import numpy as np" in text  # nothing else changes
    assert TRANSFORMERS_FINDS.findall(text) == ["train_packing", "shards_format"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("from shards import fields\n", "imports modules"),
        ("import train.packing\n", "import its names"),
        ("from .packing import pack\n", "relative import"),
        ("x = 1; from train.packing import pack\n", "its own line"),
    ],
)
def test_forms_transformers_would_not_copy_are_refused(line, why):
    with pytest.raises(BundleError, match=why):
        rewrite("m", line, ENTRIES)


def test_the_release_code_reaches_every_file_it_needs(tmp_path):
    """Every relative import names a written file, and every written file is reached from the entries."""
    names = bundle(tmp_path, revision="abc")
    assert {"modeling_ovforge.py", "processing_ovforge.py"} <= set(names)
    reached, todo = set(), ["modeling_ovforge", "processing_ovforge"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += TRANSFORMERS_FINDS.findall((tmp_path / f"{name}.py").read_text())
    assert {f"{n}.py" for n in reached} == set(names) == {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "train_model.py").read_text().startswith("# ovforge's train.model at revision abc")
