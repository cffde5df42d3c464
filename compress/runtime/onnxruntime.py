"""``onnxruntime``: run ``.onnx`` artifacts with ONNX Runtime (CPU, or CUDA with onnxruntime-gpu).

Session settings are fixed so timings are comparable across artifacts and runs:
graph optimisation level ``ORT_ENABLE_ALL``, sequential execution, and
``intra_op_num_threads`` from the target's ``threads`` (ONNX Runtime's default,
one thread per physical core, when ``None``). On ``cuda`` the session uses the
CUDA execution provider with the CPU provider as fallback for operators CUDA
lacks; loading fails if ONNX Runtime silently dropped CUDA.

``onnxruntime`` is imported only when a session is checked or loaded, never at
``import compress``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import BadInputError
from compress.runtime.base import UNKNOWN_DIM, Session, TensorSpec, register_runtime

_INSTALL_CPU = "pip install onnxruntime"
_INSTALL_GPU = "pip uninstall onnxruntime && pip install onnxruntime-gpu (and a matching CUDA/cuDNN)"

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# ONNX Runtime reports element types as "tensor(<onnx type>)".
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@register_runtime("onnxruntime")
class OrtSession(Session):
    """An ONNX model in an ONNX Runtime ``InferenceSession``.

    Example:
        >>> sess = OrtSession.load("artifacts/model.int8.onnx", threads=2)  # doctest: +SKIP
        >>> sess.inputs[0].shape  # doctest: +SKIP
        ('batch', 1, 8, 8)
    """

    formats = frozenset({"onnx"})
    devices = frozenset({"cpu", "cuda"})

    @classmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, f"onnxruntime is not installed: {_INSTALL_CPU if device == 'cpu' else _INSTALL_GPU}"
        if device == "cpu":
            return True, ""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if _PROVIDERS["cuda"] not in available:
            return False, (
                f"ONNX Runtime {ort.__version__} has no CUDAExecutionProvider here "
                f"(available: {', '.join(available)}); {_INSTALL_GPU}"
            )
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (torch.cuda.is_available() is False); check the driver"
        return True, ""

    def _load_impl(self, source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        import onnxruntime as ort

        if not isinstance(source, (str, Path)):
            raise BadInputError(
                f"runtime 'onnxruntime' loads a path to an .onnx file, got {type(source).__name__}; "
                "export first with compress.export.export_onnx(model, path, example_inputs)"
            )
        path = Path(source)
        if path.suffix != ".onnx":
            raise BadInputError(
                f"runtime 'onnxruntime': {path} is not an .onnx file; pass the exported .onnx path"
            )
        if not path.is_file():
            raise BadInputError(f"runtime 'onnxruntime': {path} does not exist; check the artifact path")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only: ORT's warnings go to stderr and would break progress output
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = (
                1  # unused in sequential mode; keeps the thread count what the target says
            )
        providers = [_PROVIDERS["cuda"], _PROVIDERS["cpu"]] if self.device == "cuda" else [_PROVIDERS["cpu"]]
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        if sess.get_providers()[0] != providers[0]:
            raise BadInputError(
                f"runtime 'onnxruntime': {path} was loaded with {sess.get_providers()} "
                f"instead of {providers[0]}; {_INSTALL_GPU}"
            )
        self._sess = sess
        self._output_names = [o.name for o in sess.get_outputs()]
        return [_spec(a) for a in sess.get_inputs()], [_spec(a) for a in sess.get_outputs()]

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._sess.run(self._output_names, dict(inputs)))

    def _close_impl(self) -> None:
        del self._sess

    @property
    def providers(self) -> list[str]:
        """Execution providers of the loaded session, in priority order."""
        return list(self._sess.get_providers())


def _spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an ``onnxruntime.NodeArg``."""
    shape = None
    if arg.shape is not None:
        shape = tuple(d if isinstance(d, int) else (d or UNKNOWN_DIM) for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type))
