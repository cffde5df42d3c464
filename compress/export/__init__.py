"""Export to deployable formats (ONNX FP32 and FP16, INT8 Q/DQ, INT4 weight-only, TensorRT engines), parity
checks, a model card and safe ONNX file I/O (external data)."""

from compress.export.config import (
    ExportFormat as ExportFormat,
)
from compress.export.config import (
    Fp16ExportConfig as Fp16ExportConfig,
)
from compress.export.config import (
    Int4ExportConfig as Int4ExportConfig,
)
from compress.export.config import (
    ParityToleranceConfig as ParityToleranceConfig,
)
from compress.export.config import (
    ParityTolerancesConfig as ParityTolerancesConfig,
)
from compress.export.config import (
    TensorRTExportConfig as TensorRTExportConfig,
)
from compress.export.fp16 import (
    Fp16Conversion as Fp16Conversion,
)
from compress.export.fp16 import (
    convert_to_fp16 as convert_to_fp16,
)
from compress.export.fp16 import (
    export_onnx_fp16 as export_onnx_fp16,
)
from compress.export.fp16 import (
    fp16_summary as fp16_summary,
)
from compress.export.int4 import (
    export_onnx_int4 as export_onnx_int4,
)
from compress.export.int4 import (
    int4_model as int4_model,
)
from compress.export.int4 import (
    int4_summary as int4_summary,
)
from compress.export.onnx import export_onnx as export_onnx
from compress.export.onnx import load_onnx as load_onnx
from compress.export.onnx import write_onnx as write_onnx
from compress.export.parity import (
    check_parity as check_parity,
)
from compress.export.parity import (
    compare_outputs as compare_outputs,
)
from compress.export.parity import (
    parity as parity,
)
from compress.export.parity import (
    session_parity as session_parity,
)
from compress.export.qdq import export_onnx_qdq as export_onnx_qdq
from compress.export.qdq import qdq_summary as qdq_summary
