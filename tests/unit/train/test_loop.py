"""The training loop: learns, stops on NaN with a clear message, resumes a killed run exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress.errors import TrainingDiverged
from compress.train import TrainConfig, evaluate, fit
from tests._helpers.models import digits, tiny_vit


def ce(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return loss, {"ce": loss.item()}


def test_fit_learns(tmp_path):
    data = digits(tmp_path)
    m = tiny_vit()
    before = evaluate(m, data)["accuracy"]
    res = fit(m, ce, data, TrainConfig(epochs=4, lr=5e-3, warmup_fraction=0), batch_size=64, seed=0)
    assert res.steps == 4 * 20  # 1259 train examples / 64 = 20 batches
    assert evaluate(m, data)["accuracy"] > before + 0.3


def test_nan_loss_stops_with_step_terms_and_hint(tmp_path):
    data = digits(tmp_path)

    def bad(model, x, y):
        loss = model(x).sum() * float("nan")
        return loss, {"ce": float("nan")}

    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 0, step 0 \(terms: ce=nan\); try a lower learning rate"):
        fit(tiny_vit(), bad, data, TrainConfig(epochs=1), batch_size=64, seed=0)


def test_killed_training_resumes_to_identical_weights(tmp_path):
    data = digits(tmp_path)
    cfg = TrainConfig(epochs=3, lr=3e-3)
    ref = tiny_vit()
    fit(ref, ce, data, cfg, batch_size=64, seed=1)

    crashed = tiny_vit()
    calls = {"n": 0}

    def crashing(model, x, y):
        calls["n"] += 1
        if calls["n"] == 45:  # inside epoch 2 (20 batches per epoch)
            raise KeyboardInterrupt
        return ce(model, x, y)

    ck = tmp_path / "train.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, crashing, data, cfg, batch_size=64, seed=1, checkpoint=ck)
    assert ck.is_file()
    resumed = tiny_vit()  # fresh process state: same initial model
    res = fit(resumed, ce, data, cfg, batch_size=64, seed=1, checkpoint=ck)
    assert res.resumed_from_epoch == 2
    for (n, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert not ck.exists()  # removed once the stage's training finished


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    data = digits(tmp_path)
    ck = tmp_path / "train.ckpt"
    with pytest.raises(KeyboardInterrupt):
        n = {"i": 0}

        def crash(model, x, y):
            n["i"] += 1
            if n["i"] == 25:
                raise KeyboardInterrupt
            return ce(model, x, y)

        fit(tiny_vit(), crash, data, TrainConfig(epochs=2, lr=1e-3), batch_size=64, seed=0, checkpoint=ck)
    res = fit(tiny_vit(), ce, data, TrainConfig(epochs=2, lr=2e-3), batch_size=64, seed=0, checkpoint=ck)
    assert res.resumed_from_epoch == 0
