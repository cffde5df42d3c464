"""Export to deployable formats (ONNX FP32, INT8 Q/DQ, TensorRT engines) and parity checks against torch."""

from compress.export.config import (
    ExportFormat as ExportFormat,
    ParityToleranceConfig as ParityToleranceConfig,
    ParityTolerancesConfig as ParityTolerancesConfig,
    TensorRTExportConfig as TensorRTExportConfig,
)
from compress.export.onnx import export_onnx as export_onnx
from compress.export.parity import (
    check_parity as check_parity,
    compare_outputs as compare_outputs,
    parity as parity,
    session_parity as session_parity,
)
from compress.export.qdq import export_onnx_qdq as export_onnx_qdq, qdq_summary as qdq_summary
