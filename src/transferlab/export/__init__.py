"""Export a run's final model for use outside transferlab (ONNX + a preprocessing description beside it)."""

from transferlab.export.onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
