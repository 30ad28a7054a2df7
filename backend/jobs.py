"""Background runs for the UI: a worker thread that never touches Streamlit, a Progress to poll and a cancel Event."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from backend.errors import Cancelled, ConfigError


@dataclass
class Job:
    """One replica run. ``state`` is 'running', 'done', 'cancelled' or 'failed' (``error`` then holds one line)."""

    key: str
    progress: Any
    cancel: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: str | None = None
    state: str = "running"
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def warm_up() -> None:
    """torch.func's first call in a process imports torch._dynamo (≈ 3 CPU-s on the 2-core box): paid here, in the
    background, when the app first loads this module, rather than by the first MLP or sequence run after Run."""
    import torch

    torch.func.grad(lambda x: (x * x).sum())(torch.ones(1))


threading.Thread(target=warm_up, daemon=True, name="batchvar-warm-up").start()


# Replica runs of this process that compute at once. Two at once (two browser sessions) each took ×1.9–3.1 one run
# alone on 2 cores (each thread's own team of torch's OpenMP threads: 4 threads on 2 cores); one at a time, the
# second waits and takes ≈ ×2 (benchmarks/bench_load.py).
RUN_SLOTS = 1
_slots = threading.BoundedSemaphore(RUN_SLOTS)


@contextlib.contextmanager
def run_slot(job: "Job"):
    """Hold one of the process's RUN_SLOTS while the job computes; while it waits for one, its progress says so and
    Cancel still works. Its ETA clock starts when it gets the slot."""
    if not _slots.acquire(blocking=False):
        job.progress.message = "waiting for another run of this app to finish (runs take turns: they share the cores)"
        while not _slots.acquire(timeout=0.2):
            if job.cancel.is_set():
                raise Cancelled("cancelled")
        job.progress.message = ""
        job.progress.started = time.monotonic()
    try:
        yield
    finally:
        _slots.release()


def start(key: str, work: Callable[[Any, threading.Event], Any], progress: Any) -> Job:
    """Run ``work(progress, cancel)`` in a daemon thread; its result, cancellation or error lands in the Job."""
    job = Job(key=key, progress=progress)

    def target() -> None:
        try:
            with run_slot(job):
                job.result = work(job.progress, job.cancel)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except ConfigError as e:
            job.error, job.state = str(e), "failed"
        except Exception as e:  # noqa: BLE001 - reported on the page as one line, never a traceback
            job.error, job.state = f"{type(e).__name__}: {e}", "failed"

    job.thread = threading.Thread(target=target, daemon=True, name=f"batchvar-{key[:8]}")
    job.thread.start()
    return job
