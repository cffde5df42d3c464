"""Runtimes: one ``Session`` interface over ONNX Runtime, eager torch and later backends.

``open_session(runtime, source, device=, threads=)`` loads an artifact into a
registered runtime; ``Session.run({"input": x}) -> [logits]`` runs it on NumPy
arrays. Importing this package registers the built-in runtimes without
importing their optional packages (``onnxruntime`` loads on first use).
"""

from compress.runtime import onnxruntime as _onnxruntime  # noqa: F401  (registers 'onnxruntime')
from compress.runtime import torch_eager as _torch_eager  # noqa: F401  (registers 'torch')
from compress.runtime.base import (
    RUNTIMES as RUNTIMES,
    Session as Session,
    SessionError as SessionError,
    TensorSpec as TensorSpec,
    list_runtimes as list_runtimes,
    open_session as open_session,
    register_runtime as register_runtime,
)
from compress.runtime.onnxruntime import OrtSession as OrtSession
from compress.runtime.torch_eager import TorchSession as TorchSession
