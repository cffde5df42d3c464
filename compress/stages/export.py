"""``export``: write the deployable ONNX files, check each against its torch source, describe the input.

Formats (``formats:``), written to ``artifacts/``:

* ``onnx-fp32`` → ``model.fp32.onnx``: the current model with quantization
  disabled, i.e. the full-precision weights it holds. After a ``qat`` stage
  these are the QAT-trained float weights (the ones the INT8 files quantize),
  not the weights that entered ``qat``; without ``qat`` it is simply the model.
* ``onnx-fp16`` → ``model.fp16.onnx``: the same float model (quantization
  disabled, as for ``onnx-fp32``: a fake-quant graph in float16 would mean
  nothing) with float16 weights and compute and float32 inputs and outputs
  (``compress.export.fp16``). Weights beyond the float16 range are clipped,
  counted in the artifact's ``fp16`` meta and reported as a warning.
* ``onnx-int8`` → ``model.int8.onnx``: INT8 Q/DQ, signed activations (S8S8,
  TensorRT rules) from the learned scales.
* ``onnx-int8-u8`` → ``model.int8-u8.onnx``: the same scales with uint8
  activations at zero point 128 (U8S8, ONNX Runtime on x86 CPUs).
* ``onnx-int4`` → ``model.int4.onnx``: INT4 weight-only, blocked ``DequantizeLinear``
  (opset 21) before each ``MatMul``; activations float (``compress.export.int4``).
* ``onnx-int4-matmulnbits`` → ``model.int4-matmulnbits.onnx``: the same INT4 weights in
  ONNX Runtime's ``com.microsoft.MatMulNBits`` (CPU and CUDA; ONNX Runtime only).

INT4 weights come from a ``qat`` stage's quantizers of at most 4 bits (learned codes and
scales, exact) or, for other Linear layers, from round-to-nearest; ``int4.block_size``
(default 128) sets the scale block. INT4 files are compared with the torch model holding the
same INT4 weights (``tolerances.int4``) and, recorded only, with the float model
(``vs_float``: what 4-bit weights cost).

INT8 formats need an earlier ``qat`` stage (checked before the run starts).
Each file is compared with its torch source on ``parity_split`` with ONNX
Runtime (``compress.export.parity``, ``basic`` graph optimisation: the file's
own semantics); a tolerance exceeded fails the stage with ``ExportError``
(``tolerances.fp32``, ``tolerances.fp16`` or ``tolerances.int8`` by the file's
precision; ONNX Runtime CPU runs float16 nodes it has no kernel for in float32,
so FP16 parity on CPU is close to, not identical with, a GPU's). For
``onnx-int8-u8`` the stage also records ``ort_cpu_parity``, the parity of ONNX
Runtime's fused integer kernels on this host, and warns when it misses the
tolerance (x86 without VNNI saturates 8-bit weights; see
``compress.quant.config``); for ``onnx-int4`` likewise (ONNX Runtime fuses the blocked
DequantizeLinear and MatMul into MatMulNBits with int8 activations at ``ORT_ENABLE_ALL``).

``simplify: true`` runs onnxslim on each ONNX file and keeps the simplified graph only if
it still meets the tolerance (``simplify`` in the artifact's meta records before/after and
why it was kept or not). ``external_data: true`` (forced above 1.8 GB) writes tensors to one
data file beside each ONNX file, named relative to it (``compress.export.onnx.write_onnx``).
``preprocess.json`` describes input and output (names, shapes with dynamic axes, dtypes,
normalisation, label names; tokenizer files are copied to ``artifacts/tokenizer/`` for text
models) and ``MODEL_CARD.md`` says what went in and what came out (``compress.export.card``).

Example (pipeline YAML)::

    - export:
        formats: [onnx-fp32, onnx-fp16, onnx-int8-u8]
        tolerances: {int8: {min_top1_agreement: 0.99}}

Metrics: ``formats`` (by name: ``path``, ``parity``, ``size_bytes``, and
``qdq`` node counts, ``int4`` summaries, ``fp16`` conversion counts, ``warnings``,
``ort_cpu_parity``, ``vs_float``, ``simplify`` or ``external_data`` where they apply),
``int8_size_ratio``, ``int4_size_ratio`` and ``fp16_size_ratio`` (FP32 bytes / lower-precision
bytes when both exist), ``preprocess``, ``model_card``.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from torch import nn

from compress._utils.io import atomic_write_json, atomic_write_text
from compress._utils.registry import Registry
from compress.errors import ExportError
from compress.export import (
    ExportFormat,
    Fp16ExportConfig,
    Int4ExportConfig,
    ParityTolerancesConfig,
    TensorRTExportConfig,
    check_parity,
    export_onnx,
    export_onnx_fp16,
    export_onnx_int4,
    export_onnx_qdq,
    int4_model,
    int4_summary,
    parity,
    qdq_summary,
)
from compress.export.int4 import int4_layers
from compress.export.onnx import INPUT_NAME, OUTPUT_NAME, external_data_files, load_onnx, write_onnx
from compress.quant import is_quantized, set_quant_enabled_
from compress.stages.base import Artifact, Stage, StageConfig, StageContext, StageResult, register_stage

PREPROCESS_FILE = "preprocess.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class OnnxFormat:
    """One export format: file name, precision and how it is written.

    Attributes:
        name: The ``formats:`` value and artifact name.
        filename: File name under ``artifacts/``.
        precision: ``fp32``, ``fp16``, ``int8`` or ``int4`` (selects the parity tolerance).
        flavour: ``fp32``, ``fp16``, ``s8s8``, ``u8s8``, ``int4-dq`` or ``int4-matmulnbits``.
        check_ort_kernels: Also record parity of ONNX Runtime's fused CPU kernels (ORT-targeted files).
        ort_kernel_hint: What to do when those kernels miss the tolerance (the stage's warning).
    """

    name: str
    filename: str
    precision: Literal["fp32", "fp16", "int8", "int4"]
    flavour: Literal["fp32", "fp16", "s8s8", "u8s8", "int4-dq", "int4-matmulnbits"]
    check_ort_kernels: bool = False
    ort_kernel_hint: str = ""

    @property
    def quantized(self) -> bool:
        """Whether the file is written from the fake quantizers' scales (needs a ``qat`` stage)."""
        return self.precision == "int8"

    def source(self, model: nn.Module, cfg: ExportStageConfig | None = None) -> nn.Module:
        """The torch model this file is exported from and compared with (a copy of ``model``)."""
        if self.precision == "int4":
            int4 = cfg.int4 if cfg is not None else Int4ExportConfig()
            return int4_model(model, block_size=int4.block_size, keep_float=int4.keep_float)
        src = copy.deepcopy(model)
        set_quant_enabled_(src, self.quantized)
        src.eval()
        return src

    def float_reference(self, model: nn.Module) -> nn.Module | None:
        """The float model to record ``vs_float`` parity against (INT4: what 4-bit weights cost)."""
        if self.precision != "int4":
            return None
        src = copy.deepcopy(model)
        set_quant_enabled_(src, False)
        return src.eval()

    def write(
        self, model: nn.Module, path: Path, example_inputs: Any, cfg: ExportStageConfig
    ) -> dict[str, Any]:
        """Export ``model`` (from ``source``) to ``path``; return meta proper to the format (may be empty)."""
        ext = cfg.external_data
        if self.quantized:
            export_onnx_qdq(
                model, path, example_inputs, flavour=self.flavour, opset=cfg.opset, external_data=ext
            )  # type: ignore[arg-type]
        elif self.precision == "int4":
            flavour = "dq" if self.flavour == "int4-dq" else "matmulnbits"
            export_onnx_int4(model, path, example_inputs, flavour=flavour, opset=cfg.opset, external_data=ext)
            return {"int4_layers": int4_layers(model), "block_size": cfg.int4.block_size}
        elif self.precision == "fp16":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the stage records and reports the clipping warning itself
                conv = export_onnx_fp16(
                    model, path, example_inputs, opset=cfg.opset, config=cfg.fp16, external_data=ext
                )
            return {"fp16": conv.to_dict(), "warnings": [conv.warning] if conv.warning else []}
        else:
            export_onnx(model, path, example_inputs, opset=cfg.opset, external_data=ext)
        return {}

    def summary(self, path: Path) -> dict[str, Any]:
        """Node counts proper to the format (``qdq`` for INT8, ``int4`` for INT4)."""
        if self.quantized:
            return {"qdq": qdq_summary(path)}
        if self.precision == "int4":
            return {"int4": int4_summary(path)}
        return {}

    def opset(self, cfg: ExportStageConfig) -> int:
        """The file's default-domain opset (``onnx-int4`` is converted to 21)."""
        from compress.export.int4 import INT4_OPSET

        return INT4_OPSET if self.flavour == "int4-dq" else cfg.opset


_VNNI_HINT = (
    "x86 CPUs without VNNI saturate 8-bit weights in u8s8 kernels: use quant.weights.bits: 7 in the qat "
    "stage for such targets"
)
_INT4_KERNEL_HINT = (
    "at ORT_ENABLE_ALL ONNX Runtime fuses DequantizeLinear+MatMul into MatMulNBits with int8 activations "
    "(session config session.qdq_matmulnbits_accuracy_level, default 4); set it to 0 in the runtime for "
    "float activations, or deploy onnx-int4-matmulnbits"
)

ONNX_FORMATS: Registry[OnnxFormat] = Registry("export format")
for _f in (
    OnnxFormat("onnx-fp32", "model.fp32.onnx", "fp32", "fp32"),
    OnnxFormat("onnx-fp16", "model.fp16.onnx", "fp16", "fp16"),
    OnnxFormat("onnx-int8", "model.int8.onnx", "int8", "s8s8"),
    OnnxFormat(
        "onnx-int8-u8",
        "model.int8-u8.onnx",
        "int8",
        "u8s8",
        check_ort_kernels=True,
        ort_kernel_hint=_VNNI_HINT,
    ),
    OnnxFormat(
        "onnx-int4",
        "model.int4.onnx",
        "int4",
        "int4-dq",
        check_ort_kernels=True,
        ort_kernel_hint=_INT4_KERNEL_HINT,
    ),
    OnnxFormat("onnx-int4-matmulnbits", "model.int4-matmulnbits.onnx", "int4", "int4-matmulnbits"),
):
    ONNX_FORMATS.register(_f.name)(_f)

_MIN_QDQ_OPSET = 13


@dataclass(frozen=True)
class EngineFormat:
    """A TensorRT engine format: built from one of the ONNX formats written in the same stage."""

    name: str
    filename: str
    precision: Literal["fp16", "int8"]
    onnx: str  # the ONNX format it is built from
    tolerance: Literal["fp32", "fp16", "int8"]  # which parity tolerance applies

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


ENGINE_FORMATS: Registry[EngineFormat] = Registry("engine format")
for _e in (
    EngineFormat("tensorrt-fp16", "model.fp16.engine", "fp16", "onnx-fp32", "fp16"),
    EngineFormat("tensorrt-int8", "model.int8.engine", "int8", "onnx-int8", "int8"),
):
    ENGINE_FORMATS.register(_e.name)(_e)


TORCH_FORMAT = "torch-fp32"
"""The float model as a compress model file (spec + state dict, no fake quantizers): what the
torch runtimes (torch, torch-compile, torchao-int8) load; they choose the compute precision."""


class _TorchFormatInfo:
    quantized = False


def _fmt(name: str) -> OnnxFormat | EngineFormat | _TorchFormatInfo:
    if name == TORCH_FORMAT:
        return _TorchFormatInfo()
    return ENGINE_FORMATS.get(name) if name in ENGINE_FORMATS else ONNX_FORMATS.get(name)


def plain_float_copy(model: nn.Module) -> nn.Module:
    """The same architecture without its fake quantizers, holding the float weights.

    The ``qat`` transform is always stripped. Every other recorded transform is stripped when the
    plain model still finds all its weights without it (attention exposure holds no weights, so the
    reloaded model gets its library's own fused attention back) and kept when the weights need it
    (BatchNorm folding removed the BN tensors and gave the convolutions a bias).

    Raises:
        ExportError: A weight of the plain model has no counterpart in ``model``.
    """
    from compress.models import model_from_spec, model_spec

    spec = model_spec(model)
    src = model.state_dict()

    def build(transforms: list[Any]) -> tuple[nn.Module, list[str]]:
        plain = model_from_spec({**spec, "transforms": transforms})
        return plain, [k for k in plain.state_dict() if k not in src]

    kept = [t for t in spec.get("transforms", []) if t["name"] != "qat"]
    for t in list(kept):
        trial = [u for u in kept if u is not t]
        if not build(trial)[1]:
            kept = trial
    plain, missing = build(kept)
    if missing:
        raise ExportError(f"cannot strip transforms: {', '.join(missing[:4])} not found in the model")
    own = plain.state_dict()
    plain.load_state_dict({k: src[k] for k in own})
    return plain.eval()


class ExportStageConfig(StageConfig):
    """Settings of the ``export`` stage."""

    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["onnx-fp32", "onnx-int8", "onnx-int8-u8"],
        min_length=1,
        description="Files to write: onnx-fp32, onnx-fp16 (float16, float32 I/O), "
        "onnx-int8 (S8S8, TensorRT), onnx-int8-u8 (U8S8, ONNX Runtime CPU), torch-fp32, "
        "tensorrt-fp16, tensorrt-int8.",
    )
    opset: int = Field(
        17,
        ge=11,
        le=20,
        description="ONNX opset the model is traced at (INT8 formats need >= 13; the TorchScript exporter "
        "stops at 20); onnx-int4 files are converted to opset 21.",
    )
    tolerances: ParityTolerancesConfig = Field(
        default_factory=ParityTolerancesConfig,
        description="Parity limits per precision; exceeding one fails the stage.",
    )
    parity_split: Literal["train", "val", "test"] = Field(
        "val", description="Data split used for the parity checks."
    )
    parity_examples: int | None = Field(
        None,
        ge=1,
        description="Check parity on the first N examples of parity_split (default: all). Each format is "
        "run several times on the CPU, which takes minutes for a large CNN on a large split.",
    )
    fp16: Fp16ExportConfig = Field(
        default_factory=Fp16ExportConfig, description="How onnx-fp16 is converted (ops kept in float32)."
    )
    tensorrt: TensorRTExportConfig = Field(
        default_factory=TensorRTExportConfig,
        description="Engine profiles and builder settings (tensorrt-* formats).",
    )
    int4: Int4ExportConfig = Field(
        default_factory=Int4ExportConfig,
        description="INT4 weight-only settings (onnx-int4, onnx-int4-matmulnbits): block_size, keep_float.",
    )
    simplify: bool = Field(
        False,
        description="Simplify each ONNX file with onnxslim (pip install 'compress[export]'); kept only if "
        "parity still meets the tolerance.",
    )
    external_data: bool = Field(
        False,
        description="Write ONNX tensors to one data file beside each .onnx (always on above 1.8 GB).",
    )

    @field_validator("formats")
    @classmethod
    def _no_duplicates(cls, v: list[str]) -> list[str]:
        dup = sorted({f for f in v if v.count(f) > 1})
        if dup:
            raise ValueError(f"formats lists {', '.join(dup)} more than once; list each format once")
        return v

    @model_validator(mode="after")
    def _opset_for_int8(self) -> ExportStageConfig:
        int8 = [f for f in self.formats if _fmt(f).quantized]
        if int8 and self.opset < _MIN_QDQ_OPSET:
            raise ValueError(
                f"opset {self.opset} is too old for formats {', '.join(int8)}: per-channel "
                f"DequantizeLinear needs opset >= {_MIN_QDQ_OPSET}; raise opset or drop them"
            )
        for f in self.formats:
            if f in ENGINE_FORMATS and ENGINE_FORMATS.get(f).onnx not in self.formats:
                need = ENGINE_FORMATS.get(f).onnx
                raise ValueError(f"{f} is built from {need}: add {need} to formats")
        return self


