"""``torchao-int8``: torchao's dynamic-activation INT8 / INT8-weight kernels on CUDA, compiled.

The GPU INT8 path that can be measured without TensorRT. ``precision: int8`` quantizes; a float
precision (``fp32``, ``bf16``) compiles the model unquantized on the same runtime, which is how
the teacher is measured beside the INT8 artifact (same compiled runtime, same shapes). The float model (the ``torch`` artifact:
the QAT-trained float weights) is quantized at load time with
``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` and compiled with CUDA graphs.
Note: torchao computes its own scales (per-channel weights, per-token dynamic activations);
it does not use the learned QAT scales. Needs ``pip install torchao`` and a CUDA GPU.
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

from compress.errors import MissingDependency
from compress.runtime.base import register_runtime
from compress.runtime.torch_compile import compile_for, reset_compiled
from compress.runtime.torch_eager import TorchSession


@register_runtime("torchao-int8")
class TorchaoInt8Session(TorchSession):
    """A float torch model quantized by torchao to dynamic INT8 activations and INT8 weights."""

    devices = frozenset({"cuda"})

    @classmethod
    def _can_run_here_impl(cls, device: str) -> tuple[bool, str]:
        ok, why = super()._can_run_here_impl(device)  # CUDA first: the more fundamental reason
        if not ok:
            return ok, why
        if importlib.util.find_spec("torchao") is None:
            return False, "torchao is not installed: pip install torchao"
        return True, ""

    def _resolve_dtype(self) -> torch.dtype | None:
        # what torchao leaves in float (activations between kernels, norms) runs in bf16
        if self._precision in (None, "int8", "bf16"):
            return torch.bfloat16
        return torch.float32 if self._precision == "fp32" else None

    def _prepare(self, model: nn.Module) -> nn.Module:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as e:  # an installed torchao too old or too new for this API
            raise MissingDependency(f"torchao lacks Int8DynamicActivationInt8WeightConfig ({e}); pip install -U torchao") from e
        if self._precision in (None, "int8"):
            if not self._owns_model:  # quantize_ replaces modules in place: never in the caller's model
                model = copy.deepcopy(model)
            quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_int8_kernel_fits)
            self.kept_float = sorted(
                n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _int8_kernel_fits(m, n)
            )
        return compile_for(model, self.device)

    def _close_impl(self) -> None:
        super()._close_impl()
        reset_compiled()


def _int8_kernel_fits(module: nn.Module, fqn: str) -> bool:
    """Whether torchao's INT8 matmul (``torch._int_mm``) can serve this Linear for every batch size.

    ``torch._int_mm`` needs both weight dimensions to be multiples of 8 and more than 16 rows; a
    Linear that sees one row per example (the classifier on the [CLS] token, ``head``) gets fewer
    than 17 rows at small batches, so it stays in bf16 (measured on an H100 with torchao 0.17:
    "self.size(0) needs to be greater than 16, but got 1"; "mat2.size(1) ... multiple of 8, but got 90").
    Prune with ``round_to: 8`` to keep widths eligible.
    """
    if not isinstance(module, nn.Linear):
        return False
    if module.in_features % 8 or module.out_features % 8:
        return False
    return not fqn.endswith("head")
