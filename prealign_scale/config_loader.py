"""The one config mechanism: a typed dataclass tree read from YAML, with dotted overrides and one-line errors.

Used by the run config (prealign_scale/config.py), the shard builder's config (data/build_config.py), the
evaluation config (eval/run_eval.py) and the sweep file (sweep.py: its line map). Every error is a
`ConfigError` with ONE message that names where the value came from and its key:

    configs/x.yaml:12: lm.stepz: unknown key; did you mean lm.steps?
    command line 'lm.steps=abc': lm.steps: expected int, got 'abc' (str)

The loader knows types, not meanings: value checks (ranges, choices, files) belong to each config's own
module. A leaf of the package: it imports nothing else of prealign_scale.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and its origin (file:line or override)."""


# ----------------------------------------------------------------------------------------------------------
# YAML with line numbers


def yaml_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    """Path of keys/indices -> 1-based line, for every node of a composed YAML document (``yaml.compose``)."""
    out: dict[tuple, int] = {}
    if node is None:
        return out
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            key = prefix + (str(knode.value),)
            out.update(yaml_lines(vnode, key))
            out[key] = knode.start_mark.line + 1  # a key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(yaml_lines(item, prefix + (i,)))
    return out


def read_yaml(path: str | Path, missing: str = "no such file") -> tuple[Any, dict[tuple, int]]:
    """(the parsed document, its line map) of a YAML file; a missing file or invalid YAML is one ConfigError
    naming ``path:line`` (``missing``: what to say when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {missing}")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    return raw, yaml_lines(root)


def where_of(path: str | Path, lines: dict[tuple, int], *keys) -> str:
    """``path:line`` of a key path (``path:?`` when the line is not known)."""
    return f"{path}:{lines.get(tuple(keys), '?')}"


# ----------------------------------------------------------------------------------------------------------
# keys and types


def unknown_key(key: str, known: list[str], where: str, what: str = "key", quoted: bool = False) -> ConfigError:
    """The error for a key that is not a field, suggesting the close names (else listing the known ones).

    ``quoted`` words it as ``unknown key 'x'; did you mean 'y'?`` (the flat eval config's wording); else
    ``x: unknown key; did you mean y?``.
    """
    close = difflib.get_close_matches(key, known, n=3 if not quoted else 1, cutoff=0.6)
    if quoted:
        return ConfigError(f"{where}: unknown {what} {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"{where}: {key}: unknown {what}{hint}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(key: str, value: Any, hint: Any, where: str) -> Any:
    """Return `value` converted to the field type `hint`, or raise ConfigError naming `key`.

    Knows bool, int, float (an int or a YAML string such as ``5e-4`` is taken), str, ``X | None``,
    ``list[X]``, ``dict[str, X]`` and the bare ``list`` / ``dict`` / ``Any``.
    """
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {key}: must not be null (expected {_name(base)})")
    origin = typing.get_origin(base)
    if base is Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif (base is list or origin is list) and isinstance(value, list):
        (item,) = typing.get_args(base) or (Any,)
        return [check_type(f"{key}[{i}]", v, item, where) for i, v in enumerate(value)]
    elif (base is dict or origin is dict) and isinstance(value, dict):
        _, item = typing.get_args(base) or (Any, Any)
        return {str(k): check_type(f"{key}.{k}", v, item, where) for k, v in value.items()}
    got = f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{where}: {key}: expected {'null or ' if optional else ''}{_name(base)}, got {got}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def fill(cls: type, values: dict, where_of_key, prefix: str = "", quoted: bool = False) -> dict:
    """Check a mapping of field values for dataclass `cls`: known keys, right types. Returns the converted
    values (a dict for ``cls(**values)`` or ``dataclasses.replace``). ``where_of_key(name)`` says where a key
    came from (``file:line``)."""
    types_ = field_types(cls)
    out = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise unknown_key(key if not quoted else str(name), [f"{prefix}{n}" for n in types_],
                              where_of_key(name), quoted=quoted)
        out[name] = check_type(key, value, types_[name], where_of_key(name))
    return out


# ----------------------------------------------------------------------------------------------------------
# dotted overrides (section.key=value)


def parse_override(item: str) -> tuple[str, Any]:
    """``section.key=value`` -> (``section.key``, the YAML value); a malformed item is a ConfigError."""
    if "=" not in item:
        raise ConfigError(f"command line: {item!r}: an override must look like section.key=value (e.g. lm.steps=20)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"command line: {item!r}: the key must be section.key (e.g. lm.steps), got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(root, key: str, value: Any, where: str) -> None:
    """Set ``section.key`` of a two-level dataclass tree (root -> section dataclasses), type-checked."""
    section, _, name = key.partition(".")
    sections = field_types(type(root))
    if section not in sections:
        raise unknown_key(section, list(sections), where, "section")
    values = fill(sections[section], {name: value}, lambda _: where, prefix=f"{section}.")
    setattr(getattr(root, section), name, values[name])


def load_tree(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """A two-level dataclass tree (``cls()`` of section dataclasses) from a YAML file of sections (optional)
    and ``section.key=value`` overrides, every value type-checked; errors name ``file:line`` / the override."""
    root = cls()
    sections = field_types(cls)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: {path}: no such file")
        raw, lines = read_yaml(path)
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(sections)})")
        for section, body in raw.items():
            where = where_of(path, lines, str(section))
            if section not in sections:
                raise unknown_key(str(section), list(sections), where, "section")
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{where}: {section}: must be a mapping of keys, got {type(body).__name__}")
            for name, value in body.items():
                set_dotted(root, f"{section}.{name}", value, where_of(path, lines, str(section), str(name)))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(root, key, value, f"command line {item!r}")
    return root
