"""TOML manifests and the one loader that turns them into frozen dataclasses."""

from manifests.loader import ManifestError, build, load, load_raw, parse_overrides, resolved_toml

__all__ = ["ManifestError", "build", "load", "load_raw", "parse_overrides", "resolved_toml"]
