"""The Session contract, checked for every registered runtime, plus per-runtime specifics."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compress.errors import BadInputError, MissingDependency, UnknownNameError
from compress.export import export_onnx
from compress.models import save_model
from compress.runtime import RUNTIMES, Session, SessionError, TensorSpec, list_runtimes, open_session
from tests._helpers.models import tiny_vit

# How the contract tests build a source of each artifact format from one tiny model.
_BUILDERS = {
    "onnx": lambda model, d: export_onnx(model, d / "model.onnx", model.example_inputs(2)),
    "torch": lambda model, d: (save_model(model, d / "model.pt"), d / "model.pt")[1],
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_vit().eval()


@pytest.fixture(scope="module")
def sources(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    return {fmt: build(model, d) for fmt, build in _BUILDERS.items()}


def _source_for(runtime: str, sources: dict[str, Path]) -> Path:
    cls = RUNTIMES.get(runtime)
    ok, why = cls.can_run_here("cpu")
    if not ok:
        pytest.skip(f"runtime '{runtime}' cannot run on this CPU: {why}")
    fmts = sorted(cls.formats & sources.keys())
    assert fmts, (
        f"runtime '{runtime}' loads {sorted(cls.formats)}; add a builder for one of them to _BUILDERS"
    )
    return sources[fmts[0]]


def _x(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("runtime", list_runtimes())
def test_contract_specs_and_dynamic_batch(
    runtime: str, model: torch.nn.Module, sources: dict[str, Path]
) -> None:
    with open_session(runtime, _source_for(runtime, sources), threads=2) as sess:
        assert sess.inputs == (TensorSpec("input", ("batch", 1, 8, 8), "float32"),)
        assert sess.outputs == (TensorSpec("logits", ("batch", 10), "float32"),)
        assert sess.device == "cpu"
        assert sess.threads == 2
        for batch in (1, 5):
            (out,) = sess.run({"input": _x(batch)})
            sess.synchronize()
            with torch.no_grad():
                ref = model(torch.from_numpy(_x(batch))).numpy()
            assert out.shape == (batch, 10)
            assert out.dtype == np.float32
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(SessionError, match="closed"):
        sess.run({"input": _x(1)})


@pytest.mark.parametrize("runtime", list_runtimes())
@pytest.mark.parametrize(
    ("feed", "match"),
    [
        ({"x": _x(2)}, r"missing: \['input'\]; unexpected: \['x'\]"),
        (
            {"input": _x(2).astype(np.float64)},
            r"dtype float64; expected float32 \(cast with x.astype\(np.float32\)\)",
        ),
        ({"input": np.zeros((2, 1, 8, 7), np.float32)}, r"axis 3 must be 8"),
        ({"input": np.zeros((2, 64), np.float32)}, r"rank 2\); expected rank 4: \(batch, 1, 8, 8\)"),
        ({"input": torch.zeros(2, 1, 8, 8)}, r"must be a numpy array, got Tensor"),
        ([_x(2)], r"inputs must be a dict"),
    ],
)
def test_contract_rejects_bad_inputs(runtime: str, feed: Any, match: str, sources: dict[str, Path]) -> None:
    with (
        open_session(runtime, _source_for(runtime, sources)) as sess,
        pytest.raises(BadInputError, match=match),
    ):
        sess.run(feed)


@pytest.mark.parametrize("runtime", list_runtimes())
def test_contract_bad_load_arguments(runtime: str, sources: dict[str, Path]) -> None:
    src = _source_for(runtime, sources)
    with pytest.raises(BadInputError, match="threads must be a positive integer"):
        open_session(runtime, src, threads=0)
    with pytest.raises(BadInputError, match="device 'tpu' is not one of cpu, cuda"):
        open_session(runtime, src, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("runtime", list_runtimes())
def test_contract_cuda_unavailable_says_why(runtime: str, sources: dict[str, Path]) -> None:
    ok, reason = RUNTIMES.get(runtime).can_run_here("cuda")
    assert not ok
    assert "CUDA" in reason
    with pytest.raises(MissingDependency, match=f"runtime '{runtime}' cannot run on cuda here: .*CUDA"):
        open_session(
            runtime, sources["onnx"] if runtime == "onnxruntime" else sources["torch"], device="cuda"
        )


def test_unknown_runtime_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'onnxruntime'\?.*valid: " + re.escape(', '.join(list_runtimes()))):
        open_session("onnxruntim", "model.onnx")


def test_onnxruntime_session_settings(sources: dict[str, Path]) -> None:
    import onnxruntime as ort

    with open_session("onnxruntime", sources["onnx"], threads=2) as sess:
        opts = sess._sess.get_session_options()
        assert sess.providers == ["CPUExecutionProvider"]
        assert opts.intra_op_num_threads == 2
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_onnxruntime_refuses_what_it_cannot_load(tmp_path: Path, sources: dict[str, Path]) -> None:
    with pytest.raises(BadInputError, match=r"is not an \.onnx file"):
        open_session("onnxruntime", sources["torch"])
    with pytest.raises(BadInputError, match="does not exist"):
        open_session("onnxruntime", tmp_path / "missing.onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(BadInputError, match=r"runtime 'onnxruntime' cannot load .*garbage\.onnx"):
        open_session("onnxruntime", bad)
    with pytest.raises(BadInputError, match="loads a path to an .onnx file, got Linear"):
        open_session("onnxruntime", torch.nn.Linear(2, 2))


def test_onnxruntime_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    ok, reason = RUNTIMES.get("onnxruntime").can_run_here("cpu")
    assert (ok, reason) == (False, "onnxruntime is not installed: pip install onnxruntime")


def test_torch_session_leaves_the_model_alone(model: torch.nn.Module) -> None:
    train_copy = tiny_vit().train()
    with open_session("torch", train_copy) as sess:
        out = sess.run({"input": _x(3)})[0]
    assert train_copy.training
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(_x(3))).numpy(), rtol=1e-5, atol=1e-6)


def test_torch_threads_applied_and_restored(model: torch.nn.Module) -> None:
    before = torch.get_num_threads()
    with open_session("torch", model, threads=1) as sess:
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)  # something else changes it: the next run re-applies
        sess.run({"input": _x(1)})
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_torch_model_without_example_inputs_has_unknown_shape_and_dtype() -> None:
    with open_session("torch", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()) as sess:
        assert sess.inputs == (TensorSpec("input", None, None),)
        (out,) = sess.run({"input": np.ones((2, 2, 2), np.float32)})
        assert out.shape == (2, 3)


def test_torch_session_keeps_token_ids_integer() -> None:
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    with open_session("torch", emb, precision="fp32") as sess:
        (out,) = sess.run({"input": np.array([[1, 2, 3]], dtype=np.int64)})
        ref = emb(torch.tensor([[1, 2, 3]])).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6)


class _Scripted(Session):
    """A runtime that returns whatever the test scripts, to test the base class's result checks."""

    formats = frozenset({"test"})
    result: Any = None

    @classmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        return True, ""

    def _load_impl(self, source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return [TensorSpec("input", ("batch", 2), "float32")], [TensorSpec("logits", ("batch", 3), "float32")]

    def _run_impl(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ([np.zeros((4, 3), np.float32)], r"output 'logits' axis 0 \('batch'\) is 4 but 'batch' is 2"),
        ([np.zeros((2, 3)), np.zeros((2, 3))], r"returned 2 values; expected a list of 1 arrays"),
        ([[0.0, 1.0, 2.0]], r"output 'logits' is a list, not a numpy array"),
        (RuntimeError("kernel exploded"), r"failed running <NoneType object>: RuntimeError: kernel exploded"),
    ],
)
def test_base_checks_runtime_results(result: Any, match: str) -> None:
    sess = _Scripted.load(None)
    sess.result = result
    with pytest.raises(SessionError, match=match):
        sess.run({"input": np.zeros((2, 2), np.float32)})


def test_import_loads_no_optional_runtime() -> None:
    code = (
        "import sys, compress.runtime, compress.bench;"
        "bad = [m for m in ('onnxruntime', 'tensorrt') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_torch_load_leaves_rng_and_threads_alone_on_failure(model: torch.nn.Module, tmp_path: Path) -> None:
    state = torch.get_rng_state()
    open_session("torch", model).close()
    assert torch.equal(torch.get_rng_state(), state)
    before = torch.get_num_threads()
    torch.save({"x": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(BadInputError, match="not a compress model file"):
        open_session("torch", tmp_path / "plain.pt", threads=1)
    assert torch.get_num_threads() == before
