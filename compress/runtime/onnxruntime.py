"""``onnxruntime``: run ``.onnx`` artifacts with ONNX Runtime (CPU, or CUDA with onnxruntime-gpu).

Session settings are fixed so timings are comparable across artifacts and runs:
graph optimisation level ``ORT_ENABLE_ALL``, sequential execution, and
``intra_op_num_threads`` from the target's ``threads`` (ONNX Runtime's default,
one thread per physical core, when ``None``). On ``cuda`` the session uses the
CUDA execution provider with the CPU provider as fallback for operators CUDA
lacks; loading fails if ONNX Runtime silently dropped CUDA. The CUDA provider
computes FP32 matrix products in TF32 unless told otherwise (measured on the
H100: max abs error 5e-3 against torch's FP32, outside the FP32 parity
tolerance), so sessions pass ``use_tf32=0``: an FP32 file is computed in FP32.
``precision="tf32"`` opts back into TF32 (a target's ``precision: tf32``).

An ``.onnx`` file may keep tensors in *external data* files named by a relative
``location``. Before ONNX Runtime opens a model, ``check_external_data`` reads the
graph (not the data) and refuses any location that is absolute or resolves outside
the model's folder (``../../etc/passwd``, a symlink out), so an artifact cannot make
the runtime read arbitrary files.

``onnxruntime`` is imported only when a session is checked or loaded, never at
``import compress``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
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
        check_external_data(path)
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
        sess = ort.InferenceSession(
            str(path),
            sess_options=so,
            providers=providers,
            provider_options=provider_options(self.device, self._precision),
        )
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


def provider_options(device: str, precision: str | None) -> list[dict[str, str]]:
    """ONNX Runtime provider options, one dict per provider in the order the session lists them.

    On ``cuda``: ``use_tf32`` is ``"0"`` (FP32 products in FP32) unless ``precision`` is ``tf32``.

    Example:
        >>> provider_options("cuda", "fp32")
        [{'use_tf32': '0'}, {}]
    """
    if device != "cuda":
        return [{}]
    return [{"use_tf32": "1" if precision == "tf32" else "0"}, {}]


def _spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an ``onnxruntime.NodeArg``."""
    shape = None
    if arg.shape is not None:
        shape = tuple(d if isinstance(d, int) else (d or UNKNOWN_DIM) for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type))


def check_external_data(path: str | os.PathLike[str]) -> None:
    """Refuse an ONNX file whose external-data locations leave its folder.

    Reads the graph with ``load_external_data=False`` (the data files are never
    opened) and checks every tensor stored externally: initializers, sparse
    initializers, tensors in node attributes, in subgraphs and in functions.
    A file that ``onnx`` cannot parse is left to ONNX Runtime, which reports it.

    Args:
        path: The ``.onnx`` file.

    Raises:
        BadInputError: A ``location`` is empty, absolute, or resolves (through ``..`` or a
            symlink) outside the model's folder; the message names the tensor and location.

    Example:
        >>> check_external_data("artifacts/model.fp32.onnx")  # doctest: +SKIP
    """
    try:
        import onnx
    except ModuleNotFoundError:  # onnx is a core dependency; without it ORT's own checks apply
        return
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # corrupt file: ONNX Runtime's load error names it
        return
    base = path.resolve().parent
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        loc = entries.get("location", "")
        target = (base / loc).resolve() if loc and not _is_absolute(loc) else None
        if target is None or not target.is_relative_to(base):
            why = "an absolute path" if _is_absolute(loc) else f"outside {base}"
            why = why if loc else "no location"
            raise BadInputError(
                f"runtime 'onnxruntime': {path}: tensor '{tensor.name}' keeps its data at '{loc}' ({why}); "
                "refusing to load it: external data must sit in the model's folder, named relative to it "
                "(e.g. 'model.onnx.data'); re-export the model or move the data file beside it"
            )


def _is_absolute(loc: str) -> bool:
    return os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":")


def _all_tensors(proto: object) -> Iterator[object]:
    """Every ``TensorProto`` in a ``ModelProto``: graph, subgraphs and functions."""
    graphs = [proto.graph]  # type: ignore[attr-defined]
    node_lists = [list(f.node) for f in proto.functions]  # type: ignore[attr-defined]
    while graphs or node_lists:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sp in g.sparse_initializer:
                yield sp.values
                yield sp.indices
            node_lists.append(list(g.node))
            continue
        for node in node_lists.pop():
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
