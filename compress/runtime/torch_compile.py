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
        return compile_for(model, self.device)

    def _close_impl(self) -> None:
        super()._close_impl()
        reset_compiled()


def compile_for(model: nn.Module, device: str) -> nn.Module:
    """``torch.compile`` with CUDA graphs on GPU (``reduce-overhead``), inductor's default on CPU."""
    # Every instance of a model class shares its forward's code object, and dynamo counts
    # recompiles per code object: sessions reset on close (``reset_compiled``), and a session may
    # compile a few shapes (each timed batch size, a last partial batch) without falling back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    mode = "reduce-overhead" if device == "cuda" else "default"
    return torch.compile(model, mode=mode, dynamic=False, fullgraph=False)


def reset_compiled() -> None:
    """Forget compiled graphs, so the next session compiles its own model from scratch."""
    torch._dynamo.reset()
