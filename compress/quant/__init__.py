"""Quantization-aware training: fake quantizers with LSQ scales, prepare, calibrate, export mode.

Example:
    >>> import torch
    >>> from compress.models import build_model
    >>> from compress.quant import QuantConfig, calibrate_, prepare_qat
    >>> model = prepare_qat(build_model("tiny-vit", {"dim": 16, "depth": 1}), QuantConfig())
    >>> calibrate_(model, lambda m: m(torch.randn(4, 1, 8, 8)))
    >>> model(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from compress.quant._fake_quant import (
    FakeQuantizer as FakeQuantizer,
    QuantLinear as QuantLinear,
    QuantMatMul as QuantMatMul,
    int_range as int_range,
    lsq_fake_quant as lsq_fake_quant,
)
from compress.quant._onnx import onnx_export_mode as onnx_export_mode
from compress.quant.api import (
    QUANT_MODULES as QUANT_MODULES,
    QuantModuleRule as QuantModuleRule,
    calibrate_ as calibrate_,
    is_quantized as is_quantized,
    prepare_qat as prepare_qat,
    quantized_modules as quantized_modules,
    quantizers as quantizers,
    register_quant_module as register_quant_module,
    set_quant_enabled_ as set_quant_enabled_,
)
from compress.quant.config import (
    ActivationQuantConfig as ActivationQuantConfig,
    CalibrationConfig as CalibrationConfig,
    QuantConfig as QuantConfig,
    WeightQuantConfig as WeightQuantConfig,
)
