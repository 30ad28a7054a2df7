"""Errors raised at the boundary (UI, CLI, API) with messages a user understands."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field is invalid. ``field`` names it (dotted path); ``str(err)`` is one readable line."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class Cancelled(RuntimeError):
    """A run was cancelled by the user before it finished; nothing was cached."""


class TooExpensive(ConfigError):
    """An exact method or a run would take too long or too much memory; the message says what to change."""
