"""INT4 weight-only ONNX export: blocked ``DequantizeLinear`` (opset 21) or ONNX Runtime's ``MatMulNBits``.

Only the weights of ``nn.Linear`` layers (``MatMul``/``Gemm`` in the graph) become 4-bit;
activations, convolutions, embeddings and normalisation stay float32. Each weight
``W [out, in]`` is stored as signed 4-bit codes ``c`` in ``[-8, 7]`` with one float32 scale per
output channel and *block* of ``block_size`` consecutive input features
(``W ≈ c · s[out, in // block_size]``). When ``in`` is not a multiple of ``block_size`` the last
block is shorter (``ceil(in / block_size)`` scales per row).

Where the codes and scales come from, per layer:

``qat``
    The layer carries an enabled, calibrated weight quantizer of at most 4 bits (a ``qat``
    stage with ``weights: {bits: 4}``, or ternary ``scheme: twn``): its own integer codes
    (``FakeQuantizer.export_weight``) and its learned scale, repeated in every block of the
    row. This holds for any ``block_size``: the learned per-channel (or per-tensor) grid is
    a blocked grid whose blocks share one scale, so the file computes exactly what the
    fake-quant model computed (no re-quantization, no second rounding). Recomputing
    finer blocked scales from the weights would throw away the scales QAT learned and
    change the codes it trained.
``rtn``
    Any other ``nn.Linear`` (a float model, or a QAT model quantized at 7 or 8 bits, whose
    float weights are used): round-to-nearest, symmetric, per block:
    ``s = max|W_block| / 7``, ``c = clamp(round(W / s), -8, 7)`` (so ``|c| <= 7``; an
    all-zero block gets ``s = 1`` and codes 0).

The torch model the file is compared with is ``int4_model(model)``: the same network with
each such ``nn.Linear`` replaced by an ``Int4Linear`` computing ``x @ (c · s)ᵀ + b`` in
float32, every other quantizer disabled (activations float). ``model`` itself is not changed.

Two graph forms of the same weights (``flavour``):

``dq`` (format ``onnx-int4``)
    ``DequantizeLinear(int4 codes [in, out], scale [ceil(in/B), out], axis=0,
    block_size=B) → MatMul``, ONNX opset 21 (the first with INT4 tensors and blocked
    quantization). The model is traced at the stage's opset and converted to 21 with
    ``onnx.version_converter``. ONNX Runtime CPU 1.32 runs it; with
    ``ORT_ENABLE_ALL`` it fuses the pair into ``MatMulNBits`` with
    ``session.qdq_matmulnbits_accuracy_level`` 4 by default, i.e. *int8 activations*,
    which changes results (measured in the tests below); ``basic`` optimisation runs the
    nodes as written.
``matmulnbits`` (format ``onnx-int4-matmulnbits``)
    ``com.microsoft.MatMulNBits(A, B, scales)`` with ``bits=4``, ``block_size=B``, ``K=in``,
    ``N=out``; ``B`` is uint8 ``[out, ceil(in/B), B/2]`` holding two codes per byte (low nibble
    first) stored as ``c + 8``; no zero-point input (the operator's default zero point is 8,
    i.e. symmetric); the input axis is padded with code 0 up to a whole block. No
    ``accuracy_level`` attribute (0: float32 compute). Opset of the default domain unchanged.
    Runs on ONNX Runtime (CPU, CUDA); other runtimes do not know the operator.

``block_size`` must be a power of two and at least 16 (MatMulNBits' rule; the ``dq`` form
uses the same rule so both files hold the same numbers).

Example:
    >>> src = int4_model(model, block_size=32)  # doctest: +SKIP
    >>> export_onnx_int4(src, "model.int4.onnx", x[:2], flavour="dq")  # doctest: +SKIP
    PosixPath('model.int4.onnx')
"""

from __future__ import annotations

import copy
import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compress.errors import ExportError
from compress.export.onnx import DEFAULT_OPSET, trace_to_onnx, write_onnx

Int4Flavour = Literal["dq", "matmulnbits"]

INT4_OPSET = 21
"""Blocked DequantizeLinear and the INT4 tensor type first appear in ONNX opset 21."""

MS_DOMAIN = "com.microsoft"
_CUSTOM_DOMAIN = "compress"
_CUSTOM_OP = "Int4MatMul"
QMIN, QMAX = -8, 7


