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
``compress.quant.config``). ``preprocess.json`` describes input and output.

Example (pipeline YAML)::

    - export:
        formats: [onnx-fp32, onnx-fp16, onnx-int8-u8]
        tolerances: {int8: {min_top1_agreement: 0.99}}

Metrics: ``formats`` (by name: ``path``, ``parity``, ``size_bytes``, and
``qdq`` node counts, ``fp16`` conversion counts, ``warnings`` or
``ort_cpu_parity`` where they apply), ``int8_size_ratio`` and
``fp16_size_ratio`` (FP32 bytes / INT8 or FP16 bytes when both exist),
``preprocess``.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from compress._utils.io import atomic_write_json
from compress._utils.registry import Registry
from compress.errors import ExportError
from compress.export import (
    ExportFormat,
    Fp16ExportConfig,
    ParityTolerancesConfig,
    TensorRTExportConfig,
    check_parity,
    export_onnx,
    export_onnx_fp16,
    export_onnx_qdq,
    parity,
    qdq_summary,
)
from compress.export.onnx import INPUT_NAME, OUTPUT_NAME
from compress.quant import is_quantized, set_quant_enabled_
from compress.stages.base import Artifact, Stage, StageConfig, StageContext, StageResult, register_stage

PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class OnnxFormat:
    """One export format: file name, precision and how it is written.

    Attributes:
        name: The ``formats:`` value and artifact name.
        filename: File name under ``artifacts/``.
        precision: ``fp32``, ``fp16`` or ``int8`` (selects the parity tolerance).
        flavour: ``fp32``, ``fp16``, ``s8s8`` or ``u8s8``.
        check_ort_kernels: Also record parity of ONNX Runtime's fused CPU kernels (ORT-targeted files).
    """

    name: str
    filename: str
    precision: Literal["fp32", "fp16", "int8"]
    flavour: Literal["fp32", "fp16", "s8s8", "u8s8"]
    check_ort_kernels: bool = False

    @property
    def quantized(self) -> bool:
        """Whether the file is written from the fake quantizers' scales."""
        return self.precision == "int8"

    def source(self, model: nn.Module) -> nn.Module:
        """The torch model this file is exported from and compared with (a copy of ``model``)."""
        src = copy.deepcopy(model)
        set_quant_enabled_(src, self.quantized)
        src.eval()
        return src

    def write(
        self,
        model: nn.Module,
        path: Path,
        example_inputs: Any,
        opset: int,
        fp16: Fp16ExportConfig | None = None,
    ) -> dict[str, Any]:
        """Export ``model`` (from ``source``) to ``path``; return meta proper to the format (may be empty)."""
        if self.quantized:
            export_onnx_qdq(model, path, example_inputs, flavour=self.flavour, opset=opset)  # type: ignore[arg-type]
        elif self.precision == "fp16":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the stage records and reports the clipping warning itself
                conv = export_onnx_fp16(model, path, example_inputs, opset=opset, config=fp16)
            return {"fp16": conv.to_dict(), "warnings": [conv.warning] if conv.warning else []}
        else:
            export_onnx(model, path, example_inputs, opset=opset)
        return {}


