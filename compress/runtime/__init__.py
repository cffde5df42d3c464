"""Runtimes: one ``Session`` interface over ONNX Runtime, eager torch and later backends.

``open_session(runtime, source, device=, threads=)`` loads an artifact into a
registered runtime; ``Session.run({"input": x}) -> [logits]`` runs it on NumPy
arrays. Importing this package registers the built-in runtimes without
importing their optional packages (``onnxruntime`` loads on first use).
"""

from compress.runtime import onnxruntime as _onnxruntime  # noqa: F401  (registers 'onnxruntime')
from compress.runtime import torch_eager as _torch_eager  # noqa: F401  (registers 'torch')
from compress.runtime import torch_compile as _torch_compile  # noqa: F401  (registers 'torch-compile')
from compress.runtime import torchao_int8 as _torchao_int8  # noqa: F401  (registers 'torchao-int8')
from compress.runtime import tensorrt as _tensorrt  # noqa: F401  (registers 'tensorrt'; imports tensorrt lazily)
from compress.runtime.base import (
    RUNTIMES as RUNTIMES,
)
from compress.runtime.base import (
    Session as Session,
)
from compress.runtime.base import (
    SessionError as SessionError,
)
from compress.runtime.base import (
    TensorSpec as TensorSpec,
)
from compress.runtime.base import (
    list_runtimes as list_runtimes,
)
from compress.runtime.base import (
    open_session as open_session,
)
from compress.runtime.base import (
    register_runtime as register_runtime,
)
from compress.runtime.onnxruntime import OrtSession as OrtSession
from compress.runtime.torch_eager import TorchSession as TorchSession
