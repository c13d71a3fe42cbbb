"""The α,β-CROWN hooks, called in-process the way α,β-CROWN calls them."""

import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.errors import UserError
from abcrown_plugins.export import export_onnx, write_robustness_vnnlib
from abcrown_plugins.abcrown.hooks import validate_against_abcrown, zoo_data, zoo_model
from abcrown_plugins.abcrown.results import read_results_pickle, results_rows, verdict
from abcrown_plugins.abcrown.vnncomp import check_witness, parse_witness, read_instances
from abcrown_plugins.models import load_model


def test_model_hook_gives_checkpoint_logits(small_checkpoint):
    hooked = zoo_model(checkpoint=str(small_checkpoint))
    ours = load_model(small_checkpoint).model
    assert not hooked.training
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(hooked(x), ours(x))
    # α,β-CROWN loads model.path strictly into the hooked model: our checkpoint's state_dict fits
    hooked.load_state_dict(checkpoints.load(small_checkpoint)["state_dict"], strict=True)


def test_model_hook_missing_checkpoint():
    with pytest.raises(UserError, match="not found"):
        zoo_model(checkpoint="zoo:no_such_model.pt")


def test_data_hook_tuple():
    x, labels, dmax, dmin, eps = zoo_data({"norm": float("inf"), "epsilon": 2 / 255}, dataset="synthetic", num=20)
    assert x.shape == (20, 3, 32, 32) and labels.shape == (20,) and labels.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert dmax.shape == dmin.shape == (1, 3, 32, 32) and (dmax == 1).all() and (dmin == 0).all()
    assert eps.shape == (1, 3, 1, 1) and torch.allclose(eps, torch.full_like(eps, 2 / 255))


def test_data_hook_errors():
    with pytest.raises(UserError, match="specification.epsilon"):
        zoo_data({"norm": float("inf"), "epsilon": None})
    with pytest.raises(UserError, match="L-inf"):
        zoo_data({"norm": 2.0, "epsilon": 0.1})
    with pytest.raises(UserError, match="data.num_outputs"):
        validate_against_abcrown(10, (3, 32, 32), {"data": {"num_outputs": 2, "mean": 0.0, "std": 1.0}})
    with pytest.raises(UserError, match="data.mean/data.std"):
        validate_against_abcrown(10, (3, 32, 32), {"data": {"num_outputs": 10, "mean": [0.5, 0.5, 0.5],
                                                             "std": [1.0]}})
    validate_against_abcrown(10, (3, 32, 32), {"data": {"num_outputs": 10, "mean": [0.0], "std": [1.0]}})


def test_witness_recheck(small_checkpoint, tmp_path):
    model = load_model(small_checkpoint).model
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, (3, 32, 32))
    x = torch.rand(3, 32, 32)
    pred = int(model(x[None]).argmax())
    wrong = (pred + 1) % 10
    out = model(x[None]).detach().numpy().flatten()
    witness = "(" + "\n".join(f"(X_{i}  {v})" for i, v in enumerate(x.flatten().tolist())) + \
        "\n" + "\n".join(f"(Y_{j}  {v})" for j, v in enumerate(out)) + ")"
    # property "label = wrong": x itself is a counterexample (pred beats wrong)
    write_robustness_vnnlib(tmp_path / "p.vnnlib", x, wrong, 0.01, 10)
    assert check_witness(onnx_path, tmp_path / "p.vnnlib", witness) == ""
    # property "label = pred": x is no counterexample, the witness must be rejected
    write_robustness_vnnlib(tmp_path / "q.vnnlib", x, pred, 0.01, 10)
    assert "does not confirm" in check_witness(onnx_path, tmp_path / "q.vnnlib", witness)
    # a witness outside the box is rejected
    write_robustness_vnnlib(tmp_path / "r.vnnlib", (x + 0.5).clamp(0, 1), wrong, 0.01, 10)
    assert "outside the input box" in check_witness(onnx_path, tmp_path / "r.vnnlib", witness)
    xs, ys = parse_witness(witness)
    assert xs.shape == (3072,) and ys.shape == (10,) and np.allclose(xs, x.flatten().numpy())


def test_results_pickle_reader(tmp_path):
    summary = defaultdict(list)
    summary["safe-incomplete"].append(0)
    summary["unsafe-pgd"].append(1)
    data = {"summary": summary, "results": [["safe-incomplete", 0.5], ["unsafe-pgd", 1.5], ["unknown", 3.0]],
            "bab_ret": [[0, torch.tensor([0.25]), 3, 0.1]]}
    p = tmp_path / "r.pkl"
    p.write_bytes(pickle.dumps(data))
    back = read_results_pickle(p)
    assert torch.equal(back["bab_ret"][0][1], torch.tensor([0.25]))
    rows = results_rows(back)
    assert [r["result"] for r in rows] == ["unsat", "sat", "unknown"]
    assert rows[1]["time_s"] == 1.5
    assert verdict("safe (timed out)") == "timeout" and verdict("safe-mip") == "unsat"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_results_pickle_refuses_code(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"results": [_Evil()]}))
    with pytest.raises(UserError, match="not allowed"):
        read_results_pickle(p)


def test_instances_parsing(tmp_path):
    (tmp_path / "instances.csv").write_text("onnx/a.onnx,vnnlib/p.vnnlib,30\n\nonnx/a.onnx,vnnlib/q.vnnlib,45.5\n")
    assert read_instances(tmp_path) == [("onnx/a.onnx", "vnnlib/p.vnnlib", 30.0), ("onnx/a.onnx", "vnnlib/q.vnnlib",
                                                                                    45.5)]
    (tmp_path / "instances.csv").write_text("onnx/a.onnx,vnnlib/p.vnnlib\n")
    with pytest.raises(UserError, match="instances.csv:1"):
        read_instances(tmp_path)


@pytest.mark.parametrize("args,expected", [(["--timeout-scale", "nan"], "--timeout-scale"),
                                           (["--timeout-scale", "-1"], "--timeout-scale"),
                                           (["--limit", "0"], "--limit")])
def test_vnncomp_run_refuses_bad_numbers_in_one_line(tmp_path, capsys, args, expected):
    from abcrown_plugins.cli import main

    assert main(["vnncomp", "run", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
