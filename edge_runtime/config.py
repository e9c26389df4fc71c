"""Device profiles: YAML files loaded into typed, validated settings.

Precedence, highest first: command-line flags > ``--set section.key=value`` >
environment variables ``EDGEKIT_<SECTION>_<KEY>`` (e.g. ``EDGEKIT_MODEL_THREADS=2``,
``EDGEKIT_HTTP_TOKEN=...``) > the profile file > the defaults of the settings types
(:mod:`edge_runtime.settings`, every field documented there). An unknown key or a bad value
is an error naming the file (or layer) and the field. List fields (``classify.allow``,
``classify.deny``) take a YAML list, or a comma-separated string from ``--set``/environment.

A profile is data, never code or a puzzle: at most :data:`MAX_PROFILE_BYTES`, plain YAML
without anchors/aliases (``&a``/``*a``, which let 600 bytes expand to gigabytes), and no
key given twice (a second ``camera:`` would otherwise silently replace the first).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import EdgekitError, brief
from .settings import SECTIONS, DeviceConfig

MAX_PROFILE_BYTES = 256 * 1024  # shipped profiles are ~2 KB
_TOP_LEVEL = ("name", "description", *SECTIONS)

Layer = Mapping[str, Any]  # {"section": {"key": value}} (and "name"/"description")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """A settings class's fields and their resolved types (annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Converts a YAML/env/CLI value to the field's type, or raises naming ``where``."""
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            items = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif value is None:
            items = []
        else:
            raise ValueError(f"{where}: expected a list, got {brief(value)}")
        return tuple(_coerce(v, str, f"{where}[{i}]") for i, v in enumerate(items))
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if optional and isinstance(value, str) and value.lower() in ("null", "none", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: a value is required")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{where}: expected true or false, got {brief(value)}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected an integer, got {brief(value)}")
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected an integer, got {brief(value)}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {brief(value)}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected a number, got {brief(value)}") from None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def _parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise EdgekitError(f"--set {brief(item)}: expected section.key=value, e.g. "
                               "model.threads=2")
        out.setdefault(section, {})[name] = value
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"EDGEKIT_{section.upper()}_{f.name.upper()}"
            if key in environ:
                out.setdefault(section, {})[f.name] = environ[key]
    return out


def _loader():
    """A safe YAML loader that refuses aliases and keys given twice, naming the line."""
    import yaml

    class ProfileLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                anchor = brief(event.anchor, 40).strip("'")
                raise ValueError(f"line {event.start_mark.line + 1}: YAML aliases (*{anchor}) "
                                 "are not allowed in a profile")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        raise ValueError(f"line {key_node.start_mark.line + 1}: a key must "
                                         "be a plain name")
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise ValueError(f"line {line}: duplicate key {brief(key)} (first "
                                         f"at line {seen[key]})")
                    seen[key] = line
            return super().construct_mapping(node, deep)

    return ProfileLoader


def _read_profile(path: str | Path) -> dict[str, Any]:
    """The profile file as a mapping.

    Raises:
        EdgekitError: missing, unreadable, too large, not YAML, an alias, a duplicate key
            or not a mapping (naming the file, and the line where YAML has one).
    """
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise EdgekitError(f"config file not found: {path}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read config file: {e.strerror or e.__class__.__name__} "
                           f"[{path}]") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise EdgekitError(f"invalid config file: larger than {MAX_PROFILE_BYTES // 1024} KiB, "
                           f"expected a small YAML profile [{path}]")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"invalid config file: not UTF-8 text [{path}]") from None
    try:
        data = yaml.load(text, Loader=_loader()) or {}  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise EdgekitError(f"invalid config file: not YAML{where} ({brief(e.problem, 60)}) "
                           f"[{path}]") from None
    except yaml.YAMLError as e:
        raise EdgekitError(f"invalid config file: not YAML ({e.__class__.__name__}) "
                           f"[{path}]") from None
    except RecursionError:
        raise EdgekitError(f"invalid config file: nested too deeply [{path}]") from None
    except ValueError as e:  # ours (alias, duplicate: "line N: ...") or an absurd number
        what = str(e) if str(e).startswith("line ") else f"a value YAML cannot build ({e})"
        raise EdgekitError(f"invalid config file: {what[:120]} [{path}]") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"invalid config file: expected a mapping at the top [{path}]")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                environ: Mapping[str, str] | None = None,
                flags: Layer | None = None) -> DeviceConfig:
    """Loads a profile, then applies environment variables, ``--set`` and flag overrides.

    Args:
        path: the YAML profile, or None for the defaults.
        overrides: ``section.key=value`` strings (``--set``).
        environ: the environment to read ``EDGEKIT_*`` from (default: ``os.environ``).
        flags: typed values from command-line flags, ``{"model": {"threads": 2}}``; the
            highest precedence.

    Raises:
        EdgekitError: unreadable file, unknown key or bad value (naming file and field).
    """
    source = str(path) if path else "defaults"
    data = _read_profile(path) if path is not None else {}
    layers = [(source, data), ("environment", _from_env(os.environ if environ is None
                                                        else environ)),
              ("--set", _parse_set(overrides or [])), ("command line", flags or {})]
    merged: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    try:
        for origin, layer in layers:
            for key, value in layer.items():
                if key not in _TOP_LEVEL:
                    raise ValueError(f"unknown key {brief(key)} (from {origin}); expected "
                                     f"one of {sorted(_TOP_LEVEL)}")
                if key in ("name", "description"):
                    merged[key] = _coerce(value, str, key)
                    continue
                if value is None:
                    continue  # an empty section in YAML: defaults
                if not isinstance(value, Mapping):
                    raise ValueError(f"'{key}' must be a mapping")
                fields = _field_types(SECTIONS[key])
                for name, v in value.items():
                    if name not in fields:
                        raise ValueError(f"unknown key '{key}.{brief(name)[1:-1]}' (from "
                                         f"{origin}); expected one of {sorted(fields)}")
                    what = f"{key}.{name}" + ("" if origin == source else f" (from {origin})")
                    sections.setdefault(key, {})[name] = _coerce(v, fields[name], what)
        built = {}
        for k, v in sections.items():
            try:
                built[k] = SECTIONS[k](**v)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
        return DeviceConfig(**merged, **built)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"invalid config: {e} [{source}]") from None
