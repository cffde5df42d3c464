"""``torch-compile``: a torch model compiled with inductor; on GPU replayed from CUDA graphs.

At our model sizes eager PyTorch on an H100 is launch-bound (2–5 ms whatever the model,
../shared/ENV.md), so latency ratios and gates on GPU must use a graph-captured runtime, for the
teacher and the artifact alike. On CUDA the model is compiled by inductor (``dynamic=False``:
one compilation per input shape) and each input shape is then captured once in a CUDA graph
(``torch.cuda.CUDAGraph``) on static input and output buffers; a call copies the input in,
replays the graph and hands back the static output. That keeps the host's work per call to one
copy and one replay: measured on an H100 (docs/results/latency-floor-h100), the previous
``mode="reduce-overhead"`` (CUDA graph trees behind dynamo's guards) added about 0.3 ms per call
on top of the graph's own time, which for a pruned 3-layer MiniLM (0.26 ms on the GPU) more
than doubled its latency and flattened every ratio. From a shape's second call on, ``run`` goes
through a ``HostGraph``: the shape captured once more with its copies inside the graph (pinned input
buffer to the static input, the outputs to pinned buffers in their own dtype), so a call is a NumPy copy
in, one replay, one stream wait and a float32 copy out; no device tensors, precision context or module
call on the host. Measured on an H100 (docs/results/latency-floor-h100/README.md, session 11), for pruned
2- and 3-layer MiniLMs (0.2-0.3 ms calls) this took ... ms off the session-10 path, which launched the
copies separately; the module call it replaced in session 10 took 0.03-0.06 ms more again.
A model whose forward cannot be captured
(it synchronises with the host, say) runs compiled without graphs; the reason is kept in
``GraphedModule.fallback_reason`` and warned about. On CPU inductor's default mode is used.
Precision from the target (fp32, tf32, fp16, bf16).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.runtime.base import register_runtime
from compress.runtime.torch_eager import _HOST_DTYPES, _INPUT_NAME, TorchSession, _as_list, fp32_math

_WARMUP_CALLS = 3  # before capture, on a side stream: lazy init, autotuning, cuBLAS workspaces


@register_runtime("torch-compile")
class TorchCompileSession(TorchSession):
    """A compress model (or ``nn.Module``) under ``torch.compile``; CUDA graphs on GPU."""

    def _prepare(self, model: nn.Module) -> nn.Module:
        self._host_graphs: dict[tuple[tuple[int, ...], np.dtype], HostGraph | None] = {}
        return compile_for(model, self.device)

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(self._model, GraphedModule):
            arr = np.ascontiguousarray(inputs[_INPUT_NAME])
            host = self._host_graph(arr, self._model)
            if host is not None:
                self._keep_threads()
                return host.run(arr)
        # first call of a shape (compile + capture), CPU, or a model that could not be captured
        return super()._run_impl(inputs)

    def _host_graph(self, arr: np.ndarray, graphed: GraphedModule) -> HostGraph | None:
        """The host graph for ``arr``'s shape and dtype: captured on the shape's second call, then kept."""
        key = (arr.shape, arr.dtype)
        if key in self._host_graphs:
            return self._host_graphs[key]
        host_dtype = torch.from_numpy(arr[:0]).dtype
        # the device graph was captured on the input as ``TorchSession._run_impl`` hands it to the model:
        # floats in the session's dtype, token ids as they are
        dtype = self._dtype if host_dtype.is_floating_point else host_dtype
        if graphed.captured(tuple(arr.shape), dtype) is None:
            return None  # not run yet: the module path compiles and captures it
        # the same grad mode and matmul flags as the first capture, or the compiled code's guards fail
        with torch.inference_mode(), fp32_math(allow_tf32=self._precision == "tf32"):
            host = graphed.capture_host(tuple(arr.shape), dtype, host_dtype)
        self._host_graphs[key] = host
        return host

    def _close_impl(self) -> None:
        self._host_graphs.clear()
        super()._close_impl()
        reset_compiled()


_Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]
"""A captured graph with its static input and static output (a tensor or a tuple of tensors)."""


_raw_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
"""The current CUDA stream's handle for a device index (a C call, without building a ``Stream``)."""


