"""``torch``: run a model in eager PyTorch, FP32, as the reference runtime.

The source is an ``nn.Module`` or a compress model file (``save_model``: spec +
state dict, loaded without unpickling code). The model is never modified: when
it is in training mode, not FP32 or must move to CUDA, the session works on a
copy. Inputs and outputs are NumPy arrays, as for every runtime.

The model has one input, ``input``, and one output per returned tensor
(``logits`` for a single tensor, ``output_<i>`` for a tuple), matching the names
``compress.export.export_onnx`` gives the ONNX graph. The input shape is known
when the model has ``example_inputs()`` (every built-in family has); otherwise it
is ``("batch", ...)`` of unknown rank (``TensorSpec.shape`` ``None``).

FP32 means FP32 arithmetic: torch lets cuDNN convolutions use TF32 by default (measured on the
H100: a ResNet-18 at max abs error 2.3e-3 against the CPU, outside the FP32 parity tolerance), so
every run happens with TF32 off for matrix products and convolutions (``fp32_math``), the flags
restored afterwards. ``precision="tf32"`` (FP32 storage, TF32 products) turns them on instead.

``torch.set_num_threads`` is process-wide: the session sets it to ``threads`` at
load, re-applies it before each run if something else changed it, and restores
the previous value on ``close``.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import BadInputError
from compress.runtime.base import Session, SessionError, TensorSpec, register_runtime

_INPUT_NAME = "input"
_OUTPUT_NAME = "logits"
_BATCH = "batch"


@register_runtime("torch")
class TorchSession(Session):
    """An eager ``nn.Module`` in FP32 on CPU or CUDA.

    Example:
        >>> sess = TorchSession.load(model, threads=2)  # doctest: +SKIP
        >>> sess.run({"input": x.numpy()})[0].shape  # doctest: +SKIP
        (32, 10)
    """

    formats = frozenset({"torch"})
    devices = frozenset({"cpu", "cuda"})
    gpu_allocator = "torch"

    @classmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        if device == "cuda" and not torch.cuda.is_available():
            build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            return False, (
                f"torch {torch.__version__} ({build}) sees no CUDA device "
                "(torch.cuda.is_available() is False); "
                "install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        return True, ""

    def _load_impl(self, source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        if isinstance(source, nn.Module):
            model = source
        elif isinstance(source, (str, os.PathLike)):
            from compress.models import load_model

            model = load_model(Path(source))
        else:
            raise BadInputError(
                f"runtime 'torch' loads an nn.Module or a compress model file (save_model), "
                f"got {type(source).__name__}"
            )
        target = torch.device(self.device)
        dtype = self._resolve_dtype()
        if dtype is None:
            raise BadInputError(
                f"runtime '{self.name}': precision '{self._precision}' is not one of {', '.join(_DTYPES)}"
            )
        if dtype != torch.float32 and target.type == "cpu" and dtype == torch.float16:
            raise BadInputError(
                f"runtime '{self.name}': fp16 on CPU is not supported; use fp32 or bf16 on CPU"
            )
        needs_copy = (
            model.training
            or any(t.is_floating_point() and t.dtype != dtype for t in _tensors(model))
            or any(t.device != target for t in _tensors(model))
        )
        if needs_copy:
            model = copy.deepcopy(model).to(dtype=dtype).eval().to(target)
        # whether ``model`` is the session's own (read from a file, or copied above): ``_prepare`` may
        # then change it in place; otherwise it is the caller's and must be copied before any change
        self._owns_model = needs_copy or not isinstance(source, nn.Module)
        self._dtype = dtype
        self._staging = PinnedStaging()
        model = self._prepare(model)
        self._model = model
        self._target = target
        in_shape: tuple[int | str, ...] | None = None
        out_specs: list[TensorSpec]
        if hasattr(_unwrap(model), "example_inputs"):
            # example_inputs draws random numbers; keep the caller's RNG stream untouched
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                example = _unwrap(model).example_inputs(1)
                out = model(example.to(target, dtype=dtype))
            in_shape = (_BATCH, *tuple(example.shape[1:]))
            outs = _as_list(out)
            names = _output_names(len(outs))
            out_specs = [
                TensorSpec(n, (_BATCH, *tuple(o.shape[1:])), "float32")  # run() returns float32
                for n, o in zip(names, outs, strict=True)
            ]
        else:
            out_specs = [TensorSpec(_OUTPUT_NAME, None, "float32")]
        # last, so a failed load leaves the process's thread count alone
        self._prev_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        in_dtype = (
            "float32" if in_shape is not None else None
        )  # unknown model: any dtype (token ids are int64)
        return [TensorSpec(_INPUT_NAME, in_shape, in_dtype)], out_specs

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._keep_threads()
        arr = np.ascontiguousarray(inputs[_INPUT_NAME])
        cuda = self._target.type == "cuda"
        x = self._staging.to_device(arr, self._target) if cuda else torch.from_numpy(arr)
        # token ids stay integers; only float inputs take the session's precision
        x = x.to(self._target, dtype=self._dtype) if x.is_floating_point() else x.to(self._target)
        with torch.inference_mode(), fp32_math(allow_tf32=self._precision == "tf32"):
            out = self._model(x)
        # a wrong output count is reported by the base class's result check; outputs go back as float32
        if cuda:
            return self._staging.to_host(_as_list(out), self._target)
        return [o.detach().float().cpu().numpy() for o in _as_list(out)]

    def _keep_threads(self) -> None:
        """Re-apply the session's thread count if something else in the process changed it."""
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _resolve_dtype(self) -> torch.dtype | None:
        """The torch dtype for the requested precision (``None``: unsupported)."""
        return _DTYPES.get(self._precision or "fp32")

    def _prepare(self, model: nn.Module) -> nn.Module:
        """Hook for subclasses (compile, quantize) after the model is on its device and dtype.

        ``self._owns_model`` says whether ``model`` may be changed in place (the session's own copy) or
        is the caller's module, which a subclass must copy before changing it.
        """
        return model

    def synchronize(self) -> None:
        """Nothing is left to wait for: ``run`` is synchronous on CUDA too.

        ``run`` returns host arrays, so before returning it waits for the stream that its copies and
        kernels ran on (``PinnedStaging.to_host``, or the replay path of ``torch-compile``); no work of
        this session is queued afterwards. The device-wide ``torch.cuda.synchronize`` this method did
        before cost 0.03-0.06 ms per call on an H100 right after a call (measured:
        docs/results/latency-floor-h100/README.md, session 10), which the latency harness added to
        every timed call of a torch artifact, and which a deployer calling ``run`` never pays.
        """

    def _close_impl(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self._prev_threads)
        del self._model
        self._staging.clear()


