"""Errors raised at the boundary (UI, CLI, API) with messages a user understands."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (line breaks, other control and format characters, odd
    spaces) written as its escape (``\\n``, ``\\x00``, ``\\u2028``), so that a message echoing user input (a JSON key,
    a value, a file name) stays one visible line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


class ConfigError(ValueError):
    """A config field is invalid. ``field`` names it (dotted path); ``str(err)`` is one readable line: the field and
    the message with any control characters of the user's input escaped (``one_line``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = one_line(field)
        self.message = one_line(message)
        super().__init__(f"{self.field}: {self.message}" if self.field else self.message)

    def __reduce__(self):  # picklable (a Ray worker sends it back to the driver)
        return type(self), (self.field, self.message)


class Cancelled(RuntimeError):
    """A run was cancelled by the user before it finished; nothing was cached."""


class TooExpensive(ConfigError):
    """An exact method or a run would take too long or too much memory; the message says what to change."""
