"""PinnedStaging's buffers and copies on a CPU-only torch (pinned memory and CUDA streams: tests/gpu)."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.fixture
def cpu_staging(monkeypatch):
    """A PinnedStaging on a CPU-only torch: unpinned buffers and no stream to wait for."""
    real_empty = torch.empty
    waits = []

    def fake_empty(shape, dtype, pin_memory):
        return real_empty(shape, dtype=dtype)

    class _Stream:
        def synchronize(self):
            waits.append(1)

    monkeypatch.setattr(torch, "empty", fake_empty)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    st = PinnedStaging()
    st.waits = waits
    return st


def test_outputs_cross_in_their_own_dtype_and_come_back_as_fresh_float32(cpu_staging):
    outs = [torch.tensor([[1.5, -2.25]], dtype=torch.float16), torch.tensor([0.5], dtype=torch.bfloat16)]
    got = cpu_staging.to_host(outs, torch.device("cpu"))
    assert cpu_staging.waits == [1]  # one wait for the stream, after every copy is queued
    assert [g.dtype for g in got] == [np.float32, np.float32]
    np.testing.assert_array_equal(got[0], [[1.5, -2.25]])
    np.testing.assert_array_equal(got[1], [0.5])
    # fp16 crosses as fp16 (NumPy has it); bfloat16 (NumPy lacks it) crosses as float32
    assert set(cpu_staging._buffers) == {((1, 2), torch.float16), ((1,), torch.float32)}
    buf = cpu_staging.buffer((1, 2), torch.float16)
    assert not np.shares_memory(got[0], buf.numpy())


def test_to_device_copies_through_a_pinned_buffer(cpu_staging):
    ids = np.array([[3, 1]], dtype=np.int64)
    assert cpu_staging.to_device(ids, torch.device("cpu")).tolist() == [[3, 1]]
    assert set(cpu_staging._buffers) == {((1, 2), torch.int64)}
