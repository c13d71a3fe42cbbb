"""Export: ONNX networks, VNNLIB properties, VNN-COMP benchmark folders."""

from abcrown_plugins.export.benchmark import export_benchmark, generate_properties, parse_eps
from abcrown_plugins.export.onnx_io import export_onnx, onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import (
    RobustnessProperty,
    VnnlibError,
    parse_robustness,
    read_robustness_vnnlib,
    write_box_vnnlib,
    write_robustness_vnnlib,
)

__all__ = ["RobustnessProperty", "VnnlibError", "export_benchmark", "export_onnx", "generate_properties",
           "onnx_session", "parse_eps", "parse_robustness", "read_robustness_vnnlib", "run_onnx",
           "write_box_vnnlib", "write_robustness_vnnlib"]
