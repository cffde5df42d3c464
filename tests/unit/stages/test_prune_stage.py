"""The prune stage end to end on a 2-block tiny-vit with KD recovery, and its config."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
import torch
from torch import nn

from compress._utils.progress import SILENT
from compress.errors import StageError
from compress.models.stats import count_macs, count_params
from compress.stages import STAGES, StageContext
from compress.stages.prune import PruneStage, PruneStageConfig
from tests._helpers.models import digits, tiny_vit


class CountingTeacher(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.counter = [0]  # a list: the distillation objective runs a deep copy, which shares it

    def __deepcopy__(self, memo: dict) -> CountingTeacher:
        import copy

        twin = CountingTeacher(copy.deepcopy(self.inner, memo))
        twin.counter = self.counter
        return twin

    @property
    def calls(self) -> int:
        return self.counter[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter[0] += 1
        return self.inner(x)


def _ctx(tmp_path: Path, model: nn.Module, teacher: nn.Module | None = None) -> StageContext:
    return StageContext(
        run_dir=tmp_path,
        stage_dir=tmp_path / "stages" / "01-prune",
        artifacts_dir=tmp_path / "artifacts",
        index=1,
        yaml_path="stages[1].prune",
        pipeline=SimpleNamespace(data=SimpleNamespace(batch_size=64, eval_batch_size=256)),  # type: ignore[arg-type]
        data=digits(tmp_path),
        teacher=teacher if teacher is not None else model,
        model=model,
        artifacts={},
        history={},
        targets={},
        seed=0,
        reporter=SILENT,
    )


def _cfg(**kw: Any) -> PruneStageConfig:
    fields: dict[str, Any] = {"target": {"macs": 0.4}, "iterative_steps": 2, "recover": {"epochs": 1}} | kw
    return PruneStageConfig(**fields)


def test_stage_is_registered_with_its_order() -> None:
    assert STAGES.get("prune") is PruneStage
    assert PruneStage.config_class is PruneStageConfig
    assert {"qat", "export", "validate"} <= PruneStage.before
    assert PruneStage.description


def test_prune_stage_end_to_end(tmp_path: Path) -> None:
    model = tiny_vit(depth=2, dim=32)
    ctx = _ctx(tmp_path, model)
    params_in = count_params(model)
    res = PruneStage().run(ctx, _cfg())
    m = res.metrics
    assert {"params_before", "params_after", "macs_before", "macs_after", "macs_removed", "steps", "blocks",
            "val_accuracy"} <= set(m)  # fmt: skip
    json.dumps(m)
    assert abs(m["macs_removed"] - 0.4) <= 0.02
    assert m["params_before"] == params_in > m["params_after"] == count_params(res.model)
    assert m["macs_after"] == count_macs(res.model, ctx.example_inputs(2))
    assert [s["step"] for s in m["steps"]] == [1, 2]
    assert all("recover_kd" in s and "recover_val_accuracy" in s for s in m["steps"])
    assert len(m["blocks"]) == 2
    assert all(b["heads"] >= 1 and b["ffn"] >= 1 for b in m["blocks"])
    assert 0.0 <= m["val_accuracy"] <= 1.0
    # The entering model is untouched; the result is a separate, smaller model.
    assert res.model is not model
    assert count_params(model) == params_in
    assert res.model(ctx.example_inputs(3)).shape == (3, 10)
    assert list(ctx.stage_dir.glob("recover-*.pt")) == []  # per-epoch checkpoints are cleaned up


def test_example_inputs_fill_a_batch_larger_than_the_split(tmp_path: Path) -> None:
    # the latency target times ctx.example_inputs(budget.batch): it must be that batch, whatever the split
    ctx = _ctx(tmp_path, tiny_vit())
    val, _ = ctx.data.tensors("val")
    big = len(val) * 2 + 3
    x = ctx.example_inputs(big)
    assert x.shape == (big, *val.shape[1:])
    torch.testing.assert_close(x[len(val) : 2 * len(val)], val)
    torch.testing.assert_close(ctx.example_inputs(3), val[:3])


@pytest.mark.parametrize(("teacher", "original_called"), [("original", True), ("previous", False)])
def test_recovery_distils_from_the_chosen_teacher(
    tmp_path: Path, teacher: str, original_called: bool
) -> None:
    model = tiny_vit(depth=2, dim=32)
    original = CountingTeacher(tiny_vit(depth=2, dim=32, seed=1))
    PruneStage().run(_ctx(tmp_path, model, original), _cfg(teacher=teacher, iterative_steps=1))
    assert (original.calls > 0) is original_called


def test_taylor_importance_in_the_stage(tmp_path: Path) -> None:
    res = PruneStage().run(
        _ctx(tmp_path, tiny_vit(depth=2, dim=32)),
        _cfg(importance="taylor", calibration_examples=128, recover={"epochs": 0}),
    )
    assert res.metrics["importance"] == "taylor"
    assert abs(res.metrics["macs_removed"] - 0.4) <= 0.02


def test_unreachable_target_is_a_stage_error_with_the_yaml_path(tmp_path: Path) -> None:
    with pytest.raises(
        StageError, match=r"stage 'prune' \(stages\[1\]\.prune\): target\.macs=0\.9 cannot be"
    ):
        PruneStage().run(_ctx(tmp_path, tiny_vit(depth=2, dim=32)), _cfg(target={"macs": 0.9}))


def test_config_fields_and_misuse() -> None:
    cfg = _cfg(recover={"epochs": 3, "train": {"lr": 5e-4}}, teacher="original", round_to=8)
    assert (cfg.recover.epochs, cfg.recover.train.lr, cfg.round_to) == (3, 5e-4, 8)
    assert PruneStageConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(pydantic.ValidationError, match=r"set recover\.epochs"):
        _cfg(recover={"train": {"epochs": 5}})
    # Generated YAML spells out train.epochs at its default: that must still validate.
    assert _cfg(recover={"train": {"epochs": 10}}).recover.epochs == 2
    with pytest.raises(pydantic.ValidationError, match="teacher"):
        _cfg(teacher="student")
    with pytest.raises(pydantic.ValidationError, match="recovery"):
        _cfg(recovery={"epochs": 1})
