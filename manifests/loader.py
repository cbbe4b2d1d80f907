"""The one config path: TOML -> ``base`` inheritance -> ``${VAR}`` roots -> overrides -> dataclasses.

Every builder receives only its own section, as a frozen dataclass; unknown keys and wrong types
are errors that name the file, the dotted key and the valid choices, so a typo never silently
becomes a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ManifestError(ValueError):
    """A manifest (or an override) that cannot be turned into a config; the message says where."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric key, as ``Annotated`` metadata: ``size: Annotated[int, Range(1)]``.

    Bounds are inclusive; ``above`` is an exclusive lower bound (a strictly positive float).
    """

    lo: float | None = None
    hi: float | None = None
    above: float | None = None

    def problem(self, value: float) -> str | None:
        if self.above is not None and not value > self.above:
            return f"{value!r} must be greater than {self.above!r}"
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            lo = "" if self.lo is None else f"{self.lo!r} <= "
            hi = "" if self.hi is None else f" <= {self.hi!r}"
            return f"{value!r} is out of range: expected {lo}value{hi}"
        return None


PositiveInt = typing.Annotated[int, Range(1)]
NonNegativeInt = typing.Annotated[int, Range(0)]
PositiveFloat = typing.Annotated[float, Range(above=0.0)]
NonNegativeFloat = typing.Annotated[float, Range(0.0)]
Fraction = typing.Annotated[float, Range(0.0, 1.0)]


def load_raw(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a TOML file, merging it over the file named by its ``base`` key (recursively)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ManifestError(f"{path}: 'base' inheritance loops through {[str(p) for p in _seen]}")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ManifestError(f"{path}: 'base' must be a path string, got {type(base).__name__}")
    parent = load_raw(path.parent / base, _seen + (path,))
    return _merge(parent, data)


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge tables; lists and scalars in ``over`` replace those in ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def expand_vars(value: Any, env: typing.Mapping[str, str] | None = None, where: str = "") -> Any:
    """Replace ``${VAR}`` (or ``${VAR:-default}``) in every string from the environment."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_vars(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, env, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ManifestError(f"{where}: ${{{name}}} is not set in the environment")

    return _VAR.sub(sub, value)


def parse_overrides(args: typing.Iterable[str]) -> dict[str, Any]:
    """``--optim.lr=3e-4`` -> ``{"optim.lr": 3e-4}``; values are read as TOML, else as strings."""
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ManifestError(f"override {arg!r}: expected --dotted.key=value")
        key, text = arg[2:].split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


def apply_overrides(data: dict, overrides: typing.Mapping[str, Any]) -> dict:
    """Set dotted keys (``stages.0.size`` indexes lists) in a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_index(node, part, dotted)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, dotted)] = value
        else:
            node[last] = value
    return data


def _index(seq: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(seq):
        raise ManifestError(f"override {dotted}: {part!r} is not an index below {len(seq)}")
    return int(part)


def build(cls: type, data: Any, where: str = "", source: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    prefix = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ManifestError(f"{prefix}{where or 'manifest'}: expected a table, got {_tname(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ManifestError(f"{prefix}unknown key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key, source)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ManifestError(f"{prefix}{where or 'manifest'}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{prefix}{where or 'manifest'}: {exc}") from None


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    prefix = f"{source}: " if source else ""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        value = _coerce(args[0], value, key, source)
        for rule in tp.__metadata__:
            problem = rule.problem(value) if isinstance(rule, Range) and value is not None else None
            if problem:
                raise ManifestError(f"{prefix}{key}: {problem}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ManifestError as exc:
                errors.append(str(exc))
        raise ManifestError(errors[-1] if errors else f"{prefix}{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ManifestError(f"{prefix}{key}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ManifestError(f"{prefix}{key}: expected a list, got {_tname(value)}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}.{i}", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{prefix}{key}: expected a table, got {_tname(value)}")
        return types.MappingProxyType({k: _coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()})
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ManifestError(f"{prefix}{key}: expected {tp.__name__}, got {_tname(value)} {value!r}")
        return value
    raise ManifestError(f"{prefix}{key}: unsupported field type {tp!r}")


def _tname(value: Any) -> str:
    return {dict: "table", list: "list", str: "string"}.get(type(value), type(value).__name__)


def load(cls: type, path: str | os.PathLike, overrides: typing.Mapping[str, Any] | None = None, env=None):
    """Load ``path`` into dataclass ``cls``: inheritance, roots, overrides, validation."""
    raw = load_raw(path)
    raw = apply_overrides(raw, overrides or {})
    try:
        raw = expand_vars(raw, env)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return build(cls, raw, source=str(path))


def to_dict(config: Any) -> Any:
    """A dataclass config as plain TOML-able data (``None`` values dropped)."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: to_dict(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        }
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, types.MappingProxyType | dict):
        return {k: to_dict(v) for k, v in config.items() if v is not None}
    return config


def resolved_toml(config: Any) -> str:
    """Serialise a resolved config as TOML, headed by the git revision that produced it."""
    return f"# git revision: {git_revision()}\n" + _dumps(to_dict(config))


def git_revision() -> str:
    """The checkout's HEAD (with ``-dirty`` when the tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _dumps(data: dict, prefix: str = "") -> str:
    """Minimal TOML writer for config data (tables, arrays of tables, scalars, lists)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value, is_array in tables:
        name = f"{prefix}{_key(key)}"
        if is_array:
            for item in value:
                out += f"\n[[{name}]]\n" + _dumps(item, name + ".")
        else:
            out += f"\n[{name}]\n" + _dumps(value, name + ".")
    return out


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
