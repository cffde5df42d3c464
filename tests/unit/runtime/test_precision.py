"""The torch runtime's precision option (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.errors import BadInputError
from compress.runtime import open_session
from tests._helpers.models import tiny_vit


def test_bf16_is_close_and_returns_float32():
    model = tiny_vit().eval()
    x = torch.randn(8, 1, 8, 8)
    ref = model(x).detach().numpy()
    with open_session("torch", model, precision="bf16") as sess:
        out = sess.run({"input": x.numpy()})[0]
        assert sess.outputs[0].dtype == "float32"
    assert out.dtype == np.float32
    assert 0 < np.abs(out - ref).max() < 0.1  # rounded, but close
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_unknown_or_unsupported_precision_named():
    with pytest.raises(BadInputError, match="precision 'fp8' is not one of fp32, tf32, fp16, bf16"):
        open_session("torch", tiny_vit(), precision="fp8")
    with pytest.raises(BadInputError, match="fp16 on CPU is not supported"):
        open_session("torch", tiny_vit(), precision="fp16")
