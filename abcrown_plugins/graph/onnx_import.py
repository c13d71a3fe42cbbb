"""ONNX classifier -> ``torch.fx.GraphModule``, checked against onnxruntime before use.

One converter per ONNX op type (:data:`CONVERTERS`), each emitting plain torch
pieces: ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm1d/2d``, ``nn.ReLU``,
``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Flatten``
modules, and ``operator.add/sub/mul/truediv``, ``torch.cat``, ``torch.reshape``
calls, constants as buffers. That is the vocabulary every structure consumer of
the project (:mod:`abcrown_plugins.graph.structure`) has a rule for, so an
imported network is bounded, pruned, compacted and exported like a zoo one.

Shapes and constant sub-graphs are read off one onnxruntime run with every
intermediate value exposed (batch 1): a value computed from initializers only is
a constant; a value computed from ``Shape`` (the ``x.view(x.size(0), -1)``
pattern) may only feed a ``Reshape``'s target, which becomes the observed output
shape with the batch dimension left free. Anything else (an op without a
converter, ``Div`` by a tensor, ``Mul`` of two tensors, asymmetric padding, a
shape computation that feeds data) is one :class:`UserError` naming the node and
its op.

Why not onnx2torch: it requires torchvision, which has no CPU build for the
pinned torch; α,β-CROWN's onnx2pytorch fork is not on PyPI.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from abcrown_plugins.errors import UserError

__all__ = ["CONVERTERS", "import_onnx", "onnx_input_shape"]

#: ONNX ops whose output only describes shapes.
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Constant", "Identity",
              "Mul", "Div", "Add", "Sub", "ConstantOfShape", "Reshape"}


@dataclass
class _Build:
    """State of one conversion: the fx graph being written and what each ONNX value maps to."""

    model: onnx.ModelProto
    values: dict[str, np.ndarray]          # observed value of every ONNX tensor (batch 1)
    root: nn.Module = field(default_factory=nn.Module)
    graph: fx.Graph = field(default_factory=fx.Graph)
    env: dict[str, fx.Node] = field(default_factory=dict)     # ONNX value -> fx node (data)
    consts: set[str] = field(default_factory=set)             # ONNX values that are constants
    shape_only: set[str] = field(default_factory=set)         # values derived from Shape
    users: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    fused: set[str] = field(default_factory=set)              # nodes folded into an earlier one
    count: int = 0

    def add_module(self, node: onnx.NodeProto, kind: str, module: nn.Module, inp: fx.Node) -> fx.Node:
        self.count += 1
        name = f"{kind}{self.count}"
        self.root.add_module(name, module)
        return self.graph.call_module(name, (inp,))

    def const(self, value: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.values[value], copy=True))

    def const_node(self, value: str) -> fx.Node:
        self.count += 1
        name = f"const{self.count}"
        self.root.register_buffer(name, self.const(value).float())
        return self.graph.get_attr(name)

    def data(self, node: onnx.NodeProto, value: str) -> fx.Node:
        if value not in self.env:
            raise _unsupported(node, f"input '{value}' is not a data tensor here")
        return self.env[value]


def _unsupported(node: onnx.NodeProto, why: str) -> UserError:
    return UserError(f"ONNX node '{node.name or node.output[0]}' (op {node.op_type}): {why}; supported ops: "
                     f"{', '.join(sorted(CONVERTERS))} (and shape computations feeding Reshape)")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads2d(node: onnx.NodeProto, attrs: dict[str, Any]) -> tuple[int, int]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise _unsupported(node, f"auto_pad {attrs['auto_pad']!r}; export with explicit pads")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise _unsupported(node, f"pads {pads} (only symmetric 2-D padding)")
    return int(pads[0]), int(pads[1])


def _conv(b: _Build, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    w = b.const(node.input[1])
    if w.dim() != 4:
        raise _unsupported(node, f"a {w.dim() - 2}-D convolution (only 2-D)")
    groups = int(a.get("group", 1))
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), tuple(a.get("strides", (1, 1))),
                     _pads2d(node, a), tuple(a.get("dilations", (1, 1))), groups,
                     bias=len(node.input) > 2 and node.input[2] != "")
    with torch.no_grad():
        conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.copy_(b.const(node.input[2]))
    return b.add_module(node, "conv", conv, b.data(node, node.input[0]))


def _linear(w: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias.expand(w.shape[0]))
    return lin


def _gemm(b: _Build, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    if a.get("transA", 0) or node.input[1] not in b.consts:
        raise _unsupported(node, "Gemm with a transposed or non-constant weight")
    w = b.const(node.input[1]) * float(a.get("alpha", 1.0))
    w = w if a.get("transB", 0) else w.t()
    bias = b.const(node.input[2]) * float(a.get("beta", 1.0)) if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias.numel() not in (1, w.shape[0]):
        raise _unsupported(node, f"bias of shape {tuple(bias.shape)}")
    return b.add_module(node, "linear", _linear(w.contiguous(), None if bias is None else bias.reshape(-1)),
                        b.data(node, node.input[0]))


def _matmul(b: _Build, node: onnx.NodeProto) -> fx.Node:
    if node.input[1] not in b.consts or b.values[node.input[1]].ndim != 2:
        raise _unsupported(node, "MatMul by a non-constant or non-2-D matrix")
    w = b.const(node.input[1]).t().contiguous()
    bias = None
    # x @ W followed only by + b (1-D constant): one Linear with a bias
    users = b.users.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [v for v in users[0].input if v != node.output[0]]
        if len(other) == 1 and other[0] in b.consts and b.values[other[0]].size == w.shape[0]:
            bias = b.const(other[0]).reshape(-1)
            b.fused.add(users[0].output[0])
    out = b.add_module(node, "linear", _linear(w, bias), b.data(node, node.input[0]))
    if bias is not None:
        b.env[users[0].output[0]] = out
    return out


def _batchnorm(b: _Build, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    scale, bias, mean, var = (b.const(v) for v in node.input[1:5])
    rank = b.values[node.input[0]].ndim
    cls = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
    if cls is None:
        raise _unsupported(node, f"BatchNormalization of a rank-{rank} tensor")
    bn = cls(scale.numel(), eps=float(a.get("epsilon", 1e-5)))
    with torch.no_grad():
        bn.weight.copy_(scale)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return b.add_module(node, "bn", bn.eval(), b.data(node, node.input[0]))


def _pool_args(node: onnx.NodeProto, a: dict[str, Any]) -> dict[str, Any]:
    kernel = tuple(a["kernel_shape"])
    if len(kernel) != 2:
        raise _unsupported(node, f"{len(kernel)}-D pooling (only 2-D)")
    return dict(kernel_size=kernel, stride=tuple(a.get("strides", kernel)), padding=_pads2d(node, a),
                ceil_mode=bool(a.get("ceil_mode", 0)))


def _maxpool(b: _Build, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise _unsupported(node, "MaxPool with an Indices output")
    pool = nn.MaxPool2d(dilation=tuple(a.get("dilations", (1, 1))), **_pool_args(node, a))
    return b.add_module(node, "maxpool", pool, b.data(node, node.input[0]))


def _avgpool(b: _Build, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    pool = nn.AvgPool2d(count_include_pad=bool(a.get("count_include_pad", 0)), **_pool_args(node, a))
    return b.add_module(node, "avgpool", pool, b.data(node, node.input[0]))


def _global_avgpool(b: _Build, node: onnx.NodeProto) -> fx.Node:
    return b.add_module(node, "avgpool", nn.AdaptiveAvgPool2d(1), b.data(node, node.input[0]))


def _relu(b: _Build, node: onnx.NodeProto) -> fx.Node:
    return b.add_module(node, "relu", nn.ReLU(), b.data(node, node.input[0]))


def _flatten(b: _Build, node: onnx.NodeProto) -> fx.Node:
    axis = int(_attrs(node).get("axis", 1))
    if axis != 1:
        raise _unsupported(node, f"Flatten at axis {axis} (only axis 1, keeping the batch)")
    return b.add_module(node, "flatten", nn.Flatten(), b.data(node, node.input[0]))


def _reshape(b: _Build, node: onnx.NodeProto) -> fx.Node:
    out_shape = b.values[node.output[0]].shape
    if not out_shape or out_shape[0] != 1:
        raise _unsupported(node, f"a Reshape to {tuple(out_shape)} that does not keep the batch first")
    in_shape = b.values[node.input[0]].shape
    if len(out_shape) == 2 and out_shape[1] == int(np.prod(in_shape[1:])):
        # flattening (x.view(x.size(0), -1)): stays right when channels are pruned away
        return b.graph.call_function(torch.flatten, (b.data(node, node.input[0]), 1))
    return b.graph.call_function(torch.reshape, (b.data(node, node.input[0]), (-1, *out_shape[1:])))


_ARITH = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}


def _arith(b: _Build, node: onnx.NodeProto) -> fx.Node:
    fn = _ARITH[node.op_type]
    x, y = node.input
    x_const, y_const = x in b.consts, y in b.consts
    if not x_const and not y_const:
        if node.op_type in ("Mul", "Div"):
            raise _unsupported(node, "a product or quotient of two data tensors (not piecewise linear)")
        return b.graph.call_function(fn, (b.data(node, x), b.data(node, y)))
    if node.op_type == "Div" and x_const:
        raise _unsupported(node, "division by a data tensor")
    lhs = b.const_node(x) if x_const else b.data(node, x)
    rhs = b.const_node(y) if y_const else b.data(node, y)
    return b.graph.call_function(fn, (lhs, rhs))


def _concat(b: _Build, node: onnx.NodeProto) -> fx.Node:
    axis = int(_attrs(node)["axis"])
    rank = b.values[node.output[0]].ndim
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise _unsupported(node, "concatenation along the batch")
    parts = [b.const_node(v) if v in b.consts else b.data(node, v) for v in node.input]
    if any(v in b.consts for v in node.input):
        raise _unsupported(node, "concatenation with a constant tensor")
    return b.graph.call_function(torch.cat, (parts,), {"dim": axis})


def _passthrough(b: _Build, node: onnx.NodeProto) -> fx.Node:
    return b.data(node, node.input[0])


#: ONNX op type -> converter (build state, node) -> fx node of its (first) output.
CONVERTERS: dict[str, Callable[[_Build, onnx.NodeProto], fx.Node]] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm, "Relu": _relu,
    "MaxPool": _maxpool, "AveragePool": _avgpool, "GlobalAveragePool": _global_avgpool, "Flatten": _flatten,
    "Reshape": _reshape, "Add": _arith, "Sub": _arith, "Mul": _arith, "Div": _arith, "Concat": _concat,
    "Identity": _passthrough, "Dropout": _passthrough,
}


def _observe(model: onnx.ModelProto, shape: tuple[int, ...]):
    """Every value of the graph on one random input, and the onnxruntime session (every intermediate exposed)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise UserError(f"onnxruntime cannot load the ONNX model: {str(e).splitlines()[0]}") from None
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    name = sess.get_inputs()[0].name
    outs = sess.run(None, {name: x})
    values = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
    values[name] = x
    for init in model.graph.initializer:
        values[init.name] = numpy_helper.to_array(init)
    return values, sess


