"""FP16 ONNX: the FP32 export with float16 weights and compute, float32 graph inputs and outputs.

``convert_to_fp16`` rewrites an FP32 ``onnx.ModelProto``; ``export_onnx_fp16``
traces a torch model (as ``export_onnx`` does) and converts it. No extra
package is needed: the conversion works on the graph with ``onnx`` alone.

What the converter does:

* **I/O stays as it was.** Float32 graph inputs and outputs keep their names
  and type; a ``Cast`` to float16 follows each float input and a ``Cast`` back
  to float32 produces each float output, so deployers feed and read the same
  arrays as with the FP32 file. Integer inputs (token ids, int64) are untouched.
* **Weights.** Every float32 initializer, ``Constant`` value and
  ``ConstantOfShape`` fill becomes float16 (round to nearest even). Finite
  values beyond the float16 range (``|x| > 65504``) are clipped to ±65504 and
  counted (``Fp16Conversion.clipped_values``) with a warning, never silently;
  ``inf`` and ``nan`` (e.g. attention-mask fills) are representable and kept.
  Non-zero values that round to zero (``|x| < 2**-25``) are counted as
  ``underflowed_values``.
* **Compute.** A node runs in float16 when its ONNX schema admits float16 for
  the input or output slot (``onnx.defs``, at the model's opset). Slots whose
  schema does not (``Range``, ``Resize`` scales, ``LayerNormalization``'s
  ``Mean`` output, ...) keep float32, with ``Cast`` nodes inserted where a
  float16 tensor meets them; ``Cast(to=float)`` nodes produce float16 unless a
  float32 slot consumes them. Ops whose output type comes from an attribute
  (``RandomNormal``, ``EyeLike``, ...), ops outside the default ONNX domain and
  every op named in ``Fp16ExportConfig.keep_fp32_ops`` run in float32.
* **Checked.** Types are re-inferred in strict mode and the model passes
  ``onnx.checker`` (full check) before it is returned.

Default ``keep_fp32_ops`` is empty: ONNX Runtime's CPU provider inserts its
own float32 fallbacks for float16 nodes it has no kernel for (measured with
onnxruntime 1.32: ``Resize``, ``TopK``, ``Erf``, ``Conv``, ``LayerNormalization``,
``Softmax``, ``ReduceMean``, ``GridSample`` in float16 all load and run on CPU),
and our exports at opset >= 17 keep ``LayerNormalization`` and ``Softmax`` as
single ops, whose ONNX Runtime CUDA kernels accumulate in float32. Add ops when
a graph computes something that overflows float16 on the way (e.g. ``Pow`` and
``ReduceMean`` of a LayerNorm exported at opset < 17: ``x**2`` overflows for
``|x| > 256``).

Not supported (``ExportError``): graphs with Q/DQ nodes (an INT8 model: export
the float model instead), control flow (``If``/``Loop``/``Scan`` subgraphs) and
model-local functions.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import ExportError
from compress.export.config import Fp16ExportConfig
from compress.export.onnx import DEFAULT_OPSET, trace_to_onnx, write_onnx

FP16_MAX = 65504.0
"""Largest finite float16; finite weights beyond it are clipped to ±FP16_MAX."""

METADATA_KEY = "compress.fp16"
"""``metadata_props`` key of the converted model: the conversion summary as JSON."""

_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_FP16_TYPE = "tensor(float16)"

# Output dtype set by an attribute, not by the inputs; run them in float32 (a Cast follows).
_ATTRIBUTE_TYPED_OPS = frozenset(
    {
        "EyeLike",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Bernoulli",
        "Multinomial",
    }
)
# Float outputs whose dtype the converter sets itself (attribute or data rewritten).
_SOURCE_OPS = frozenset({"Constant", "ConstantOfShape", "Cast"})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class Fp16Conversion:
    """What ``convert_to_fp16`` changed: counts for the artifact meta and the warnings.

    Attributes:
        converted_tensors: Float32 initializers and constants stored as float16.
        kept_fp32_tensors: Float32 initializers and constants left in float32 (a float32 slot consumes them).
        clipped_values: Finite weight/constant values with ``|x| > 65504`` clipped to ±65504.
        clipped_tensors: Names of the tensors that had clipped values (first 10).
        underflowed_values: Non-zero values that became 0 in float16.
        fp32_nodes: Nodes left computing in float32 (``keep_fp32_ops``, attribute-typed or non-ONNX ops).
        casts_inserted: ``Cast`` nodes added (graph inputs and outputs included).
        keep_fp32_ops: The ``keep_fp32_ops`` the conversion used.
    """

    converted_tensors: int
    kept_fp32_tensors: int
    clipped_values: int
    clipped_tensors: tuple[str, ...]
    underflowed_values: int
    fp32_nodes: int
    casts_inserted: int
    keep_fp32_ops: tuple[str, ...]

    @property
    def warning(self) -> str | None:
        """The clipping warning, or ``None`` when nothing was clipped."""
        if not self.clipped_values:
            return None
        names = ", ".join(self.clipped_tensors)
        return (
            f"{self.clipped_values} weight/constant value(s) exceed the float16 range and were clipped to "
            f"±{FP16_MAX:g} (tensors: {names}); check parity, or keep the ops that read them in float32 "
            "(fp16.keep_fp32_ops)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (artifact meta, model metadata)."""
        d = asdict(self)
        d["clipped_tensors"] = list(self.clipped_tensors)
        d["keep_fp32_ops"] = list(self.keep_fp32_ops)
        return d


