"""Export to deployable formats (ONNX FP32 and INT8 Q/DQ)."""

from compress.export.onnx import export_onnx as export_onnx
