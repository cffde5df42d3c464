"""first_token_last_layer: the last layer on the first token only, the same logits, only where exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compress.models import first_token_last_layer, fuse_qkv
from compress.models.first_token import FirstTokenLayer, first_token_rewritable
from compress.models.hf_attention import expose_attention
from compress.runtime.torch_compile import TorchCompileSession, inference_rewrite
from tests._helpers.models import tiny_bert


def _ids(seed: int = 0, rows: int = 4, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 100, (rows, length), generator=g)
    x[1:, 7:] = 0  # padding in all rows but the first: the mask matters
    x[2, 3:] = 0
    return x


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fused", [False, True])
def test_same_logits_with_and_without_fused_qkv(attn: str, fused: bool) -> None:
    model = tiny_bert(seed=1, num_hidden_layers=3, _attn_implementation=attn)
    model.net.config._attn_implementation = attn
    rewritten = copy.deepcopy(model)
    if fused:
        assert fuse_qkv(rewritten) == 3
    assert first_token_last_layer(rewritten)
    layers = rewritten.net.bert.encoder.layer
    assert [type(m) is FirstTokenLayer for m in layers] == [False, False, True]
    x = _ids()
    torch.testing.assert_close(_logits(rewritten, x), _logits(model, x), rtol=0, atol=2e-6)


def test_the_last_layer_really_runs_on_one_token() -> None:
    """The layer's feed-forward block sees one position per row, and that position decides the logits."""
    model = tiny_bert(seed=2)
    first_token_last_layer(model)
    seen: list[tuple[int, ...]] = []
    last = model.net.bert.encoder.layer[-1].layer
    last.intermediate.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = _ids(rows=3)
    before = _logits(model, x)
    assert seen == [(3, 1, 32)]
    with torch.no_grad():  # the pooler reads the rewritten layer's output
        last.output.LayerNorm.bias.add_(0.5)
    assert not torch.allclose(_logits(model, x), before, atol=1e-4)


def test_pruned_heads_and_ffn_keep_the_same_logits() -> None:
    from compress.prune import PruneConfig, prune_

    pruned = tiny_bert(seed=3)
    prune_(pruned, PruneConfig(target={"macs": 0.4}, iterative_steps=1), example_inputs=_ids())
    rewritten = copy.deepcopy(pruned)
    fuse_qkv(rewritten)
    assert first_token_last_layer(rewritten)
    torch.testing.assert_close(_logits(rewritten, _ids(5)), _logits(pruned, _ids(5)), rtol=0, atol=2e-6)


def test_models_whose_head_or_attention_does_not_allow_it_are_left_alone() -> None:
    from tests._helpers.models import tiny_vit

    assert not first_token_last_layer(tiny_vit())  # not a Hugging Face token classifier
    exposed = tiny_bert(seed=4)
    expose_attention(exposed)  # quantization and Teacher Intervention hook these modules
    assert not first_token_rewritable(exposed)
    no_pooler = tiny_bert(seed=4)
    no_pooler.net.bert.pooler = None
    assert not first_token_rewritable(no_pooler)
    flex = tiny_bert(seed=4)
    flex.net.config._attn_implementation = "flex_attention"  # a mask this module does not slice
    assert not first_token_rewritable(flex)
    plain = tiny_bert(seed=4)
    assert first_token_rewritable(plain)
    plain.net.bert.encoder.layer[-1].attention.self.query = torch.nn.Identity()  # not a plain projection
    assert not first_token_last_layer(plain)
    assert not any(isinstance(m, FirstTokenLayer) for m in plain.modules())


def test_the_layer_refuses_encoder_states() -> None:
    model = tiny_bert(seed=5)
    first_token_last_layer(model)
    with pytest.raises(RuntimeError, match="no encoder states"):
        model.net.bert.encoder.layer[-1](torch.zeros(1, 4, 32), None, torch.zeros(1, 4, 32))


def test_torch_compile_session_rewrites_a_copy_and_matches_eager() -> None:
    model = tiny_bert(seed=6)
    keys = set(model.state_dict())
    rewrite = inference_rewrite(model)
    assert (rewrite.fused_attentions, rewrite.first_token_only) == (2, True)
    assert rewrite.model is not model
    assert set(model.state_dict()) == keys
    x = _ids(7).numpy()
    with TorchCompileSession.load(model, threads=1) as sess:
        assert sess.first_token_only
        out = sess.run({"input": x})[0]
    np.testing.assert_allclose(out, _logits(model, torch.from_numpy(x)).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("train_mode", [False, True])
def test_a_load_holds_one_copy_of_the_model(train_mode: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session copies the caller's model once: in ``_load_impl`` (a model in training mode is copied
    there to be put in eval mode) or for the rewrites, never both; the caller's model is left as it was."""
    import compress.runtime.torch_compile as tc

    model = tiny_bert(seed=8).train(train_mode)
    keys = set(model.state_dict())
    copies: list[str] = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, torch.nn.Module) and memo is None:
            copies.append(type(obj).__name__)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    monkeypatch.setattr(tc.copy, "deepcopy", counting)
    with TorchCompileSession.load(model, threads=1) as sess:
        assert (sess.fused_attentions, sess.first_token_only) == (2, True)
    assert copies == ["SourceModel"]
    assert set(model.state_dict()) == keys
    assert model.training is train_mode
    assert inference_rewrite(model, in_place=True).model is model  # the caller asked for it: no copy


def test_runtimes_say_what_they_execute_for_the_roofline() -> None:
    from compress.models.stats import count_macs
    from compress.runtime import RUNTIMES

    model = tiny_bert(seed=9)
    x = _ids(9)
    assert RUNTIMES.get("onnxruntime").executed_model(model) is model
    assert RUNTIMES.get("torch").executed_model(model) is model
    executed = TorchCompileSession.executed_model(model)
    assert executed is not model
    assert count_macs(executed, x) < count_macs(model, x)
    torch.testing.assert_close(_logits(executed, x), _logits(model, x), rtol=0, atol=2e-6)
