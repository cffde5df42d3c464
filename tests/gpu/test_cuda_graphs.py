"""The torch-compile runtime's per-shape CUDA graphs (skipped without a GPU; run on the device machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.runtime import open_session
from compress.runtime.torch_compile import CapturedCall, GraphedModule
from tests._helpers.models import tiny_bert, tiny_vit

pytestmark = pytest.mark.gpu


def _tiny_bert() -> nn.Module:
    pytest.importorskip("transformers")
    return tiny_bert()


def test_each_shape_is_captured_once_and_replays_fresh_inputs():
    model = _tiny_bert()
    g = torch.Generator().manual_seed(0)
    xs = {n: torch.randint(1, 100, (n, 12), generator=g) for n in (4, 8)}
    with open_session("torch-compile", model, device="cuda", precision="fp32") as sess:
        graphed = sess._model
        assert isinstance(graphed, GraphedModule)
        for n, x in xs.items():
            for shift in (0, 1):  # a second, different input of the same shape: the replay must see it
                xi = (x + shift) % 100
                out = sess.run({"input": xi.numpy()})[0]
                ref = model(xi).detach().numpy()
                assert np.abs(out - ref).max() < 1e-3, (n, shift)
        assert graphed.fallback_reason is None
        assert {k[0][0] for k in graphed._graphs} >= {4, 8}  # one graph per shape run


def test_padding_changes_the_replayed_result():
    model = _tiny_bert()
    x = torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    padded = x.clone()
    padded[:, 6:] = 0
    with open_session("torch-compile", model, device="cuda", precision="fp32") as sess:
        a = sess.run({"input": x.numpy()})[0].copy()
        b = sess.run({"input": padded.numpy()})[0]
    ref_b = model(padded).detach().numpy()
    ref_a = model(x).detach().numpy()
    # each replay matches its own input's eager result (the mask is recomputed in the graph from the ids)
    assert np.abs(a - ref_a).max() < 1e-3
    assert np.abs(b - ref_b).max() < 1e-3


class _HostSync(nn.Module):
    """A forward that reads a value back to the host: not capturable, so the wrapper falls back."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if float(y.abs().sum().item()) > 0:
            y = y * 2
        return y


def test_capture_failure_falls_back_with_a_reason():
    model = _HostSync().eval()
    x = torch.randn(4, 8)
    graphed = GraphedModule(model.cuda())
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        out = graphed(x.cuda())
    assert graphed.fallback_reason
    torch.testing.assert_close(out.cpu(), model(x.cuda()).cpu())


def test_a_failed_capture_leaves_random_draws_and_later_captures_working():
    # a failed capture used to leave the CUDA generator marked as capturing: every later random draw,
    # inductor's compile-time benchmarks included, failed ("Offset increment outside graph capture")
    graphed = GraphedModule(_HostSync().eval().cuda())
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        graphed(torch.randn(4, 8).cuda())
    assert torch.randn(16, device="cuda").shape == (16,)
    model = tiny_vit(depth=2, dim=64).eval()
    x = torch.randn(8, 1, 8, 8)
    with open_session("torch-compile", model, device="cuda", precision="fp32") as sess:
        got = sess.run({sess.inputs[0].name: x.numpy()})[0]
        assert sess._model.fallback_reason is None
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_image_model_matches_eager():
    model = tiny_vit(depth=2, dim=64).eval()
    x = torch.randn(8, 1, 8, 8)
    with open_session("torch-compile", model, device="cuda", precision="fp32") as sess:
        out = sess.run({"input": x.numpy()})[0]
        assert sess._model.fallback_reason is None
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-3


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 5e-2), ("bf16", 2e-1)])
def test_captured_shapes_replay_without_calling_the_module(monkeypatch, precision, atol):
    """After a shape's first call, ``run`` goes through the shape's ``CapturedCall`` (kept pinned buffers,
    copies queued around the replay): the module is not called again for that shape, each call sees its
    own input (float inputs cast to the session's precision in the copy; bf16 outputs cross as float32),
    and results are fresh float32 arrays."""
    model = tiny_vit(depth=2, dim=64).eval()
    xs = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with open_session("torch-compile", model, device="cuda", precision=precision) as sess:
        first = sess.run({"input": xs[0].numpy()})[0]  # compile + capture through the module
        graphed = sess._model
        assert graphed.captured((8, 1, 8, 8), sess._dtype) is not None

        def no_module_call(*a, **k):
            raise AssertionError("the module was called for a captured shape")

        monkeypatch.setattr(graphed, "forward", no_module_call)
        outs = [sess.run({"input": x.numpy()})[0] for x in xs]
        assert isinstance(sess._calls[((8, 1, 8, 8), np.dtype(np.float32))], CapturedCall)
        with pytest.raises(Exception, match="module was called"):  # a new shape still goes through it
            sess.run({"input": torch.randn(2, 1, 8, 8).numpy()})
    for x, out in zip(xs, outs, strict=True):
        ref = model(x).detach().numpy()
        assert out.dtype == np.float32
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < atol
    assert np.array_equal(outs[0], first)
    assert not np.shares_memory(outs[0], first)
    assert not np.array_equal(outs[0], outs[1])


def test_token_ids_replay_through_the_lean_path_in_fp16():
    model = _tiny_bert()
    xs = [torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with open_session("torch-compile", model, device="cuda", precision="fp16") as sess:
        outs = [sess.run({"input": x.numpy()})[0] for x in xs]
        assert sess._model.captured((4, 12), torch.int64) is not None
    for x, out in zip(xs, outs, strict=True):
        assert out.dtype == np.float32
        assert np.abs(out - model(x).detach().numpy()).max() < 5e-2


def test_captured_call_follows_the_callers_stream():
    """A caller that runs the session under its own stream gets that stream's results: the copies and the
    replay are queued there, and the wait looks the stream up again when it changed."""
    model = _tiny_bert()
    xs = [torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with open_session("torch-compile", model, device="cuda", precision="fp32") as sess:
        outs = [sess.run({"input": xs[0].numpy()})[0], sess.run({"input": xs[1].numpy()})[0]]
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            outs.append(sess.run({"input": xs[2].numpy()})[0])
        outs.append(sess.run({"input": xs[3].numpy()})[0])
        assert isinstance(sess._calls[((4, 12), np.dtype(np.int64))], CapturedCall)
    for x, out in zip(xs, outs, strict=True):
        assert np.abs(out - model(x).detach().numpy()).max() < 1e-3