def check_block_size(block_size: int) -> None:
    """Raise ``ExportError`` unless ``block_size`` is a power of two >= 16."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(
            f"INT4 block_size must be a power of two >= 16 (ONNX Runtime MatMulNBits' rule), got {block_size}"
        )


def rtn_int4(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest INT4 of ``weight [out, in]`` with one scale per row and block.

    Returns:
        ``(codes, scales)``: int8 codes in ``[-8, 7]`` shaped like ``weight`` and float32
        scales ``[out, ceil(in / block_size)]`` (``max|block| / 7``; 1.0 for an all-zero block).

    Example:
        >>> codes, scales = rtn_int4(torch.tensor([[0.7, -0.35, 0.0, 0.1] * 4]), 16)
        >>> codes[0, :4].tolist(), round(scales.item(), 2)
        ([7, -4, 0, 1], 0.1)
    """
    w = weight.detach().float().cpu()
    out_f, in_f = w.shape
    nb = -(-in_f // block_size)
    padded = torch.zeros(out_f, nb * block_size)
    padded[:, :in_f] = w
    amax = padded.reshape(out_f, nb, block_size).abs().amax(dim=2)
    scales = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    full = scales.repeat_interleave(block_size, dim=1)[:, :in_f]
    codes = torch.clamp(torch.round(w / full), QMIN, QMAX).to(torch.int8)
    return codes, scales


def _qat_int4(q: Any, weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantizer's own codes, and its learned per-channel (or per-tensor) scale in every block."""
    codes, scale = q.export_weight(weight.detach())
    codes = codes.cpu().to(torch.int8)
    out_f, in_f = codes.shape
    nb = -(-in_f // block_size)
    scale = scale.detach().float().cpu().reshape(-1)
    scales = (scale.expand(out_f) if scale.numel() == 1 else scale).reshape(out_f, 1).repeat(1, nb)
    return codes, scales.contiguous()


def _int4_weight_quantizer(linear: nn.Module) -> Any | None:
    """The layer's weight quantizer when its codes fit INT4 (enabled, calibrated, <= 4 bits)."""
    q = getattr(linear, "weight_quantizer", None)
    if q is None or not getattr(q, "enabled", False) or getattr(q, "bits", 99) > 4:
        return None
    return q if bool(getattr(q, "calibrated", True)) else None


@dataclass(frozen=True)
class _Int4Payload:
    """The layer's tensors, passed to the autograd function as one non-tensor argument so the
    exporter's ``symbolic`` receives real tensors (to write as constants), not graph values."""

    weight: torch.Tensor  # float32 [out, in], codes · scales
    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # float32 [out, nb]
    block_size: int


class _Int4MatMulFn(torch.autograd.Function):
    """``x @ Wᵀ`` with ``W = codes · scales``; exports as one ``compress::Int4MatMul`` node."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: _Int4Payload) -> torch.Tensor:  # noqa: ARG004
        return torch.matmul(x, p.weight.to(device=x.device, dtype=x.dtype).t())

    @staticmethod
    def symbolic(g: Any, x: Any, p: _Int4Payload) -> Any:
        out = g.op(
            f"{_CUSTOM_DOMAIN}::{_CUSTOM_OP}",
            x,
            g.op("Constant", value_t=p.codes),
            g.op("Constant", value_t=p.scales),
            block_size_i=p.block_size,
        )
        # The output type, so the exporter's shape inference does not warn about the custom op.
        sizes = x.type().varyingSizes() if x.type().kind() == "TensorType" else None
        if sizes is not None:
            out.setType(x.type().with_sizes([*sizes[:-1], int(p.codes.shape[0])]))
        return out


class Int4Linear(nn.Module):
    """A linear layer whose weight is INT4 codes times blocked scales (float32 compute).

    An export-time module (the torch source of INT4 files), not for training: its weights are
    fixed when it is built (changing the buffers afterwards does not change what it computes).

    Attributes:
        codes: int8 buffer ``[out, in]`` with values in ``[-8, 7]``.
        scales: float32 buffer ``[out, ceil(in / block_size)]``.
        bias: The original bias (or ``None``).
        block_size: Input features per scale.
        origin: ``qat`` (the layer's learned quantizer) or ``rtn`` (round-to-nearest).
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        block_size: int,
        origin: str,
    ) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float(), requires_grad=False)
        self.block_size = block_size
        self.origin = origin
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        # Made here, outside any trace: the exporter must see these tensors as constants, and a
        # tensor computed from the module's buffers during tracing would be a graph value.
        with torch.no_grad():
            self._payload = _Int4Payload(
                self.dequantized_weight().clone(),
                codes.cpu().clone(),
                scales.float().cpu().clone(),
                block_size,
            )

    def dequantized_weight(self) -> torch.Tensor:
        """``codes · scales`` as float32 ``[out, in]``."""
        full = self.scales.repeat_interleave(self.block_size, dim=1)[:, : self.in_features]
        return self.codes.float() * full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            w = self._payload.weight.to(device=x.device, dtype=x.dtype)
            return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        y = _Int4MatMulFn.apply(x, self._payload)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        shape = f"in={self.in_features}, out={self.out_features}"
        return f"{shape}, block_size={self.block_size}, origin={self.origin}"


def int4_model(model: nn.Module, *, block_size: int = 128, keep_float: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` as ``Int4Linear`` (weights only; see module doc).

    Args:
        model: A float or QAT model; not modified.
        block_size: Input features per scale (power of two >= 16).
        keep_float: ``fnmatch`` patterns of module names (``blocks.0.mlp.fc1``, ``head``) left float.

    Returns:
        The INT4 model in eval mode; other fake quantizers (activations, attention matmuls) disabled.

    Raises:
        ExportError: ``block_size`` is invalid, or the model has no ``nn.Linear`` left to quantize.
    """
    from compress.quant import set_quant_enabled_

    check_block_size(block_size)
    src = copy.deepcopy(model).eval()
    replaced = 0
    for name, mod in list(src.named_modules()):
        if not isinstance(mod, nn.Linear) or any(fnmatch.fnmatchcase(name, p) for p in keep_float):
            continue
        q = _int4_weight_quantizer(mod)
        if q is not None:
            codes, scales = _qat_int4(q, mod.weight, block_size)
            origin = "qat"
        else:
            codes, scales = rtn_int4(mod.weight, block_size)
            origin = "rtn"
        new = Int4Linear(codes, scales, mod.bias, block_size=block_size, origin=origin)
        parent_name, _, attr = name.rpartition(".")
        setattr(src.get_submodule(parent_name) if parent_name else src, attr, new)
        replaced += 1
    if replaced == 0:
        raise ExportError(
            f"{type(model).__name__} has no nn.Linear layer to quantize to INT4"
            + (f" outside keep_float {list(keep_float)}" if keep_float else "")
            + "; INT4 export is weight-only for Linear (MatMul/Gemm) layers"
        )
    set_quant_enabled_(src, False)
    return src.eval()


def int4_layers(model: nn.Module) -> dict[str, int]:
    """How many ``Int4Linear`` layers of ``model`` took their weights from QAT and from RTN."""
    counts = {"qat": 0, "rtn": 0}
    for m in model.modules():
        if isinstance(m, Int4Linear):
            counts[m.origin] = counts.get(m.origin, 0) + 1
    return counts


def export_onnx_int4(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    flavour: Int4Flavour = "dq",
    block_size: int = 128,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    external_data: bool = False,
) -> Path:
    """Export an INT4 weight-only ONNX file (atomically) and check it with ``onnx.checker``.

    Args:
        model: A model from ``int4_model`` (used as is), or any float/QAT model (converted with
            ``int4_model(model, block_size=block_size)`` first). Not modified.
        path: Destination ``.onnx`` file.
        example_inputs: An input batch used for tracing.
        flavour: ``dq`` (blocked DequantizeLinear, opset 21) or ``matmulnbits`` (com.microsoft).
        block_size: Input features per scale, when ``model`` still has to be converted.
        opset: Opset the model is traced at (the TorchScript exporter stops at 20); ``dq``
            files are converted to 21 afterwards.
        dynamic_batch: Symbolic batch (and, for token inputs, sequence) axes.
        external_data: Keep the weights in a data file beside ``path`` (see ``write_onnx``).

    Returns:
        The path written.

    Raises:
        ExportError: Unknown flavour, bad block size, no Linear layer, tracing or the checker failed.
    """
    import onnx

    if flavour not in ("dq", "matmulnbits"):
        raise ExportError(f"unknown INT4 flavour '{flavour}'; expected one of: dq, matmulnbits")
    if not any(isinstance(m, Int4Linear) for m in model.modules()):
        model = int4_model(model, block_size=block_size)
    try:
        data = trace_to_onnx(
            model, example_inputs, opset=opset, dynamic_batch=dynamic_batch, custom_opsets={_CUSTOM_DOMAIN: 1}
        )
    except Exception as e:
        raise ExportError(
            f"INT4 ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}"
        ) from e
    proto = onnx.load_from_string(data)
    if flavour == "dq":
        proto = _to_opset(proto, INT4_OPSET)
        _rewrite(proto, _emit_dq)
    else:
        _rewrite(proto, _emit_matmulnbits)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    _drop_domain(proto, _CUSTOM_DOMAIN)
    del proto.graph.value_info[:]  # shapes guessed around the placeholders; inferred again below
    proto.ir_version = max(proto.ir_version, 10)  # INT4 tensors need IR 10
    try:  # checked with inferred shapes; written without them (value_info would double a small file)
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(proto), full_check=flavour == "dq")
    except Exception as e:
        raise ExportError(f"INT4 ONNX model ({flavour}) fails onnx.checker: {e}") from e
    path = Path(path)
    write_onnx(proto, path, external_data=external_data)
    return path


def int4_summary(model: Any) -> dict[str, Any]:
    """Describe the INT4 weights of an ONNX model (path or ``ModelProto``).

    Returns:
        ``dq_int4`` (DequantizeLinear nodes on INT4 initializers), ``matmulnbits`` (MatMulNBits
        nodes), ``block_sizes`` (distinct), ``int4_weight_bytes`` (packed bytes of the 4-bit
        weights), ``float_weight_initializers`` (float rank-2 initializers feeding MatMul/Gemm:
        weights left float) and ``opset`` (default domain).
    """
    import onnx

    from compress.export.onnx import load_onnx

    proto = load_onnx(model) if isinstance(model, str | os.PathLike) else model
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    dq = nbits = nbytes = 0
    blocks: set[int] = set()
    for n in g.node:
        attrs = {a.name: a for a in n.attribute}
        if (
            n.op_type == "DequantizeLinear"
            and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT4
        ):
            dq += 1
            blocks.add(int(attrs["block_size"].i) if "block_size" in attrs else 0)
            numel = 1
            for d in inits[n.input[0]].dims:
                numel *= d
            nbytes += (numel + 1) // 2
        elif n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN:
            nbits += 1
            blocks.add(int(attrs["block_size"].i))
            numel = 1
            for d in inits[n.input[1]].dims:
                numel *= d
            nbytes += numel
    float_w = sum(
        1
        for n in g.node
        if n.op_type in ("MatMul", "Gemm")
        for i in n.input[:2]
        if i in inits and inits[i].data_type == onnx.TensorProto.FLOAT and len(inits[i].dims) >= 2
    )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "dq_int4": dq,
        "matmulnbits": nbits,
        "block_sizes": sorted(blocks),
        "int4_weight_bytes": nbytes,
        "float_weight_initializers": float_w,
        "opset": opset,
    }


# --- graph rewriting -----------------------------------------------------------------------------


def _to_opset(proto: Any, opset: int) -> Any:
    """Convert the default domain to ``opset`` (Reduce* axes become inputs, etc.).

    ``onnx.version_converter`` refuses graphs with nodes of unknown domains, so the custom
    nodes are swapped for an ``Identity`` placeholder on their activation input during the
    conversion and restored afterwards (the shapes it infers there are dropped later).
    """
    import onnx
    from onnx import version_converter

    saved: dict[str, Any] = {}
    for n in proto.graph.node:
        if n.domain == _CUSTOM_DOMAIN:
            copy_n = onnx.NodeProto()
            copy_n.CopyFrom(n)
            saved[n.output[0]] = copy_n
            n.domain, n.op_type = "", "Identity"
            del n.input[1:]
            del n.attribute[:]
    _drop_domain(proto, _CUSTOM_DOMAIN)
    try:
        out = version_converter.convert_version(proto, opset)
    except Exception as e:
        raise ExportError(f"converting the traced graph to opset {opset} failed: {e}") from e
    for n in out.graph.node:
        if n.op_type == "Identity" and n.output[0] in saved:
            n.CopyFrom(saved[n.output[0]])
    out.opset_import.append(onnx.helper.make_opsetid(_CUSTOM_DOMAIN, 1))
    return out


def _drop_domain(proto: Any, domain: str) -> None:
    keep = [o for o in proto.opset_import if o.domain != domain]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def _constant_value(g: Any, name: str, consts: dict[str, Any], inits: dict[str, Any]) -> Any:
    from onnx import numpy_helper

    if name in consts:
        return numpy_helper.to_array(consts[name].attribute[0].t)
    if name in inits:
        return numpy_helper.to_array(inits[name])
    raise ExportError(f"INT4 export: '{name}' is not a constant; the weight could not be read from the graph")


def _rewrite(proto: Any, emit: Any) -> None:
    """Replace every ``compress::Int4MatMul(x, codes, scales)`` by the nodes ``emit`` returns."""
    g = proto.graph
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[Any] = []
    used_consts: set[str] = set()
    count = 0
    for n in g.node:
        if n.domain != _CUSTOM_DOMAIN:
            new_nodes.append(n)
            continue
        codes = _constant_value(g, n.input[1], consts, inits)
        scales = _constant_value(g, n.input[2], consts, inits)
        block = next(a.i for a in n.attribute if a.name == "block_size")
        nodes, tensors = emit(f"int4_{count}", n.input[0], n.output[0], codes, scales, int(block))
        new_nodes.extend(nodes)
        g.initializer.extend(tensors)
        used_consts.update(n.input[1:3])
        count += 1
    still_used = {i for n in new_nodes for i in n.input}
    new_nodes = [
        n
        for n in new_nodes
        if not (n.op_type == "Constant" and n.output[0] in used_consts and n.output[0] not in still_used)
    ]
    del g.node[:]
    g.node.extend(new_nodes)
    if count == 0:
        raise ExportError("INT4 export produced no INT4 MatMul; the Int4Linear layers were not traced")


def _emit_dq(prefix: str, x: str, y: str, codes: Any, scales: Any, block: int) -> tuple[list[Any], list[Any]]:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    wt = np.ascontiguousarray(codes.T)  # [in, out]: MatMul's B
    nib = (wt.reshape(-1).astype(np.int8) & 0x0F).astype(np.uint8)  # two's complement nibbles
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)  # ONNX INT4 raw data: low nibble first
    w = helper.make_tensor(f"{prefix}_w", TensorProto.INT4, list(wt.shape), packed.tobytes(), raw=True)
    s = numpy_helper.from_array(
        np.ascontiguousarray(scales.T.astype(np.float32)), f"{prefix}_scale"
    )  # [nb, out]
    dq = helper.make_node(
        "DequantizeLinear", [w.name, s.name], [f"{prefix}_wdq"], name=f"{prefix}_dq", axis=0, block_size=block
    )
    mm = helper.make_node("MatMul", [x, dq.output[0]], [y], name=f"{prefix}_matmul")
    return [dq, mm], [w, s]


def _emit_matmulnbits(
    prefix: str, x: str, y: str, codes: Any, scales: Any, block: int
) -> tuple[list[Any], list[Any]]:
    import numpy as np
    from onnx import helper, numpy_helper

    out_f, in_f = codes.shape
    nb = -(-in_f // block)
    padded = np.zeros((out_f, nb * block), dtype=np.int16)
    padded[:, :in_f] = codes
    u = (padded + 8).astype(np.uint8).reshape(out_f, nb, block)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
    b = numpy_helper.from_array(np.ascontiguousarray(packed), f"{prefix}_B")
    s = numpy_helper.from_array(
        np.ascontiguousarray(scales.astype(np.float32).reshape(-1)), f"{prefix}_scales"
    )
    node = helper.make_node(
        "MatMulNBits", [x, b.name, s.name], [y], name=f"{prefix}_matmulnbits", domain=MS_DOMAIN,
        K=int(in_f), N=int(out_f), bits=4, block_size=block,
    )  # fmt: skip
    return [node], [b, s]
