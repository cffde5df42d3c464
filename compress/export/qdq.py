"""INT8 Q/DQ ONNX export from a QAT model's learned scales (never re-calibrated).

Two flavours of the same quantized network:

``s8s8`` ("TensorRT rules")
    Weights are INT8 initializers followed by ``DequantizeLinear`` with one
    scale per output channel and zero point 0. The axis is the output axis of
    the weight *as it appears in the graph*: 0 for ``Gemm(transB=1)`` (weight
    ``[out, in]``), 1 for ``MatMul`` (the exporter transposes the weight to
    ``[in, out]``; the transpose is folded into the INT8 initializer so the DQ
    feeds the MatMul directly, as TensorRT's Q/DQ fusion wants). Every input of
    a quantized Linear or attention MatMul gets ``QuantizeLinear →
    DequantizeLinear`` per tensor with int8 zero point 0.

``u8s8`` (ONNX Runtime on x86 CPUs)
    Identical scales and weights; activations use uint8 with zero point 128,
    an exact re-encoding of the symmetric int8 grid (code + 128). ORT's x86
    integer kernels are u8×s8 (VNNI/AVX2), and S8S8 Q/DQ is known to run
    slower than FP32 there.

u8s8 and convolutions (``ort_integer_convs=True``, the default; issue 7)
    ONNX Runtime turns ``DequantizeLinear → Conv → QuantizeLinear`` into an
    integer ``QLinearConv`` only when the convolution's output goes straight
    to a ``QuantizeLinear``. Our quantizers sit at layer *inputs*, so in a CNN
    a convolution's output first passes a ``Relu`` or goes to a residual
    ``Add`` in float, and ORT runs such a convolution in float on dequantized
    tensors (slower than the FP32 file). ``s8s8`` files and graphs without
    these patterns (Transformers: their quantizers follow LayerNorm, GELU,
    Softmax) are written exactly as before.

    * ``Conv → Relu → Q``: a ``QuantizeLinear`` of a ``Relu`` output (possibly
      through ``Identity``, pooling or ``Flatten``) and its ``DequantizeLinear``
      get uint8 zero point 0 with the same scale, so ORT's ``ReluQuantFusion``
      drops the ``Relu``. Codes 0..127 mean what they meant; a value above
      ``127 · scale``, which the fake-quant model clips at 127, now keeps a
      code up to 255: closer to the float model than the fake-quant model
      is, but not identical to it. With min-max calibrated scales such values
      are rare; parity measures the difference.
    * ``Conv → Add`` (the residual branch: a ResNet block's last conv and its
      downsample conv) stays in float unless the QAT model has a quantizer
      after the conv. ``QuantConfig.quantize_residual_conv_outputs`` (default
      ``auto``: every CNN torch.fx can trace) puts one there
      (``compress.quant.config``): trained and calibrated with the others, it
      is exported like any activation quantizer (zero point 128: conv outputs
      are signed) and ORT fuses those convolutions too. The exporter adds no
      quantizer of its own and calibrates nothing.

    A ``Relu`` with more than one consumer (a ResNet stem feeding both the
    first block and its identity shortcut) cannot be dropped either.
    ``ort_integer_convs=False`` writes the plain re-encoding, which
    reproduces the fake-quant model exactly.

How: quantizers are put in export mode (``compress.quant.onnx_export_mode``),
in which they emit these Q/DQ nodes through custom symbolics while the
TorchScript exporter (``dynamo=False``) traces the model; then this module
turns the Q/DQ constants into initializers, folds weight transposes into the
INT8 initializers, applies the ``u8s8`` convolution rewrite, and checks the
result with ``onnx.checker``. The batch axis stays dynamic. Files are written
atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compress.errors import ExportError
from compress.export.onnx import DEFAULT_OPSET, trace_to_onnx, write_onnx

Flavour = Literal["s8s8", "u8s8"]

_ACTIVATION_DTYPE: dict[str, Literal["int8", "uint8"]] = {"s8s8": "int8", "u8s8": "uint8"}
_MIN_OPSET = 13  # per-axis DequantizeLinear


def export_onnx_qdq(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    flavour: Flavour = "s8s8",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    external_data: bool = False,
    ort_integer_convs: bool = True,
) -> Path:
    """Export a calibrated/QAT model to INT8 Q/DQ ONNX using its learned scales.

    Args:
        model: A model prepared with ``compress.quant.prepare_qat`` and calibrated
            (or trained); its quantizers must be enabled. Not modified.
        path: Destination ``.onnx`` file (written atomically).
        example_inputs: An input batch used for tracing.
        flavour: ``s8s8`` (TensorRT) or ``u8s8`` (ONNX Runtime CPU).
        opset: ONNX opset (at least 13, for per-axis DequantizeLinear).
        dynamic_batch: Make axis 0 of input and output symbolic (``batch``, and ``sequence`` for
            token inputs).
        external_data: Keep tensors in a data file beside ``path`` (``compress.export.onnx.write_onnx``).
        ort_integer_convs: ``u8s8`` only (ignored for ``s8s8``): write the form ONNX Runtime CPU fuses
            into ``QLinearConv`` (module docstring, "u8s8 and convolutions"). ``False`` keeps the plain
            re-encoding (zero point 128 everywhere, nothing added), which computes exactly what the
            fake-quant model computes but leaves CNN convolutions in float on ONNX Runtime CPU.

    Returns:
        The path written.

    Raises:
        ExportError: The model has no or uncalibrated/disabled quantizers, the
            opset is too old, tracing failed, or the graph fails the checker.

    Example:
        >>> export_onnx_qdq(qat_model, "model.int8.onnx", x[:2], flavour="s8s8")  # doctest: +SKIP
        PosixPath('model.int8.onnx')
    """
    import onnx

    from compress.quant import is_quantized, onnx_export_mode

    if flavour not in _ACTIVATION_DTYPE:
        raise ExportError(
            f"unknown Q/DQ flavour '{flavour}'; expected one of: {', '.join(_ACTIVATION_DTYPE)}"
        )
    if opset < _MIN_OPSET:
        raise ExportError(
            f"INT8 Q/DQ export needs opset >= {_MIN_OPSET} (per-channel DequantizeLinear), got {opset}"
        )
    if not is_quantized(model):
        raise ExportError(
            f"{type(model).__name__} has no fake quantizers; INT8 export needs a QAT model "
            "(run a 'qat' stage, or compress.quant.prepare_qat + calibrate_, first)"
        )
    path = Path(path)
    try:
        with onnx_export_mode(model, activation_dtype=_ACTIVATION_DTYPE[flavour]):
            data = trace_to_onnx(model, example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    except ValueError as e:
        raise ExportError(f"INT8 export of {type(model).__name__}: {e}") from e
    except Exception as e:
        raise ExportError(
            f"INT8 ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}"
        ) from e
    proto = onnx.load_from_string(data)
    _constants_to_initializers(proto)
    _fold_weight_transposes(proto)
    if flavour == "u8s8" and ort_integer_convs:
        _zero_point_0_after_relu(proto)
    _remove_unused_initializers(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"INT8 ONNX model fails onnx.checker: {e}") from e
    summary = qdq_summary(proto)
    if summary["weights"] == 0 or summary["activations"] == 0:
        raise ExportError(f"INT8 export produced no Q/DQ nodes ({summary}); the quantizers were not traced")
    write_onnx(proto, path, external_data=external_data)
    return path


def qdq_summary(model: Any) -> dict[str, Any]:
    """Count and describe the Q/DQ nodes of an ONNX model (path or ``ModelProto``).

    Returns:
        ``weights`` (DequantizeLinear nodes reading an INT8 initializer),
        ``weight_axes`` (their ``axis`` by consumer op, e.g. ``{"MatMul": [1], "Gemm": [0]}``),
        ``activations`` (QuantizeLinear nodes), ``activation_zero_points``
        (sorted distinct ``(dtype, value)`` of their zero points),
        ``weight_code_range`` (smallest and largest INT8 weight code: within [-64, 63] for
        7-bit weights), ``weight_zero_points_all_zero`` and ``float_weight_initializers`` (float
        initializers of rank >= 2 feeding MatMul/Gemm directly: unquantized weights).
    """
    import onnx
    from onnx import numpy_helper

    from compress.export.onnx import load_onnx

    proto = load_onnx(model) if isinstance(model, str | os.PathLike) else model
    g = proto.graph
    inits, consumers = _graph_index(g)
    weights = 0
    code_lo, code_hi = 0, 0
    weight_axes: dict[str, set[int]] = {}
    wzp_zero = True
    act_zp: set[tuple[str, int]] = set()
    for n in g.node:
        if (
            n.op_type == "DequantizeLinear"
            and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        ):
            weights += 1
            codes = numpy_helper.to_array(inits[n.input[0]])
            code_lo, code_hi = min(code_lo, int(codes.min())), max(code_hi, int(codes.max()))
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if len(n.input) > 2 and n.input[2] in inits:
                wzp_zero = wzp_zero and not numpy_helper.to_array(inits[n.input[2]]).any()
            for c in consumers.get(n.output[0], []):
                weight_axes.setdefault(c.op_type, set()).add(int(axis))
        elif n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            act_zp.add((str(zp.dtype), int(zp.reshape(-1)[0])))
    float_weights = 0
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm"):
            for i in n.input[:2]:
                t = inits.get(i)
                if t is not None and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2:
                    float_weights += 1
    return {
        "weights": weights,
        "weight_axes": {k: sorted(v) for k, v in sorted(weight_axes.items())},
        "weight_zero_points_all_zero": wzp_zero,
        "weight_code_range": [code_lo, code_hi],
        "activations": sum(1 for n in g.node if n.op_type == "QuantizeLinear"),
        "activation_zero_points": sorted(act_zp),
        "float_weight_initializers": float_weights,
    }


# --- graph post-processing ---------------------------------------------------------------------


def _constants_to_initializers(proto: Any) -> None:
    """Turn ``Constant`` nodes feeding Q/DQ/Clip into initializers (TensorRT and checkers expect those)."""
    g = proto.graph
    wanted = {"QuantizeLinear", "DequantizeLinear", "Clip"}
    fed: set[str] = set()
    for n in g.node:
        if n.op_type in wanted:
            fed.update(n.input[1:] if n.op_type != "DequantizeLinear" else n.input)
    keep = []
    for n in g.node:
        if (
            n.op_type == "Constant"
            and n.output[0] in fed
            and len(n.attribute) == 1
            and n.attribute[0].name == "value"
        ):
            t = n.attribute[0].t
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _graph_index(g: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Initializers by name, and the nodes consuming each tensor name."""
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return inits, consumers