def _data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(f"an ONNX classifier has one input and one output; this one has {len(inputs)} inputs "
                        f"and {len(model.graph.output)} outputs")
    return inputs[0]


def onnx_input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The shape of one input (without the batch dimension); symbolic dims are an error."""
    inp = _data_input(model)
    dims = inp.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
    if any(d is None or d < 1 for d in shape):
        raise UserError(f"ONNX input '{inp.name}' has a symbolic or empty shape {shape}; export it with fixed "
                        "C, H, W (only the batch may be symbolic)")
    return shape


def _read(source: str | Path | bytes) -> onnx.ModelProto:
    try:
        if isinstance(source, bytes):
            return onnx.load_from_string(source)
        return onnx.load(str(source))
    except FileNotFoundError:
        raise UserError(f"ONNX file '{source}' does not exist; check model.arch onnx:PATH") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"'{source}' is not a readable ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _constant_values(b: _Build) -> None:
    """Mark constants (from initializers and Constant nodes) and Shape-derived values."""
    b.consts |= {i.name for i in b.model.graph.initializer}
    for node in b.model.graph.node:
        ins = [v for v in node.input if v]
        if node.op_type == "Shape":
            b.shape_only.update(node.output)
        elif node.op_type == "Constant" or (ins and all(v in b.consts for v in ins)):
            b.consts.update(node.output)
        elif ins and node.op_type in _SHAPE_OPS and all(v in b.consts or v in b.shape_only for v in ins):
            b.shape_only.update(node.output)


def import_onnx(source: str | Path | bytes, flat_input: tuple[int, int, int] | None = None,
                image_shape: tuple[int, int, int] | None = None) -> fx.GraphModule:
    """Convert an ONNX classifier (file or bytes) to an eval-mode ``fx.GraphModule``.

    The module takes N x C x H x W inputs. An ONNX model whose input is flat
    (N x D) gets a leading Flatten when ``flat_input`` (C, H, W) with
    C*H*W = D is given. With ``image_shape``, an image input of another shape
    is a UserError naming both. The result is checked against onnxruntime on random
    inputs (max abs difference <= 1e-5 + 1e-5 * max |logit|); a mismatch is a
    UserError.
    """
    model = _read(source)
    what = "the ONNX bytes" if isinstance(source, bytes) else f"'{source}'"
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is only a help here
        pass
    shape = onnx_input_shape(model)
    if image_shape is not None and len(shape) == 3 and tuple(shape) != tuple(image_shape):
        raise UserError(f"the ONNX network takes inputs of shape {tuple(shape)} but the data set's are "
                        f"{tuple(image_shape)}; choose the data set the network was made for")
    values, sess = _observe(model, shape)
    b = _Build(model, values)
    _constant_values(b)
    for node in model.graph.node:
        for v in node.input:
            b.users.setdefault(v, []).append(node)
    inp = _data_input(model)
    x = b.graph.placeholder("input")
    if len(shape) == 1:
        if flat_input is None or int(np.prod(flat_input)) != shape[0]:
            raise UserError(f"ONNX input '{inp.name}' is flat ({shape[0]} values); give the image shape "
                            f"(data set geometry) with C*H*W = {shape[0]}")
        x = b.graph.call_module("flatten0", (x,))
        b.root.add_module("flatten0", nn.Flatten())
    elif len(shape) != 3:
        raise UserError(f"ONNX input '{inp.name}' has shape {shape}; expected C x H x W (or flat)")
    b.env[inp.name] = x
    for node in model.graph.node:
        if node.output[0] in b.fused or all(o in b.consts or o in b.shape_only for o in node.output if o):
            continue
        conv = CONVERTERS.get(node.op_type)
        if conv is None:
            raise _unsupported(node, "no converter")
        for v in node.input:
            if v in b.shape_only and not (node.op_type == "Reshape" and v == node.input[1]):
                raise _unsupported(node, f"input '{v}' is computed from a tensor's shape")
        b.env[node.output[0]] = conv(b, node)
    out = model.graph.output[0].name
    if out not in b.env:
        raise UserError(f"ONNX output '{out}' does not depend on the input")
    b.graph.output(b.env[out])
    gm = fx.GraphModule(b.root, b.graph, class_name="ImportedNet").eval()
    _check_against_onnxruntime(gm, sess, out, shape, shape if len(shape) == 3 else flat_input, what)
    return gm


def _check_against_onnxruntime(gm: fx.GraphModule, sess, output: str, onnx_shape: tuple[int, ...],
                               image: tuple[int, ...], what: str, checks: int = 4) -> None:
    """``gm`` against the observing session's ``output`` on ``checks`` random inputs."""
    from abcrown_plugins.numerics import compare_logits

    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(1)
    refs, gots = [], []
    with torch.no_grad():
        for _ in range(checks):
            x = torch.rand(1, *image, generator=gen)
            refs.append(sess.run([output], {name: x.reshape(1, *onnx_shape).numpy()})[0].reshape(1, -1))
            gots.append(gm(x).reshape(1, -1).numpy())
    compare_logits(np.concatenate(refs), np.concatenate(gots), f"import of {what} (torch vs onnxruntime)")