@register_stage
class ExportStage(Stage):
    """Write ONNX FP32, FP16, INT8 Q/DQ and INT4 files, check their parity with torch, describe them."""

    name = "export"
    config_class = ExportStageConfig
    before = frozenset({"validate"})
    description = (
        "Export ONNX FP32, FP16, INT8 Q/DQ (S8S8 for TensorRT, U8S8 for ONNX Runtime) and INT4 weight-only "
        "(blocked DQ, MatMulNBits) with parity checks, preprocess.json and MODEL_CARD.md."
    )

    @classmethod
    def check_order(cls, cfg: Any, earlier: list[tuple[str, Any]]) -> list[str]:
        """INT8 formats need a ``qat`` stage before this one."""
        int8 = [f for f in cfg.formats if _fmt(f).quantized]
        if int8 and not any(kind == "qat" for kind, _ in earlier):
            return [
                f"{' and '.join(int8)} {'needs' if len(int8) == 1 else 'need'} a qat stage before export "
                "(INT8 Q/DQ is written from learned scales); add '- qat: {}' before this export, "
                "or keep only onnx-fp32 in formats"
            ]
        return []

    @classmethod
    def missing_dependencies(cls, cfg: Any) -> list[str]:
        """TensorRT must be importable for engine formats, onnxslim for ``simplify: true``."""
        import importlib.util

        problems = []
        engines = [f for f in cfg.formats if f in ENGINE_FORMATS]
        if engines and importlib.util.find_spec("tensorrt") is None:
            from compress.export.tensorrt import INSTALL_HINT

            problems.append(
                f"formats {', '.join(engines)} need TensorRT, which is not installed here: {INSTALL_HINT}"
            )
        if cfg.simplify:
            from compress.export.slim import INSTALL_HINT as SLIM_HINT
            from compress.export.slim import onnxslim_available

            if not onnxslim_available():
                problems.append(f"simplify: true needs onnxslim, which is not installed here: {SLIM_HINT}")
        return problems

    def run(self, ctx: StageContext, cfg: ExportStageConfig) -> StageResult:
        def fail(msg: str) -> ExportError:
            return ExportError(msg, stage=self.name, yaml_path=ctx.yaml_path)

        formats = [ONNX_FORMATS.get(f) for f in cfg.formats if f in ONNX_FORMATS]
        engines = [ENGINE_FORMATS.get(f) for f in cfg.formats if f in ENGINE_FORMATS]
        int8 = [f.name for f in formats if f.quantized]
        if int8 and not is_quantized(ctx.model):
            raise fail(
                f"{', '.join(int8)} needs a quantized model, but the model entering export "
                "has no fake quantizers; "
                "put a qat stage before export"
            )
        example = ctx.example_inputs(2)
        x_par, y_par = ctx.data.tensors(cfg.parity_split)
        if cfg.parity_examples is not None:
            x_par, y_par = x_par[: cfg.parity_examples], y_par[: cfg.parity_examples]
        bs = ctx.pipeline.data.eval_batch_size
        rel_dir = Path(os.path.relpath(ctx.artifacts_dir, ctx.run_dir))
        artifacts: list[Artifact] = []
        by_name: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            path = ctx.artifacts_dir / fmt.filename
            rel = str(rel_dir / fmt.filename)
            tol = getattr(cfg.tolerances, fmt.precision)
            try:
                src = fmt.source(ctx.model, cfg)
                extra = fmt.write(src, path, example, cfg)
                par = parity(path, src, x_par, batch_size=bs, labels=y_par)
            except ExportError as e:
                raise fail(f"{fmt.name} ({rel}): {e}") from e
            problems = check_parity(par, tol)
            if problems:
                raise fail(
                    f"{fmt.name} ({rel}) differs from its torch source on the {cfg.parity_split} split "
                    f"(n={par['n']}): {'; '.join(problems)} (max_abs_error {par['max_abs_error']:.4g}, "
                    f"top1_agreement {par['top1_agreement']:.4g}, cosine {par['cosine']:.6g}); "
                    f"the limits are tolerances.{fmt.precision} in this stage's config"
                )
            if cfg.simplify:
                extra["simplify"], par = _simplify(path, src, par, tol, x_par, y_par, bs, cfg.external_data)
                if not extra["simplify"]["applied"]:
                    ctx.reporter.line(f"  note: {fmt.name}: kept unsimplified: {extra['simplify']['reason']}")
            meta: dict[str, Any] = {
                "flavour": fmt.flavour,
                "opset": fmt.opset(cfg),
                "parity": par,
                "parity_split": cfg.parity_split,
                "size_bytes": _size_on_disk(path),
                "external_data": external_data_files(path),
                **extra,
                **fmt.summary(path),
            }
            for warning in extra.get("warnings", []):
                ctx.reporter.line(f"  warning: {fmt.name} ({rel}): {warning}")
            ref = fmt.float_reference(ctx.model)
            if ref is not None:
                meta["vs_float"] = parity(path, ref, x_par, batch_size=bs, labels=y_par)
            if fmt.check_ort_kernels:
                kern = parity(path, src, x_par, batch_size=bs, graph_optimization="all")
                meta["ort_cpu_parity"] = kern
                kern_problems = check_parity(kern, tol)
                if kern_problems:
                    ctx.reporter.line(
                        f"  warning: {fmt.name}: ONNX Runtime's fused kernels on this CPU miss "
                        f"the parity tolerance ({'; '.join(kern_problems)}); {fmt.ort_kernel_hint}"
                    )
            artifacts.append(
                Artifact(name=fmt.name, path=rel, format="onnx", precision=fmt.precision, meta=meta)
            )
            by_name[fmt.name] = {
                "path": rel,
                **{k: v for k, v in meta.items() if k not in ("flavour", "opset")},
            }
        if TORCH_FORMAT in cfg.formats:
            artifacts.append(_write_torch(ctx, rel_dir, x_par, bs, fail))
            by_name[TORCH_FORMAT] = {"path": artifacts[-1].path, **artifacts[-1].meta}
        for eng in engines:
            artifacts.append(_build_engine(ctx, cfg, eng, rel_dir, x_par, fail))
            by_name[eng.name] = {"path": artifacts[-1].path, **artifacts[-1].meta}
        pre_rel = str(rel_dir / PREPROCESS_FILE)
        atomic_write_json(ctx.artifacts_dir / PREPROCESS_FILE, _preprocess(ctx, formats, artifacts, rel_dir))
        card_rel = str(rel_dir / MODEL_CARD_FILE)
        atomic_write_text(ctx.artifacts_dir / MODEL_CARD_FILE, _model_card(ctx, cfg, artifacts, rel_dir))
        metrics: dict[str, Any] = {"formats": by_name, "preprocess": pre_rel, "model_card": card_rel}
        sizes: dict[str, int] = {}
        for f in formats:
            sizes.setdefault(f.precision, by_name[f.name]["size_bytes"])
        for low in ("int8", "int4", "fp16"):
            if "fp32" in sizes and low in sizes:
                metrics[f"{low}_size_ratio"] = sizes["fp32"] / sizes[low]
        return StageResult(artifacts=artifacts, metrics=metrics)


