"""``factory``: data from a named Python function; import and result errors name the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from compress.data import SOURCES, DataEnv, DataSourceError
from compress.data.factory import FactoryDataConfig

SRC = SOURCES.get("factory")
MOD = "tests.unit.data.formats"


def load(ref: str, tmp_path: Path, **kwargs: object):  # noqa: ANN201
    return SRC(FactoryDataConfig(factory=ref, kwargs=kwargs), DataEnv(base_dir=tmp_path))


def test_pair_of_tensors_infers_the_classes(tmp_path: Path) -> None:
    d = load(f"{MOD}:make_pair", tmp_path, n=9, classes=3, dim=5)
    assert d.inputs.shape == (9, 5) and d.num_classes == 3 and d.labels.dtype == torch.long
    assert d.preprocess["factory"] == f"{MOD}:make_pair" and d.preprocess["kwargs"] == {
        "n": 9,
        "classes": 3,
        "dim": 5,
    }


def test_task_data_is_passed_through_and_subset(tmp_path: Path) -> None:
    d = load(f"{MOD}:make_task", tmp_path)
    assert d.name == "mine" and d.input_shape == (1, 4, 4)
    d = SRC(FactoryDataConfig(factory=f"{MOD}:make_task", kwargs={"n": 20}, subset=6), DataEnv(tmp_path))
    assert torch.bincount(d.labels).tolist() == [3, 3]


@pytest.mark.parametrize(
    ("ref", "kwargs", "expect"),
    [
        (
            "nopkg_xyz.mod:fn",
            {},
            "factory 'nopkg_xyz.mod:fn': cannot import module 'nopkg_xyz.mod' (ModuleNotFoundError",
        ),
        (f"{MOD}:nope", {}, f"factory '{MOD}:nope': module '{MOD}' has no attribute 'nope'"),
        (f"{MOD}:NOT_CALLABLE", {}, "'NOT_CALLABLE' is a int, not a function"),
        (
            f"{MOD}:make_error",
            {},
            f"factory '{MOD}:make_error' raised RuntimeError: disk on fire; fix the function",
        ),
        (
            f"{MOD}:make_pair",
            {"bogus": 1},
            "raised TypeError: make_pair() got an unexpected keyword argument 'bogus'",
        ),
        (f"{MOD}:make_nothing", {}, "returned NoneType; expected a TaskData or (inputs, labels) tensors"),
        (
            f"{MOD}:make_float_labels",
            {},
            "returned labels of shape (4,) torch.float32; expected a non-empty 1-D integer",
        ),
    ],
)
def test_factory_errors_name_the_factory(tmp_path: Path, ref: str, kwargs: dict, expect: str) -> None:
    with pytest.raises(DataSourceError) as ei:
        load(ref, tmp_path, **kwargs)
    assert str(ei.value).startswith("data.factory: ") and expect in str(ei.value), str(ei.value)


def test_result_shape_is_checked(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"inputs of shape \(4, 2\) do not match 3 labels"):
        load(f"{MOD}:make_mismatch", tmp_path)


def test_preflight_imports_without_calling(tmp_path: Path) -> None:
    SRC.preflight(FactoryDataConfig(factory=f"{MOD}:make_error"), DataEnv(tmp_path))  # not called: no error
    with pytest.raises(DataSourceError, match="cannot import module"):
        SRC.preflight(FactoryDataConfig(factory="nopkg_xyz:fn"), DataEnv(tmp_path))


@pytest.mark.parametrize("ref", ["os.system", "a:b:c", "a; rm -rf /:x", "mod:fn()", ":fn"])
def test_reference_must_be_module_colon_function(ref: str) -> None:
    with pytest.raises(ValidationError, match="is not 'package.module:function'"):
        FactoryDataConfig(factory=ref)
