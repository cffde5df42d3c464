"""fuse_qkv: one QKV projection per BERT-family self-attention, the same function, only where exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compress.models import fuse_qkv
from compress.models.fused_qkv import FusedQKVSelfAttention
from compress.models.hf_attention import expose_attention
from compress.runtime.torch_compile import TorchCompileSession, inference_rewrite
from tests._helpers.models import tiny_bert


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 100, (3, 12), generator=g)
    x[1:, 7:] = 0  # padding in two rows: the attention mask matters
    return x


def test_fused_model_computes_the_same_logits() -> None:
    model = tiny_bert(seed=1)
    fused = copy.deepcopy(model)
    assert fuse_qkv(fused) == 2
    kinds = [type(m) for n, m in fused.named_modules() if n.endswith("attention.self")]
    assert kinds == [FusedQKVSelfAttention, FusedQKVSelfAttention]
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-6)


def test_fused_weights_are_the_three_projections_stacked() -> None:
    model = tiny_bert(seed=2)
    fused = copy.deepcopy(model)
    fuse_qkv(fused)
    sa = model.net.bert.encoder.layer[0].attention.self
    qkv = fused.net.bert.encoder.layer[0].attention.self.qkv
    torch.testing.assert_close(qkv.weight, torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))
    torch.testing.assert_close(qkv.bias, torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]))
    # the fused layer is used: changing its value rows changes the logits
    with torch.no_grad():
        qkv.weight[-8:].mul_(3.0)
        assert not torch.allclose(fused(_ids()), model(_ids()), atol=1e-4)


def test_pruned_heads_fuse_with_their_own_widths() -> None:
    """A pruned layer has fewer heads than the config says; the split follows the projections."""
    from compress.prune import PruneConfig, prune_

    pruned = tiny_bert(seed=3)
    prune_(
        pruned, PruneConfig(target={"macs": 0.249}, prune_ffn=False, iterative_steps=1), example_inputs=_ids()
    )
    fused = copy.deepcopy(pruned)
    assert fuse_qkv(fused) == 2
    widths = [m.split for n, m in fused.named_modules() if n.endswith("attention.self")]
    assert all(w[0] == w[1] == w[2] for w in widths)
    assert any(w[0] < 32 for w in widths)
    with torch.no_grad():
        torch.testing.assert_close(fused(_ids()), pruned(_ids()), rtol=0, atol=1e-6)


def test_training_mode_and_gradients_follow_the_fused_layer() -> None:
    model = tiny_bert(seed=4).train()
    fuse_qkv(model)
    sa = model.net.bert.encoder.layer[0].attention.self
    assert sa.training
    model(_ids()).sum().backward()
    assert sa.qkv.weight.grad is not None
    assert sa.qkv.weight.grad.abs().sum() > 0


def test_exposed_and_quantized_attention_is_left_alone() -> None:
    exposed = tiny_bert(seed=5)
    expose_attention(exposed)
    assert fuse_qkv(exposed) == 0

    class FakeQuantLinear(nn.Linear):  # a subclass: its forward may not be a plain product
        pass

    model = tiny_bert(seed=5)
    sa = model.net.bert.encoder.layer[1].attention.self
    q = FakeQuantLinear(sa.query.in_features, sa.query.out_features)
    q.load_state_dict(sa.query.state_dict())
    sa.query = q
    assert fuse_qkv(model) == 1  # layer 0 only
    assert isinstance(model.net.bert.encoder.layer[1].attention.self.query, FakeQuantLinear)


def test_models_without_bert_attention_are_unchanged() -> None:
    from tests._helpers.models import tiny_vit

    vit = tiny_vit()
    assert fuse_qkv(vit) == 0
    rewrite = inference_rewrite(vit)
    assert rewrite.model is vit
    assert (rewrite.fused_attentions, rewrite.first_token_only) == (0, False)


def test_fused_forward_refuses_a_decoder_cache() -> None:
    model = tiny_bert(seed=6)
    fuse_qkv(model)
    sa = model.net.bert.encoder.layer[0].attention.self
    with pytest.raises(RuntimeError, match="no key/value cache"):
        sa(torch.zeros(1, 4, 32), past_key_values=object())


def test_torch_compile_session_fuses_a_copy_and_matches_eager() -> None:
    model = tiny_bert(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _ids(1).numpy()
    with TorchCompileSession.load(model, threads=1) as sess:
        assert sess.fused_attentions == 2
        out = sess.run({"input": x})[0]
    # the caller's model keeps its three projections and its weights
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_a_copy_of_a_fused_model_uses_transformers_own_attention_registry() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fused = tiny_bert(seed=8)
    fuse_qkv(fused)
    again = copy.deepcopy(fused)
    sa = again.net.bert.encoder.layer[0].attention.self
    assert sa._functions is ALL_ATTENTION_FUNCTIONS
    with torch.no_grad():
        torch.testing.assert_close(again(_ids()), fused(_ids()), rtol=0, atol=0)
