"""The pipeline and deploy-target schema.

A pipeline YAML has ``name``, ``seed``, ``teacher``, ``student``, ``data``,
``stages`` and ``gates``. ``stages`` is a list of one-key mappings
(``- distill: {...}``); the key picks the stage kind and the value is that
stage's config. The union over stage kinds is built from the stage registry,
so adding a stage touches no schema code.

A deploy target (``deploy/<name>.yaml``) names a device, a runtime, the
artifact it deploys, the shapes and the timing settings.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from compress.config.base import CompressConfig

SCHEMA_VERSION = 1

JsonScalar = Union[int, float, str, bool, None]
JsonValue = Union[JsonScalar, list[Any], dict[str, Any]]


MAX_BUILDER_INT = 2**20
"""Largest integer accepted in a family's builder config: a typo such as ``depth: 100000000`` would
otherwise make building the model (even on the meta device) exhaust memory."""


class ModelSourceConfig(CompressConfig):
    """Where a model comes from: a registered family built from its config, optionally with weights.

    Two spellings, one meaning: ``{family: torchvision, config: {arch: resnet18}}`` or the shorthand
    ``{source: torchvision, arch: resnet18}`` (every key besides ``source`` and ``checkpoint`` goes to
    ``config``).
    """

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "source" not in data:
            return data
        if "family" in data or "config" in data:
            raise ValueError("give either 'source' with the builder's keys beside it, or 'family' + 'config', not both")
        rest = dict(data)
        out: dict[str, Any] = {"family": rest.pop("source")}
        if "checkpoint" in rest:
            out["checkpoint"] = rest.pop("checkpoint")
        out["config"] = rest
        return out

    family: str = Field(description="Registered model family, e.g. 'tiny-vit' (see `compress list families`).")
    config: dict[str, JsonValue] = Field(default_factory=dict, description="Keyword arguments of the family builder.")
    checkpoint: Path | None = Field(
        None, description="State dict (or compress model file) loaded with weights_only=True; relative to the YAML."
    )

    @field_validator("config")
    @classmethod
    def _sizes_in_range(cls, v: dict[str, Any]) -> dict[str, Any]:
        def walk(obj: Any, path: str) -> None:
            if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > MAX_BUILDER_INT:
                raise ValueError(
                    f"{path}: {obj} is larger than any model size compress builds "
                    f"(limit {MAX_BUILDER_INT:,}); check the value"
                )
            items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
            for k, x in items:
                walk(x, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")

        for key, value in v.items():
            walk(value, key)
        return v

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from compress.models import FAMILIES
        from compress._utils.registry import did_you_mean

        if v not in FAMILIES:
            names = FAMILIES.names()
            raise ValueError(f"unknown model family '{v}'{did_you_mean(v, names)}; valid: {', '.join(names)}")
        return v


class StudentConfig(CompressConfig):
    """How the first ``distill`` stage builds the student from the teacher.

    Depth: ``keep_layers`` (explicit list, ``every_other``) or ``num_layers`` (the first k), each kept layer
    starting from the teacher's weights (DistilBERT-style). Width: ``width`` keeps that fraction of every
    prunable group (CNN channels; Transformer heads and FFN neurons), chosen by weight magnitude so the
    student starts from the teacher's most important channels; ``heads``/``ffn``/``hidden`` set Transformer
    widths exactly. ``model`` instead builds an independent student (random init unless it has a checkpoint).
    """

    keep_layers: list[int] | Literal["every_other"] | None = Field(
        None, description="Teacher layers to keep, in order (e.g. [0, 2, 4]), or 'every_other' (0, 2, 4, ...)."
    )
    num_layers: int | None = Field(None, ge=1, le=1024, description="Keep the first k teacher layers.")
    width: float | None = Field(
        None, gt=0, le=1, description="Fraction of channels (CNN) or heads and FFN neurons (Transformer) kept."
    )
    heads: int | None = Field(None, ge=1, le=4096, description="Attention heads kept per layer (Transformers).")
    ffn: int | None = Field(None, ge=1, le=1_000_000, description="FFN neurons kept per layer (Transformers).")
    hidden: int | None = Field(
        None, ge=1, le=1_000_000, description="Hidden (residual) width kept (BERT family, built-in tiny-vit, timm ViT)."
    )
    round_to: int | None = Field(None, ge=1, le=512, description="Round kept channel counts to a multiple of this.")
    model: ModelSourceConfig | None = Field(None, description="An independent student instead of one built from the teacher.")
    init: Literal["teacher", "random"] = Field(
        "teacher", description="Start from the teacher's weights, or the same architecture at random (a from-scratch baseline)."
    )

    @field_validator("keep_layers")
    @classmethod
    def _distinct(cls, v: list[int] | str | None) -> list[int] | str | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("keep_layers is empty; keep at least one layer, e.g. [0, 2]")
            if len(set(v)) != len(v) or any(i < 0 for i in v):
                raise ValueError(f"keep_layers must be distinct non-negative indices, got {v}")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> StudentConfig:
        if self.keep_layers is not None and self.num_layers is not None:
            raise ValueError("give keep_layers or num_layers, not both")
        if self.model is not None and any(
            v is not None for v in (self.keep_layers, self.num_layers, self.width, self.heads, self.ffn, self.hidden)
        ):
            raise ValueError("student.model builds an independent student; drop the depth/width keys beside it")
        return self


class DataConfig(CompressConfig):
    """The task data and its split: the keys every data source shares.

    Each data source (``compress list sources``) subclasses this with ``source: Literal[<name>]``
    and its own keys; ``data:`` is validated as the union of those classes, picked by ``source``
    (default ``digits``). See ``compress.data`` for the sources.
    """

    input_kind: ClassVar[Literal["token_ids", "image"] | None] = None
    """What the source's inputs are, for checks before any work (e.g. ``augment`` needs token ids);
    ``None`` where only loading tells (a ``factory``)."""

    source: str = Field("digits", description="Registered data source (see `compress list sources`).")
    batch_size: int = Field(64, ge=1, le=65536, description="Training batch size.")
    eval_batch_size: int = Field(512, ge=1, le=65536, description="Batch size for evaluation.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Fraction of each class held out for validation.")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="Fraction of each class held out for the final test.")
    subset: int | None = Field(
        None,
        ge=1,
        description="Use a seeded stratified subset of this many examples before splitting (quick runs, CI); "
        "null: all.",
    )
    split_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Seed of the train/val/test split; null: the pipeline's seed. Fix it to retrain with other "
        "seeds on one split (seed-to-seed spread), or to match the split a teacher checkpoint was tuned on.",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from compress.data import SOURCES
        from compress._utils.registry import did_you_mean

        if v not in SOURCES:
            names = SOURCES.names()
            raise ValueError(f"unknown data source '{v}'{did_you_mean(v, names)}; valid: {', '.join(names)}")
        return v


class _UnknownDataSourceConfig(DataConfig):
    """Picked for a ``data.source`` no source registers: reports only that (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)


