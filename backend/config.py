"""The config boundary: raw JSON (widgets, CLI files, Python) → the frozen config of its setting, presets, and the
JSON / URL codecs — the parsing that needs the registry of settings, beside it.

Each setting's config class (with its DEFAULTS, stated once) and its PRESETS live in its module in backend/settings,
built with the field readers of backend/fields.py. ``parse_config(dict)`` dispatches on ``"setting"`` (the registry's
first setting when it is left out) and raises :class:`ConfigError` naming the field. ``config.to_json()`` is the
normalised form: it round-trips through ``parse_config`` and is what the cache key, the downloads and the URL use.
"""

from __future__ import annotations

import json
from typing import Any

from backend import settings
from backend.errors import ConfigError


def default_setting() -> str:
    """The setting a config without ``"setting"`` belongs to: the registry's first."""
    return next(iter(settings.SETTINGS))


def config_types() -> dict[str, type]:
    """Every setting's config class, by setting name."""
    return {name: module.CONFIG for name, module in settings.SETTINGS.items()}


def expand_preset(raw: dict) -> dict:
    """The one preset mechanism, for every setting: ``{"setting": s, "preset": name, …fields}`` is the preset's
    fields with the given fields on top (a preset is partial: what it leaves out takes the class's DEFAULTS)."""
    if "preset" not in raw:
        return raw
    presets = settings.get(raw.get("setting", default_setting())).PRESETS
    name = raw["preset"]
    if not isinstance(name, str) or name not in presets:
        raise ConfigError("preset", f"expected one of {sorted(presets)}, got {name!r}")
    return {**presets[name], **{k: v for k, v in raw.items() if k != "preset"}}


def parse_config(raw: Any):
    """Validate a config dict (from JSON, widgets or Python; with an optional ``"preset"``) into the frozen config of
    its setting."""
    if not isinstance(raw, dict):
        raise ConfigError("config", f"expected a JSON object, got {type(raw).__name__}")
    setting = raw.get("setting", default_setting())
    if not isinstance(setting, str):
        raise ConfigError("setting", f"expected one of {sorted(config_types())}, got {setting!r}")
    return settings.get(setting).CONFIG.parse(expand_preset(raw))


JSON_DECIMALS = "json_decimals"  # the top-level marker of a written config: its JSON decimals are floats


def dumps(config) -> str:
    """``config`` as the JSON the downloads write: ``config.to_json()`` (exact numbers as "p/q" strings, floats as
    JSON decimals) with the marker ``"json_decimals": "float"``, so that :func:`loads` reads its decimals back as the
    floats they were: ``parse_config(loads(dumps(c))) == c``, with the same cache key."""
    return json.dumps({JSON_DECIMALS: "float", **config.to_json()}, indent=2)


def loads(text: str) -> dict:
    """Parse JSON keeping decimal numbers exact (they become strings, read as rationals by the config: 0.8 is 4/5), as
    a hand-written config means them — unless the object has the top-level marker ``"json_decimals": "float"`` (what
    :func:`dumps`, i.e. every download, writes): then its decimals are floats, as to_json wrote them. The marker is
    taken out here, the one place it is read; any other value of it is refused naming the field."""
    try:
        raw = json.loads(text, parse_float=lambda s: s)
    except json.JSONDecodeError as e:
        raise ConfigError("config", f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(raw, dict) or JSON_DECIMALS not in raw:
        return raw
    if raw[JSON_DECIMALS] != "float":
        raise ConfigError(JSON_DECIMALS, f"expected 'float' (the decimals of a downloaded config are floats; leave it "
                                         f"out to read them as exact rationals), got {raw[JSON_DECIMALS]!r}")
    raw = json.loads(text)  # the same document (it parsed above), its decimals as floats
    del raw[JSON_DECIMALS]
    return raw


# -- URL query parameters ---------------------------------------------------------------------------------------

def to_query(config) -> dict[str, str]:
    """One query parameter per top-level field, each a compact JSON value (inline data are not put in the URL)."""
    out = {}
    for k, v in config.to_json().items():
        if k == "dataset" and v.get("name") == "inline":
            continue
        if k in ("teacher", "w0") and isinstance(v, list) and len(json.dumps(v)) > 2000:
            continue
        out[k] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return out


def from_query(params: dict[str, str]) -> dict:
    """The raw config dict encoded by :func:`to_query`: every parameter is kept, so a link carries each field its
    setting accepts (optimizer, batch_schedule, …) and an unknown one is refused by the config's parse in one line
    naming it, never dropped. Text fields (a string in some setting's DEFAULTS, and ``setting``) are taken as written;
    the others are JSON, and a value that is not JSON is the text as written (the config names the field if it is
    not one of its values). JSON numbers are read as to_query wrote them: to_json writes exact numbers as "p/q" strings
    (or integers), so a decimal number in a link is the float it was (0.8 stays 0.8, not 4/5): the round trip gives
    back the same config and cache key."""
    text_fields = {"setting"} | {k for cls in config_types().values() for k, v in cls.DEFAULTS.items()
                                 if isinstance(v, str)}  # written as is by to_query
    raw: dict[str, Any] = {}
    for k, v in params.items():
        if k in text_fields:
            raw[k] = v
            continue
        try:
            raw[k] = json.loads(v)
        except json.JSONDecodeError:
            raw[k] = v
    return raw
