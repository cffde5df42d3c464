"""The stage contract: what a stage declares, what it receives, what it returns.

A stage is one module in ``compress/stages/`` holding a ``StageConfig``
subclass and a ``Stage`` subclass registered in ``STAGES`` under its YAML key
(``distill``, ``prune``, ...). The runner builds the pipeline schema from the
registry, checks ordering from the declared ``requires``/``before`` sets,
calls ``run(ctx, cfg)`` and handles caching, saving, metrics and the manifest
generically. The runner never branches on a stage's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from compress._utils.progress import Reporter
from compress._utils.registry import Registry
from compress.config.base import CompressConfig
from compress.data.base import TaskData

if TYPE_CHECKING:
    from compress.config.schema import PipelineConfig, TargetConfig


class StageConfig(CompressConfig):
    """Base of every stage's config (the mapping under the stage's YAML key)."""


@dataclass
class Artifact:
    """A deployable file produced by a stage.

    Attributes:
        name: Registry-style key, e.g. ``onnx-int8-u8``; unique within a run.
        path: Path relative to the run directory.
        format: ``onnx``, ``tensorrt``, ``torch``...
        precision: ``fp32``, ``fp16``, ``int8``, ``int4``...
        meta: Anything else worth recording (parity, opset, flavour).
    """

    name: str
    path: str
    format: str
    precision: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the manifest."""
        return {"name": self.name, "path": self.path, "format": self.format, "precision": self.precision, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        """Inverse of ``to_dict``."""
        return cls(name=d["name"], path=d["path"], format=d["format"], precision=d["precision"], meta=d.get("meta", {}))


@dataclass
class StageContext:
    """Everything a stage may use. Stages read it; they return changes in a ``StageResult``.

    Attributes:
        run_dir: The run directory.
        stage_dir: This stage's own folder (``stages/NN-kind/``), for checkpoints and files.
        artifacts_dir: ``run_dir/artifacts``, where deployable files go.
        index: Position of the stage in ``stages:``.
        yaml_path: ``stages[i].kind``, for error messages.
        pipeline: The whole validated pipeline config.
        data: Task data with the run's splits attached.
        teacher: The pipeline's full-precision teacher (eval mode). Do not modify.
        model: The model entering this stage (the previous stage's output). Stages that
            change it should work on it directly or on a copy and return it.
        artifacts: Artifacts produced by earlier stages, by name.
        history: Metrics of earlier stages, by stage id (``02-prune``).
        targets: Deploy targets by name (loaded from ``deploy/``).
        seed: The pipeline seed combined with the stage index.
        reporter: Progress and summary output.
        load_data: ``load_data(data_config, yaml_path)``: another data set for this stage (its split
            stored in the stage folder), e.g. general data for a first distillation stage.
        load_model: ``load_model(model_source_config, yaml_path)``: a model from a model-source
            config (e.g. a stage's own teacher), checkpoint loaded, checked on the pipeline's data.
    """

    run_dir: Path
    stage_dir: Path
    artifacts_dir: Path
    index: int
    yaml_path: str
    pipeline: PipelineConfig
    data: TaskData
    teacher: nn.Module
    model: nn.Module
    artifacts: dict[str, Artifact]
    history: dict[str, dict[str, Any]]
    targets: dict[str, TargetConfig]
    seed: int
    reporter: Reporter
    load_data: Callable[[Any, tuple[str | int, ...]], TaskData] | None = None
    load_model: Callable[[Any, tuple[str | int, ...]], nn.Module] | None = None

    @property
    def batch_size(self) -> int:
        """The data section's training batch size."""
        return self.pipeline.data.batch_size

    def example_inputs(self, batch: int = 2):  # noqa: ANN201  (torch.Tensor)
        """Exactly ``batch`` real inputs from the validation split (tracing, calibration, timing).

        A split smaller than ``batch`` is repeated, so a latency measured on this batch is measured at the
        batch size asked for (the prune stage's latency target), not silently at the split's size.
        """
        x, _ = self.data.tensors("val")
        if 0 < len(x) < batch:
            x = x.repeat(-(-batch // len(x)), *([1] * (x.dim() - 1)))
        return x[:batch]

    def evaluate(self, model: nn.Module, split: str = "val", *, data: TaskData | None = None) -> dict[str, float]:
        """Accuracy and loss of ``model`` on ``split`` (of ``data``, default the pipeline's) at the eval batch size."""
        from compress.train import evaluate

        return evaluate(model, data or self.data, split, batch_size=self.pipeline.data.eval_batch_size)

    def fit(
        self,
        model: nn.Module,
        loss_fn: Any,
        train: Any,
        *,
        label: str,
        checkpoint: str = "train.ckpt",
        seed_offset: int = 0,
        epochs: int | None = None,
        data: TaskData | None = None,
        **fit_options: Any,
    ) -> Any:
        """``compress.train.fit`` with this stage's data, batch size, seed, checkpoint file, val
        evaluation and progress bar: the one way a stage trains.

        Args:
            model: Trained in place.
            loss_fn: ``loss_fn(model, x, y) -> (loss, terms)``.
            train: The stage's ``TrainConfig``.
            label: Progress label after the stage number (``distill``, ``prune recover 1/2``).
            checkpoint: File name in the stage folder for the per-epoch checkpoint (resume).
            seed_offset: Added to the stage seed (different shuffles for repeated fits).
            epochs: Overrides ``train.epochs``.
            data: Train (and evaluate) on this data instead of the pipeline's (``load_data``).
            **fit_options: Further ``compress.train.fit`` keywords (``max_steps``, ``before_step``...).

        Returns:
            The ``FitResult``.
        """
        from compress.train import fit

        return fit(
            model,
            loss_fn,
            data or self.data,
            train,
            batch_size=self.batch_size,
            seed=self.seed + seed_offset,
            checkpoint=self.stage_dir / checkpoint,
            eval_fn=(lambda m: self.evaluate(m, data=data)) if data is not None else self.evaluate,
            reporter=self.reporter,
            description=f"[{self.index + 1}] {label}",
            epochs=epochs,
            **fit_options,
        )


@dataclass
class StageResult:
    """What a stage hands back to the runner.

    Attributes:
        model: The new current model (``None``: unchanged). Saved by the runner as spec + state dict.
        teacher: Replaces the pipeline's teacher for later stages (``finetune`` uses this).
        artifacts: Deployable files written by the stage (already on disk).
        metrics: JSON-able metrics, recorded in the manifest and metrics.json.
    """

    model: nn.Module | None = None
    teacher: nn.Module | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """A pipeline stage. Subclasses set the class attributes and implement ``run``.

    Attributes:
        name: YAML key and registry name.
        config_class: The pydantic model for the stage's mapping.
        requires: Kinds of which at least one instance must come earlier in ``stages:``.
        before: Kinds that must not come earlier than this stage.
        max_count: How often the stage may appear (``None``: unlimited).
        description: One line for ``compress list stages``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StageConfig]]
    requires: ClassVar[frozenset[str]] = frozenset()
    before: ClassVar[frozenset[str]] = frozenset()
    max_count: ClassVar[int | None] = None
    description: ClassVar[str] = ""

    @classmethod
    def check_order(cls, cfg: Any, earlier: list[tuple[str, Any]]) -> list[str]:
        """Extra ordering checks needing the configs; return problems as sentences.

        Args:
            cfg: This stage's config.
            earlier: ``(kind, config)`` of every stage before this one.
        """
        return []

    @classmethod
    def check_data(cls, cfg: Any, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """Checks of this stage's config against the pipeline's ``data:`` config, before any work.

        Args:
            cfg: This stage's config.
            data: The pipeline's data config (a ``DataConfig``; ``input_kind`` says what its inputs are).

        Returns:
            ``(path inside this stage's mapping, problem)`` pairs, e.g. ``(("augment",), "...")``.
        """
        return []

    @classmethod
    def missing_dependencies(cls, cfg: Any) -> list[str]:
        """Optional packages this stage needs for ``cfg`` that are not installed (each with the install command).

        Checked by ``load_config`` so ``compress validate`` and ``compress run`` fail before any work (exit 2).
        """
        return []

    @abstractmethod
    def run(self, ctx: StageContext, cfg: Any) -> StageResult:
        """Do the stage's work and return its result."""


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: register a ``Stage`` subclass under ``cls.name``."""
    STAGES.register(cls.name)(cls)
    return cls
