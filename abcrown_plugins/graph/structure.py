"""One structure description for any network: a traced graph of typed operations.

:func:`structure` traces a model once with ``torch.fx`` (modules whose type has
a kind are leaves: convolutions, BatchNorm, ReLU, pooling, ...) and gives a
:class:`NetGraph`: its operations in execution order, each with a *kind* (the
key every consumer's rules are keyed by: ``conv``, ``linear``, ``bn``, ``relu``,
``maxpool``, ``avgpool``, ``flatten``, ``reshape``, ``add``, ``sub``, ``mul``,
``div``, ``concat``, ``normalize``, ``identity``) and the indices of the
operations it reads. Shape arithmetic (``x.size(0)``) and constants are not
operations: they are evaluated where they are used.

The zoo's networks, fx GraphModules from the ONNX importer and users' own
modules all get the same description; bounds (:mod:`abcrown_plugins.bounds.ibp`)
walk it with one rule per kind. An operation without a kind is one
:class:`UserError` naming it and the node, listing what is supported.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from abcrown_plugins.errors import UserError
from model_zoo.layers import Normalize

__all__ = ["FUNCTION_KINDS", "METHOD_KINDS", "MODULE_KINDS", "NetGraph", "Op", "fetch_attr", "kind_of",
           "kind_of_module", "structure", "trace"]

#: Module type -> kind (checked in order with isinstance, so subclasses and parametrized modules match).
#: Every consumer keys its rules by these kinds; a kind a consumer has no rule for is its own clear error
#: (IBP has no rule for sigmoid; channel coupling treats it as keeping channels aligned).
MODULE_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (Normalize, "normalize"),
    (nn.Conv2d, "conv"),
    (nn.Linear, "linear"),
    (nn.BatchNorm2d, "bn"),
    (nn.BatchNorm1d, "bn"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "maxpool"), (nn.AdaptiveMaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"), (nn.AdaptiveAvgPool2d, "avgpool"),
    (nn.Flatten, "flatten"),
    (nn.Identity, "identity"), (nn.Dropout, "identity"), (nn.Dropout2d, "identity"),
    (nn.Upsample, "upsample"), (nn.ZeroPad2d, "pad"),
    (nn.ReLU6, "activation"), (nn.LeakyReLU, "activation"), (nn.Tanh, "activation"), (nn.Hardtanh, "activation"),
    (nn.ELU, "activation"), (nn.GELU, "activation"), (nn.SiLU, "activation"), (nn.Hardswish, "activation"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "sigmoid"), (nn.Softplus, "sigmoid"),
    (nn.Softmax, "softmax"), (nn.LogSoftmax, "softmax"),
)

#: Function called in a traced forward -> kind.
FUNCTION_KINDS: dict[Callable, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.sub: "sub", torch.sub: "sub", operator.isub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.imul: "mul",
    operator.truediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.neg: "neg", torch.neg: "neg",
    torch.cat: "concat", torch.concat: "concat", torch.concatenate: "concat",
    torch.reshape: "reshape", torch.flatten: "flatten", torch.mean: "mean",
    F.relu: "relu", torch.relu: "relu", F.dropout: "identity",
    F.relu6: "activation", F.leaky_relu: "activation", torch.tanh: "activation", F.hardtanh: "activation",
    F.elu: "activation", F.gelu: "activation", F.silu: "activation",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.softplus: "sigmoid",
    F.max_pool2d: "maxpool_fn", F.avg_pool2d: "avgpool_fn", F.adaptive_avg_pool2d: "avgpool_fn",
    F.adaptive_max_pool2d: "maxpool_fn", F.interpolate: "upsample",
    torch.softmax: "softmax", F.softmax: "softmax", F.log_softmax: "softmax",
    torch.matmul: "mixing", torch.transpose: "mixing", torch.permute: "mixing", torch.squeeze: "mixing",
    torch.unsqueeze: "mixing", F.conv2d: "mixing", F.linear: "mixing",
}

#: Tensor method called in a traced forward -> kind.
METHOD_KINDS: dict[str, str] = {
    "add": "add", "add_": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg",
    "view": "reshape", "reshape": "reshape", "flatten": "flatten", "mean": "mean",
    "relu": "relu", "relu_": "relu", "tanh": "activation", "sigmoid": "sigmoid",
    "contiguous": "identity", "clone": "identity", "detach": "identity", "float": "identity",
    "double": "identity", "to": "identity",
    "softmax": "softmax", "log_softmax": "softmax", "permute": "mixing", "transpose": "mixing",
    "squeeze": "mixing", "unsqueeze": "mixing", "matmul": "mixing", "chunk": "mixing", "split": "mixing",
}

#: Calls that compute shapes or python numbers (evaluated, never bounded).
_SHAPE_METHODS = {"size", "dim", "numel"}
_SHAPE_FUNCTIONS = {getattr, operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub}


def kind_of_module(module: nn.Module) -> str | None:
    for cls, kind in MODULE_KINDS:
        if isinstance(module, cls):
            return kind
    return None


def kind_of(node: fx.Node, root: nn.Module) -> str | None:
    """The kind of an fx call node (None: no kind)."""
    if node.op == "call_module":
        return kind_of_module(root.get_submodule(node.target))
    if node.op == "call_function":
        try:
            return FUNCTION_KINDS.get(node.target)
        except TypeError:  # an unhashable callable
            return None
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target)
    return None


def trace(model: nn.Module, what: str = "") -> tuple[nn.Module, fx.Graph]:
    """``model``'s fx graph (its own for a GraphModule) and the module it refers to.

    Modules with a kind are leaves. Code fx cannot trace (data-dependent control flow)
    is one UserError; ``what`` says what needed the graph.
    """
    if isinstance(model, fx.GraphModule):
        return model, model.graph
    try:
        return model, _Tracer().trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...) for dynamic code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot read {what or 'the structure'} of {type(model).__name__}: torch.fx cannot trace "
                        f"it ({type(e).__name__}: {msg}); remove data-dependent control flow from forward, or "
                        "import the network through ONNX") from None


@dataclass(frozen=True)
class Op:
    """One operation: ``kind``, the operations whose outputs it reads (``inputs``), and its fx node.

    ``name`` is the module's qualified name for a module (``"3"``, ``"5.conv2"``),
    else the fx node's name. ``args`` is the fx node's arguments, where an
    operation's output stands as ``Ref(i)``.
    """

    index: int
    kind: str
    name: str
    inputs: tuple[int, ...]
    module: nn.Module | None
    node: fx.Node


@dataclass(frozen=True)
class NetGraph:
    """A network's operations in execution order; ``output`` is the index of the result."""

    ops: tuple[Op, ...]
    output: int
    graph: fx.Graph
    root: nn.Module
    consumers: tuple[tuple[int, ...], ...]   # per operation, the operations reading its output
    shape_read: frozenset[int]               # operations whose output's shape some shape computation reads
    index: dict[fx.Node, int]                # fx node -> the index of its operation

    def users(self, index: int) -> list[Op]:
        return [self.ops[i] for i in self.consumers[index]]

    def by_kind(self, *kinds: str) -> list[Op]:
        return [op for op in self.ops if op.kind in kinds]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return kind_of_module(m) is not None or super().is_leaf_module(m, qualname)


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"node '{node.name}' ({node.op} {target})"


