"""CapturedCall (a captured shape called from NumPy) and the torch-compile session's use of it, without a GPU:
a fake graph stands in for the CUDA graph (capture and replay on a GPU: tests/gpu/test_cuda_graphs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.runtime import torch_compile
from compress.runtime.torch_compile import CapturedCall, GraphedModule, TorchCompileSession


class _FakeGraph:
    """Replays as the captured model would: reads the static input, writes the static outputs."""

    def __init__(self, static_in: torch.Tensor, static_outs: list[torch.Tensor]) -> None:
        self.static_in, self.static_outs, self.replays = static_in, static_outs, 0

    def replay(self) -> None:
        self.replays += 1
        x = self.static_in.float()
        self.static_outs[0].copy_((x * 2).to(self.static_outs[0].dtype))
        self.static_outs[1].copy_(x.sum(dim=-1))


class _Stream:
    def __init__(self, waits: list[int]) -> None:
        self.waits = waits

    def synchronize(self) -> None:
        self.waits.append(1)


@pytest.fixture
def cpu_cuda(monkeypatch):
    """A CPU-only torch that allocates "pinned" buffers unpinned, with a fake current-stream handle
    (``state["handle"]``) and counters of stream lookups and waits."""
    state = {"handle": 7, "lookups": 0, "waits": []}
    real_empty = torch.empty

    def current_stream(device=None):
        state["lookups"] += 1
        return _Stream(state["waits"])

    def empty(shape, dtype, pin_memory=False):
        assert pin_memory is True
        return real_empty(shape, dtype=dtype)

    monkeypatch.setattr(torch_compile, "_raw_current_stream", lambda index: state["handle"])
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch, "empty", empty)
    return state


def _captured_call(
    in_dtype: torch.dtype = torch.int64, host_dtype: torch.dtype = torch.int64, out_dtype=torch.float16
) -> tuple[CapturedCall, _FakeGraph]:
    with torch.inference_mode():  # as the graph's static buffers are made
        static_in = torch.zeros(2, 3, dtype=in_dtype)
        static_outs = [torch.zeros(2, 3, dtype=out_dtype), torch.zeros(2, dtype=torch.float32)]
    graph = _FakeGraph(static_in, static_outs)
    return CapturedCall(graph, static_in, tuple(static_outs), host_dtype=host_dtype), graph


def test_each_call_replays_on_its_own_input_and_returns_fresh_float32_copies(cpu_cuda):
    call, graph = _captured_call()
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    out_a = call.run(a)
    out_b = call.run(a + 1)
    assert graph.replays == 2
    assert [o.dtype for o in out_a] == [np.float32, np.float32]
    np.testing.assert_array_equal(out_a[0], a * 2)
    np.testing.assert_array_equal(out_a[1], a.sum(axis=1))
    np.testing.assert_array_equal(out_b[0], (a + 1) * 2)  # the second call did not overwrite the first's
    for o, (_, host) in zip(out_b, call._outs, strict=True):
        assert not np.shares_memory(o, host.numpy())


def test_outputs_cross_in_their_own_dtype_or_as_float32_and_float_inputs_take_the_graph_dtype(cpu_cuda):
    call, graph = _captured_call(torch.float16, torch.float32, torch.bfloat16)
    assert [h.dtype for _, h in call._outs] == [torch.float32, torch.float32]  # NumPy has no bfloat16
    x = np.array([[0.5, 1.25, -2.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    out = call.run(x)
    assert graph.static_in.dtype == torch.float16  # cast in the copy into the static input
    np.testing.assert_array_equal(out[0], x * 2)
    fp16, _ = _captured_call(out_dtype=torch.float16)
    assert fp16._outs[0][1].dtype == torch.float16  # fp16 stays fp16 across PCIe


def test_the_stream_is_looked_up_once_and_again_only_when_it_changes(cpu_cuda):
    call, _ = _captured_call()
    x = np.zeros((2, 3), dtype=np.int64)
    for _ in range(3):
        call.run(x)
    assert cpu_cuda["lookups"] == 1
    assert len(cpu_cuda["waits"]) == 3  # every call waits before it reads the outputs
    cpu_cuda["handle"] = 9  # the caller switched streams: the work was queued there, so wait there
    call.run(x)
    assert cpu_cuda["lookups"] == 2
    assert len(cpu_cuda["waits"]) == 4


def test_without_the_raw_handle_every_call_looks_the_stream_up(cpu_cuda, monkeypatch):
    monkeypatch.setattr(torch_compile, "_raw_current_stream", None)
    call, _ = _captured_call()
    for _ in range(2):
        call.run(np.zeros((2, 3), dtype=np.int64))
    assert cpu_cuda["lookups"] == 2


def _session_with(dtype: torch.dtype) -> TorchCompileSession:
    sess = object.__new__(TorchCompileSession)  # only what _captured_call reads
    sess._calls, sess._dtype = {}, dtype
    return sess


def test_the_session_makes_a_call_path_once_a_shape_is_captured_and_keeps_it(cpu_cuda):
    graphed = GraphedModule(nn.Identity())
    sess = _session_with(torch.float16)
    images = np.zeros((2, 1, 4, 4), dtype=np.float32)
    assert sess._captured_call(images, graphed) is None  # first call: the module path captures it
    assert sess._calls == {}
    with torch.inference_mode():
        entry = (object(), torch.zeros(2, 1, 4, 4, dtype=torch.float16), torch.zeros(2, 3))
    graphed._graphs[((2, 1, 4, 4), torch.float16)] = entry  # a float input is captured in the session dtype
    call = sess._captured_call(images, graphed)
    assert isinstance(call, CapturedCall)
    assert sess._captured_call(images, graphed) is call
    assert call._host_in.dtype == torch.float32  # the host input keeps its dtype; the copy casts
    ids = np.zeros((2, 5), dtype=np.int64)
    with torch.inference_mode():
        graphed._graphs[((2, 5), torch.int64)] = (
            object(),
            torch.zeros(2, 5, dtype=torch.int64),
            torch.zeros(2, 3),
        )
    assert sess._captured_call(ids, graphed)._host_in.dtype == torch.int64
    graphed.fallback_reason = "RuntimeError: cannot capture"
    assert sess._captured_call(np.zeros((3, 5), dtype=np.int64), graphed) is None
    assert sess._captured_call(ids, graphed) is None  # after a fallback, no kept graph replays again
    assert sess._calls == {}