class HostGraph:
    """A captured shape whose CUDA graph holds its host copies too: pinned input, model, pinned outputs.

    ``run`` writes the NumPy input into the pinned input buffer, replays the graph (the host-to-device
    copy, the model's kernels and the device-to-host copies of the outputs, one launch), waits for the
    stream and returns float32 copies of the pinned outputs. The host's work per call is two NumPy copies,
    one replay and one wait. The stream is waited on through a kept ``torch.cuda.Stream``, looked up again
    only when the device's current stream changes (``torch.cuda.current_stream`` costs 6-10 us of host
    time per call, measured on an H100: docs/results/latency-floor-h100/sync-probe-c.txt).
    """

    def __init__(
        self, graph: Any, host_in: torch.Tensor, host_outs: list[torch.Tensor], device: torch.device
    ) -> None:
        self._graph = graph
        self._pinned = (host_in, *host_outs)  # the graph's copies read and write this memory
        self._in = host_in.numpy()
        self._outs = [h.numpy() for h in host_outs]
        self._device = device
        self._stream_handle: int | None = None
        self._stream: Any = None

    def run(self, arr: np.ndarray) -> list[np.ndarray]:
        """The outputs for ``arr`` (the captured shape and dtype), as fresh float32 arrays."""
        np.copyto(self._in, arr)
        self._graph.replay()
        self._wait()
        return [o.astype(np.float32) for o in self._outs]

    def _wait(self) -> None:
        handle = None if _raw_current_stream is None else _raw_current_stream(self._device.index)
        if handle is None or handle != self._stream_handle:
            self._stream = torch.cuda.current_stream(self._device)
            self._stream_handle = handle
        self._stream.synchronize()


