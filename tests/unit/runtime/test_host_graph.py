"""HostGraph's host side and the torch-compile session's choice of it, without a GPU (a fake graph stands in
for the CUDA graph; capture and replay on a GPU: tests/gpu/test_cuda_graphs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.runtime import torch_compile
from compress.runtime.torch_compile import GraphedModule, HostGraph, TorchCompileSession


class _FakeGraph:
    """Replays as the captured copies and model would: reads the input buffer, writes the output buffers."""

    def __init__(self, host_in: torch.Tensor, host_outs: list[torch.Tensor]) -> None:
        self.host_in, self.host_outs, self.replays = host_in, host_outs, 0

    def replay(self) -> None:
        self.replays += 1
        x = self.host_in.float()
        self.host_outs[0].copy_((x * 2).half())
        self.host_outs[1].copy_(x.sum(dim=1))


class _Stream:
    def __init__(self, waits: list[int]) -> None:
        self.waits = waits

    def synchronize(self) -> None:
        self.waits.append(1)


@pytest.fixture
def streams(monkeypatch):
    """A fake current-stream handle (``state["handle"]``), and counters of stream lookups and waits."""
    state = {"handle": 7, "lookups": 0, "waits": []}

    def current_stream(device=None):
        state["lookups"] += 1
        return _Stream(state["waits"])

    monkeypatch.setattr(torch_compile, "_raw_current_stream", lambda index: state["handle"])
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    return state


def _host_graph() -> tuple[HostGraph, _FakeGraph]:
    host_in = torch.zeros(2, 3, dtype=torch.int64)
    host_outs = [torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, dtype=torch.float32)]
    graph = _FakeGraph(host_in, host_outs)
    return HostGraph(graph, host_in, host_outs, torch.device("cuda", 0)), graph


def test_each_call_replays_on_its_own_input_and_returns_fresh_float32_copies(streams):
    host, graph = _host_graph()
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    out_a = host.run(a)
    out_b = host.run(a + 1)
    assert graph.replays == 2
    assert [o.dtype for o in out_a] == [np.float32, np.float32]
    np.testing.assert_array_equal(out_a[0], a * 2)
    np.testing.assert_array_equal(out_a[1], a.sum(axis=1))
    np.testing.assert_array_equal(out_b[0], (a + 1) * 2)  # the second call did not overwrite the first's
    for o, buf in zip(out_b, graph.host_outs, strict=True):
        assert not np.shares_memory(o, buf.numpy())


def test_the_stream_is_looked_up_once_and_again_only_when_it_changes(streams):
    host, _ = _host_graph()
    x = np.zeros((2, 3), dtype=np.int64)
    for _ in range(3):
        host.run(x)
    assert streams["lookups"] == 1
    assert len(streams["waits"]) == 3  # every call waits before it reads the outputs
    streams["handle"] = 9  # the caller switched streams: the replay ran there, so wait there
    host.run(x)
    assert streams["lookups"] == 2
    assert len(streams["waits"]) == 4


def test_without_the_raw_handle_every_call_looks_the_stream_up(streams, monkeypatch):
    monkeypatch.setattr(torch_compile, "_raw_current_stream", None)
    host, _ = _host_graph()
    for _ in range(2):
        host.run(np.zeros((2, 3), dtype=np.int64))
    assert streams["lookups"] == 2


def _session_with(graphed: GraphedModule, dtype: torch.dtype) -> TorchCompileSession:
    sess = object.__new__(TorchCompileSession)  # only what _host_graph reads
    sess._host_graphs, sess._dtype, sess._precision = {}, dtype, "fp16"
    return sess


def test_the_session_captures_a_host_graph_only_for_a_shape_already_captured(monkeypatch):
    graphed = GraphedModule(nn.Identity())
    calls = []
    made = object()

    def capture_host(shape, dtype, host_dtype):
        calls.append((shape, dtype, host_dtype))
        return made

    monkeypatch.setattr(graphed, "capture_host", capture_host)
    sess = _session_with(graphed, torch.float16)
    images = np.zeros((2, 1, 4, 4), dtype=np.float32)
    assert sess._host_graph(images, graphed) is None  # first call: the module path captures it
    assert calls == []
    assert sess._host_graphs == {}
    entry = (object(), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3))
    graphed._graphs[((2, 1, 4, 4), torch.float16)] = entry  # a float input was captured in the session dtype
    assert sess._host_graph(images, graphed) is made
    assert sess._host_graph(images, graphed) is made
    assert calls == [((2, 1, 4, 4), torch.float16, torch.float32)]  # once; the host input stays float32
    ids = np.zeros((2, 5), dtype=np.int64)
    graphed._graphs[((2, 5), torch.int64)] = entry
    sess._host_graph(ids, graphed)
    assert calls[-1] == ((2, 5), torch.int64, torch.int64)  # token ids keep their dtype


def test_a_failed_host_capture_is_remembered_and_the_module_path_is_used(monkeypatch):
    graphed = GraphedModule(nn.Identity())
    calls = []

    def capture_host(shape, dtype, host_dtype):
        calls.append(shape)

    monkeypatch.setattr(graphed, "capture_host", capture_host)
    graphed._graphs[((2, 5), torch.int64)] = (object(), torch.zeros(2, 5), torch.zeros(2, 3))
    sess = _session_with(graphed, torch.float16)
    ids = np.zeros((2, 5), dtype=np.int64)
    assert sess._host_graph(ids, graphed) is None
    assert sess._host_graph(ids, graphed) is None
    assert calls == [(2, 5)]  # not tried again on every call
