"""CUDA graph capture of an engine's fixed stretch of step code: on a GPU the steps of linear regression
and of the deep linear network are dozens of small kernels each, so their cost is launch overhead, not arithmetic.

``Replay(body, device)`` runs ``body`` — a function of no arguments that reads and writes only tensors allocated
before it is called (static buffers: indices, step sizes, weights) — eagerly the first time (on a side stream: the
warm-up CUDA graph capture asks for, doing real work), captures it as a CUDA graph the second time and replays the
graph from then on. A replay launches the same kernels on the same buffers as the eager call, so the numbers are
bitwise those of the eager path (checked by ``benchmarks/gpu_check.py`` on a GPU). Elsewhere (a CPU, or
``enabled=False``) every call is the eager body. Random numbers are drawn outside the body: the captured code is
deterministic, and the draws are those of the eager path.
"""

from __future__ import annotations

from typing import Callable

import torch


def available(device: torch.device) -> bool:
    """Whether step code on ``device`` is captured as a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_available()


class Replay:
    """``body()`` eagerly once, then as a captured CUDA graph (see the module docstring)."""

    def __init__(self, body: Callable[[], None], device: torch.device, enabled: bool = True) -> None:
        self.body, self.device = body, device
        self.enabled = enabled and available(device)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> None:
        self.calls += 1
        if not self.enabled:
            self.body()
            return
        if self.graph is None and self.calls == 1:  # warm-up, on a side stream as capture asks
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            # records the kernels without running them; thread_local: other threads' CUDA calls (another run of
            # the app's server) may go on meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.body()
        self.graph.replay()