DEFAULT_DATA_SOURCE = "digits"
_UNKNOWN_SOURCE_TAG = "data[?]"


def _data_tag(v: Any) -> str:
    """Union tag of a ``data:`` value: ``data[<source>]`` (default digits), ``data[?]`` if unknown.

    The brackets mark it as a union-member tag, which error locations leave out.
    """
    from compress.data import SOURCES

    source = v.get("source", DEFAULT_DATA_SOURCE) if isinstance(v, dict) else getattr(v, "source", DEFAULT_DATA_SOURCE)
    return f"data[{source}]" if isinstance(source, str) and source in SOURCES else _UNKNOWN_SOURCE_TAG


def data_union() -> Any:
    """``data:``'s type: the union of every registered source's config class, picked by ``source``."""
    from compress.data import SOURCES

    members: list[Any] = [Annotated[src.config_class, Tag(f"data[{name}]")] for name, src in SOURCES.items()]
    members.append(SkipJsonSchema[Annotated[_UnknownDataSourceConfig, Tag(_UNKNOWN_SOURCE_TAG)]])
    return Annotated[Union[tuple(members)], Discriminator(_data_tag)]


class AccuracyGateConfig(CompressConfig):
    """Largest allowed accuracy drop of the released artifact versus the teacher (test split)."""

    max_drop: float = Field(ge=0, le=1, description="Allowed drop, as a fraction (0.01 = one point).")
    relative: bool = Field(False, description="Drop relative to the teacher's accuracy instead of absolute.")
    confidence: float | None = Field(
        None,
        gt=0.5,
        lt=1,
        description="Judge the drop's one-sided upper confidence bound at this level (e.g. 0.95) instead of "
        "the measured drop, from the paired counts of teacher and artifact on the split: passes only when "
        "the drop is within budget with that confidence. Unset: the measured drop; the report shows its "
        "95 % interval either way.",
    )


