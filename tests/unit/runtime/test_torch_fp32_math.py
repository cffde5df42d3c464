"""Torch sessions compute FP32 without TF32 (cuDNN allows it by default); precision tf32 opts in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.runtime import open_session


class _FlagProbe(nn.Module):
    """Returns the two TF32 flags as seen during its forward, as a [batch, 2] tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flags = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        return x[:, :2] * 0 + torch.tensor(flags, dtype=x.dtype) * self.w


@pytest.mark.parametrize(("precision", "expected"), [("fp32", 0.0), (None, 0.0), ("tf32", 1.0)])
def test_run_sets_tf32_flags_and_restores_them(precision: str | None, expected: float) -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # start from the opposite of what the session should set, so the test sees the session's doing
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not bool(expected)
    try:
        with open_session("torch", _FlagProbe().eval(), precision=precision) as sess:
            out = sess.run({"input": np.zeros((3, 4), dtype=np.float32)})[0]
        np.testing.assert_array_equal(out, np.full((3, 2), expected, dtype=np.float32))
        assert torch.backends.cudnn.allow_tf32 is (not bool(expected))
        assert torch.backends.cuda.matmul.allow_tf32 is (not bool(expected))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
