"""Optional graph simplification of exported ONNX files with onnxslim (``simplify: true``).

onnxslim (pinned in the ``export`` extra: ``pip install 'compress[export]'``) folds constants,
removes ``Identity``/``Constant`` chains and fuses shape arithmetic; it does not change what the
graph computes. The ``export`` stage still checks: it measures parity of the simplified graph
against the same torch source and tolerance as the original file, and keeps the unsimplified
file, recording why, when the simplified one misses the tolerance, when onnxslim fails, or when
it removed quantization nodes (``QuantizeLinear``, ``DequantizeLinear``, ``MatMulNBits``: a
folded dequantization would store the weights as float again).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from typing import Any

from compress.errors import ExportError

ONNXSLIM_VERSION = "0.1.98"
INSTALL_HINT = f"pip install 'compress[export]' (or pip install onnxslim=={ONNXSLIM_VERSION})"

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "MatMulNBits")
"""Nodes simplification must keep: they carry the quantized weights and activations."""


def onnxslim_available() -> bool:
    """Whether ``onnxslim`` can be imported (without importing it)."""
    return importlib.util.find_spec("onnxslim") is not None


def simplify_model(proto: Any) -> tuple[Any, dict[str, Any]]:
    """A simplified copy of an ONNX ``ModelProto`` and what changed.

    Args:
        proto: The model (not modified).

    Returns:
        ``(simplified, info)`` with ``info`` = ``nodes_before``, ``nodes_after``, ``onnxslim``
        (version) and ``removed_ops`` (op type -> count removed, only the types that shrank).

    Raises:
        MissingDependency: onnxslim is not installed.
        ExportError: onnxslim failed, or it removed quantization nodes.

    Example:
        >>> slim, info = simplify_model(onnx.load("model.fp32.onnx"))  # doctest: +SKIP
        >>> info["nodes_before"], info["nodes_after"]  # doctest: +SKIP
        (234, 108)
    """
    import onnx

    from compress.errors import MissingDependency

    try:
        import onnxslim
    except ModuleNotFoundError as e:
        raise MissingDependency(
            f"simplify: true needs onnxslim, which is not installed: {INSTALL_HINT}"
        ) from e
    src = onnx.ModelProto()
    src.CopyFrom(proto)
    try:
        out = onnxslim.slim(src)
    except Exception as e:  # onnxslim raises whatever its passes raise
        raise ExportError(f"onnxslim failed: {type(e).__name__}: {e}") from e
    if out is None:
        raise ExportError("onnxslim returned no model")
    before = Counter(n.op_type for n in proto.graph.node)
    after = Counter(n.op_type for n in out.graph.node)
    lost = {op: before[op] - after[op] for op in QUANT_OPS if after[op] < before[op]}
    if lost:
        raise ExportError(
            "onnxslim removed quantization nodes ("
            + ", ".join(f"{op}: {n}" for op, n in lost.items())
            + "); the quantized weights would be stored as float"
        )
    return out, {
        "nodes_before": len(proto.graph.node),
        "nodes_after": len(out.graph.node),
        "onnxslim": getattr(onnxslim, "__version__", "unknown"),
        "removed_ops": {op: before[op] - after[op] for op in sorted(before) if after[op] < before[op]},
    }
