"""PruneConfig: defaults, bounds, cross-field rules, round trip; the criteria registry."""

from __future__ import annotations

import pydantic
import pytest

from compress.prune import CRITERIA, PruneConfig, list_criteria


def test_defaults_and_round_trip() -> None:
    cfg = PruneConfig(target={"macs": 0.5}, round_to=8, ignored_layers=["blocks.0.*"])
    assert (cfg.importance, cfg.iterative_steps, cfg.prune_heads, cfg.prune_ffn) == (
        "magnitude",
        3,
        True,
        True,
    )
    assert cfg.global_ranking is False
    assert PruneConfig.model_validate(cfg.model_dump()) == cfg
    assert PruneConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize("macs", [0.0, -0.1, 0.95, 1.2])
def test_target_out_of_range_is_rejected(macs: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"target\.macs"):
        PruneConfig(target={"macs": macs})


def test_target_defaults_to_half_the_macs_but_macs_is_required_when_given() -> None:
    assert PruneConfig().target.macs == 0.5
    with pytest.raises(pydantic.ValidationError, match=r"target\.macs"):
        PruneConfig(target={})


def test_nothing_to_prune_names_both_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="prune_heads and prune_ffn"):
        PruneConfig(target={"macs": 0.3}, prune_heads=False, prune_ffn=False)


def test_unknown_key_and_unknown_criterion_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="ratio"):
        PruneConfig(target={"macs": 0.3}, ratio=0.5)
    with pytest.raises(pydantic.ValidationError, match="importance"):
        PruneConfig(target={"macs": 0.3}, importance="l1")
    with pytest.raises(pydantic.ValidationError, match="ignored_layers"):
        PruneConfig(target={"macs": 0.3}, ignored_layers=[" "])


def test_every_literal_importance_is_a_registered_criterion() -> None:
    literal = PruneConfig.model_fields["importance"].annotation.__args__  # type: ignore[union-attr]
    assert sorted(literal) == list_criteria() == ["bn_scale", "head_gate", "magnitude", "taylor"]
    assert CRITERIA.get("taylor").needs_grad
    assert not CRITERIA.get("magnitude").needs_grad
    for name in literal:
        assert callable(CRITERIA.get(name).make())


def test_target_takes_exactly_one_of_macs_params_latency() -> None:
    assert PruneConfig(target={"params": 0.3}).target.metric == "params"
    lat = PruneConfig(target={"latency": {"target": "cpu-ort-fp32", "batch": 32, "p95_ms": 5}})
    assert lat.target.metric == "macs"
    assert lat.target.fraction is None
    assert PruneConfig.model_validate(lat.model_dump()) == lat
    with pytest.raises(pydantic.ValidationError, match="exactly one of target.macs, target.params"):
        PruneConfig(target={"macs": 0.3, "params": 0.3})
    with pytest.raises(pydantic.ValidationError, match=r"latency\.p95_ms"):
        PruneConfig(target={"latency": {"target": "cpu-ort", "p95_ms": -1}})


def test_layer_drop_takes_a_count_or_a_fraction() -> None:
    assert PruneConfig(layers={"drop": 2}).layers.count(6) == 2  # type: ignore[union-attr]
    assert PruneConfig(layers={"drop": 0.5}).layers.count(6) == 3  # type: ignore[union-attr]
    with pytest.raises(pydantic.ValidationError, match="whole count"):
        PruneConfig(layers={"drop": 1.5})