ONNX_FORMATS: Registry[OnnxFormat] = Registry("export format")
for _f in (
    OnnxFormat("onnx-fp32", "model.fp32.onnx", "fp32", "fp32"),
    OnnxFormat("onnx-fp16", "model.fp16.onnx", "fp16", "fp16"),
    OnnxFormat("onnx-int8", "model.int8.onnx", "int8", "s8s8"),
    OnnxFormat("onnx-int8-u8", "model.int8-u8.onnx", "int8", "u8s8", check_ort_kernels=True),
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
    """The same architecture without structural transforms (fake quantizers), holding the float weights.

    Raises:
        ExportError: A weight of the plain model has no counterpart in ``model``.
    """
    from compress.models import model_from_spec, model_spec

    spec = model_spec(model)
    plain = model_from_spec({**spec, "transforms": []})
    own, src = plain.state_dict(), model.state_dict()
    missing = [k for k in own if k not in src]
    if missing:
        raise ExportError(f"cannot strip transforms: {', '.join(missing[:4])} not found in the model")
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
        description="ONNX opset (INT8 formats need >= 13; the TorchScript exporter stops at 20).",
    )
    tolerances: ParityTolerancesConfig = Field(
        default_factory=ParityTolerancesConfig,
        description="Parity limits per precision; exceeding one fails the stage.",
    )
    parity_split: Literal["train", "val", "test"] = Field(
        "val", description="Data split used for the parity checks."
    )
    fp16: Fp16ExportConfig = Field(
        default_factory=Fp16ExportConfig, description="How onnx-fp16 is converted (ops kept in float32)."
    )
    tensorrt: TensorRTExportConfig = Field(
        default_factory=TensorRTExportConfig, description="Engine profiles and builder settings (tensorrt-* formats)."
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
    """Write ONNX FP32, FP16 and INT8 Q/DQ files and check their parity with torch."""

    name = "export"
    config_class = ExportStageConfig
    before = frozenset({"validate"})
    description = (
        "Export ONNX FP32, FP16 and INT8 Q/DQ (S8S8 for TensorRT, U8S8 for ONNX Runtime) with parity checks."
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
        """TensorRT must be importable when an engine format is asked for."""
        import importlib.util

        engines = [f for f in cfg.formats if f in ENGINE_FORMATS]
        if engines and importlib.util.find_spec("tensorrt") is None:
            from compress.export.tensorrt import INSTALL_HINT

            return [f"formats {', '.join(engines)} need TensorRT, which is not installed here: {INSTALL_HINT}"]
        return []

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
        x_par, _ = ctx.data.tensors(cfg.parity_split)
        bs = ctx.pipeline.data.eval_batch_size
        rel_dir = Path(os.path.relpath(ctx.artifacts_dir, ctx.run_dir))
        artifacts: list[Artifact] = []
        by_name: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            src = fmt.source(ctx.model)
            path = ctx.artifacts_dir / fmt.filename
            rel = str(rel_dir / fmt.filename)
            try:
                extra = fmt.write(src, path, example, cfg.opset, cfg.fp16)
                par = parity(path, src, x_par, batch_size=bs)
            except ExportError as e:
                raise fail(f"{fmt.name} ({rel}): {e}") from e
            tol = getattr(cfg.tolerances, fmt.precision)
            problems = check_parity(par, tol)
            if problems:
                raise fail(
                    f"{fmt.name} ({rel}) differs from its torch source on the {cfg.parity_split} split "
                    f"(n={par['n']}): {'; '.join(problems)} (max_abs_error {par['max_abs_error']:.4g}, "
                    f"top1_agreement {par['top1_agreement']:.4g}, cosine {par['cosine']:.6g}); "
                    f"the limits are tolerances.{fmt.precision} in this stage's config"
                )
            meta: dict[str, Any] = {
                "flavour": fmt.flavour,
                "opset": cfg.opset,
                "parity": par,
                "parity_split": cfg.parity_split,
                "size_bytes": path.stat().st_size,
                **extra,
            }
            for warning in extra.get("warnings", []):
                ctx.reporter.line(f"  warning: {fmt.name} ({rel}): {warning}")
            if fmt.quantized:
                meta["qdq"] = qdq_summary(path)
            if fmt.check_ort_kernels:
                kern = parity(path, src, x_par, batch_size=bs, graph_optimization="all")
                meta["ort_cpu_parity"] = kern
                kern_problems = check_parity(kern, tol)
                if kern_problems:
                    ctx.reporter.line(
                        f"  warning: {fmt.name}: ONNX Runtime's fused integer kernels on this CPU miss "
                        f"the parity tolerance ({'; '.join(kern_problems)}); x86 CPUs without VNNI "
                        "saturate 8-bit weights in "
                        "u8s8 kernels: use quant.weights.bits: 7 in the qat stage for such targets"
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
        atomic_write_json(ctx.artifacts_dir / PREPROCESS_FILE, _preprocess(ctx, formats))
        metrics: dict[str, Any] = {"formats": by_name, "preprocess": pre_rel}
        sizes = {f.precision: by_name[f.name]["size_bytes"] for f in formats}
        for low in ("int8", "fp16"):
            if "fp32" in sizes and low in sizes:
                metrics[f"{low}_size_ratio"] = sizes["fp32"] / sizes[low]
        return StageResult(artifacts=artifacts, metrics=metrics)


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
    par = compare_outputs(predict(load_model(path), x_par, batch_size=bs).numpy(), predict(src, x_par, batch_size=bs).numpy(), what=str(path))
    if par["max_abs_error"] > 1e-5:
        raise fail(f"{TORCH_FORMAT}: the reloaded float model differs from its source (max abs error {par['max_abs_error']:.3g})")
    return Artifact(name=TORCH_FORMAT, path=str(rel_dir / "model.pt"), format="torch", precision="fp32",
                    meta={"parity": par, "size_bytes": path.stat().st_size})


def _build_engine(ctx: StageContext, cfg: ExportStageConfig, eng: EngineFormat, rel_dir: Path, x_par: Any, fail: Any) -> Artifact:
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
    meta: dict[str, Any] = {"built_from": eng.onnx, "sidecar": str(rel_dir / built.sidecar_path.name), "size_bytes": plan.stat().st_size}
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
    return Artifact(name=eng.name, path=str(rel_dir / eng.filename), format="tensorrt", precision=eng.precision, meta=meta)


def _preprocess(ctx: StageContext, formats: list[OnnxFormat]) -> dict[str, Any]:
    """What a deployer needs to feed the files: input/output names, shapes, dtype and preprocessing."""
    data = ctx.data
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *data.input_shape],
            "dtype": str(data.inputs.dtype).removeprefix("torch."),
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", data.num_classes], "dtype": "float32"},
        "num_classes": data.num_classes,
        "preprocess": data.preprocess,
        "artifacts": {f.name: f.filename for f in formats},
    }
