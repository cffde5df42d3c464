"""ONNX external data: written beside the model under a relative name, atomically; escaping locations refused."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from compress.errors import BadInputError
from compress.export import export_onnx, load_onnx, parity
from compress.export.onnx import external_data_files, write_onnx
from tests._helpers.models import tiny_vit


@pytest.fixture(scope="module")
def model_and_x() -> tuple[torch.nn.Module, torch.Tensor]:
    return tiny_vit().eval(), torch.randn(16, 1, 8, 8)


def test_external_data_is_one_relative_file_in_the_folder(tmp_path: Path, model_and_x):
    model, x = model_and_x
    path = export_onnx(model, tmp_path / "model.fp32.onnx", x[:2], external_data=True)
    (data,) = external_data_files(path)
    assert data.startswith("model.fp32.onnx.") and data.endswith(".data")
    assert "/" not in data and ".." not in data
    assert (tmp_path / data).stat().st_size > 10_000
    proto = onnx.load(str(path), load_external_data=False)
    locs = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {data}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.fp32.onnx", data]
    )  # no temporaries left
    assert parity(path, model, x)["max_abs_error"] < 1e-4
    inline = export_onnx(model, tmp_path / "inline" / "model.onnx", x[:2])
    assert external_data_files(inline) == []
    # tensors of 1 KiB and more moved out of the model file
    assert path.stat().st_size < inline.stat().st_size / 2


def test_re_export_replaces_the_data_file_and_removes_the_old_one(tmp_path: Path, model_and_x):
    model, x = model_and_x
    path = export_onnx(model, tmp_path / "m.onnx", x[:2], external_data=True)
    (first,) = external_data_files(path)
    other = tiny_vit(seed=3).eval()
    export_onnx(other, path, x[:2], external_data=True)
    (second,) = external_data_files(path)
    assert first != second and not (tmp_path / first).exists() and (tmp_path / second).exists()
    assert parity(path, other, x)["max_abs_error"] < 1e-4
    export_onnx(other, path, x[:2])  # back to inline: no data file left behind
    assert external_data_files(path) == [] and not list(tmp_path.glob("m.onnx.*.data"))


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd", "sub/../../x.data"])
def test_a_crafted_escaping_location_is_refused(tmp_path: Path, model_and_x, location: str):
    model, x = model_and_x
    folder = tmp_path / "artifacts"
    path = export_onnx(model, folder / "model.onnx", x[:2], external_data=True)
    (data,) = external_data_files(path)
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (tmp_path / "outside.data").write_bytes((folder / data).read_bytes())  # the escape would even find data
    bad = folder / "evil.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(BadInputError, match="refusing to load it"):
        load_onnx(bad)
    with pytest.raises(BadInputError, match="refusing to load it"):
        parity(bad, model, x)


def test_write_onnx_inline_by_default(tmp_path: Path, model_and_x):
    model, x = model_and_x
    proto = onnx.load(str(export_onnx(model, tmp_path / "a.onnx", x[:2])))
    assert write_onnx(proto, tmp_path / "b.onnx") == {"external_data": None}
    info = write_onnx(proto, tmp_path / "c.onnx", external_data=True)
    assert info["external_data"] == external_data_files(tmp_path / "c.onnx")[0]