class AgreementGateConfig(CompressConfig):
    """Smallest allowed top-1 agreement between the released artifact and the teacher."""

    min: float = Field(ge=0, le=1, description="Fraction of test examples where both predict the same class.")


class LatencyBudgetConfig(CompressConfig):
    """Latency and throughput budget of the released artifact on one target and batch size."""

    batch: int = Field(ge=1, description="Batch size the budget applies to (must be among the target's batch_sizes).")
    p50_ms: float | None = Field(None, gt=0, description="Largest allowed median latency.")
    p95_ms: float | None = Field(None, gt=0, description="Largest allowed 95th-percentile latency.")
    p99_ms: float | None = Field(None, gt=0, description="Largest allowed 99th-percentile latency.")
    min_throughput: float | None = Field(None, gt=0, description="Smallest allowed examples per second.")
    min_speedup: float | None = Field(
        None,
        gt=0,
        description="Smallest allowed p95 speed-up over the teacher: the teacher's p95 divided by the "
        "artifact's, both measured in the same run on this target (same runtime, shapes and batch; the "
        "teacher in FP32). Portable across machines where absolute budgets are not.",
    )

    @model_validator(mode="after")
    def _some_budget(self) -> LatencyBudgetConfig:
        if all(v is None for v in (self.p50_ms, self.p95_ms, self.p99_ms, self.min_throughput, self.min_speedup)):
            raise ValueError("give at least one of p50_ms, p95_ms, p99_ms, min_throughput, min_speedup")
        return self


class SizeGateConfig(CompressConfig):
    """Largest allowed file size of the released artifact."""

    max_mb: float = Field(gt=0, description="Megabytes (10^6 bytes).")


class PeakMemoryGateConfig(CompressConfig):
    """Largest allowed peak memory of the released artifact on every validated target.

    ``metric: auto`` judges the GPU peak (``memory.gpu_peak_mb``) on CUDA targets and the host's
    peak resident size while loading and running the largest batch (``memory.peak_rss_mb``, the
    whole Python process) on CPU targets.
    """

    max_mb: float = Field(gt=0, description="Megabytes (10^6 bytes).")
    metric: Literal["auto", "gpu_peak_mb", "peak_rss_mb", "rss_delta_mb"] = Field(
        "auto", description="Which memory measurement to judge; auto: GPU peak on cuda, host peak RSS on cpu."
    )


class GatesConfig(CompressConfig):
    """Release gates, checked after the last stage. A gate whose metric is missing fails."""

    accuracy: AccuracyGateConfig | None = Field(None, description="Accuracy drop versus the teacher.")
    agreement: AgreementGateConfig | None = Field(None, description="Top-1 agreement with the teacher.")
    latency: dict[str, LatencyBudgetConfig] = Field(
        default_factory=dict, description="Latency budgets by deploy target name."
    )
    size: SizeGateConfig | None = Field(None, description="Artifact size.")
    peak_memory: PeakMemoryGateConfig | None = Field(
        None, description="Peak memory (GPU on cuda targets, host RSS on cpu targets)."
    )


