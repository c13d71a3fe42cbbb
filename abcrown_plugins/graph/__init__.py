"""Network structure: one traced description of any network, and the ONNX importer.

:func:`structure` gives the :class:`NetGraph` of a model (zoo, imported or the
user's own): typed operations in execution order, which bounds, pruning and
export consume through rules keyed by the operation's kind.
:func:`import_onnx` turns an ONNX classifier into an ``fx.GraphModule`` made of
operations of those kinds.
"""

from abcrown_plugins.graph.onnx_import import CONVERTERS, import_onnx, onnx_input_shape
from abcrown_plugins.graph.structure import FUNCTION_KINDS, METHOD_KINDS, MODULE_KINDS, NetGraph, Op, structure

__all__ = ["CONVERTERS", "FUNCTION_KINDS", "METHOD_KINDS", "MODULE_KINDS", "NetGraph", "Op", "import_onnx",
           "onnx_input_shape", "structure"]
