"""Dynamic batch and sequence axes: one exported HF BERT file runs any batch size and sequence length,
in every ONNX precision (fp32, fp16, int8 S8S8 and U8S8, int4 DQ and MatMulNBits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.export import export_onnx, export_onnx_fp16, export_onnx_int4, export_onnx_qdq, int4_model
from compress.quant import QuantConfig, calibrate_, prepare_qat
from tests._helpers.models import tiny_bert

VOCAB, MAX_POS = 100, 32


def _bert() -> torch.nn.Module:
    return tiny_bert(vocab_size=VOCAB, max_position_embeddings=MAX_POS)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each format traced on a [2, 12] batch, with the torch model it must match."""
    root = tmp_path_factory.mktemp("dyn")
    model = _bert()
    torch.manual_seed(1)
    x = torch.randint(1, VOCAB, (2, 12))
    qat = prepare_qat(_bert(), QuantConfig())
    calibrate_(qat, lambda m: m(torch.randint(1, VOCAB, (16, 12))))
    qat.eval()
    int4 = int4_model(model, block_size=16)
    out: dict[str, Any] = {}
    out["fp32"] = (export_onnx(model, root / "fp32.onnx", x), model, 1e-4)
    export_onnx_fp16(model, root / "fp16.onnx", x)
    out["fp16"] = (root / "fp16.onnx", model, 5e-2)
    for flavour in ("s8s8", "u8s8"):
        # Q/DQ rounding may flip a code where torch and ORT differ by float rounding: small, not zero
        out[f"int8-{flavour}"] = (
            export_onnx_qdq(qat, root / f"{flavour}.onnx", x, flavour=flavour),
            qat,
            5e-2,
        )
    for flavour in ("dq", "matmulnbits"):
        out[f"int4-{flavour}"] = (
            export_onnx_int4(int4, root / f"int4-{flavour}.onnx", x, flavour=flavour),
            int4,
            1e-4,
        )
    return out


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int8-s8s8", "int8-u8s8", "int4-dq", "int4-matmulnbits"])
def test_batch_and_sequence_axes_are_symbolic_and_work(files: dict[str, Any], fmt: str):
    path, model, atol = files[fmt]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # the file's own arithmetic
    sess = ort.InferenceSession(str(Path(path)), so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("input", ["batch", "sequence"], "tensor(int64)")
    assert sess.get_outputs()[0].shape == ["batch", 5]
    gen = torch.Generator().manual_seed(2)
    for shape in ((1, 12), (5, 7), (3, MAX_POS)):  # other batch sizes and lengths than the traced [2, 12]
        x = torch.randint(1, VOCAB, shape, generator=gen)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (shape[0], 5)
        assert np.abs(got - ref).max() < atol, (fmt, shape)
