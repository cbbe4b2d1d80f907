"""The one config path: inheritance, roots, overrides, and every error names file, key and choices."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

import manifests
from manifests import ManifestError, load, parse_overrides
from manifests.loader import load_raw


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    kind: Literal["adamw", "sgd"] = "adamw"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    steps: int
    optim: Optim = Optim()
    tags: tuple[str, ...] = ()
    out: str | None = None


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_inheritance_deep_merges_tables_and_replaces_scalars(tmp_path):
    write(tmp_path, "base.toml", 'name = "base"\nsteps = 10\n[optim]\nlr = 0.1\nkind = "sgd"\n')
    child = write(tmp_path, "child.toml", 'base = "base.toml"\nsteps = 20\n[optim]\nlr = 0.5\n')
    cfg = load(Run, child)
    assert cfg == Run(name="base", steps=20, optim=Optim(lr=0.5, kind="sgd"))


def test_roots_from_environment_with_default(tmp_path):
    path = write(tmp_path, "r.toml", 'name = "${WHO}"\nsteps = 1\nout = "${ROOT:-/data}/x"\n')
    cfg = load(Run, path, env={"WHO": "me"})
    assert (cfg.name, cfg.out) == ("me", "/data/x")
    assert load(Run, path, env={"WHO": "me", "ROOT": "/r"}).out == "/r/x"


def test_dotted_overrides_are_typed_as_toml(tmp_path):
    path = write(tmp_path, "r.toml", 'name = "a"\nsteps = 1\ntags = ["x", "y"]\n')
    over = parse_overrides(["--optim.lr=3e-4", "--steps=7", "--out=out/run", "--tags.1=z"])
    cfg = load(Run, path, over)
    assert cfg.optim.lr == 3e-4 and cfg.steps == 7 and cfg.out == "out/run" and cfg.tags == ("x", "z")


def test_float_field_accepts_int_but_int_field_rejects_float(tmp_path):
    assert load(Run, write(tmp_path, "a.toml", 'name = "a"\nsteps = 1\n[optim]\nlr = 1\n')).optim.lr == 1.0
    with pytest.raises(ManifestError, match=r"b\.toml: steps: expected int, got float"):
        load(Run, write(tmp_path, "b.toml", 'name = "a"\nsteps = 1.5\n'))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ('name = "a"\nsteps = 1\nstep = 2\n', r"unknown key 'step'; valid keys here: name, optim, out, steps, tags"),
        ('name = "a"\nsteps = 1\n[optim]\nlrr = 1.0\n', r"unknown key 'optim\.lrr'; valid keys here: kind, lr"),
        ('name = "a"\nsteps = "ten"\n', r"steps: expected int, got string 'ten'"),
        ('name = "a"\nsteps = 1\n[optim]\nkind = "adam"\n', r"optim\.kind: 'adam' is not one of 'adamw', 'sgd'"),
        ("steps = 1\n", r"missing required key 'name'"),
        ('name = "a"\nsteps = 1\noptim = 3\n', r"optim: expected a table, got int"),
        ('name = "a"\nsteps = [1\n', r"not valid TOML"),
        ('name = "${NOPE_NOT_SET}"\nsteps = 1\n', r"name: \$\{NOPE_NOT_SET\} is not set"),
    ],
)
def test_errors_name_the_file_key_and_choices(tmp_path, text, pattern):
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ManifestError, match=pattern) as info:
        load(Run, path, env={})
    assert "bad.toml" in str(info.value)


def test_missing_file_base_loop_and_bad_overrides(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_raw(tmp_path / "nope.toml")
    write(tmp_path, "a.toml", 'base = "b.toml"\n')
    write(tmp_path, "b.toml", 'base = "a.toml"\n')
    with pytest.raises(ManifestError, match="loops"):
        load_raw(tmp_path / "a.toml")
    with pytest.raises(ManifestError, match="expected --dotted.key=value"):
        parse_overrides(["steps=3"])
    path = write(tmp_path, "r.toml", 'name = "a"\nsteps = 1\ntags = ["x"]\n')
    with pytest.raises(ManifestError, match="not an index below 1"):
        load(Run, path, {"tags.4": "y"})
    with pytest.raises(ManifestError, match="unknown key 'optim.momentum'"):
        load(Run, path, {"optim.momentum": 0.9})


def test_resolved_toml_round_trips_with_git_revision(tmp_path):
    cfg = Run(name='q"uote', steps=3, optim=Optim(lr=0.25), tags=("a",))
    text = manifests.resolved_toml(cfg)
    assert text.startswith("# git revision: ")
    path = write(tmp_path, "resolved.toml", text)
    assert load(Run, path) == cfg


def test_demo_manifest_and_stage_parameters_are_validated(tmp_path):
    from curate.config import load_run

    cfg, stages = load_run("manifests/demo.toml", {"output.dir": str(tmp_path)})
    assert cfg.output.dir == str(tmp_path) and [s.name for s in stages][:2] == ["image_decode", "ocr_text"]
    valid = "isolate, mode, quality, retries, size, timeout_s"  # the stage's own fields + the fault policy
    with pytest.raises(ManifestError, match=rf"stages\.0\[image_decode\]\.sise.*valid keys here: {valid}"):
        load_run("manifests/demo.toml", {"stages.0.sise": 3})
    with pytest.raises(ManifestError, match=r"unknown stage 'imgae_decode'; valid stages: .*image_decode"):
        load_run("manifests/demo.toml", {"stages.0.name": "imgae_decode"})
    with pytest.raises(ManifestError, match=r"stages\.0\[image_decode\]\.size: expected int, got string"):
        load_run("manifests/demo.toml", {"stages.0.size": "big"})
