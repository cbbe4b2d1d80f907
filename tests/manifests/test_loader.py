"""The one config path: inheritance, roots, overrides, and every error names file, key and choices."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

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
    valid = "background, isolate, max_pixels, mode, quality, retries, size, timeout_s"  # own fields + fault policy
    with pytest.raises(ManifestError, match=rf"stages\.0\[image_decode\]\.sise.*valid keys here: {valid}"):
        load_run("manifests/demo.toml", {"stages.0.sise": 3})
    with pytest.raises(ManifestError, match=r"unknown stage 'imgae_decode'; valid stages: .*image_decode"):
        load_run("manifests/demo.toml", {"stages.0.name": "imgae_decode"})
    with pytest.raises(ManifestError, match=r"stages\.0\[image_decode\]\.size: expected int, got string"):
        load_run("manifests/demo.toml", {"stages.0.size": "big"})


@pytest.mark.parametrize(
    ("override", "value", "message"),
    [
        ("stages.0.size", 0, r"stages\.0\[image_decode\]\.size: 0 is out of range: expected 1 <= value"),
        ("stages.0.size", -448, r"stages\.0\[image_decode\]\.size: -448 is out of range"),
        (
            "stages.0.quality",
            101,
            r"stages\.0\[image_decode\]\.quality: 101 is out of range: expected 1 <= value <= 100",
        ),
        ("stages.0.background", [255, 0, 256], r"stages\.0\[image_decode\]\.background\.2: 256 is out of range"),
        ("stages.0.background", [255, 255], r"stages\.0\[image_decode\]: background: give red, green and blue"),
        ("stages.0.retries", -1, r"stages\.0\[image_decode\]\.retries: -1 is out of range"),
        ("stages.3.budget", 0.0, r"stages\.3\[codec_patchify\]\.budget: 0\.0 must be greater than 0\.0"),
        ("stages.3.budget", 1.5, r"stages\.3\[codec_patchify\]\.budget: 1\.5 is out of range"),
        ("stages.3.fps", 0, r"stages\.3\[codec_patchify\]\.fps: 0\.0 must be greater than 0\.0"),
        ("stages.3.frames", 0, r"stages\.3\[codec_patchify\]\.frames: 0 is out of range"),
        ("stages.4.min_side", -1, r"stages\.4\[min_resolution\]\.min_side: -1 is out of range"),
        ("stages.5.max_ratio", 0.5, r"stages\.5\[aspect_ratio\]\.max_ratio: 0\.5 is out of range"),
        ("stages.11.min_mean_conf", 1.2, r"stages\.11\[ocr_filter\]\.min_mean_conf: 1\.2 is out of range"),
        ("stages.9.minhash_threshold", 0, r"stages\.9\[dedup_group\]\.minhash_threshold: 0\.0 must be greater"),
        ("stages.9.perceptual_max_bits", 129, r"stages\.9\[dedup_group\]\.perceptual_max_bits: 129 is out of range"),
        ("stages.13.k", 0, r"stages\.13\[concepts\]\.k: 0 is out of range"),
        ("partition_size", 0, r"partition_size: 0 is out of range"),
        ("ray.object_store_gb", 0, r"ray\.object_store_gb: 0\.0 must be greater than 0\.0"),
    ],
)
def test_nonsense_numbers_are_manifest_errors_that_name_the_key(tmp_path, override, value, message):
    from curate.config import load_run

    with pytest.raises(ManifestError, match=message):
        load_run("manifests/demo.toml", {"output.dir": str(tmp_path), override: value})


@dataclasses.dataclass(frozen=True)
class Sized:
    side: manifests.PositiveInt = 1
    share: manifests.Fraction | None = None
    pixel: Annotated[int, manifests.Range(0, 255)] = 0


def test_ranges_hold_for_plain_dataclasses_and_optional_values(tmp_path):
    path = write(tmp_path, "s.toml", "side = 3\nshare = 0.5\npixel = 255\n")
    assert load(Sized, path) == Sized(3, 0.5, 255)
    assert load(Sized, path, {"share": None}).share is None
    with pytest.raises(ManifestError, match=r"s\.toml: share: 2\.0 is out of range: expected 0\.0 <= value <= 1\.0"):
        load(Sized, path, {"share": 2})
