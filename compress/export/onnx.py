"""FP32 ONNX export with a dynamic batch axis, checked with onnx.checker."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from compress._utils.io import atomic_write_bytes
from compress.errors import ExportError

DEFAULT_OPSET = 17
"""Opset 17: per-axis Q/DQ (needs >= 13) and LayerNormalization (17) are both there, and
ONNX Runtime and TensorRT 8.6+ read it. INT4 block quantization will need 21."""

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def trace_to_onnx(
    model: nn.Module, example_inputs: torch.Tensor, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True
) -> bytes:
    """Serialized ONNX of ``model`` from the TorchScript exporter (``dynamo=False``), in eval mode.

    The TorchScript exporter is used on purpose: it is fast (under a second for our models), and it
    maps fake-quant ops and custom symbolics to QuantizeLinear/DequantizeLinear, which the INT8
    export relies on. The caller's training mode is restored.

    Raises:
        Exception: Whatever the exporter raised; callers wrap it in ``ExportError`` with context.
    """
    was = model.training
    model.eval()
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_inputs,),
                buf,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was)
    return buf.getvalue()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` to ONNX (TorchScript exporter), atomically, and run onnx.checker.

    Args:
        model: Model taking one tensor and returning logits.
        path: Destination ``.onnx`` file.
        example_inputs: An input batch used for tracing.
        opset: ONNX opset.
        dynamic_batch: Make axis 0 of input and output symbolic (``batch``).

    Returns:
        The path written.

    Raises:
        ExportError: Tracing, export or the checker failed.
    """
    import onnx

    path = Path(path)
    try:
        data = trace_to_onnx(model, example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    except Exception as e:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"exported ONNX model fails onnx.checker: {e}") from e
    atomic_write_bytes(path, data)
    return path
