"""The ONNX importer against onnxruntime, its errors, and IBP soundness on imported networks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from abcrown_plugins.bounds import input_box, interval_propagate, margin_lower_bounds, margin_spec
from abcrown_plugins.errors import UserError
from abcrown_plugins.graph import import_onnx, structure
from tests.conftest import assert_within, sample_box
from tests.graph.nets import onnx_bytes, residual_net

SHAPE = (3, 16, 16)


def ort_logits(data: bytes, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("fold", [True, False], ids=["bn-folded", "bn-kept"])
def test_import_equals_onnxruntime(fold):
    data = onnx_bytes(residual_net(), SHAPE, fold)
    gm = import_onnx(data)
    x = torch.rand(7, *SHAPE)
    with torch.no_grad():
        got = gm(x).numpy()
    np.testing.assert_allclose(got, ort_logits(data, x), atol=1e-5, rtol=1e-5)
    kinds = {op.kind for op in structure(gm).ops}
    assert {"conv", "relu", "add", "maxpool", "concat", "avgpool", "flatten", "linear", "sub", "div"} <= kinds
    assert ("bn" in kinds) == (not fold)


def test_unsupported_op_names_op_and_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="squash")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UserError, match=r"ONNX node 'squash' \(op Sigmoid\).*supported ops: .*Conv"):
        import_onnx(model.SerializeToString(), flat_input=(1, 2, 2))


def test_product_of_two_tensors_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"], name="square")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UserError, match="'square' \\(op Mul\\).*two data tensors"):
        import_onnx(model.SerializeToString())


def test_flat_input_needs_the_image_shape():
    lin = nn.Sequential(nn.Linear(12, 5))
    data = onnx_bytes(lin, (12,))
    with pytest.raises(UserError, match="flat \\(12 values\\)"):
        import_onnx(data)
    gm = import_onnx(data, flat_input=(3, 2, 2))
    x = torch.rand(2, 3, 2, 2)
    np.testing.assert_allclose(gm(x).detach().numpy(), lin(x.flatten(1)).detach().numpy(), atol=1e-6)


def test_not_an_onnx_file_is_one_line(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        import_onnx(bad)
    with pytest.raises(UserError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")


@pytest.mark.parametrize("fold", [True, False])
def test_ibp_of_imported_network_is_sound(fold):
    gm = import_onnx(onnx_bytes(residual_net(), SHAPE, fold))
    x, y = torch.rand(4, *SHAPE), torch.randint(0, 10, (4,))
    for eps in (0.0, 1 / 255, 8 / 255):
        lower, upper = input_box(x, eps)
        box = interval_propagate(gm, lower, upper)
        with torch.no_grad():
            out = gm(sample_box(lower, upper, 128).flatten(0, 1)).view(128, 4, 10)
        assert_within(out, box.lower, box.upper)
        res = margin_lower_bounds(gm, x, y, eps, 10)
        margins = torch.einsum("nkc,snc->snk", margin_spec(y, 10), out)
        assert_within(margins, res.lower, res.upper)
        if eps == 0.0:  # a point box: the bounds are the network's output
            torch.testing.assert_close(box.lower, gm(x).detach(), atol=1e-4, rtol=1e-4)


def test_ibp_of_the_traced_user_module_equals_the_imported_graph():
    """The user's module traced by fx and its ONNX import have the same structure kinds and the same bounds."""
    net = residual_net()
    gm = import_onnx(onnx_bytes(net, SHAPE, fold=False))
    x = torch.rand(3, *SHAPE)
    lower, upper = input_box(x, 2 / 255)
    a, b = interval_propagate(net, lower, upper), interval_propagate(gm, lower, upper)
    torch.testing.assert_close(a.lower, b.lower, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.upper, b.upper, atol=1e-4, rtol=1e-4)
    assert len(a.relus) == len(b.relus) == 4
    # pre-BN boxes are recorded where a BatchNorm feeds a ReLU directly
    assert sum(r.pre_bn_mid is not None for r in a.relus) == sum(r.pre_bn_mid is not None for r in b.relus) == 2


def test_maxpool_bounds_are_the_max_of_the_bounds():
    pool = nn.Sequential(nn.MaxPool2d(2))
    lower = torch.tensor([[[[0.0, -1.0], [2.0, 0.5]]]])
    upper = lower + torch.tensor([[[[3.0, 0.5], [0.0, 0.1]]]])
    res = interval_propagate(pool, lower, upper)
    assert res.lower.flatten().tolist() == [2.0] and res.upper.flatten().tolist() == [3.0]


def test_structure_kinds_of_a_zoo_network():
    import model_zoo

    model = model_zoo.build_model("resnet_small", in_channels=3, input_size=32, num_classes=10,
                                  mean=(0.5,) * 3, std=(0.25,) * 3)
    g = structure(model)
    assert g.ops[0].kind == "input" and g.ops[1].kind == "normalize"
    assert [op.name for op in g.by_kind("add")] and all(len(op.inputs) == 2 for op in g.by_kind("add"))
    assert g.ops[g.output].kind == "linear"
    assert structure(model) is g  # cached while the modules stay the same
    model[-1] = nn.Linear(100, 10)
    assert structure(model) is not g
