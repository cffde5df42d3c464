"""Export to deployable formats (ONNX FP32 and INT8 Q/DQ) and parity checks against torch."""

from compress.export.config import (
    ExportFormat as ExportFormat,
)
from compress.export.config import (
    ParityToleranceConfig as ParityToleranceConfig,
)
from compress.export.config import (
    ParityTolerancesConfig as ParityTolerancesConfig,
)
from compress.export.onnx import export_onnx as export_onnx
from compress.export.parity import check_parity as check_parity
from compress.export.parity import parity as parity
from compress.export.qdq import export_onnx_qdq as export_onnx_qdq
from compress.export.qdq import qdq_summary as qdq_summary
