"""Feature layouts find the layers, heads, embedding and padding mask of real architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.distill.features import Tap, capture_features
from compress.distill.layouts import FEATURE_LAYOUTS, find_layout, glob_layout, unwrap
from compress.distill.losses import attention_scores
from tests._helpers.models import tiny_vit


def _qkv(model: nn.Module, x: torch.Tensor, layer: int = 1):
    layout = find_layout(model)
    att = layout.layers[layer - 1].attention
    with capture_features(model, att.taps) as feats:
        model(x)
    return att.split(dict(feats), att.heads)


def test_every_registered_layout_is_shipped():
    assert FEATURE_LAYOUTS.names() == ["hf-bert", "resnet", "timm-vit", "tiny-vit"]


def test_tiny_vit_layout():
    m = tiny_vit(depth=3, num_heads=4)
    lay = find_layout(m)
    assert lay.name == "tiny-vit" and lay.num_layers == 3 and lay.has_attention
    assert [la.attention.heads for la in lay.layers] == [4, 4, 4]
    assert lay.embedding.module == "blocks.0" and lay.embedding.side == "input"
    assert lay.hidden_indices() == [0, 1, 2, 3] and lay.hidden_tap(2).module == "blocks.1"
    q, k, v = _qkv(m, torch.randn(2, 1, 8, 8))
    assert q.shape == k.shape == v.shape == (2, 4, 17, 8)


def test_tiny_vit_layout_gives_the_model_own_probabilities():
    m = tiny_vit().eval()
    x = torch.randn(2, 1, 8, 8)
    q, k, _ = _qkv(m, x)
    with capture_features(m, {"p": Tap("blocks.0.attn.softmax")}) as f:
        m(x)
    assert torch.allclose(attention_scores(q, k).softmax(-1), f["p"], atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_bert_layout_at_a_prefix(bert, tokens, attn):
    m = bert(layers=2, heads=4, attn=attn).eval()
    lay = find_layout(m)
    assert lay.name == "hf-bert" and lay.num_layers == 2
    assert [la.attention.heads for la in lay.layers] == [4, 4]
    assert lay.embedding.module == "net.bert.embeddings"
    assert lay.layers[1].hidden.module == "net.bert.encoder.layer.1"
    mask = lay.key_mask(m, tokens)
    assert mask.tolist()[0] == [True] * 4 + [False] * 3
    m.pad_token_id = 5  # the wrapper's attribute decides the padding id
    assert not lay.key_mask(m, torch.full((1, 3), 5))[0].any()


def test_hf_bert_probabilities_match_eager_attention(bert, tokens):
    m = bert(layers=2, heads=4, attn="eager").eval()
    q, k, _ = _qkv(m, tokens, layer=2)
    mask = find_layout(m).key_mask(m, tokens)
    with torch.no_grad():
        out = m.net(input_ids=tokens, attention_mask=mask.long(), output_attentions=True)
    probs = attention_scores(q, k, mask).softmax(-1)
    assert torch.allclose(probs, out.attentions[1], atol=1e-5)


def test_timm_vit_layout_splits_the_fused_qkv(vit):
    m = vit(depth=2).eval()
    lay = find_layout(m)
    assert lay.name == "timm-vit" and lay.num_layers == 2
    assert [la.attention.heads for la in lay.layers] == [3, 3]
    assert lay.key_mask is None and lay.embedding.module == "blocks.0"
    x = torch.randn(2, 3, 32, 32)
    q, k, v = _qkv(m, x, layer=2)
    assert q.shape == (2, 3, 17, 64)
    with capture_features(m, {"out": Tap("blocks.1.attn.norm")}) as f:
        m(x)
    # probs·V from our Q/K/V equals timm's own (fused) attention output before the projection
    ctx = (attention_scores(q, k).softmax(-1) @ v).transpose(1, 2).reshape(2, 17, -1)
    assert torch.allclose(ctx, f["out"], atol=1e-5)


def test_resnet_layout_has_four_stages_and_no_attention(resnet):
    m = resnet()
    lay = find_layout(m)
    assert lay.name == "resnet" and lay.num_layers == 4 and not lay.has_attention
    assert [la.hidden.module for la in lay.layers] == ["layer1", "layer2", "layer3", "layer4"]
    assert lay.embedding.module == "layer1" and lay.embedding.side == "input"


def test_layouts_are_found_through_wrappers_at_any_prefix(resnet):
    outer = nn.Module()
    outer.net = resnet()
    lay = find_layout(outer)
    assert lay.layers[0].hidden.module == "net.layer1"
    compiled_like = nn.Module()
    compiled_like._orig_mod = outer
    assert unwrap(compiled_like) is outer


def test_unknown_architecture_has_no_layout():
    assert find_layout(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) is None


def test_glob_layout_keeps_outermost_matches_in_module_order(resnet):
    m = resnet()
    lay = glob_layout(m, "layer*", base=find_layout(m))
    assert [la.hidden.module for la in lay.layers] == ["layer1", "layer2", "layer3", "layer4"]
    assert lay.embedding is None and lay.hidden_indices() == [1, 2, 3, 4]
    with pytest.raises(LookupError, match=r"no module matches 'lyr\*'; some module names: .*layer1"):
        glob_layout(m, "lyr*")


def test_glob_on_bert_layers_keeps_attention_and_mask(bert):
    m = bert(layers=2)
    lay = glob_layout(m, "net.bert.encoder.layer.*", base=find_layout(m))
    assert lay.num_layers == 2 and lay.has_attention and lay.key_mask is not None


class _Layer(nn.Module):
    def __init__(self, dim: int = 8, n_heads: int = 2) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.wv(x) * self.wq(x).sigmoid() + self.wk(x)


class _Encoder(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer() for _ in range(depth))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(1))


@pytest.fixture
def my_encoder_layout():
    """The finder of docs/distillation.md ("Adding a layout"), registered for one test."""
    from compress.distill.layouts import AttentionTaps, FeatureLayout, LayerTaps

    @FEATURE_LAYOUTS.register("my-encoder")
    def _my_encoder(model):
        layers = getattr(model, "layers", None)
        if layers is None or not all(hasattr(layer, "wq") for layer in layers):
            return None
        return FeatureLayout(
            "my-encoder",
            tuple(
                LayerTaps(
                    Tap(f"layers.{i}"),
                    AttentionTaps(
                        {"q": Tap(f"layers.{i}.wq"), "k": Tap(f"layers.{i}.wk"), "v": Tap(f"layers.{i}.wv")},
                        heads=layer.n_heads,
                    ),
                )
                for i, layer in enumerate(layers)
            ),
            embedding=Tap("layers.0", "input"),
        )

    yield
    FEATURE_LAYOUTS._items.pop("my-encoder")


def test_a_registered_layout_enables_every_term(my_encoder_layout):
    from compress.distill import DistillObjective, LossesConfig

    teacher, student = _Encoder(4), _Encoder(2)
    x = torch.randn(2, 5, 8)
    losses = LossesConfig.model_validate({"hidden": {}, "attention_scores": {}, "minilm": {}, "minilmv2": {}})
    obj = DistillObjective(teacher, losses, student=student, example_inputs=x)
    assert obj.describe()["attention_score_pairs"] == [[1, 2], [2, 4]]
    loss, terms = obj(student, x, torch.tensor([0, 1]))
    loss.backward()
    assert set(terms) == {"kd", "ce", "hidden", "attention_scores", "minilm", "minilmv2"}
    assert student.layers[0].wq.weight.grad is not None
