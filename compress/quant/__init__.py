"""Quantization-aware training: fake quantizers (LSQ, ternary TWN), per-layer overrides, prepare,
calibrate, export mode, and Teacher Intervention (``compress.quant.intervention``).

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
    WEIGHT_QUANTIZERS as WEIGHT_QUANTIZERS,
)
from compress.quant._fake_quant import (
    FakeQuantizer as FakeQuantizer,
)
from compress.quant._fake_quant import (
    QuantLinear as QuantLinear,
)
from compress.quant._fake_quant import (
    QuantConv2d as QuantConv2d,
)
from compress.quant._fake_quant import (
    QuantMatMul as QuantMatMul,
)
from compress.quant._fake_quant import (
    int_range as int_range,
)
from compress.quant._fake_quant import (
    lsq_fake_quant as lsq_fake_quant,
)
from compress.quant._onnx import onnx_export_mode as onnx_export_mode
from compress.quant.bn_fold import batchnorm_pairs as batchnorm_pairs
from compress.quant.bn_fold import fold_batchnorm as fold_batchnorm
from compress.quant._ternary import (
    TernaryWeightQuantizer as TernaryWeightQuantizer,
)
from compress.quant._ternary import (
    twn_ternarize as twn_ternarize,
)
from compress.quant.api import (
    QUANT_MODULES as QUANT_MODULES,
)
from compress.quant.api import (
    QuantModuleRule as QuantModuleRule,
)
from compress.quant.api import (
    calibrate_ as calibrate_,
)
from compress.quant.api import (
    is_quantized as is_quantized,
)
from compress.quant.api import (
    prepare_qat as prepare_qat,
)
from compress.quant.api import (
    quantized_modules as quantized_modules,
)
from compress.quant.api import (
    quantizers as quantizers,
)
from compress.quant.api import (
    register_quant_module as register_quant_module,
)
from compress.quant.api import (
    set_quant_enabled_ as set_quant_enabled_,
)
from compress.quant.config import (
    ActivationQuantConfig as ActivationQuantConfig,
)
from compress.quant.config import (
    CalibrationConfig as CalibrationConfig,
)
from compress.quant.config import (
    InterventionLossesConfig as InterventionLossesConfig,
)
from compress.quant.config import (
    QuantConfig as QuantConfig,
)
from compress.quant.config import (
    QuantOverrideConfig as QuantOverrideConfig,
)
from compress.quant.config import (
    TeacherInterventionConfig as TeacherInterventionConfig,
)
from compress.quant.config import (
    WeightQuantConfig as WeightQuantConfig,
)
from compress.quant.intervention import (
    ATTENTION_LAYOUTS as ATTENTION_LAYOUTS,
)
from compress.quant.intervention import (
    AttentionLayout as AttentionLayout,
)
from compress.quant.intervention import (
    InterventionObjective as InterventionObjective,
)
from compress.quant.intervention import (
    block_output_mse as block_output_mse,
)
from compress.quant.intervention import (
    find_attention_layout as find_attention_layout,
)
from compress.quant.intervention import (
    intervention_schedule as intervention_schedule,
)
from compress.quant.intervention import (
    train_with_intervention as train_with_intervention,
)