def _is_shape(node: fx.Node, shape_nodes: set[fx.Node]) -> bool:
    """A node computing a shape or a python number from shapes (``x.size(0)``, ``x.shape[1] * 2``)."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target in _SHAPE_FUNCTIONS:
        if node.target is getattr:
            return node.args[1] == "shape"
        nodes = [a for a in node.all_input_nodes]
        return bool(nodes) and all(a in shape_nodes for a in nodes)
    return False


def _trace(model: nn.Module) -> NetGraph:
    root, graph = trace(model)
    ops: list[Op] = []
    index: dict[fx.Node, int] = {}
    shape_nodes: set[fx.Node] = set()
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if ops:
                raise UserError(f"{_describe(node)}: a classifier has one input")
            kind, module = "input", None
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            (res,) = node.args
            if not isinstance(res, fx.Node) or res not in index:
                raise UserError(f"{_describe(node)}: the network's output is not one tensor")
            output = index[res]
            continue
        elif _is_shape(node, shape_nodes):
            shape_nodes.add(node)
            continue
        else:
            module = root.get_submodule(node.target) if node.op == "call_module" else None
            kind = kind_of(node, root)
        if kind is None:
            what = (f"no rule for layer '{node.target}' ({type(module).__name__})" if node.op == "call_module"
                    else f"{_describe(node)} is not supported")
            raise UserError(f"{what}; supported: modules "
                            f"{sorted({c.__name__ for c, _ in MODULE_KINDS})}, functions add/sub/mul/div/cat/"
                            "reshape/flatten/relu and the view/reshape/flatten/relu methods")
        inputs = tuple(index[a] for a in node.all_input_nodes if a in index)
        if kind != "input" and not inputs:
            raise UserError(f"{_describe(node)} does not read the network's input")
        name = node.target if node.op == "call_module" else node.name
        index[node] = len(ops)
        ops.append(Op(len(ops), kind, name, inputs, module, node))
    if output is None:
        raise UserError("the traced network has no output")
    consumers = tuple(tuple(o.index for o in ops if op.index in o.inputs) for op in ops)
    shape_read = frozenset(op.index for op in ops if any(u in shape_nodes for u in op.node.users))
    return NetGraph(tuple(ops), output, graph, root, consumers, shape_read, index)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, NetGraph]" = weakref.WeakKeyDictionary()


def _still_valid(model: nn.Module, g: NetGraph) -> bool:
    """The traced modules are still the model's (nobody swapped a submodule since)."""
    for op in g.ops:
        if op.module is not None and model.get_submodule(op.node.target) is not op.module:
            return False
    return True


def structure(model: nn.Module) -> NetGraph:
    """The :class:`NetGraph` of ``model`` (traced once, cached while its submodules stay the same)."""
    g = _CACHE.get(model)
    if g is None or not _still_valid(model, g):
        g = _trace(model)
        _CACHE[model] = g
    return g


def evaluate_arg(arg: Any, env: dict[fx.Node, Any], root: nn.Module) -> Any:
    """An fx argument's value: operations' outputs from ``env``, constants fetched, shapes computed."""
    if isinstance(arg, fx.Node):
        if arg in env:
            return env[arg]
        if arg.op == "get_attr":
            value = fetch_attr(root, arg.target)
        else:
            fn = arg.target if arg.op == "call_function" else None
            args = [evaluate_arg(a, env, root) for a in arg.args]
            kwargs = {k: evaluate_arg(v, env, root) for k, v in arg.kwargs.items()}
            value = fn(*args, **kwargs) if fn is not None else getattr(args[0], arg.target)(*args[1:], **kwargs)
        env[arg] = value
        return value
    if isinstance(arg, (list, tuple)):
        return type(arg)(evaluate_arg(a, env, root) for a in arg)
    return arg


def fetch_attr(root: nn.Module, target: str) -> Any:
    """The attribute ``target`` (dotted, as a ``get_attr`` node names it) of ``root``."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
