"""Params files loaded into typed, validated dataclasses, for every dataset of the project.

A params file is the single source of truth. An unknown key, a missing key or a value of the
wrong type is a :class:`ParamsError` naming the key, never a silent default. Every params and
recipe file is read with :func:`load_yaml`, which parses YAML exactly as DVC does (ruamel.yaml's
safe loader, YAML 1.2), so the project and ``dvc params diff`` never see different values in one
file.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Mapping

from mrnet.core.errors import ParamsError

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


# ---------------------------------------------------------------- checks of one value

def at_least(key: str, value: float, minimum: float) -> None:
    """``value`` of params key ``key`` is at least ``minimum``."""
    if value < minimum:
        raise ParamsError(f"{key} must be at least {minimum}, got {value}")


def one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """``value`` of params key ``key`` is one of ``choices``."""
    if value not in choices:
        raise ParamsError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def in_unit_interval(key: str, value: float, what: str = "in (0, 1)") -> None:
    """``value`` lies strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        raise ParamsError(f"{key} must be {what}, got {value}")


def probability(key: str, value: float) -> None:
    """``value`` lies in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ParamsError(f"{key} is a probability, got {value}")


def count_range(key: str, low: str, high: str, values: tuple[int, int]) -> None:
    """1 <= the ``low`` count <= the ``high`` count (slices or views per case)."""
    if not 1 <= values[0] <= values[1]:
        raise ParamsError(f"{key}: need 1 <= {low} <= {high}, got {values[0]}, {values[1]}")


def check_run(key: str, cfg: Any, counts: tuple[str, ...]) -> None:
    """The keys every dataset's ``train`` section shares: device, precision, the ``counts``
    (each at least 1), eval_threads (at least 0), lr, weight_decay and lr_factor."""
    one_of(f"{key}.device", cfg.device, DEVICES)
    one_of(f"{key}.precision", cfg.precision, PRECISIONS)
    for name in counts:
        at_least(f"{key}.{name}", getattr(cfg, name), 1)
    at_least(f"{key}.eval_threads", cfg.eval_threads, 0)
    if cfg.lr <= 0 or cfg.weight_decay < 0:
        raise ParamsError(f"{key}.lr must be > 0 and {key}.weight_decay >= 0")
    in_unit_interval(f"{key}.lr_factor", cfg.lr_factor)


def check_cache_size(key: str, image_size: int) -> None:
    """A training-resolution cache: AlexNet's three stride-2 poolings need at least 64 px to
    leave a feature map."""
    at_least(f"{key}.image_size", image_size, 64)


def check_evaluation(key: str, bootstrap: int, ci: float) -> None:
    """Bootstrap resamples and interval coverage of an evaluate section."""
    at_least(f"{key}.bootstrap", bootstrap, 10)
    in_unit_interval(f"{key}.ci", ci)


def merge(base: dict, over: Mapping) -> dict:
    """``base`` with ``over`` applied, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def section_of(raw: Mapping, key: str) -> tuple[dict | None, str]:
    """The section of ``raw`` that holds dotted ``key`` (None when one of its parents is
    missing or not a section), and the key's last part: where ``-S key=value`` writes."""
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def check_type(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked to be of the plain type ``tp`` (bool, int, float, str) for ``key``."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params key {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params key {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params key {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            # .nan passes every `<`/`>` range check, so it would reach training unnoticed.
            raise ParamsError(f"params key {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"params key {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r} for {key}")


def build(cls: type, raw: Any, key: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown, missing and ill-typed keys.

    The dataclass defaults serve code that builds a config directly (tests, benchmarks); the
    pipeline never falls back on them, so they cannot silently differ from params.yaml.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"params key {key} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamsError(f"unknown params key {key}.{unknown[0]} "
                          f"(known keys of {key}: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
    if missing:
        raise ParamsError(f"params key {key}.{missing[0]} is missing (add it to params.yaml; "
                          f"{key} needs {', '.join(f.name for f in dataclasses.fields(cls))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, raw[f.name], f"{key}.{f.name}")
        elif typing.get_origin(tp) is collections.abc.Mapping:
            value = raw[f.name] or {}
            if not isinstance(value, Mapping):
                raise ParamsError(f"params key {key}.{f.name} must be a mapping, got {value!r}")
            kwargs[f.name] = dict(value)
        else:
            kwargs[f.name] = check_type(raw[f.name], tp, f"{key}.{f.name}")
    return cls(**kwargs)


def parse_yaml(text: str, source: str, error: type[Exception] = ParamsError) -> Any:
    """``text`` parsed as DVC parses params files: ruamel.yaml's safe loader, YAML 1.2.

    So ``010`` is 10 (not octal 8), ``1e-5`` is a number, ``no``/``on``/``yes`` are strings
    (a bool key wants ``true`` or ``false``), and a key given twice in one mapping is an error
    -- DVC refuses such a file too.

    Raises:
        ``error``: ``source`` is not valid YAML or repeats a key (named, with its line).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return YAML(typ="safe").load(text)  # the very call DVC makes
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        first = exc.context_mark.line + 1 if exc.context_mark is not None else "?"
        key = exc.problem.split('"')[1] if exc.problem and '"' in exc.problem else "?"
        raise error(f"{source}:{line}: duplicate key {key!r} in the mapping that starts at "
                    f"line {first}; keep one (DVC refuses the file too)") from None
    except MarkedYAMLError as exc:
        where = f":{exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        what = " ".join(str(exc.problem or exc).split())
        raise error(f"{source}{where}: not valid YAML ({what})") from None
    except YAMLError as exc:
        raise error(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None


def load_yaml(path: str | Path, missing_hint: str = "",
              error: type[Exception] = ParamsError) -> Any:
    """Read a params or recipe file with :func:`parse_yaml`.

    Raises:
        ``error`` (a :class:`ParamsError` by default): the file is missing (with
        ``missing_hint`` appended), cannot be read as UTF-8 text, is not valid YAML or
        repeats a key.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {'params file' if error is ParamsError else 'file'} not found"
                    + (f" ({missing_hint})" if missing_hint else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    return parse_yaml(text, str(path), error)


def build_sections(raw: Any, sections: Mapping[str, type], source: str,
                   extra: tuple[str, ...] = (), require: bool = False) -> dict[str, Any]:
    """Every section of a params mapping built with :func:`build` and checked.

    Args:
        sections: section name -> dataclass (with an optional ``check(key)`` method).
        extra: further known top-level keys the caller handles itself.
        require: a missing section is an error (otherwise it is built from an empty mapping,
            which names its first missing key).
    """
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    known = set(sections) | set(extra)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"{source}: unknown params section {unknown[0]!r} "
                          f"(known: {', '.join(sorted(known))})")
    out = {}
    for name, cls in sections.items():
        if require and name not in raw:
            raise ParamsError(f"{source}: params section {name} is missing")
        cfg = build(cls, raw.get(name), name)
        check = getattr(cfg, "check", None)
        if check is not None:
            check(name)
        out[name] = cfg
    return out
