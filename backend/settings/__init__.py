"""The registry of settings: name → the module that implements the Setting protocol (backend/settings/base.py).

backend/api.py, the CLI, sweeps and the advisor dispatch through ``get``/``for_config`` only. Every module of this
package that defines NAME is a setting (found by itself, listed by its ORDER): adding a setting means one module here,
its page ``pages/<NAME>.py`` and its tests (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from backend.errors import ConfigError


def _discover() -> dict[str, ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    found = sorted((m for m in modules if hasattr(m, "NAME")), key=lambda m: (m.ORDER, m.NAME))
    return {m.NAME: m for m in found}


SETTINGS: dict[str, ModuleType] = _discover()


def get(name: str) -> ModuleType:
    """The setting called ``name`` (a ConfigError naming the known ones otherwise)."""
    if name not in SETTINGS:
        raise ConfigError("setting", f"expected one of {sorted(SETTINGS)}, got {name!r}")
    return SETTINGS[name]


def for_config(config) -> ModuleType:
    """The setting a parsed config belongs to."""
    return get(config.setting)


def describe() -> list[dict[str, Any]]:
    """The registry as JSON: per setting its name, title, quantities (for its default config: name, label, LaTeX,
    x-axis, whether exact theory exists, how it is estimated) and preset names."""
    out = []
    for name, s in SETTINGS.items():
        default = s.CONFIG.parse({"setting": name})
        out.append({"name": name, "title": s.TITLE, "icon": s.ICON, "x": s.quantities(default)[0].x,
                    "quantities": [q.to_json() for q in s.quantities(default)], "presets": list(s.PRESETS)})
    return out
