"""``tensorrt``: run serialized TensorRT engines (``.engine`` plans) on CUDA, named-tensor API (TRT 10+).

Load: ``trt.Runtime(logger).deserialize_cuda_engine(plan)``, one execution context, I/O from
``engine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``. Run: copy inputs to CUDA
tensors, ``context.set_input_shape``, allocate outputs from ``context.get_tensor_shape``,
``set_tensor_address`` for every tensor, ``execute_async_v3`` on a torch CUDA stream, synchronize,
copy back. Buffers are torch CUDA tensors, so no pycuda/cuda-python is needed.

Status: written against TensorRT's documented Python API; TensorRT cannot be installed in the
workplace where this was written, so it has not run. On a machine without TensorRT or CUDA,
``can_run_here`` says what is missing and a validate target using it records why it did not run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import BadInputError
from compress.runtime.base import Session, TensorSpec, register_runtime

_NP_OF_TRT = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


@register_runtime("tensorrt")
class TrtSession(Session):
    """A TensorRT engine with one execution context on one CUDA device."""

    formats = frozenset({"tensorrt"})
    devices = frozenset({"cuda"})

    @classmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        from compress.export.tensorrt import INSTALL_HINT

        if device != "cuda":
            return False, "TensorRT runs engines on CUDA devices only; use device: cuda"
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (torch.cuda.is_available() is False); TensorRT needs an NVIDIA GPU"
        if importlib.util.find_spec("tensorrt") is None:
            return False, f"TensorRT is not installed: {INSTALL_HINT}"
        return True, ""

    def _load_impl(self, source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        import tensorrt as trt
        import torch

        path = Path(source)
        if not path.is_file():
            raise BadInputError(f"runtime 'tensorrt': {path} does not exist; build it with an export format tensorrt-*")
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BadInputError(
                f"runtime 'tensorrt': {path} could not be deserialized (built by another TensorRT version "
                "or for another GPU? rebuild it on this machine)"
            )
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        ins, outs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) if int(d) >= 0 else "batch" for d in engine.get_tensor_shape(name))
            dtype = _NP_OF_TRT.get(str(engine.get_tensor_dtype(name)).split(".")[-1])
            spec = TensorSpec(name, shape, dtype)
            (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(spec)
        self._in_names = [s.name for s in ins]
        self._out_specs = outs
        return ins, outs

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        keep = []
        with torch.cuda.stream(self._stream):
            for name in self._in_names:
                t = torch.from_numpy(np.ascontiguousarray(inputs[name])).to("cuda", non_blocking=True)
                keep.append(t)
                self._ctx.set_input_shape(name, tuple(t.shape))
                self._ctx.set_tensor_address(name, t.data_ptr())
            outs = []
            for spec in self._out_specs:
                shape = tuple(self._ctx.get_tensor_shape(spec.name))
                o = torch.empty(shape, dtype=getattr(torch, spec.dtype or "float32"), device="cuda")
                self._ctx.set_tensor_address(spec.name, o.data_ptr())
                outs.append(o)
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise BadInputError("runtime 'tensorrt': execute_async_v3 failed; see TensorRT's log")
        self._stream.synchronize()
        return [o.cpu().numpy() for o in outs]

    def synchronize(self) -> None:
        self._stream.synchronize()

    def _close_impl(self) -> None:
        del self._ctx, self._engine, self._runtime
