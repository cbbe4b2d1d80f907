"""TOML manifests and the one loader that turns them into frozen dataclasses."""

from manifests.loader import (
    Fraction,
    ManifestError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    build,
    load,
    load_raw,
    parse_overrides,
    resolved_toml,
)

__all__ = [
    "Fraction",
    "ManifestError",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "build",
    "load",
    "load_raw",
    "parse_overrides",
    "resolved_toml",
]