def _fold_weight_transposes(proto: Any) -> None:
    """``DQ(int8 W, axis=a) → Transpose(perm)`` becomes ``DQ(int8 Wᵀ, axis=perm.index(a))``."""
    import onnx
    from onnx import numpy_helper

    g = proto.graph
    inits, consumers = _graph_index(g)
    graph_outputs = {o.name for o in g.output}
    drop: list[Any] = []
    for n in list(g.node):
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        if inits[n.input[0]].data_type != onnx.TensorProto.INT8 or n.output[0] in graph_outputs:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "Transpose":
            continue
        tr = users[0]
        codes = numpy_helper.to_array(inits[n.input[0]])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), list(range(codes.ndim))[::-1])
        new_name = f"{n.input[0]}_T"
        t = numpy_helper.from_array(codes.transpose(perm).copy(), name=new_name)
        g.initializer.append(t)
        inits[new_name] = t
        n.input[0] = new_name
        axis_attr = next((a for a in n.attribute if a.name == "axis"), None)
        if axis_attr is not None and len(inits[n.input[1]].dims) == 1:
            axis_attr.i = perm.index(axis_attr.i % codes.ndim)
        n.output[0] = tr.output[0]
        drop.append(tr)
    if drop:
        ids = {id(d) for d in drop}
        keep = [n for n in g.node if id(n) not in ids]
        del g.node[:]
        g.node.extend(keep)


