"""Export to deployable formats (ONNX FP32 and FP16, INT8 Q/DQ, TensorRT engines) and parity checks."""

from compress.export.config import (
    ExportFormat as ExportFormat,
    Fp16ExportConfig as Fp16ExportConfig,
    ParityToleranceConfig as ParityToleranceConfig,
    ParityTolerancesConfig as ParityTolerancesConfig,
    TensorRTExportConfig as TensorRTExportConfig,
)
from compress.export.fp16 import (
    Fp16Conversion as Fp16Conversion,
    convert_to_fp16 as convert_to_fp16,
    export_onnx_fp16 as export_onnx_fp16,
    fp16_summary as fp16_summary,
)
from compress.export.onnx import export_onnx as export_onnx
from compress.export.parity import (
    check_parity as check_parity,
    compare_outputs as compare_outputs,
    parity as parity,
    session_parity as session_parity,
)
from compress.export.qdq import export_onnx_qdq as export_onnx_qdq, qdq_summary as qdq_summary