class TrackingConfig(CompressConfig):
    """Experiment tracking of a run (optional; off when ``tracking:`` is absent).

    Shorthand ``tracking: mlflow`` or ``tracking: tensorboard``. MLflow logs to an embedded SQLite
    store under the run directory unless ``uri`` names another; TensorBoard writes event files under
    ``<run_dir>/tensorboard`` unless ``uri`` names another folder. See ``compress.tracking``.
    """

    backend: str = Field(description="Tracking backend: mlflow or tensorboard.")
    uri: str | None = Field(
        None,
        description="mlflow: tracking URI (null: embedded SQLite store in <run_dir>/mlflow); "
        "tensorboard: log folder (null: <run_dir>/tensorboard).",
    )
    experiment: str | None = Field(None, description="MLflow experiment name (null: the pipeline's name).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"backend": data} if isinstance(data, str) else data

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from compress._utils.registry import did_you_mean
        from compress.tracking import TRACKERS

        if v not in TRACKERS:
            names = TRACKERS.names()
            raise ValueError(f"unknown tracking backend '{v}'{did_you_mean(v, names)}; valid: {', '.join(names)}")
        return v


class TargetConfig(CompressConfig):
    """A deploy target: where and how an artifact runs and is timed (``deploy/<name>.yaml``)."""

    name: str = Field(description="Target name; equals the file stem.")
    description: str = Field("", description="One line for `compress targets`.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device kind.")
    gpu: str | None = Field(None, description="GPU model this target's budgets assume (e.g. 'H100').")
    runtime: str = Field(description="Registered runtime (see `compress list runtimes`).")
    precision: str = Field("fp32", description="Precision of the deployed artifact.")
    artifact: str = Field(description="Export artifact this target deploys, e.g. 'onnx-int8-u8'.")
    threads: int | None = Field(None, ge=1, description="Intra-op threads for CPU runtimes.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1, description="Batch sizes timed.")
    sequence_length: int | None = Field(
        None,
        ge=1,
        description=(
            "Token length the latency is timed at (token-id inputs only; null: the data's length). Inputs are "
            "padded with the model's pad id or truncated to this length; accuracy and agreement are always "
            "measured on the split as tokenised. Ignored, with a note in the target's metrics, for image inputs."
        ),
    )
    warmup: int = Field(20, ge=0, description="Untimed runs before timing.")
    iterations: int = Field(200, ge=1, description="Timed runs per batch size.")
    repeats: int = Field(1, ge=1, le=10, description="Independent timing repetitions (run-to-run spread).")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be >= 1, got {v}")
        return v


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PipelineConfigBase(CompressConfig):
    """Fields of a pipeline file other than ``stages`` (see ``pipeline_model()``)."""

    schema_version: Literal[1] = Field(1, description="Pipeline schema version.")
    name: str = Field(description="Run name; default run directory is runs/<name>/.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for splits, initialisation and shuffling.")
    teacher: ModelSourceConfig = Field(description="The trained model to compress.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="How distill builds the student.")
    data: DataConfig = Field(default_factory=DataConfig, description="Task data.")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="Release gates.")
    tracking: TrackingConfig | None = Field(
        None, description="Experiment tracking (mlflow or tensorboard); null: off."
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            shown = v if len(v) <= 40 else v[:37] + "..."
            raise ValueError(
                f"name '{shown}' must be 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        return v


def _stage_tag(v: Any) -> str | None:
    if isinstance(v, dict) and len(v) == 1:
        return next(iter(v))
    if hasattr(v, "kind"):
        return v.kind  # type: ignore[no-any-return]
    return None


@lru_cache(maxsize=1)
def pipeline_model() -> type[PipelineConfigBase]:
    """The full pipeline model: ``stages`` and ``data`` typed as unions over the stage and data-source registries."""
    from compress.stages import STAGES

    entries = []
    for name, stage_cls in STAGES.items():
        # a stage called e.g. `validate` would shadow BaseModel.validate: store it under `validate_`
        field_name = f"{name}_" if hasattr(BaseModel, name) else name
        entry = create_model(
            f"{stage_cls.__name__}Entry",
            __base__=CompressConfig,
            **{field_name: (stage_cls.config_class, Field(alias=name, description=stage_cls.description))},
        )
        entry.kind = property(lambda self, _n=name: _n)  # type: ignore[attr-defined]
        entry.config = property(lambda self, _f=field_name: getattr(self, _f))  # type: ignore[attr-defined]
        entries.append(Annotated[entry, Tag(name)])
    stage_union = Annotated[Union[tuple(entries)], Discriminator(_stage_tag)]  # type: ignore[valid-type]
    from compress.data import SOURCES

    return create_model(
        "PipelineConfig",
        __base__=PipelineConfigBase,
        data=(
            data_union(),
            Field(
                default_factory=lambda: SOURCES.get(DEFAULT_DATA_SOURCE).config_class(),
                description="Task data; `source` picks the data source and its keys (see `compress list sources`).",
            ),
        ),
        stages=(list[stage_union], Field(min_length=1, description="Stages, run in order.")),  # type: ignore[valid-type]
    )


PipelineConfig = PipelineConfigBase  # for type annotations; instances come from pipeline_model()
