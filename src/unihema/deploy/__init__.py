"""Deployment formats of UniHema models: the ONNX export of the vision path (:mod:`.onnx_export`)."""

from unihema.deploy.onnx_export import (
    DEFAULT_OPSET,
    EXPORT_TASKS,
    OnnxExport,
    compare_with_onnxruntime,
    example_inputs,
    export_onnx,
    export_pretrained,
)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_TASKS",
    "OnnxExport",
    "compare_with_onnxruntime",
    "example_inputs",
    "export_onnx",
    "export_pretrained",
]
