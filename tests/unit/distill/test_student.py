"""Students from teachers: depth (keep-list, every-other, first-k) and width (channels, heads, FFN)."""

from __future__ import annotations

import pytest
import torch

from compress.config.schema import StudentConfig
from compress.distill.student import build_student, layer_stack
from compress.models import build_model, load_model, save_model
from tests._helpers.models import TINY_BERT

BERT = {**TINY_BERT, "num_hidden_layers": 4}


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return build_model("hf", {"hf_config": BERT, "num_labels": 5}).eval()


def _ids():
    ids = torch.randint(1, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 9:] = 0
    return ids


def _student(teacher, ex=None, **spec):
    return build_student(teacher, StudentConfig.model_validate(spec), ex).eval()


@pytest.mark.parametrize(
    ("spec", "kept"),
    [({"keep_layers": "every_other"}, [0, 2]), ({"num_layers": 3}, [0, 1, 2]), ({"keep_layers": [3, 1]}, [3, 1])],
)
def test_depth_students_start_from_the_kept_teacher_layers(bert, spec, kept, tmp_path):
    s = _student(bert, **spec)
    layers = s.net.bert.encoder.layer
    assert len(layers) == len(kept) == s.net.config.num_hidden_layers
    for j, i in enumerate(kept):
        a, b = layers[j].state_dict(), bert.net.bert.encoder.layer[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(s.net.classifier.weight, bert.net.classifier.weight)
    assert len(bert.net.bert.encoder.layer) == 4  # the teacher is untouched
    save_model(s, tmp_path / "s.pt")
    torch.testing.assert_close(load_model(tmp_path / "s.pt").eval()(_ids()), s(_ids()))


def test_heads_and_ffn_width_keep_whole_heads(bert, tmp_path):
    s = _student(bert, _ids(), heads=2, ffn=24)
    for layer in s.net.bert.encoder.layer:
        att = layer.attention.self
        assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (2, 8, 16)
        assert layer.intermediate.dense.out_features == 24
    assert s.net.config.num_attention_heads == 2
    assert s(_ids()).shape == (3, 5)
    save_model(s, tmp_path / "s.pt")
    torch.testing.assert_close(load_model(tmp_path / "s.pt").eval()(_ids()), s(_ids()))


def test_too_many_heads_is_an_error(bert):
    with pytest.raises(ValueError, match="heads 8 is more than the 4 heads"):
        _student(bert, _ids(), heads=8)


def test_resnet_width_keeps_teacher_filters(tmp_path):
    torch.manual_seed(0)
    t = build_model("torchvision", {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"}).eval()
    x = torch.randn(2, 1, 16, 16)
    s = _student(t, x, width=0.5, round_to=8)
    assert s.net.conv1.out_channels == 32 and s.net.layer4[1].conv2.out_channels == 256
    assert s.net.fc.out_features == 10  # the classifier's outputs are never pruned
    # every kept first-layer filter is one of the teacher's (initialised from its channels)
    tw, sw = t.net.conv1.weight.flatten(1), s.net.conv1.weight.flatten(1)
    assert all(any(torch.equal(f, g) for g in tw) for f in sw)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.2 < params(s) / params(t) < 0.3
    save_model(s, tmp_path / "s.pt")
    torch.testing.assert_close(load_model(tmp_path / "s.pt").eval()(x), s(x))


def test_depth_on_a_cnn_says_what_to_do_instead():
    t = build_model("torchvision", {"arch": "resnet18", "num_classes": 10})
    with pytest.raises(ValueError, match="no stack of repeated layers.*use width"):
        _student(t, keep_layers=[0])


def test_layer_stack_of_builtin_and_timm():
    assert layer_stack(build_model("tiny-vit", {"dim": 16, "depth": 3}))[0] == "blocks"
    vit = build_model(
        "timm", {"arch": "vit_tiny_patch16_224", "num_classes": 10, "kwargs": {"img_size": 32, "patch_size": 8, "depth": 3}}
    )
    name, stack = layer_stack(vit)
    assert name == "net.blocks" and len(stack) == 3
    s = _student(vit, keep_layers=[0, 2])
    assert len(s.net.blocks) == 2 and s(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_random_init_keeps_the_architecture_not_the_weights(bert):
    s = _student(bert, keep_layers=[0, 2], init="random")
    assert len(s.net.bert.encoder.layer) == 2
    assert not torch.equal(s.net.bert.encoder.layer[0].attention.self.query.weight,
                           bert.net.bert.encoder.layer[0].attention.self.query.weight)
    assert s(_ids()).shape == (3, 5)


def test_hidden_width_narrows_the_residual_stream(bert, tmp_path):
    s = _student(bert, _ids(), hidden=16, heads=2)
    emb = s.net.bert.embeddings
    assert emb.word_embeddings.embedding_dim == 16 and emb.LayerNorm.normalized_shape == (16,)
    layer = s.net.bert.encoder.layer[0]
    assert layer.attention.self.query.in_features == 16 and layer.attention.self.num_attention_heads == 2
    assert layer.output.dense.out_features == 16
    assert s(_ids()).shape == (3, 5)
    save_model(s, tmp_path / "s.pt")
    torch.testing.assert_close(load_model(tmp_path / "s.pt").eval()(_ids()), s(_ids()))
    with pytest.raises(ValueError, match="no word embeddings .* or patch embedding"):
        _student(build_model("factory", {"factory": f"{__name__}:_mlp"}), torch.zeros(1, 1, 8, 8), hidden=8, heads=1)


def _mlp():
    from torch import nn

    class WithHeads(nn.Module):  # an attention-like module without an embedding: hidden cannot apply
        def __init__(self):
            super().__init__()
            self.num_heads = 2
            self.q, self.k, self.v = nn.Linear(64, 8), nn.Linear(64, 8), nn.Linear(64, 8)
            self.out = nn.Linear(8, 10)

        def forward(self, x):
            x = x.flatten(1)
            return self.out(self.q(x) + self.k(x) + self.v(x))

    return WithHeads()


@pytest.mark.parametrize("family", ["tiny-vit", "timm"])
def test_vit_students_narrow_heads_ffn_and_hidden(family, tmp_path):
    torch.manual_seed(0)
    if family == "tiny-vit":
        t, x = build_model("tiny-vit", {"dim": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64}), torch.randn(2, 1, 8, 8)
    else:
        t = build_model(
            "timm",
            {"arch": "vit_tiny_patch16_224", "num_classes": 10, "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}},
        )
        x = torch.randn(2, 3, 32, 32)
    t.eval()
    s = _student(t, x, heads=2, ffn=16, hidden=16)
    blocks = s.blocks if family == "tiny-vit" else s.net.blocks
    attn = blocks[0].attn
    assert attn.num_heads == 2 and blocks[0].mlp.fc1.out_features == 16
    cls = s.cls_token if family == "tiny-vit" else s.net.cls_token
    assert cls.shape[-1] == 16
    assert s(x).shape == (2, 10)
    save_model(s, tmp_path / "s.pt")
    torch.testing.assert_close(load_model(tmp_path / "s.pt").eval()(x), s(x))


@pytest.mark.parametrize("ffn", [440, 439, 1095, 1])
def test_ffn_keeps_exactly_the_neurons_asked_for(ffn):
    """``1 - 440/1536`` in floating point made torch-pruning keep 439 neurons; every count must be exact."""
    torch.manual_seed(0)
    t = build_model("hf", {"hf_config": {**TINY_BERT, "intermediate_size": 1536}, "num_labels": 5}).eval()
    s = _student(t, _ids(), ffn=ffn)
    assert {layer.intermediate.dense.out_features for layer in s.net.bert.encoder.layer} == {ffn}
    assert s(_ids()).shape == (3, 5)
