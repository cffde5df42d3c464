"""tiny-vit, spec-based save/load without pickled code, checkpoint safety, MAC counting."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CheckpointError
from compress.models import build_model, load_model, model_spec, save_model
from compress.models.registry import load_checkpoint_file, load_state_dict_checked
from compress.models.stats import count_macs, count_params, count_streamed_params
from tests._helpers.models import tiny_vit


def test_forward_shape_and_spec_roundtrip(tmp_path):
    m = tiny_vit()
    x = torch.randn(3, 1, 8, 8)
    assert m(x).shape == (3, 10)
    save_model(m, tmp_path / "m.pt")
    m2 = load_model(tmp_path / "m.pt")
    assert torch.equal(m(x), m2(x))
    assert model_spec(m2) == model_spec(m)


def test_nonuniform_blocks_rebuild(tmp_path):
    m = build_model("tiny-vit", {"dim": 32, "blocks": [{"num_heads": 2, "head_dim": 8, "mlp_dim": 40}, {"num_heads": 3, "head_dim": 8, "mlp_dim": 24}]})
    save_model(m, tmp_path / "m.pt")
    m2 = load_model(tmp_path / "m.pt")
    assert model_spec(m2)["config"]["blocks"][1] == {"num_heads": 3, "head_dim": 8, "mlp_dim": 24}
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(m(x), m2(x))


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil(str(marker))}, bad)
    marker.unlink(missing_ok=True)  # saving does not create it; make sure
    with pytest.raises(CheckpointError, match="refused: the file needs code to be unpickled"):
        load_checkpoint_file(bad)
    assert not marker.exists()


def test_truncated_and_missing_checkpoints(tmp_path):
    p = tmp_path / "t.pt"
    torch.save(tiny_vit().state_dict(), p)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint_file(p)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint_file(tmp_path / "none.pt")


def test_wrong_architecture_named():
    state = tiny_vit(dim=32).state_dict()
    other = build_model("tiny-vit", {"dim": 32, "depth": 2, "num_classes": 5, "num_heads": 4, "mlp_dim": 64})
    with pytest.raises(CheckpointError, match=r"shape mismatch: head.weight: file \(10, 32\) vs model \(5, 32\)"):
        load_state_dict_checked(other, state, source="t.pt")


def test_macs_count_attention_matmuls():
    m = tiny_vit(depth=1, dim=32, num_heads=4, mlp_dim=64)
    n = 17  # 16 patches + CLS
    linear = 4 * 32 * 32 * n + 2 * 32 * 64 * n + 4 * 32 * 16 + 32 * 10  # qkvo, mlp, patch embed, head(CLS)
    attn = 2 * n * n * 32  # QK^T and PV
    assert count_macs(m, torch.randn(2, 1, 8, 8)) == linear + attn
    assert count_params(m) == sum(p.numel() for p in m.parameters())


def test_streamed_params_leave_out_lookup_tables_unless_a_dense_layer_reads_them() -> None:
    from torch import nn

    from tests._helpers.models import tiny_bert

    bert = tiny_bert(seed=0)
    tables = sum(m.weight.numel() for m in bert.modules() if isinstance(m, nn.Embedding))
    assert tables > 0
    assert count_streamed_params(bert) == count_params(bert) - tables
    assert count_streamed_params(tiny_vit()) == count_params(tiny_vit())  # no tables: every weight streams

    tied = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50, bias=False))
    tied[1].weight = tied[0].weight  # an output projection tied to the table reads it whole
    assert count_streamed_params(tied) == count_params(tied) == 400
