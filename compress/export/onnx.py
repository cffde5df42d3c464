"""FP32 ONNX export with dynamic batch (and sequence) axes, checked with onnx.checker; safe ONNX file I/O.

Axes: axis 0 of input and output is ``batch``; for token inputs (integer ``[batch, length]``
tensors) axis 1 of the input is ``sequence`` too, so one file serves any batch size and any
sequence length up to the model's position table.

Files: every ONNX file compress writes goes through ``write_onnx``, atomically. With
``external_data`` (or when the model is larger than protobuf's 2 GiB limit allows inline) the
tensors go to *one* data file in the same folder, named ``<model file>.<hash>.data`` and
referenced by that bare relative name (never an absolute path or ``..``); the data file is in
place before the model file is renamed over the old one, and data files of earlier exports
of the same model are removed afterwards, so a reader never sees a model whose data is
missing or belongs to another export. ``load_onnx`` refuses external-data locations that
leave the model's folder (``compress.runtime.onnxruntime.check_external_data``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress._utils.io import atomic_open, atomic_write_bytes
from compress.errors import ExportError

DEFAULT_OPSET = 17
"""Opset 17: per-axis Q/DQ (needs >= 13) and LayerNormalization (17) are both there, and
ONNX Runtime and TensorRT 8.6+ read it. INT4 block quantization will need 21."""

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
"""Above this serialized size (protobuf refuses 2 GiB) tensors go to an external data file."""

_EXTERNAL_MIN_TENSOR_BYTES = 1024
"""Tensors smaller than this stay inline in the model file even with external data."""


def dynamic_axes(
    example_inputs: torch.Tensor, dynamic_batch: bool = True
) -> dict[str, dict[int, str]] | None:
    """The exporter's ``dynamic_axes``: batch on input and output, sequence on token inputs.

    Example:
        >>> dynamic_axes(torch.zeros(2, 12, dtype=torch.long))
        {'input': {0: 'batch', 1: 'sequence'}, 'logits': {0: 'batch'}}
    """
    if not dynamic_batch:
        return None
    axes: dict[int, str] = {0: "batch"}
    if not example_inputs.is_floating_point() and example_inputs.dim() == 2:
        axes[1] = "sequence"
    return {INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}}


def trace_to_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    custom_opsets: dict[str, int] | None = None,
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
    axes = dynamic_axes(example_inputs, dynamic_batch)
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
                custom_opsets=custom_opsets,
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
    external_data: bool = False,
) -> Path:
    """Export ``model`` to ONNX (TorchScript exporter), atomically, and run onnx.checker.

    Args:
        model: Model taking one tensor and returning logits.
        path: Destination ``.onnx`` file.
        example_inputs: An input batch used for tracing.
        opset: ONNX opset.
        dynamic_batch: Make axis 0 of input and output symbolic (``batch``, and ``sequence`` for
            token inputs).
        external_data: Keep tensors in a data file beside ``path`` (see the module docstring).

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
    write_onnx(proto, path, external_data=external_data)
    return path


def write_onnx(proto: Any, path: str | os.PathLike[str], *, external_data: bool = False) -> dict[str, Any]:
    """Write an ONNX ``ModelProto`` to ``path`` atomically, inline or with one external data file.

    Args:
        proto: The model (not modified).
        path: Destination ``.onnx`` file.
        external_data: Put tensors of at least 1 KiB in ``<path.name>.<hash>.data`` beside
            ``path``. Forced on when the model is too large to serialize inline.

    Returns:
        ``{"external_data": None}`` or ``{"external_data": "<data file name>"}`` (relative to
        the model's folder).

    Raises:
        ExportError: The model cannot be serialized.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    path = Path(path)
    if not external_data and proto.ByteSize() <= EXTERNAL_DATA_THRESHOLD_BYTES:
        atomic_write_bytes(path, _serialize(proto, path))
        _remove_stale_data(path, keep=None)
        return {"external_data": None}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    digest = hashlib.sha256()
    for t in model.graph.initializer:
        digest.update(t.name.encode())
        digest.update(t.raw_data if t.HasField("raw_data") else t.SerializeToString())
    location = f"{path.name}.{digest.hexdigest()[:12]}.data"
    # The data file is written atomically (temporary + fsync + rename) before the model file, which
    # is then renamed over the old one: the model is the entry point, so a reader sees old or new.
    with atomic_open(path.parent / location, "wb") as f:
        for t in _tensors(model.graph):
            if not t.HasField("raw_data") or len(t.raw_data) < _EXTERNAL_MIN_TENSOR_BYTES:
                continue
            offset = f.tell()
            f.write(t.raw_data)
            set_external_data(t, location=location, offset=offset, length=len(t.raw_data))
            t.ClearField("raw_data")
    atomic_write_bytes(path, _serialize(model, path))
    _remove_stale_data(path, keep=location)
    return {"external_data": location}


def _serialize(proto: Any, path: Path) -> bytes:
    try:
        return proto.SerializeToString()  # type: ignore[no-any-return]
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ExportError(f"cannot serialize {path.name}: {e}; use external_data: true") from e


def _tensors(graph: Any) -> Any:
    """Initializers and attribute tensors of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for sub in a.graphs:
                yield from _tensors(sub)


def _remove_stale_data(path: Path, *, keep: str | None) -> None:
    """Remove data files of earlier exports of ``path`` (``<name>.<hash>.data``) except ``keep``."""
    for old in path.parent.glob(f"{path.name}.*.data"):
        if old.name != keep:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def external_data_files(path: str | os.PathLike[str]) -> list[str]:
    """The external data files an ONNX file refers to (relative names; empty when inline)."""
    import onnx

    from compress.runtime.onnxruntime import check_external_data

    check_external_data(path)
    proto = onnx.load(str(path), load_external_data=False)
    names = {
        e.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return sorted(names)


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """``onnx.load`` after refusing external-data locations outside the model's folder.

    Raises:
        BadInputError: An external-data location is absolute or escapes the folder.
    """
    import onnx

    from compress.runtime.onnxruntime import check_external_data

    check_external_data(path)
    return onnx.load(str(path))