class GraphedModule(nn.Module):
    """Calls ``inner`` through one CUDA graph per input shape and dtype (inference only).

        The first call with a new shape warms ``inner`` up on a side stream, then captures it; every
        call copies its input into the static buffer, replays and returns the static output, which
        the next call overwrites (callers copy it out, as ``TorchSession.run`` does). Graphs share
        one memory pool. A capture failure falls back to calling the model compiled afresh (``recompile``),
    without graphs.

        Attributes:
            fallback_reason: Why the model runs without CUDA graphs, or ``None`` while it uses them.
    """

    def __init__(self, inner: nn.Module, recompile: Callable[[], nn.Module] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self._recompile = recompile
        self.fallback_reason: str | None = None
        self._graphs: dict[tuple[tuple[int, ...], torch.dtype], _Captured] = {}
        self._device: torch.device | None = None  # of the first capture; one module runs on one device
        self._pool: Any = None

    @property
    def _orig_mod(self) -> nn.Module:
        """The model behind the compiled wrapper (as ``torch.compile``'s own ``_orig_mod``)."""
        return getattr(self.inner, "_orig_mod", self.inner)

    def captured(self, shape: tuple[int, ...], dtype: torch.dtype) -> _Captured | None:
        """The graph, static input and static output captured for ``shape`` and ``dtype``, if any.

        Writing into the static input and replaying the graph is what ``forward`` does for a captured
        shape; a caller that does it itself (the session's lean path) must copy the static output out
        before the next replay.
        """
        if self.fallback_reason is not None:
            return None
        return self._graphs.get((shape, dtype))

    def forward(self, x: torch.Tensor) -> Any:
        if self.fallback_reason is not None or not x.is_cuda or (self._device not in (None, x.device)):
            return self.inner(x)
        key = (tuple(x.shape), x.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(x)
            except Exception as e:  # noqa: BLE001 - any capture failure: run without graphs, say why
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(
                    f"torch-compile: CUDA graph capture failed, running compiled without graphs "
                    f"({self.fallback_reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                torch.cuda.synchronize(x.device)
                _clear_rng_capture_state(x.device)
                if self._recompile is not None:
                    # a failed capture can leave the compiled code unusable (measured on an H100: inductor
                    # "Offset increment outside graph capture"); start again from a fresh compilation
                    torch._dynamo.reset()
                    self.inner = self._recompile()
                return self.inner(x)
            self._graphs[key] = entry
            self._device = x.device
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out

    def capture_host(
        self, shape: tuple[int, ...], dtype: torch.dtype, host_dtype: torch.dtype
    ) -> HostGraph | None:
        """Capture ``shape``'s graph again with its copies from and to pinned host buffers inside it.

        Needs the device graph of ``shape`` and ``dtype`` (``forward`` captures it on the shape's first
        call); ``host_dtype`` is the host input's dtype. The input crosses in that dtype and is cast on
        the device when it differs from ``dtype``; each output crosses in its own dtype when NumPy has it,
        else as float32 (cast on the device). Returns ``None`` (and warns) when this capture fails; the
        device graph is untouched by a failure.
        """
        entry = self.captured(shape, dtype)
        if entry is None:
            return None
        _, static_in, static_out = entry
        outs = _as_list(static_out)
        device = static_in.device
        try:
            # pinned and device buffers are allocated before the capture, none inside it
            host_in = torch.empty(shape, dtype=host_dtype, pin_memory=True)
            staged = None if host_dtype == dtype else torch.empty(shape, dtype=host_dtype, device=device)
            host_outs = [
                torch.empty(
                    o.shape, dtype=o.dtype if o.dtype in _HOST_DTYPES else torch.float32, pin_memory=True
                )
                for o in outs
            ]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                if staged is None:
                    static_in.copy_(host_in, non_blocking=True)
                else:  # same-dtype DMA, then the cast as a kernel of the graph
                    staged.copy_(host_in, non_blocking=True)
                    static_in.copy_(staged)
                for o, h in zip(_as_list(self.inner(static_in)), host_outs, strict=True):
                    h.copy_(o if o.dtype == h.dtype else o.to(h.dtype), non_blocking=True)
        except Exception as e:  # noqa: BLE001 - any failure: the session keeps calling the module
            torch.cuda.synchronize(device)
            _clear_rng_capture_state(device)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(
                f"torch-compile: capturing the copies of shape {shape} in its CUDA graph failed, "
                f"calls of that shape go through the module ({reason})",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return HostGraph(graph, host_in, host_outs, device)

    def _capture(self, x: torch.Tensor) -> _Captured:
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_CALLS):
                self.inner(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.inner(static_in)
        return graph, static_in, static_out


def _clear_rng_capture_state(device: torch.device) -> None:
    """Give ``device``'s default CUDA generator a fresh copy of its state after a failed capture.

    A capture registers the generator and marks it capturing; when the capture is invalidated (a host
    sync, an unsupported call) the mark stays, and every later random draw on the device fails with
    "Offset increment outside graph capture encountered unexpectedly", inductor's own compile-time
    benchmarks included (measured on an H100: every compilation after one failed capture failed). The
    clone keeps seed and offset and drops the capture mark.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    gen = torch.cuda.default_generators[index]
    try:
        gen.graphsafe_set_state(gen.clone_state())
    except (AttributeError, RuntimeError) as e:  # a torch without graph-safe generator states
        warnings.warn(
            f"torch-compile: could not reset the CUDA generator after the failed capture ({e}); "
            "random draws on this device may fail in this process",
            RuntimeWarning,
            stacklevel=3,
        )


def compile_for(model: nn.Module, device: str) -> nn.Module:
    """``torch.compile`` (inductor, static shapes); on CUDA wrapped in per-shape CUDA graphs."""
    # Every instance of a model class shares its forward's code object, and dynamo counts
    # recompiles per code object: sessions reset on close (``reset_compiled``), and a session may
    # compile a few shapes (each timed batch size, a last partial batch) without falling back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)

    def compiled() -> nn.Module:
        return torch.compile(model, mode="default", dynamic=False, fullgraph=False)

    if device == "cuda":
        return GraphedModule(compiled(), recompile=compiled)
    return compiled()


def reset_compiled() -> None:
    """Forget compiled graphs, so the next session compiles its own model from scratch."""
    torch._dynamo.reset()
