"""parity() and check_parity(): numbers for faithful and unfaithful files, errors, tolerance sentences."""

from __future__ import annotations

import pytest
import torch

from compress.errors import ExportError
from compress.export import ParityToleranceConfig, check_parity, export_onnx, parity
from compress.export.parity import PARITY_KEYS
from tests._helpers.models import tiny_vit


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("parity")
    model = tiny_vit().eval()
    path = export_onnx(model, root / "m.onnx", torch.randn(2, 1, 8, 8))
    return model, path


def test_fp32_export_matches_its_model(fp32):
    model, path = fp32
    x = torch.randn(37, 1, 8, 8)
    for level in ("basic", "all"):
        p = parity(path, model, x, batch_size=16, graph_optimization=level, threads=2)
        assert tuple(p) == PARITY_KEYS
        assert p["n"] == 37
        assert p["max_abs_error"] < 1e-4
        assert p["mean_abs_error"] <= p["max_abs_error"]
        assert p["top1_agreement"] == 1.0
        assert p["cosine"] == pytest.approx(1.0, abs=1e-9)
        assert check_parity(p, ParityToleranceConfig(max_abs_error=1e-4, min_top1_agreement=0.999)) == []


def test_parity_exposes_a_different_model(fp32):
    _, path = fp32
    other = tiny_vit(seed=3).eval()
    p = parity(path, other, torch.randn(64, 1, 8, 8), batch_size=64)
    assert p["max_abs_error"] > 1e-2
    assert p["cosine"] < 0.99
    problems = check_parity(p, ParityToleranceConfig(max_abs_error=1e-4, min_cosine=0.999))
    assert len(problems) == 2
    assert problems[0].startswith("max_abs_error")
    assert problems[1].startswith("cosine")


def test_check_parity_agreement_sentence():
    p = {"max_abs_error": 0.0, "top1_agreement": 0.5, "cosine": 1.0}
    assert check_parity(p, ParityToleranceConfig(min_top1_agreement=0.98)) == ["top1_agreement 0.5 < 0.98"]
    assert check_parity(p, ParityToleranceConfig()) == []


def test_parity_errors_name_the_file(fp32, tmp_path):
    model, path = fp32
    with pytest.raises(ExportError, match="no inputs"):
        parity(path, model, torch.empty(0, 1, 8, 8))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="bad.onnx"):
        parity(bad, model, torch.randn(2, 1, 8, 8))
    with pytest.raises(ExportError, match="failed to run"):
        parity(path, model, torch.randn(2, 1, 4, 4))