def _size_on_disk(path: Path) -> int:
    """Bytes of an ONNX file plus its external data files."""
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in external_data_files(path))


def _simplify(
    path: Path, src: nn.Module, before: dict[str, Any], tol: Any, x: Any, y: Any, bs: int, external: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Simplify ``path`` with onnxslim if the result keeps parity.

    Returns:
        The ``simplify`` record and the parity of the file kept.
    """
    from compress.export.slim import simplify_model

    try:
        slim, info = simplify_model(load_onnx(path))
    except ExportError as e:
        return {"applied": False, "reason": str(e), "parity_before": before}, before
    tmp = path.with_name(f".{path.stem}.slim.onnx")
    try:
        write_onnx(slim, tmp, external_data=external)
        after = parity(tmp, src, x, batch_size=bs, labels=y)
    except ExportError as e:
        return {
            "applied": False,
            "reason": f"the simplified graph does not run: {e}",
            "parity_before": before,
            **info,
        }, before
    finally:
        for f in [tmp, *tmp.parent.glob(f"{tmp.name}.*.data")]:
            f.unlink(missing_ok=True)
    problems = check_parity(after, tol)
    record = {"parity_before": before, "parity_after": after, **info}
    if problems:
        return {
            "applied": False,
            "reason": f"the simplified graph misses the tolerance: {'; '.join(problems)}",
            **record,
        }, before
    write_onnx(slim, path, external_data=external)
    return {"applied": True, **record}, after


def _write_torch(ctx: StageContext, rel_dir: Path, x_par: Any, bs: int, fail: Any) -> Artifact:
    """``model.pt``: the float model for torch runtimes, reloaded and checked against its source."""
    from compress.export import compare_outputs
    from compress.models import load_model, save_model
    from compress.train import predict

    src = copy.deepcopy(ctx.model)
    set_quant_enabled_(src, False)
    plain = plain_float_copy(src)
    path = ctx.artifacts_dir / "model.pt"
    save_model(plain, path)
    ref = predict(src, x_par, batch_size=bs).numpy()
    par = compare_outputs(predict(load_model(path), x_par, batch_size=bs).numpy(), ref, what=str(path))
    # float rounding only: the same weights, possibly another attention kernel (an exposed attention's
    # source vs the plain reloaded model) or TF32 on a GPU; measured 1.5e-5 on MiniLM logits on an H100
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if par["max_abs_error"] > tol or par["top1_agreement"] < 1.0:
        raise fail(
            f"{TORCH_FORMAT}: the reloaded float model differs from its source (max abs error "
            f"{par['max_abs_error']:.3g} > {tol:.3g}, top-1 agreement {par['top1_agreement']:.4f})"
        )
    return Artifact(
        name=TORCH_FORMAT,
        path=str(rel_dir / "model.pt"),
        format="torch",
        precision="fp32",
        meta={"parity": par, "size_bytes": path.stat().st_size},
    )


def _build_engine(
    ctx: StageContext, cfg: ExportStageConfig, eng: EngineFormat, rel_dir: Path, x_par: Any, fail: Any
) -> Artifact:
    """Build ``eng`` from its ONNX file; check parity on the GPU when TensorRT can run here."""
    from compress.export import session_parity
    from compress.export.tensorrt import batch_profiles, build_engine
    from compress.runtime import open_session
    from compress.runtime.tensorrt import TrtSession

    onnx_fmt = ONNX_FORMATS.get(eng.onnx)
    onnx_path = ctx.artifacts_dir / onnx_fmt.filename
    plan = ctx.artifacts_dir / eng.filename
    shapes = {INPUT_NAME: ("batch", *ctx.data.input_shape)}
    try:
        built = build_engine(
            onnx_path,
            plan,
            precision=eng.precision,
            profiles=batch_profiles(shapes, cfg.tensorrt.batch_sizes),
            workspace_mb=cfg.tensorrt.workspace_mb,
            timing_cache=ctx.artifacts_dir / "tensorrt.timing-cache" if cfg.tensorrt.timing_cache else None,
        )
    except ExportError as e:
        raise fail(f"{eng.name} ({rel_dir / eng.filename}): {e}") from e
    meta: dict[str, Any] = {
        "built_from": eng.onnx,
        "sidecar": str(rel_dir / built.sidecar_path.name),
        "size_bytes": plan.stat().st_size,
    }
    ok, why = TrtSession.can_run_here("cuda")
    if ok:
        src = onnx_fmt.source(ctx.model)
        with open_session("tensorrt", plan, device="cuda") as sess:
            par = session_parity(sess, src, x_par, batch_size=max(cfg.tensorrt.batch_sizes))
        problems = check_parity(par, getattr(cfg.tolerances, eng.tolerance))
        if problems:
            raise fail(f"{eng.name}: differs from its torch source: {'; '.join(problems)}")
        meta["parity"] = par
    else:
        meta["parity"] = None
        meta["parity_skipped"] = why
    return Artifact(
        name=eng.name, path=str(rel_dir / eng.filename), format="tensorrt", precision=eng.precision, meta=meta
    )


def _preprocess(
    ctx: StageContext, formats: list[OnnxFormat], artifacts: list[Artifact], rel_dir: Path
) -> dict[str, Any]:
    """What a deployer needs to feed the files without compress.

    Input and output names, shapes (symbolic axes by name), dtypes; the data source's own
    ``preprocess`` record (normalisation, tokenizer settings...); ``normalisation`` and
    ``labels`` lifted out of it where it has them; for token inputs the tokenizer files
    copied to ``artifacts/tokenizer/``; every artifact's file and external data files.
    """
    data = ctx.data
    pre = dict(data.preprocess or {})
    tokens = not data.inputs.is_floating_point() and len(data.input_shape) == 1
    in_shape: list[Any] = ["batch", "sequence"] if tokens else ["batch", *data.input_shape]
    out: dict[str, Any] = {
        "input": {
            "name": INPUT_NAME,
            "shape": in_shape,
            "dtype": str(data.inputs.dtype).removeprefix("torch."),
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", data.num_classes], "dtype": "float32"},
        "dynamic_axes": {
            INPUT_NAME: {"0": "batch", **({"1": "sequence"} if tokens else {})},
            OUTPUT_NAME: {"0": "batch"},
        },
        "num_classes": data.num_classes,
        "preprocess": data.preprocess,
        "artifacts": {f.name: f.filename for f in formats},
    }
    if tokens:
        out["input"]["max_length"] = int(data.input_shape[0])
    norm = {k: pre[k] for k in ("mean", "std", "scale", "normalisation", "layout") if k in pre}
    if norm:
        out["normalisation"] = norm
    labels = pre.get("classes") or pre.get("labels")
    if labels:
        out["labels"] = list(labels)
    tok = _copy_tokenizer(pre.get("tokenizer"), ctx.artifacts_dir / TOKENIZER_DIR) if tokens else []
    if tokens:
        out["tokenizer"] = {
            "files": [f"{TOKENIZER_DIR}/{n}" for n in tok],
            "source": pre.get("tokenizer"),
            **{k: pre[k] for k in _TOKENIZER_KEYS if k in pre},
        }
    ext = {a.name: a.meta["external_data"] for a in artifacts if a.meta.get("external_data")}
    if ext:
        out["external_data"] = ext
    return out


_TOKENIZER_KEYS = (
    "tokenizer_name",
    "tokenizer_sha256",
    "pad_token_id",
    "padding",
    "truncation",
    "attention_mask",
)
"""Keys of a text source's ``preprocess`` record repeated under ``preprocess.json``'s ``tokenizer``."""


def _copy_tokenizer(folder: Any, dest: Path) -> list[str]:
    """Copy the Hugging Face tokenizer files of ``folder`` into ``dest`` (atomically); their names."""
    from compress._utils.io import atomic_write_bytes
    from compress.data._text import TOKENIZER_FILES

    if not folder or not Path(str(folder)).is_dir():
        return []
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(str(folder)) / name
        if src.is_file():
            atomic_write_bytes(dest / name, src.read_bytes())
            copied.append(name)
    return copied


_CARD_METRICS = ("val_accuracy", "test_accuracy", "params", "macs", "macs_removed", "weight_bits")
"""Metrics shown first in the model card's stage table (the stage's ``model`` record, then its own)."""


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """A stage's scalar metrics worth a column in the model card (known names first, at most 6).

    Stages record the model leaving them under ``model`` (accuracy, params, MACs); those win
    over the stage's own top-level numbers of the same name.
    """
    model = metrics.get("model") if isinstance(metrics.get("model"), dict) else {}
    flat = {
        k: v
        for src in (metrics, model)
        for k, v in src.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    chosen = [k for k in _CARD_METRICS if k in flat] + sorted(k for k in flat if k not in _CARD_METRICS)
    return {k: flat[k] for k in chosen[:6]}


def _model_card(ctx: StageContext, cfg: ExportStageConfig, artifacts: list[Artifact], rel_dir: Path) -> str:
    """``MODEL_CARD.md``: teacher, stages and data that went in; artifacts, sizes and parity that came out."""
    import importlib.metadata

    from compress.export.card import ModelCardInfo, render_model_card

    pipe = ctx.pipeline

    def dump(obj: Any) -> dict[str, Any]:
        if obj is None:
            return {}
        if hasattr(obj, "model_dump"):
            return {
                k: v for k, v in obj.model_dump(mode="json", exclude_defaults=True).items() if v is not None
            }
        return {}

    data_cfg = dump(getattr(pipe, "data", None))
    data_cfg.update({f"{s}_examples": ctx.data.split_size(s) for s in ("train", "val", "test")})
    data_cfg.setdefault("source", ctx.data.name)
    pre = ctx.data.preprocess or {}
    task = {
        "num_classes": ctx.data.num_classes,
        "input_shape": list(ctx.data.input_shape),
        "input_dtype": str(ctx.data.inputs.dtype).removeprefix("torch."),
        "labels": pre.get("classes"),
    }
    stages = [(sid, sid.split("-", 1)[-1], _headline(m or {})) for sid, m in ctx.history.items()]
    rows = []
    for a in artifacts:
        notes = []
        simp = a.meta.get("simplify")
        if simp:
            notes.append(
                "simplified with onnxslim" if simp["applied"] else f"not simplified: {simp['reason']}"
            )
        if "vs_float" in a.meta:
            vf = a.meta["vs_float"]
            note = f"vs the float model: top-1 agreement {vf['top1_agreement']:.4f}"
            if "accuracy" in vf:
                note += f", accuracy {vf['accuracy']:.4f} (float {vf['source_accuracy']:.4f})"
            notes.append(note)
        if a.meta.get("parity_skipped"):
            notes.append(f"parity not measured: {a.meta['parity_skipped']}")
        if a.meta.get("external_data"):
            notes.append(f"external data: {', '.join(a.meta['external_data'])}")
        file = str(Path(a.path).relative_to(rel_dir)) if a.path.startswith(str(rel_dir)) else a.path
        rows.append(
            {
                "name": a.name,
                "file": file,
                "format": a.format,
                "precision": a.precision,
                "size_bytes": a.meta.get("size_bytes"),
                "parity": a.meta.get("parity"),
                "notes": notes,
            }
        )
    versions = {}
    for pkg in ("compress", "torch", "onnx", "onnxruntime", "onnxslim"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    info = ModelCardInfo(
        name=str(getattr(pipe, "name", ctx.run_dir.name)),
        teacher=dump(getattr(pipe, "teacher", None)),
        stages=stages,
        data=data_cfg,
        task=task,
        artifacts=rows,
        parity_split=cfg.parity_split,
        preprocess_file=PREPROCESS_FILE,
        versions=versions,
    )
    return render_model_card(info)
