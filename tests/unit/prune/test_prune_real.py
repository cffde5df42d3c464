"""prune_ on real architectures shrunk through their configs: HF BERT, timm ViT, torchvision ResNet-18."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.models.stats import count_macs, count_params
from compress.prune import PruneConfig, prune_
from tests._helpers.models import logits_in_fresh_process
from tests.unit.prune._real import bert, bert_ids, onnx_parity, resnet, resnet_x, vit, vit_x


def test_bert_heads_and_ffn_prune_updates_every_head_attribute_and_exports(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    macs0 = count_macs(m, x)
    rep = prune_(m, PruneConfig(target={"macs": 0.4}, iterative_steps=2), example_inputs=x)
    assert abs(1 - count_macs(m, x) / macs0 - 0.4) <= 0.02
    for layer in m.net.bert.encoder.layer:
        sa = layer.attention.self
        assert sa.num_attention_heads < 4
        assert sa.attention_head_size == 8
        assert (
            sa.all_head_size == sa.num_attention_heads * 8 == sa.query.out_features == sa.value.out_features
        )
        assert layer.attention.output.dense.in_features == sa.all_head_size
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features < 64
        assert layer.output.dense.out_features == 32  # residual width kept
    assert m.net.classifier.out_features == 5
    assert [r["heads"] for r in rep.blocks] == [
        sa.num_attention_heads for sa in (la.attention.self for la in m.net.bert.encoder.layer)
    ]
    assert onnx_parity(m, x, tmp_path) <= 1e-4


def test_timm_vit_heads_and_mlp_prune_exports_with_parity(tmp_path: Path) -> None:
    m, x = vit(), vit_x()
    rep = prune_(m, PruneConfig(target={"macs": 0.4}, iterative_steps=1), example_inputs=x)
    assert abs(rep.macs_removed - 0.4) <= 0.02
    for b in m.net.blocks:
        a = b.attn
        assert a.num_heads < 4
        assert a.head_dim == 8
        assert a.qkv.out_features == 3 * a.num_heads * 8
        assert a.proj.in_features == a.num_heads * 8
        assert a.attn_dim == a.num_heads * 8
        assert b.mlp.fc1.out_features == b.mlp.fc2.in_features < 128
    assert m.net.head.out_features == 10
    assert m.net.patch_embed.proj.out_channels == 32
    assert onnx_parity(m, x, tmp_path) <= 1e-4


def test_resnet_channels_prune_keeps_residual_groups_coupled_and_exports(tmp_path: Path) -> None:
    m, x = resnet(), resnet_x()
    net = m.net
    rep = prune_(m, PruneConfig(target={"macs": 0.5}, iterative_steps=1, round_to=4), example_inputs=x)
    assert abs(rep.macs_removed - 0.5) <= 0.02
    # The stem, every block's conv2 of a stage and the downsample share one residual width.
    for stage, prev in ((net.layer1, net.conv1), (net.layer2, None), (net.layer3, None), (net.layer4, None)):
        width = stage[0].conv2.out_channels
        assert width % 4 == 0
        assert width >= 1
        assert all(b.conv2.out_channels == width == b.bn2.num_features for b in stage)
        if prev is not None:
            assert prev.out_channels == width
        if stage[0].downsample is not None:
            assert stage[0].downsample[0].out_channels == width == stage[0].downsample[1].num_features
        for b in stage:  # inner widths: conv1 -> bn1 -> conv2
            assert b.conv1.out_channels == b.bn1.num_features == b.conv2.in_channels
    assert net.fc.in_features == net.layer4[1].conv2.out_channels < 512
    assert net.fc.out_features == 10
    assert any(r["channels"] < c for r, c in zip(rep.blocks, (512, 256, 128, 64), strict=False))
    assert onnx_parity(m, x, tmp_path) <= 1e-4


def test_params_target_is_reached(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    p0 = count_params(m)
    rep = prune_(m, PruneConfig(target={"params": 0.05}, iterative_steps=1), example_inputs=x)
    assert abs(1 - count_params(m) / p0 - 0.05) <= 0.02
    assert rep.params_removed == pytest.approx(1 - count_params(m) / p0)


def test_resnet_impossible_target_fails_before_pruning() -> None:
    m, x = resnet(), resnet_x()
    before = {k: v.shape for k, v in m.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"target\.macs=0\.94 cannot be reached without pruning a layer to zero"
    ):
        prune_(m, PruneConfig(target={"macs": 0.94}, round_to=64), example_inputs=x)
    assert {k: v.shape for k, v in m.state_dict().items()} == before


def test_pruned_bert_reloads_from_spec_in_a_fresh_process(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    prune_(m, PruneConfig(target={"macs": 0.4}, iterative_steps=1, global_ranking=True), example_inputs=x)
    got = logits_in_fresh_process(m, x, tmp_path)
    with torch.no_grad():
        expected = m(x)
    assert torch.allclose(got, expected, atol=1e-6)


def test_round_to_chunks_fill_the_gap_that_uniform_cnn_widths_step_over(tmp_path: Path) -> None:
    # Uniformly, widths in multiples of 8 remove either 0.279 or 0.330 of this ResNet's MACs; single
    # groups then give up one more chunk of 8 each until 0.3 is met.
    m, x = resnet(), resnet_x()
    rep = prune_(m, PruneConfig(target={"macs": 0.3}, round_to=8, iterative_steps=1), example_inputs=x)
    assert abs(rep.macs_removed - 0.3) <= 0.02
    assert all(r["channels"] % 8 == 0 for r in rep.blocks)
    assert onnx_parity(m, x, tmp_path) <= 1e-4


def test_densenet_concat_channels_stay_consistent_and_export(tmp_path: Path) -> None:
    from torchvision.models import DenseNet

    torch.manual_seed(0)
    m = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rep = prune_(m, PruneConfig(target={"macs": 0.4}, iterative_steps=1), example_inputs=x)
    assert abs(rep.macs_removed - 0.4) <= 0.02
    f = m.features
    # Each dense block's output is the concat of its input and every layer's conv2 output.
    b1 = f.conv0.out_channels + sum(layer.conv2.out_channels for layer in f.denseblock1.values())
    assert f.transition1.norm.num_features == f.transition1.conv.in_channels == b1
    b2 = f.transition1.conv.out_channels + sum(layer.conv2.out_channels for layer in f.denseblock2.values())
    assert f.norm5.num_features == m.classifier.in_features == b2
    assert f.conv0.out_channels < 16
    assert m.classifier.out_features == 10
    assert onnx_parity(m, x, tmp_path) <= 1e-4


def test_fused_qkv_head_scores_gather_each_head_from_the_q_k_and_v_thirds() -> None:
    from compress.prune._criteria import CRITERIA
    from compress.prune._graph import find_layout, resolve_ignored

    m, x = vit(), vit_x()
    with torch.no_grad():  # head 1 of block 0 is tiny in q, k and v: the weakest head by magnitude
        m.net.blocks[0].attn.qkv.weight.view(3, 4, 8, 32)[:, 1] *= 0.01
    imp = CRITERIA.get("magnitude").make()
    lay = find_layout(m, x, resolve_ignored(m, []), round_to=None, importance=imp)
    (unit,) = [u for u in lay.units if u.name == "net.blocks.0.attn"]
    assert min(range(4), key=lambda h: unit.scores[h]) == 1
