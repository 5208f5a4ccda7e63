"""Typed configs, one way for every verb: a dataclass declares the keys, their types and defaults; ``from_dict``
builds it from plain data (YAML), ``apply_overrides`` applies ``--set a.b=c``, ``read_yaml`` reads a file. Every
bad key or value is one ``FastDecodersError`` line naming the key, the expected type and the given value.

Used by ``train.config`` (the training run), ``commands.eval_cmd`` (``EvalConfig`` of ``fastdecoders eval``) and
``prune.distill`` (the Flash-VAED recipe). Range checks stay in each dataclass's ``__post_init__``.

Why our own and not OmegaConf structured configs (measured 2026-12-03 with omegaconf 2.4.0; lines without blanks,
comments and docstrings): this module is 134 lines. The same contract on OmegaConf (structured schema, merge,
to_object, from_dotlist, load) is 84 lines but fails 4 existing error tests (its messages differ: "Value 'many' of
type 'str' could not be converted to Integer" for "expected int, got str 'many'"; it accepts NaN), silently
converts ``steps: "5"`` and ``flips: "yes"``, and cannot declare ``EvalConfig``'s ``str | nn.Module`` union.
With this module's type walk added so that every test passes it is 133 lines plus a dependency, and OmegaConf then
checks nothing the walk has not.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from fastdecoders.errors import FastDecodersError


def fail(message: str) -> typing.NoReturn:
    raise FastDecodersError(message)


def type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to ``tp`` where lossless (int -> float, list -> tuple, mapping -> dataclass), else one
    clear error naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, key)
            except FastDecodersError:
                continue
        fail(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # .nan / .inf: every step would be NaN (an all-NaN model, exit 0)
                fail(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string; the user means the number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if args and args[-1] is Ellipsis and isinstance(value, list | tuple):
            return tuple(check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if isinstance(value, list | tuple) and len(value) == len(args):
            return tuple(check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif isinstance(tp, type):  # str, bool, Path, nn.Module ...: the value must already be one
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - a field type this checker does not know is a programming error
        raise TypeError(f"{key}: unsupported config field type {tp}")
    fail(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")


def unknown_key(key: str, known: list[str]) -> typing.NoReturn:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    fail(f"unknown config key {key!r}{hint}; expected one of {', '.join(known)}")


def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def from_dict(cls: type, values: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping (None: all defaults); keys and types checked, nested
    dataclass fields built the same way (their keys named ``where.field``)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        fail(f"{where}: expected a mapping of keys to values, got {type(values).__name__}")
    hints = _hints(cls)
    prefix = f"{where}." if where else ""
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            unknown_key(f"{prefix}{key}", list(hints))
        kwargs[key] = check_value(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field left out
        fail(f"{where}: {e}")


def to_dict(config: Any) -> dict[str, Any]:
    """JSON/YAML-ready plain data of a dataclass config: tuples become lists, paths strings."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=2000"`` -> (["train", "steps"], 2000); the value is read as YAML (``[a, b]``, ``null``,
    ``1e-3``; not YAML: the plain string)."""
    import yaml

    if "=" not in text:
        fail(f"--set expects KEY=VALUE (e.g. train.steps=2000), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """A copy of plain config data with ``--set`` overrides applied. Each key must name one value of ``cls`` (a
    field of a section for sectioned configs: ``SECTION.FIELD``); types are checked when it is built."""
    values = dict(values)
    sectioned = all(dataclasses.is_dataclass(t) for t in _hints(cls).values())
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != (2 if sectioned else 1) or not all(path):
            form = "SECTION.FIELD (e.g. train.steps)" if sectioned else "FIELD"
            fail(f"--set key must be {form}, got {'.'.join(path)!r}")
        if path[0] not in _hints(cls):
            unknown_key(path[0], list(_hints(cls)))
        if not sectioned:
            values[path[0]] = value
            continue
        section, name = path
        fields = list(_hints(_hints(cls)[section]))
        if name not in fields:
            unknown_key(f"{section}.{name}", fields)
        current = values.get(section)
        values[section] = {**(current if isinstance(current, dict) else {}), name: value}
    return values


def read_yaml(path: str | os.PathLike, what: str = "config", expected: str = "keys to values") -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file); a missing file, bad YAML or a non-mapping is one
    error line."""
    try:
        import yaml
    except ImportError:
        fail(f"{what} files are YAML: pip install 'fastdecoders[train]' (pyyaml)")
    path = Path(path)
    if not path.is_file():
        fail(f"{what} file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        fail(f"{path} is not valid YAML ({str(e).splitlines()[0]})")
    if values is not None and not isinstance(values, dict):
        fail(f"{path}: expected a mapping with {expected}, got a {type(values).__name__}")
    return {} if values is None else values
