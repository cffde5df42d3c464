"""PinnedStaging's buffer cache (pinned memory itself needs CUDA: tests/gpu covers the copies)."""

from __future__ import annotations

import torch

from compress.runtime.torch_eager import PinnedStaging


def test_buffers_are_cached_per_shape_and_dtype_and_bounded(monkeypatch):
    made = []
    real_empty = torch.empty

    def fake_empty(shape, dtype, pin_memory):  # CPU-only torch cannot pin: count the allocations
        assert pin_memory is True
        made.append((tuple(shape), dtype))
        return real_empty(shape, dtype=dtype)

    monkeypatch.setattr(torch, "empty", fake_empty)
    st = PinnedStaging(max_buffers=2)
    a = st.buffer((4, 8), torch.int64)
    assert st.buffer((4, 8), torch.int64) is a
    st.buffer((4, 8), torch.float32)
    assert len(made) == 2
    st.buffer((2, 8), torch.int64)  # a third key: the oldest buffer goes
    assert len(made) == 3
    assert st.buffer((4, 8), torch.int64) is not a
    st.clear()
    st.buffer((2, 8), torch.int64)
    assert len(made) == 5
