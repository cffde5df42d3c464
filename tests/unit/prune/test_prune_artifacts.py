"""A pruned tiny-vit survives save/load in a fresh process and ONNX export with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.export import export_onnx
from compress.prune import PruneConfig, prune_
from tests._helpers.models import logits_in_fresh_process, tiny_vit

X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def pruned() -> torch.nn.Module:
    torch.manual_seed(0)
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    prune_(m, PruneConfig(target={"macs": 0.5}, global_ranking=True), example_inputs=X)
    assert len({b.attn.num_heads for b in m.blocks} | {4}) > 1  # really pruned
    return m.eval()


def test_save_load_in_a_fresh_process_gives_identical_logits(pruned: torch.nn.Module, tmp_path: Path) -> None:
    got = logits_in_fresh_process(pruned, X, tmp_path)
    with torch.no_grad():
        expected = pruned(X)
    assert torch.equal(got, expected)


def test_onnx_export_of_the_pruned_model_matches_eager(pruned: torch.nn.Module, tmp_path: Path) -> None:
    import onnxruntime as ort

    path = export_onnx(pruned, tmp_path / "pruned.onnx", X[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input": X.numpy()})  # batch 5: dynamic batch axis
    with torch.no_grad():
        expected = pruned(X).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
