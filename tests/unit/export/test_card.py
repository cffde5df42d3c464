"""The model card's Markdown: inputs, stages, artifacts with parity, notes."""

from __future__ import annotations

from compress.export.card import ModelCardInfo, render_model_card


def test_render_model_card():
    info = ModelCardInfo(
        name="digits",
        teacher={"family": "tiny-vit", "config": {"dim": 64}},
        stages=[("01-finetune", "finetune", {"val_accuracy": 0.95}), ("02-qat", "qat", {})],
        data={"source": "digits", "val_examples": 270},
        task={"num_classes": 10, "labels": [str(i) for i in range(25)]},
        artifacts=[
            {
                "name": "onnx-int4",
                "file": "model.int4.onnx",
                "format": "onnx",
                "precision": "int4",
                "size_bytes": 123_456,
                "parity": {"top1_agreement": 1.0, "max_abs_error": 2e-6, "cosine": 1.0, "accuracy": 0.93},
                "notes": ["simplified with onnxslim"],
            },
            {
                "name": "tensorrt-int8",
                "file": "model.int8.engine",
                "format": "tensorrt",
                "precision": "int8",
                "size_bytes": 900,
                "parity": None,
            },
        ],  # fmt: skip
        parity_split="val",
        versions={"onnx": "1.23.2"},
    )
    md = render_model_card(info)
    assert md.startswith("# Model card: digits\n")
    assert '- **Teacher**: family: tiny-vit, config: {"dim": 64}' in md
    assert "| 01-finetune | finetune | val_accuracy 0.95 |" in md
    assert "| onnx-int4 | `model.int4.onnx` | onnx | int4 | 0.123 MB | 1 | 2e-06 | 1 | 0.93 |" in md
    assert "| tensorrt-int8 | `model.int8.engine` | tensorrt | int8 | 900 B | not measured |" in md
    assert "- onnx-int4: simplified with onnxslim" in md
    assert "... (25 in all)" in md and "`val` split" in md
