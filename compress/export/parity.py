"""Parity: how closely an exported ONNX file reproduces its torch model, measured with ONNX Runtime (CPU).

``graph_optimization`` chooses what is measured:

* ``basic`` (default): ONNX Runtime's basic rewrites only (constant folding that
  keeps DequantizeLinear, redundant-node removal); Q/DQ nodes run as written,
  in float, with the operator definitions' rounding. This checks the *file*:
  whether the export is faithful, independent of the CPU.
* ``all``: what an ONNX Runtime CPU deployment runs on this host, Q/DQ fused
  into integer kernels. On x86 CPUs without VNNI, ORT's u8×s8 kernels add
  pairs of products in int16 and saturate with 8-bit weights, so INT8 results
  can differ a lot there (7-bit weights avoid it; see ``compress.quant.config``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from compress.errors import ExportError
from compress.export.config import ParityToleranceConfig
from compress.export.onnx import INPUT_NAME

PARITY_KEYS = ("max_abs_error", "mean_abs_error", "cosine", "top1_agreement", "n")


def as_numpy_input(x: torch.Tensor) -> np.ndarray:
    """A model input as the exported graph takes it: float32 for images and features, int64 token ids as they are."""
    return x.numpy().astype(np.float32) if x.is_floating_point() else x.numpy().astype(np.int64)


def parity(
    onnx_path: str | os.PathLike[str],
    torch_model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 256,
    graph_optimization: Literal["basic", "all"] = "basic",
    threads: int | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Compare an ONNX file (ONNX Runtime CPU) with a torch model (eval mode) on ``inputs``.

    Args:
        onnx_path: The exported file; input ``input``, first output the logits.
        torch_model: The model the file was exported from (its training flag is restored).
        inputs: Examples, first axis = batch.
        batch_size: Examples per run (the last batch may be smaller: needs a dynamic batch axis).
        graph_optimization: ``basic`` checks the file's own semantics, ``all`` what
            ONNX Runtime's fused CPU kernels compute on this host (see module docstring).
        threads: ONNX Runtime intra-op threads (default: ORT's choice).
        labels: Class labels of ``inputs``; when given, ``accuracy`` (the file's top-1
            accuracy) and ``source_accuracy`` (the torch model's) are added.

    Returns:
        ``max_abs_error`` and ``mean_abs_error`` over all logits, ``cosine`` (mean
        per-example cosine similarity), ``top1_agreement`` (fraction of examples
        with the same argmax) and ``n`` (examples).

    Raises:
        ExportError: ``inputs`` is empty, or ONNX Runtime cannot load or run the file,
            or the output shapes differ.
        BadInputError: The file's external data lies outside its folder (refused before loading).

    Example:
        >>> parity("artifacts/model.fp32.onnx", model, x_val, batch_size=256)  # doctest: +SKIP
        {'max_abs_error': 9.5e-07, 'mean_abs_error': 1.1e-07, 'cosine': 1.0, 'top1_agreement': 1.0, 'n': 270}
    """
    import onnxruntime as ort

    if len(inputs) == 0:
        raise ExportError(f"parity of {onnx_path}: no inputs to compare on")
    from compress.runtime.onnxruntime import check_external_data

    check_external_data(onnx_path)  # never let ONNX Runtime read data outside the model's folder
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if graph_optimization == "basic"
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"ONNX Runtime cannot load {onnx_path}: {e}") from e

    def run(xb: torch.Tensor) -> np.ndarray:
        try:
            return sess.run(None, {INPUT_NAME: as_numpy_input(xb)})[0]
        except Exception as e:
            raise ExportError(
                f"ONNX Runtime failed to run {onnx_path} on a batch of shape {tuple(xb.shape)}: {e}"
            ) from e

    return _batched_parity(
        run, torch_model, inputs, batch_size=batch_size, what=str(onnx_path), labels=labels
    )


def _batched_parity(
    run: Any,
    torch_model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int,
    what: str,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Run ``run(batch) -> logits`` and the torch model (eval, no grad) batch by batch, then compare."""
    was = torch_model.training
    torch_model.eval()
    got, ref = [], []
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                xb = inputs[i : i + batch_size]
                got.append(run(xb))
                ref.append(torch_model(xb).float().numpy())
    finally:
        torch_model.train(was)
    a, b = np.concatenate(got), np.concatenate(ref)
    out = compare_outputs(a, b, what=what)
    if labels is not None:
        y = labels.numpy().reshape(-1)
        out["accuracy"] = float((a.reshape(len(a), -1).argmax(1) == y).mean())
        out["source_accuracy"] = float((b.reshape(len(b), -1).argmax(1) == y).mean())
    return out


def compare_outputs(got: np.ndarray, ref: np.ndarray, *, what: str = "artifact") -> dict[str, float]:
    """Parity metrics of ``got`` (an artifact's outputs) against ``ref`` (its torch source's).

    Returns:
        ``max_abs_error``, ``mean_abs_error``, ``cosine`` (mean per example), ``top1_agreement``, ``n``.

    Raises:
        ExportError: The shapes differ.
    """
    a, b = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"{what}: output shape {a.shape} differs from torch {b.shape}")
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    diff = np.abs(a2 - b2)
    denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    cos = np.where(denom > 0, (a2 * b2).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)
    return {
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "cosine": float(cos.mean()),
        "top1_agreement": float((a2.argmax(1) == b2.argmax(1)).mean()),
        "n": int(len(a)),
    }


def session_parity(
    session: Any, torch_model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256
) -> dict[str, float]:
    """Parity of a loaded runtime ``Session`` (any backend) against a torch model on ``inputs``."""
    name = session.inputs[0].name
    return _batched_parity(
        lambda xb: session.run({name: as_numpy_input(xb)})[0],
        torch_model,
        inputs,
        batch_size=batch_size,
        what=session.source,
    )


def check_parity(result: dict[str, Any], tolerance: ParityToleranceConfig) -> list[str]:
    """Sentences naming each tolerance that ``result`` (from ``parity``) exceeds; empty if none.

    Example:
        >>> check_parity({"max_abs_error": 0.2, "top1_agreement": 1.0, "cosine": 1.0},
        ...              ParityToleranceConfig(max_abs_error=1e-4))
        ['max_abs_error 0.2 > 0.0001']
    """
    problems = []
    if tolerance.max_abs_error is not None and result["max_abs_error"] > tolerance.max_abs_error:
        problems.append(f"max_abs_error {result['max_abs_error']:.4g} > {tolerance.max_abs_error:.4g}")
    if tolerance.min_top1_agreement is not None and result["top1_agreement"] < tolerance.min_top1_agreement:
        problems.append(f"top1_agreement {result['top1_agreement']:.4g} < {tolerance.min_top1_agreement:.4g}")
    if tolerance.min_cosine is not None and result["cosine"] < tolerance.min_cosine:
        problems.append(f"cosine {result['cosine']:.6g} < {tolerance.min_cosine:.6g}")
    return problems
