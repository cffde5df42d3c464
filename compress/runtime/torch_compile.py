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
through the shape's ``CapturedCall``: pinned buffers, graph and stream made once and kept, so a call is
a NumPy copy in, a queued copy into the graph's static input, one replay, queued copies of the outputs in
their own dtype, one stream wait and a float32 copy out; no module call, precision context or lookups.
Measured on an H100 (docs/results/latency-floor-h100/README.md, session 11, p95 at 32 x 128 tokens),
the runtime's own work per call is then 0.009-0.013 ms above a hand-written pinned loop around the same
graph (pruned 3-layer MiniLM 0.256 vs 0.243 ms, 2-layer 0.189 vs 0.180 ms), against 0.027-0.041 ms for
the session-10 path, which looked its buffers, shape and stream up on every call. A model whose
forward cannot be captured (it synchronises with the host, say) runs compiled without graphs; the
reason is kept in ``GraphedModule.fallback_reason`` and warned about. On CPU inductor's default mode
is used. Precision from the target (fp32, tf32, fp16, bf16).

Before compiling, every model (teacher and artifact alike) gets the exact inference rewrite of
``compress.models.fuse_qkv``, on a copy: a BERT-family self-attention's query, key and value
projections become one GEMM, as TensorRT and ONNX Runtime's transformer fusions make them. Measured on an
H100 (docs/results/latency-floor-h100/fusion-probe-qkv.md, batch 32 x 128 tokens, GPU p95): pruned
3-layer MiniLM 0.205 -> 0.182 ms, 2-layer 0.143 -> 0.127 ms, FP32 6-layer teacher 2.913 -> 2.878 ms.
``TorchCompileSession.fused_attentions`` says how many self-attentions were fused. A classifier whose head
reads only the first token (BERT's pooler, RoBERTa's head) then also gets ``compress.models.first_token``'s
rewrite: its last layer runs on that token alone (keys and values still from every token). Measured on an H100
(same file, GPU p95 with fused QKV): pruned 2-layer MiniLM 0.127 -> 0.104 ms, 3-layer 0.182 -> 0.156 ms, FP32
teacher 2.878 -> 2.578 ms. ``TorchCompileSession.first_token_only`` says whether it applied.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.runtime.base import register_runtime
from compress.runtime.torch_eager import _INPUT_NAME, TorchSession, _as_list, host_output_dtype

_WARMUP_CALLS = 3  # before capture, on a side stream: lazy init, autotuning, cuBLAS workspaces


@register_runtime("torch-compile")
class TorchCompileSession(TorchSession):
    """A compress model (or ``nn.Module``) under ``torch.compile``; CUDA graphs on GPU."""

    fused_attentions: int = 0
    """How many self-attentions of the loaded model run with one fused QKV projection (``fuse_qkv``)."""
    first_token_only: bool = False
    """Whether the loaded model's last layer runs on the first token only (``first_token_last_layer``)."""

    @classmethod
    def executed_model(cls, model: nn.Module) -> nn.Module:
        """``model`` as this runtime runs it: its inference rewrites (``inference_rewrite``), on a copy."""
        return inference_rewrite(model).model

    def _prepare(self, model: nn.Module) -> nn.Module:
        self._calls: dict[tuple[tuple[int, ...], np.dtype], CapturedCall] = {}
        rewrite = inference_rewrite(model, in_place=self._owns_model)
        self.fused_attentions, self.first_token_only = rewrite.fused_attentions, rewrite.first_token_only
        return compile_for(rewrite.model, self.device)

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(self._model, GraphedModule):
            arr = np.ascontiguousarray(inputs[_INPUT_NAME])
            call = self._captured_call(arr, self._model)
            if call is not None:
                self._keep_threads()
                return call.run(arr)
        # first call of a shape (compile + capture), CPU, or a model that could not be captured
        return super()._run_impl(inputs)

    def _captured_call(self, arr: np.ndarray, graphed: GraphedModule) -> CapturedCall | None:
        """The call path of ``arr``'s shape and dtype once its graph is captured (made once, then kept)."""
        if graphed.fallback_reason is not None:  # a later shape's capture failed and the model was
            self._calls.clear()  # compiled afresh: the kept graphs may hold the old compilation's kernels
            return None
        key = (arr.shape, arr.dtype)
        call = self._calls.get(key)
        if call is None:
            host_dtype = torch.from_numpy(arr[:0]).dtype
            # the graph was captured on the input as ``TorchSession._run_impl`` hands it to the model:
            # floats in the session's dtype, token ids as they are
            entry = graphed.captured(
                tuple(arr.shape), self._dtype if host_dtype.is_floating_point else host_dtype
            )
            if entry is None:
                return None  # not run yet (the module path compiles and captures it), or no graphs
            call = self._calls[key] = CapturedCall(*entry, host_dtype=host_dtype)
        return call

    def _close_impl(self) -> None:
        self._calls.clear()
        super()._close_impl()
        reset_compiled()


_Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]
"""A captured graph with its static input and static output (a tensor or a tuple of tensors)."""


_raw_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
"""The current CUDA stream's handle for a device index (a C call, without building a ``Stream``)."""


class CapturedCall:
    """One captured shape called from NumPy: kept pinned buffers, the graph, the kept stream.

    ``run`` writes the NumPy input into a pinned buffer, queues its copy into the graph's static input
    (cast there when the session's precision differs), replays the graph, queues each output's copy into
    a pinned buffer in its own dtype (float32 for those NumPy lacks), waits for the stream and returns
    float32 copies. Everything it touches is made once per shape, so the host's work per call is two
    NumPy copies, three queued operations and one wait. The stream is waited on through a kept
    ``torch.cuda.Stream``, looked up again only when the device's current stream changes
    (``torch.cuda.current_stream`` costs 6-10 us of host time, measured on an H100:
    docs/results/latency-floor-h100/sync-probe-c.txt). The copies are queued around the replay, not
    captured in the graph. Captured (pinned host memory read and written inside a capture), the path came
    within 0.004 ms of the hand-written loop, about 0.01 ms better, but on that code one GPU test ran
    for over 7 minutes on an H100 with torch 2.11 and was killed, not root-caused (session 11 in
    docs/results/latency-floor-h100/README.md); every operation here is one the GPU tests passed with
    before.
    """

    def __init__(
        self, graph: Any, static_in: torch.Tensor, static_out: Any, *, host_dtype: torch.dtype
    ) -> None:
        self._graph = graph
        self._static_in = static_in
        self._host_in = torch.empty(tuple(static_in.shape), dtype=host_dtype, pin_memory=True)
        self._in = self._host_in.numpy()
        self._outs = [  # (static output, pinned host buffer)
            (o, torch.empty(tuple(o.shape), dtype=host_output_dtype(o.dtype), pin_memory=True))
            for o in _as_list(static_out)
        ]
        self._out_arrays = [h.numpy() for _, h in self._outs]
        self._device = static_in.device
        self._stream_handle: int | None = None
        self._stream: Any = None

    def run(self, arr: np.ndarray) -> list[np.ndarray]:
        """The outputs for ``arr`` (the captured shape and dtype), as fresh float32 arrays."""
        np.copyto(self._in, arr)
        with torch.inference_mode():  # the graph's static buffers were made in inference mode
            self._static_in.copy_(self._host_in, non_blocking=True)
            self._graph.replay()
            for out, host in self._outs:
                host.copy_(out, non_blocking=True)
        self._wait()
        return [a.astype(np.float32) for a in self._out_arrays]

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


@dataclass(frozen=True)
class InferenceRewrite:
    """What ``inference_rewrite`` did.

    Attributes:
        model: The model to compile: the caller's own when nothing applied, else a rewritten copy.
        fused_attentions: How many self-attentions got one QKV projection (``fuse_qkv``).
        first_token_only: Whether the last layer runs on the first token only (``first_token_last_layer``).
    """

    model: nn.Module
    fused_attentions: int = 0
    first_token_only: bool = False


def inference_rewrite(model: nn.Module, *, in_place: bool = False) -> InferenceRewrite:
    """``model`` with the exact inference rewrites applied: on a copy when any applies, unless ``in_place``.

    The rewrites are ``compress.models.fuse_qkv`` (QKV projections as one GEMM) and then
    ``compress.models.first_token_last_layer`` (the last layer on the first token, for classifiers that
    read only it). Without ``in_place`` the caller's model is never modified (its state dict keeps its
    own layout); the runtime rewrites in place only a model it loaded or copied itself, so a load holds
    one copy of the weights on the device, not two.
    """
    from compress.models.first_token import first_token_last_layer, first_token_rewritable
    from compress.models.fused_qkv import fusable_attentions, fuse_qkv

    if not fusable_attentions(model) and not first_token_rewritable(model):
        return InferenceRewrite(model)
    rewritten = model if in_place else copy.deepcopy(model)
    fused = fuse_qkv(rewritten)
    return InferenceRewrite(rewritten, fused, first_token_last_layer(rewritten))


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
