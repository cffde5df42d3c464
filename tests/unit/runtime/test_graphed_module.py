"""GraphedModule's bookkeeping without a GPU (capture and replay: tests/gpu/test_cuda_graphs.py)."""

from __future__ import annotations

import torch
from torch import nn

from compress.runtime.torch_compile import GraphedModule


def test_cpu_inputs_pass_through_and_nothing_is_captured():
    inner = nn.Linear(4, 2)
    g = GraphedModule(inner)
    x = torch.randn(3, 4)
    torch.testing.assert_close(g(x), inner(x))
    assert g.captured((3, 4), torch.float32) is None
    assert g._graphs == {}


def test_captured_looks_up_by_shape_and_dtype_and_is_off_after_a_fallback():
    g = GraphedModule(nn.Identity())
    entry = (object(), torch.zeros(2, 3), torch.zeros(2, 3))
    g._graphs[((2, 3), torch.int64)] = entry  # as a capture of int64 token ids would leave it
    assert g.captured((2, 3), torch.int64) is entry
    assert g.captured((2, 3), torch.float16) is None
    assert g.captured((4, 3), torch.int64) is None
    g.fallback_reason = "RuntimeError: cannot capture"
    assert g.captured((2, 3), torch.int64) is None