def _producers(g: Any) -> dict[str, Any]:
    """The node producing each tensor name (graph inputs and initializers have none)."""
    return {o: n for n in g.node for o in n.output}


def _scalar_initializer(inits: dict[str, Any], name: str) -> float | None:
    """The value of a one-element initializer ``name``; ``None`` for anything else (or no name)."""
    from onnx import numpy_helper

    if not name or name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    return float(a.reshape(-1)[0]) if a.size == 1 else None


_NONNEGATIVE_PASS_THROUGH = frozenset(
    {"Identity", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape"}
)
"""Ops whose output is >= 0 wherever their (first) input is."""


def _is_relu_output(name: str, producers: dict[str, Any], inits: dict[str, Any]) -> bool:
    """Whether tensor ``name`` comes from a ``Relu`` (or ``Clip`` with lower bound >= 0, i.e. ``Relu6``).

    Followed back through ``Identity``, pooling, ``Flatten``/``Reshape`` and a ``Clip`` whose upper
    bound is >= 0 (the sub-8-bit activation clip). ``Softmax``/``Sigmoid`` outputs are nonnegative too but are
    deliberately not sources: Transformer files keep their zero points (issue 7 concerns CNNs).
    """
    node = producers.get(name)
    while node is not None:
        if node.op_type == "Relu":
            return True
        if node.op_type == "Clip":
            lo = _scalar_initializer(inits, node.input[1]) if len(node.input) > 1 else None
            hi = _scalar_initializer(inits, node.input[2]) if len(node.input) > 2 else None
            if lo is not None and lo >= 0:
                return True
            if hi is None or hi < 0:
                return False
        elif node.op_type not in _NONNEGATIVE_PASS_THROUGH:
            return False
        node = producers.get(node.input[0])
    return False


def _zero_point_0_after_relu(proto: Any) -> int:
    """Give each ``QuantizeLinear`` of a ``Relu`` output, and its ``DequantizeLinear``, uint8 zero point 0.

    Same scale, so codes 0..127 mean what they meant with zero point 128. Values above
    ``127 · scale``, clipped at 127 by the fake-quant model, now keep codes up to 255 (module
    docstring). ONNX Runtime's ``ReluQuantFusion`` drops a ``Relu`` before a ``QuantizeLinear`` only
    when the zero point is the bottom of the range, which lets ``Conv → Relu → Q`` become
    ``QLinearConv``.

    Returns:
        The number of quantizers changed.
    """
    import numpy as np
    from onnx import numpy_helper

    g = proto.graph
    inits, consumers = _graph_index(g)
    producers = _producers(g)
    changed = 0
    for n in g.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        if zp.dtype != np.uint8 or zp.size != 1 or int(zp.reshape(-1)[0]) != 128:
            continue
        partners = consumers.get(n.output[0], [])
        if not partners or any(c.op_type != "DequantizeLinear" for c in partners):
            continue
        if not _is_relu_output(n.input[0], producers, inits):
            continue
        name = f"{n.output[0]}_zero_point_0"
        g.initializer.append(numpy_helper.from_array(np.zeros(zp.shape, dtype=np.uint8), name=name))
        n.input[2] = name
        for c in partners:
            c.input[2] = name
        changed += 1
    return changed


def _remove_unused_initializers(proto: Any) -> None:
    g = proto.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
