"""``torch-compile``: a torch model compiled with inductor; CUDA graphs on GPU.

On CUDA the model is compiled with ``mode="reduce-overhead"``, which captures CUDA graphs: at our
model sizes eager PyTorch on an H100 is launch-bound (2–5 ms whatever the model, ../shared/ENV.md),
so latency ratios and gates on GPU must use a graph-captured runtime, for the teacher and the
artifact alike. On CPU it uses inductor's default mode. ``dynamic=False``: each batch size is
compiled once (during warm-up), then replayed. Precision from the target (fp32, fp16, bf16).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.runtime.base import register_runtime
from compress.runtime.torch_eager import TorchSession


@register_runtime("torch-compile")
class TorchCompileSession(TorchSession):
    """A compress model (or ``nn.Module``) under ``torch.compile``."""

    def _prepare(self, model: nn.Module) -> nn.Module:
        mode = "reduce-overhead" if self.device == "cuda" else "default"
        return torch.compile(model, mode=mode, dynamic=False, fullgraph=False)
