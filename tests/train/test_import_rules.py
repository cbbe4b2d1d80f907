"""The trainer's import rules, read from the source: shards and manifests are its only joins to curation."""

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "train"

# the one exception in the core: a raw video file at inference goes through curate.codec
CORE_CURATE = {("release/processing.py", "curate.codec")}
# experiments drive curation through its CLI; k-means over arrays has no command
EXPERIMENTAL_CURATE = {"curate.concepts.kmeans"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def modules(core: bool) -> dict[str, set[str]]:
    files = sorted(TRAIN.rglob("*.py"))
    return {
        str(f.relative_to(TRAIN)): imports(f)
        for f in files
        if (f.relative_to(TRAIN).parts[0] != "experimental") == core
    }


def test_the_core_imports_curate_only_for_the_release_processor_and_never_the_experiments():
    for name, used in modules(core=True).items():
        assert not {m for m in used if m.startswith("train.experimental")}, name
        curate = {m for m in used if m == "curate" or m.startswith("curate.")}
        assert curate <= {m for n, m in CORE_CURATE if n == name}, (name, curate)


def test_release_formats_build_on_native_never_the_other_way():
    used = {n: {m for m in ms if m.startswith("train.release")} for n, ms in modules(core=True).items()}
    assert used["release/native.py"] == set()
    assert used["release/__init__.py"] == {"train.release.native"}  # no transformers or ONNX on import
    assert used["release/processing.py"] == set()
    assert used["release/hf.py"] == {"train.release.native", "train.release.processing"}
    assert used["release/onnx.py"] == {"train.release.native", "train.release.processing"}
    assert not {"transformers", "onnxruntime", "onnxscript"} & modules(core=True)["release/native.py"]


def test_experiments_curate_through_the_command_line():
    for name, used in modules(core=False).items():
        curate = {m for m in used if m == "curate" or m.startswith("curate.")}
        assert curate <= EXPERIMENTAL_CURATE, (name, curate)