def export_onnx_fp16(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    config: Fp16ExportConfig | None = None,
    external_data: bool = False,
) -> Fp16Conversion:
    """Export ``model`` to ONNX (as ``export_onnx``) and write it converted to float16.

    Args:
        model: A float model taking one tensor and returning logits (fake quantizers disabled or absent).
        path: Destination ``.onnx`` file (written atomically).
        example_inputs: An input batch used for tracing (float images/features or int64 token ids).
        opset: ONNX opset of the traced graph.
        dynamic_batch: Make axis 0 of input and output symbolic (``batch``).
        config: Conversion settings (``keep_fp32_ops``); default ``Fp16ExportConfig()``.
        external_data: Keep tensors in a data file beside ``path`` (``compress.export.onnx.write_onnx``).

    Returns:
        What the conversion changed (clipped values, casts, ...); a clipping warning was issued if any.

    Raises:
        ExportError: ``model`` has enabled fake quantizers, tracing failed, the traced graph cannot
            be converted (Q/DQ nodes, control flow), or the result fails the checker.

    Example:
        >>> report = export_onnx_fp16(model, "model.fp16.onnx", x[:2])  # doctest: +SKIP
        >>> report.clipped_values  # doctest: +SKIP
        0
    """
    import onnx

    from compress.quant import quantizers

    enabled = [name for name, q in quantizers(model) if q.enabled]
    if enabled:
        raise ExportError(
            f"{type(model).__name__} has {len(enabled)} enabled fake quantizer(s) (e.g. '{enabled[0]}'); "
            "a fake-quant graph in float16 computes neither the INT8 nor the float model: export the float "
            "weights with compress.quant.set_quant_enabled_(model, False) first (what the onnx-fp32 and "
            "onnx-fp16 formats do), or write INT8 with export_onnx_qdq"
        )
    try:
        data = trace_to_onnx(model, example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    except Exception as e:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    proto = onnx.load_from_string(data)
    converted, report = convert_to_fp16(proto, config=config, warn=False)
    if report.warning:
        warnings.warn(f"{Path(path).name}: {report.warning}", stacklevel=2)
    write_onnx(converted, Path(path), external_data=external_data)
    return report


def convert_to_fp16(
    model: Any, *, config: Fp16ExportConfig | None = None, warn: bool = True
) -> tuple[Any, Fp16Conversion]:
    """A float16 copy of an FP32 ONNX model with float32 graph inputs and outputs (see module docstring).

    Args:
        model: An ``onnx.ModelProto`` (not modified).
        config: Conversion settings (``keep_fp32_ops``); default ``Fp16ExportConfig()``.
        warn: Issue a ``UserWarning`` when values were clipped (the count is in the report either way).

    Returns:
        The converted ``ModelProto`` (checked) and what the conversion changed.

    Raises:
        ExportError: The model holds Q/DQ nodes, subgraphs or local functions, or the converted
            model fails type inference or ``onnx.checker``.

    Example:
        >>> import onnx
        >>> fp16, report = convert_to_fp16(onnx.load("model.fp32.onnx"))  # doctest: +SKIP
        >>> [i.type.tensor_type.elem_type for i in fp16.graph.input]  # doctest: +SKIP
        [1]
    """
    import onnx

    config = config or Fp16ExportConfig()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _check_convertible(out)
    conv = _Converter(out, frozenset(config.keep_fp32_ops))
    report = conv.run()
    try:
        out = onnx.shape_inference.infer_shapes(conv.model, check_type=True, strict_mode=True)
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        raise ExportError(f"the float16 model fails type inference or onnx.checker: {e}") from e
    entry = out.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(report.to_dict())
    if warn and report.warning:
        warnings.warn(report.warning, stacklevel=2)
    return out, report


def fp16_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Element types of an ONNX file: graph I/O, initializers by type, and the conversion record.

    Args:
        path: An ``.onnx`` file.

    Returns:
        ``inputs`` and ``outputs`` (name -> numpy dtype name), ``initializers`` (dtype name -> count)
        and ``conversion`` (the ``compress.fp16`` metadata, or ``None`` for a file not written here).

    Example:
        >>> fp16_summary("artifacts/model.fp16.onnx")["inputs"]  # doctest: +SKIP
        {'input': 'float32'}
    """
    import onnx
    from onnx import helper

    proto = onnx.load(str(path), load_external_data=False)
    g = proto.graph

    def dtype(t: int) -> str:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(t)))

    inits: dict[str, int] = {}
    for t in g.initializer:
        inits[dtype(t.data_type)] = inits.get(dtype(t.data_type), 0) + 1
    meta = {p.key: p.value for p in proto.metadata_props}
    return {
        "inputs": {i.name: dtype(i.type.tensor_type.elem_type) for i in g.input},
        "outputs": {o.name: dtype(o.type.tensor_type.elem_type) for o in g.output},
        "initializers": inits,
        "conversion": json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None,
    }


# ---------------------------------------------------------------------- machinery


def _check_convertible(model: Any) -> None:
    g = model.graph
    qdq = sorted({n.op_type for n in g.node if n.op_type in _QDQ_OPS})
    if qdq:
        raise ExportError(
            f"the model holds {', '.join(qdq)} nodes (an INT8 Q/DQ model); float16 conversion takes a float "
            "model: export with the fake quantizers disabled (what the onnx-fp32 format does)"
        )
    sub = sorted({n.op_type for n in g.node for a in n.attribute if a.HasField("g") or len(a.graphs)})
    if sub:
        raise ExportError(f"float16 conversion does not handle control flow ({', '.join(sub)} subgraphs)")
    if len(model.functions):
        names = ", ".join(f.name for f in model.functions)
        raise ExportError(f"float16 conversion does not handle model-local functions ({names})")


def _to_fp16(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``arr`` as float16, finite values clipped to ±FP16_MAX; also the clipped and underflowed counts."""
    a = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(a)
    over = finite & (np.abs(a) > FP16_MAX)
    clipped = int(over.sum())
    if clipped:
        a = np.where(over, np.sign(a) * FP16_MAX, a)
    h = a.astype(np.float16)
    underflowed = int(((a != 0) & finite & (h == 0)).sum())
    return h, clipped, underflowed


class _Converter:
    """One conversion: decides a dtype for every float tensor, then rewrites the graph in place."""

    def __init__(self, model: Any, keep_fp32_ops: frozenset[str]) -> None:
        import onnx

        self.model = model
        self.g = model.graph
        self.keep = keep_fp32_ops
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET
        )
        inferred = onnx.shape_inference.infer_shapes(model)
        ig = inferred.graph
        self.elem: dict[str, int] = {}
        for vi in (*ig.input, *ig.output, *ig.value_info):
            if vi.type.HasField("tensor_type"):
                self.elem[vi.name] = vi.type.tensor_type.elem_type
        for t in ig.initializer:
            self.elem[t.name] = t.data_type
        self.inits = {t.name: t for t in self.g.initializer}
        self.graph_inputs = {i.name for i in self.g.input} - set(self.inits)
        self.graph_outputs = [o.name for o in self.g.output]
        # own copies of the nodes: protobuf wrappers of repeated fields are not stable objects, and
        # nodes are identified by id() below
        self.nodes: list[Any] = []
        for n in self.g.node:
            self.nodes.append(onnx.NodeProto())
            self.nodes[-1].CopyFrom(n)
        self.names: set[str] = set(self.elem) | set(self.inits)
        for n in self.nodes:
            self.names.update(n.input)
            self.names.update(n.output)
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))
        self.fp32_nodes = {id(n) for n in self.nodes if self._runs_fp32(n)}

    # -------------------------------------------------------------- decisions

    def _runs_fp32(self, node: Any) -> bool:
        return (
            node.op_type in self.keep
            or node.op_type in _ATTRIBUTE_TYPED_OPS
            or node.domain not in ("", "ai.onnx")
            or self._schema(node) is None
        )

    def _schema(self, node: Any) -> Any:
        import onnx

        try:
            return onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except onnx.defs.SchemaError:
            return None

    def _slot_allows_fp16(self, node: Any, index: int, *, output: bool) -> bool:
        schema = self._schema(node)
        params = schema.outputs if output else schema.inputs
        if not params:
            return False
        param = params[min(index, len(params) - 1)]
        allowed = {param.type_str}
        for c in schema.type_constraints:
            if c.type_param_str == param.type_str:
                allowed = set(c.allowed_type_strs)
        return _FP16_TYPE in allowed

    def _is_float(self, name: str) -> bool:
        return self.elem.get(name) == _FLOAT

    def _required(self, node: Any, index: int) -> int | None:
        """Dtype a float input slot needs; ``None``: takes either (a ``Cast``'s input)."""
        if id(node) in self.fp32_nodes:
            return _FLOAT
        if node.op_type == "Cast":
            return None
        return _FLOAT16 if self._slot_allows_fp16(node, index, output=False) else _FLOAT

    def _is_source_output(self, node: Any) -> bool:
        """A float output whose dtype the converter chooses (constant data or a Cast's ``to``)."""
        if id(node) in self.fp32_nodes or node.op_type not in _SOURCE_OPS or len(node.output) != 1:
            return False
        if node.op_type == "Cast":
            return _attr(node, "to") == _FLOAT
        return self._is_float(node.output[0])

    def _choose_source_dtype(self, name: str) -> int:
        """Float16 unless a float32 slot (or a graph output) reads the tensor: exact for float32 readers."""
        if name in self.graph_outputs:
            return _FLOAT
        needs = [self._required(n, i) for n, i in self.consumers.get(name, [])]
        return _FLOAT if _FLOAT in needs else _FLOAT16

    def _native_dtypes(self) -> dict[str, int]:
        native: dict[str, int] = {}
        for name in self.graph_inputs:
            if self._is_float(name):
                native[name] = _FLOAT
        for name in self.inits:
            if self._is_float(name):
                native[name] = self._choose_source_dtype(name)
        for node in self.nodes:
            source = self._is_source_output(node)
            for j, name in enumerate(node.output):
                if not name:
                    continue
                if source:
                    native[name] = self._choose_source_dtype(name)
                elif self._is_float(name):
                    fp32 = id(node) in self.fp32_nodes or not self._slot_allows_fp16(node, j, output=True)
                    native[name] = _FLOAT if fp32 else _FLOAT16
        return native

    # -------------------------------------------------------------- rewrite

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _cast(self, src: str, dst: str, to: int) -> Any:
        from onnx import helper

        return helper.make_node("Cast", [src], [dst], name=self._fresh(f"{dst}_cast"), to=to)

    def run(self) -> Fp16Conversion:
        native = self._native_dtypes()
        # a float output computed in float16 gets a new name inside the graph; a Cast restores the old one
        renamed: dict[str, str] = {}
        for name in self.graph_outputs:
            if native.get(name) == _FLOAT16:
                renamed[name] = self._fresh(f"{name}_fp16")
                native[renamed[name]] = _FLOAT16
        casts: dict[tuple[str, int], str] = {}
        nodes: list[Any] = []
        sources: list[Any] = []
        for node in self.nodes:
            for i, name in enumerate(node.input):
                name = renamed.get(name, name)
                node.input[i] = name
                want = self._required(node, i) if name in native else None
                if want is None or native[name] == want:
                    continue
                key = (name, want)
                if key not in casts:
                    casts[key] = self._fresh(f"{name}_{'fp16' if want == _FLOAT16 else 'fp32'}")
                    nodes.append(self._cast(name, casts[key], want))
                node.input[i] = casts[key]
            if self._is_source_output(node):
                sources.append(node)
            for j, name in enumerate(node.output):
                node.output[j] = renamed.get(name, name)
            nodes.append(node)
        nodes.extend(self._cast(new, name, _FLOAT) for name, new in renamed.items())

        converted = kept = clipped = underflowed = 0
        clipped_names: list[str] = []
        tensors: list[tuple[str, Any, bool]] = [
            (t.name, t, True) for t in self.g.initializer if t.name in native
        ]
        for node in sources:
            if native[node.output[0]] == _FLOAT16 and node.op_type == "Cast":
                _set_attr_int(node, "to", _FLOAT16)
            elif node.op_type != "Cast":
                tensors.append((node.output[0], node, False))
        for name, holder, is_init in tensors:
            if native[name] == _FLOAT:
                kept += 1
                continue
            c, u = _replace_tensor(holder) if is_init else _convert_constant_node(holder)
            converted += 1
            clipped += c
            underflowed += u
            if c:
                clipped_names.append(name)

        del self.g.node[:]
        self.g.node.extend(nodes)
        del self.g.value_info[:]  # re-inferred by the caller with the new types
        return Fp16Conversion(
            converted_tensors=converted,
            kept_fp32_tensors=kept,
            clipped_values=clipped,
            clipped_tensors=tuple(clipped_names[:10]),
            underflowed_values=underflowed,
            fp32_nodes=len(self.fp32_nodes),
            casts_inserted=len(casts) + len(renamed),
            keep_fp32_ops=tuple(sorted(self.keep)),
        )


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_attr_int(node: Any, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value


def _replace_tensor(t: Any) -> tuple[int, int]:
    """Turn a float32 ``TensorProto`` into float16 in place; return (clipped, underflowed) counts."""
    from onnx import numpy_helper

    h, clipped, underflowed = _to_fp16(numpy_helper.to_array(t))
    t.CopyFrom(numpy_helper.from_array(h, t.name))
    return clipped, underflowed


def _convert_constant_node(node: Any) -> tuple[int, int]:
    """Make a ``Constant``/``ConstantOfShape`` node produce float16; return (clipped, underflowed)."""
    from onnx import helper, numpy_helper

    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        # no value attribute: float32 zeros by definition
        node.attribute.append(
            helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16)))
        )
        return 0, 0
    for a in list(node.attribute):
        if a.name == "value":
            return _replace_tensor(a.t)
        if a.name in ("value_float", "value_floats"):
            arr = np.array(a.f if a.name == "value_float" else list(a.floats), dtype=np.float32)
            h, clipped, underflowed = _to_fp16(arr)
            node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(h)))
            return clipped, underflowed
    raise ExportError(f"{node.op_type} node '{node.name}' has no float value to convert")
