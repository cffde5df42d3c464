"""``compress bench``'s synthetic inputs: token length from ``--seq`` or the target, fixed axes checked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compress.bench.artifact import _input_maker
from compress.config.schema import TargetConfig
from compress.errors import BadInputError
from compress.runtime import TensorSpec


def _sess(*specs: TensorSpec) -> SimpleNamespace:
    return SimpleNamespace(source="m.onnx", inputs=specs)


def _target(seq: int | None) -> TargetConfig:
    return TargetConfig(name="t", runtime="onnxruntime", artifact="onnx-fp32", sequence_length=seq)


def test_token_inputs_take_seq_then_the_targets_length() -> None:
    tokens = _sess(TensorSpec("input", ("batch", "sequence"), "int64"))
    make, fed = _input_maker(tokens, None, _target(64))
    assert fed == 64 and make(3)["input"].shape == (3, 64)
    make, fed = _input_maker(tokens, 16, _target(64))
    assert fed == 16 and make(2)["input"].shape == (2, 16)
    with pytest.raises(BadInputError, match=r"give its size with --seq N \(or set the target's sequence_length\)"):
        _input_maker(tokens, None, _target(None))


def test_image_inputs_ignore_the_targets_length() -> None:
    image = _sess(TensorSpec("input", ("batch", 1, 8, 8), "float32"))
    make, fed = _input_maker(image, None, _target(128))
    assert fed is None and make(2)["input"].shape == (2, 1, 8, 8)


def test_a_fixed_token_axis_of_another_length_is_bad_input() -> None:
    engine = _sess(TensorSpec("input", ("batch", 64), "int32"))
    make, fed = _input_maker(engine, None, _target(64))
    assert fed == 64 and make(1)["input"].shape == (1, 64)
    with pytest.raises(BadInputError, match=r"fixed sequence length of 64 .* sequence_length 128 of target 't'.*--seq 64"):
        _input_maker(engine, None, _target(128))
    with pytest.raises(BadInputError, match=r"but --seq asks for 32; give --seq 64"):
        _input_maker(engine, 32, _target(None))
