"""Progress of a run: units done out of a total, elapsed time and an ETA; thread-safe, read by the page."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from backend.errors import Cancelled


@dataclass
class Progress:
    """Thread-safe progress of a run. ``on_advance`` (optional) is called with every increment, e.g. by a caller
    that counts units itself; a run sets ``total`` before it starts and calls ``finish`` at the end. ``message`` is
    what the run is doing now; ``log`` one line per finished part (a sweep's cells), oldest first. ``cancel``
    (optional, an Event): once it is set, ``advance`` raises Cancelled — a run that reports every step through its
    Progress (the replica branches of the critical batch size) stops at its next step, before anything is cached."""

    total: int = 0
    done: int = 0
    message: str = ""
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    on_advance: Callable[[int], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    cancel: threading.Event | None = field(default=None, repr=False)

    def advance(self, units: int) -> None:
        with self.lock:
            self.done += units
        if self.on_advance is not None:
            self.on_advance(units)
        self.check_cancel()

    def check_cancel(self) -> None:
        """Raise Cancelled when ``cancel`` is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def finish(self) -> None:
        with self.lock:
            self.done = self.total

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    @property
    def eta_seconds(self) -> float | None:
        f = self.fraction
        if f <= 0:
            return None
        return (time.monotonic() - self.started) * (1 - f) / f


def as_progress(progress: "Progress | Callable[[int], None] | None") -> Progress:
    """A Progress for any caller: the given one, one that forwards each increment to a callable, or a silent one."""
    if isinstance(progress, Progress):
        return progress
    return Progress(on_advance=progress)