class PinnedStaging:
    """Page-locked host buffers for a CUDA session's copies between NumPy and the device.

    A copy from pageable NumPy memory is staged by the driver and synchronous; from a pinned buffer
    it is one DMA transfer queued on the stream. Measured on an H100 (docs/results/latency-floor-h100/
    compile-modes.md), for a 3-layer MiniLM in a CUDA graph at 32 x 128 tokens the pinned path cut the
    p95 of one synchronised call from 0.277 to 0.247 ms (the FP32 teacher: 3.108 to 3.026 ms).
    Buffers are kept per shape and dtype (at most ``max_buffers``; the oldest goes first). Each
    ``to_host`` waits for the stream, so a buffer is never rewritten while a copy from it is queued,
    and it hands back copies, not views of the buffers. Outputs cross in their own dtype (fp16 stays
    fp16 over PCIe) and become float32 on the host; bfloat16, which NumPy lacks, is cast on the device.
    """

    def __init__(self, max_buffers: int = 16) -> None:
        self._buffers: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._max = max_buffers

    def buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The pinned host tensor for ``shape`` and ``dtype`` (allocated on first use)."""
        key = (tuple(shape), dtype)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= self._max:
                self._buffers.pop(next(iter(self._buffers)))
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return buf

    def to_device(self, arr: np.ndarray, device: torch.device) -> torch.Tensor:
        """``arr`` on ``device``, copied through a pinned buffer (queued, not waited for)."""
        src = torch.from_numpy(arr)
        host = self.buffer(tuple(src.shape), src.dtype)
        host.copy_(src)
        return host.to(device, non_blocking=True)

    def to_host(self, outs: list[torch.Tensor], device: torch.device) -> list[np.ndarray]:
        """Each CUDA tensor of ``outs`` as a float32 NumPy array (one wait for the stream)."""
        bufs = []
        for o in outs:
            buf = self.buffer(tuple(o.shape), host_output_dtype(o.dtype))
            buf.copy_(o.detach(), non_blocking=True)
            bufs.append(buf)
        torch.cuda.current_stream(device).synchronize()
        return [b.numpy().astype(np.float32, copy=True) for b in bufs]

    def clear(self) -> None:
        """Free the buffers."""
        self._buffers.clear()


_HOST_DTYPES = frozenset({torch.float16, torch.float32, torch.float64})


def host_output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an output of ``dtype`` crosses to the host in: its own when NumPy has it, else float32."""
    return dtype if dtype in _HOST_DTYPES else torch.float32


_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def fp32_math(*, allow_tf32: bool) -> Iterator[None]:
    """Set whether CUDA matrix products and cuDNN convolutions may use TF32, for the block only.

    Example:
        >>> with fp32_math(allow_tf32=False):
        ...     torch.backends.cudnn.allow_tf32
        False
    """
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _unwrap(model: nn.Module) -> nn.Module:
    """The original module behind a ``torch.compile`` wrapper."""
    return getattr(model, "_orig_mod", model)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _as_list(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    raise SessionError(
        f"runtime 'torch': the model returned {type(out).__name__}; expected a tensor or a tuple of tensors"
    )


def _output_names(n: int) -> list[str]:
    return [_OUTPUT_NAME] if n == 1 else [f"output_{i}" for i in range(n)]


def _np_dtype(dtype: torch.dtype) -> str:
    return torch.empty((), dtype=dtype).numpy().dtype.name
