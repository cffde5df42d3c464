"""The data-source mechanism: registry contract, stratified subsets, result checks, held cache writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.config.schema import DataConfig, pipeline_model
from compress.data import SOURCES, DataEnv, DataSourceError, TaskData, stratified_subset
from compress.data.base import check_task_data

# ------------------------------------------------------------------------------ registry contract


@pytest.mark.parametrize("name", SOURCES.names())
def test_every_source_declares_a_config_that_round_trips(name: str) -> None:
    src = SOURCES.get(name)
    cls = src.config_class
    assert issubclass(cls, DataConfig)
    assert cls.model_fields["source"].default == name
    assert src.description, "first docstring line feeds `compress list sources`"
    for field_name, f in cls.model_fields.items():
        assert f.description, f"{cls.__name__}.{field_name} has no description"
    required = {k: "x:y" if k == "factory" else ["a.jsonl"] if k == "path" else "r"
                for k, f in cls.model_fields.items() if f.is_required()}  # fmt: skip
    cfg = cls.model_validate({"source": name, **required})
    again = cls.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
    # the pipeline's data union picks this class by `source`
    raw = {
        "name": "t",
        "teacher": {"family": "tiny-vit"},
        "stages": [{"finetune": {}}],
        "data": cfg.model_dump(mode="json"),
    }
    assert type(pipeline_model().model_validate(raw).data) is cls


def test_register_source_refuses_a_config_of_another_name() -> None:
    from compress.data import register_source
    from compress.data.digits import DigitsDataConfig

    with pytest.raises(ValueError, match="defaults to 'digits', not the source name 'other'"):
        register_source("other", DigitsDataConfig)


def test_digits_still_loads_with_no_arguments() -> None:
    d = SOURCES.get("digits")()
    assert d.inputs.shape == (1797, 1, 8, 8) and d.num_classes == 10


# ---------------------------------------------------------------------------------- subsets


def test_subset_is_exact_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 5, 1])
    a = stratified_subset(labels, 57)
    assert len(a) == 57 and len(set(a.tolist())) == 57 and np.all(np.diff(a) > 0)
    assert np.bincount(labels[a], minlength=5).tolist() == [32, 16, 6, 2, 1]  # proportional, every class kept
    assert np.array_equal(a, stratified_subset(labels, 57))
    assert not np.array_equal(a, stratified_subset(labels, 57, seed=1))
    assert len(stratified_subset(labels, 3)) == 3
    assert np.array_equal(stratified_subset(labels, 10_000), np.arange(len(labels)))


def test_source_applies_subset_before_splitting() -> None:
    src = SOURCES.get("digits")
    d = src(src.config_class(subset=100))
    full = src()
    assert len(d.labels) == 100 and d.preprocess["subset"] == {"examples": 100, "of": 1797, "seed": 0}
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    idx = stratified_subset(full.labels.numpy(), 100)
    assert torch.equal(d.inputs, full.inputs[torch.as_tensor(idx)])
    assert torch.equal(src(src.config_class(subset=100)).labels, d.labels)  # deterministic
    assert "subset" not in src(src.config_class(subset=5000)).preprocess  # larger than the data: all of it


# ------------------------------------------------------------------------------ result checks


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ("not data", "returned str, expected a TaskData"),
        (TaskData("x", torch.zeros(3, 2), torch.zeros(3), 2, {}), "labels must be a 1-D int64 tensor"),
        (TaskData("x", torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), 2, {}), "do not match 4 labels"),
        (TaskData("x", torch.zeros(3, 2), torch.tensor([0, 1, 2]), 2, {}), "labels span 0..2, expected 0..1"),
        (TaskData("x", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 1, {}), "at least 2"),
    ],
)
def test_loader_results_are_checked(data: object, expect: str) -> None:
    with pytest.raises(DataSourceError, match=expect):
        check_task_data(data, what="data source 'x'")


def test_error_names_the_data_key() -> None:
    e = DataSourceError("/x: not found", key="root")
    assert str(e) == "data.root: /x: not found" and e.yaml_path == ("data", "root")
    assert DataSourceError("bad").yaml_path == ("data",)


# ------------------------------------------------------------------------------------- cache


def test_held_cache_writes_wait_for_flush(tmp_path) -> None:
    env = DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "cache", hold_cache_writes=True)
    env.save_cache("a.pt", {"x": torch.arange(3)})
    assert not (tmp_path / "cache").exists()
    env.flush_cache()
    assert torch.equal(torch.load(tmp_path / "cache" / "a.pt", weights_only=True)["x"], torch.arange(3))
    DataEnv(base_dir=tmp_path).save_cache("b.pt", {"x": 1})  # no cache folder: nothing happens
    assert sorted(p.name for p in tmp_path.rglob("*.pt")) == ["a.pt"]


def test_unreadable_file_is_bad_input_not_a_crash(tmp_path) -> None:
    from compress.data import DataSource
    from compress.data.digits import DigitsDataConfig

    def load(cfg: DigitsDataConfig, env: DataEnv) -> TaskData:
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.bin"))

    src = DataSource(name="locked", config_class=DigitsDataConfig, load=load, check=load)
    for fn in (lambda: src(), lambda: src.preflight(DigitsDataConfig(), DataEnv(tmp_path))):
        with pytest.raises(DataSourceError) as ei:
            fn()
        assert str(ei.value) == (
            f"data: {tmp_path / 'secret.bin'}: cannot read it (Permission denied); fix the path or its permissions"
        )
