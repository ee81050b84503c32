"""CUDA graphs recorded around a loaded AOTInductor package, for the modes whose
torch.compile records them (reduce-overhead, max-autotune: `plan.CUDA_GRAPH_MODES`).

A package holds no CUDA graph, so the process records its own, as torch.compile's
do: a shape's first call runs as it is, on the stream graphs are recorded on (the
warm-up, which a recording needs); its second call records the package's run into a
graph with static input buffers, and every later call copies its inputs into them and
replays it. Each call runs the package once, as without graphs.

Never a wrong result to save time: outputs are copies, made at once (a graph's own
outputs are overwritten at its next replay, where torch's would raise); calls from
other threads or streams are ordered behind the last one, which used the same buffers;
where recording fails, the package runs without graphs from then on, and the usage
log says why.

Imports torch only through the `torch` its caller hands it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Run = Callable[[list[Any]], list[Any]]
RECORDED = "CUDA graphs: recorded"  # counted once per graph, for the usage log


class CudaGraphs:
    """A package's run, replayed from one CUDA graph per input shape."""

    def __init__(self, torch: Any, run: Run, count: Callable[[str], None]) -> None:
        self._torch, self._run, self._count = torch, run, count
        self._stream = torch.cuda.Stream()
        self._pool = torch.cuda.graph_pool_handle()  # one per package: its graphs never run at once
        self._warm: set[Any] = set()
        self._graphs: dict[Any, _Graph] = {}
        self._failed = False
        self._lock = threading.Lock()
        self._last: tuple[Any, Any] | None = None  # the last call's stream and an event at its end

    def __call__(self, tensors: list[Any]) -> list[Any]:
        shape = tuple((tensor.shape, tensor.stride(), tensor.dtype, tensor.device) for tensor in tensors)
        with self._lock:
            if self._failed:
                return self._run(tensors)
            self._after_last_call()
            graph = self._graphs.get(shape)
            if graph is None and shape not in self._warm:
                self._warm.add(shape)
                outputs = self._warm_up(tensors)
            else:
                if graph is None:
                    try:
                        graph = self._graphs[shape] = _Graph(self._torch, self._run, tensors, self._stream, self._pool)
                    except Exception as exc:  # something in it cannot be recorded: run it as it is
                        self._failed = True
                        self._count(f"CUDA graphs: not recorded: {type(exc).__name__}: {str(exc).strip()[:200]}")
                        return self._run(tensors)
                    self._count(RECORDED)
                outputs = graph(tensors)
            self._last = (self._torch.cuda.current_stream(), self._torch.cuda.Event())
            self._last[1].record()
            return outputs

    def _after_last_call(self) -> None:
        """Order this call behind the last one where it ran on another stream."""
        current = self._torch.cuda.current_stream()
        if self._last is not None and self._last[0] != current:
            current.wait_event(self._last[1])

    def _warm_up(self, tensors: list[Any]) -> list[Any]:
        torch, current = self._torch, self._torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            outputs = self._run(tensors)
        current.wait_stream(self._stream)
        for output in outputs:  # made on the side stream, used on the caller's
            output.record_stream(current)
        return outputs


class _Graph:
    """One shape's graph: static inputs, the package's run recorded, its outputs."""

    def __init__(self, torch: Any, run: Run, tensors: list[Any], stream: Any, pool: Any) -> None:
        self._inputs = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device) for t in tensors]
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            self._outputs = run(list(self._inputs))

    def __call__(self, tensors: list[Any]) -> list[Any]:
        for static, tensor in zip(self._inputs, tensors):
            static.copy_(tensor)
        self._graph.replay()
        return [output.clone() for output in self._outputs]
