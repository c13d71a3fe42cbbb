"""α,β-CROWN's own networks brought in: dense vs pruned, verified count and α,β-CROWN time on the same properties.

    ABCROWN_HOME=... ABCROWN_PYTHON=... flock /tmp/abcrown_bench.lock python tools/bench_byo_abcrown.py \
        [--networks cifar_cnn_a_adv resnet2b mnist_conv_small mnist_6_100] [--n 10] [--timeout 20] \
        [--out results/bench_byo_abcrown]

Networks no one here wrote: α,β-CROWN's shipped model definitions (``model_defs.py``) and
weights (``complete_verifier/models/``), its sample images (``complete_verifier/datasets/``)
and the normalisation its configs (or its data loaders) give. For each network:

1. **Same network as α,β-CROWN's.** Its logits, loaded the way ``abcrown.py`` loads it
   (``arguments.Config`` parsed from its own exp_configs YAML, ``load_model.load_model()``,
   run by ``ABCROWN_PYTHON``; :data:`REFERENCE_SCRIPT`), equal the project's import through
   ``python:MODULE:FUNCTION`` (a wrapper module that loads ``model_defs.py`` from the checkout,
   :func:`write_wrapper`) and through ``onnx:PATH`` (the torch model exported with
   ``torch.onnx.export``), on the same [0,1] images, within
   :func:`abcrown_plugins.numerics.logits_tolerance`. Where α,β-CROWN's data loader for the
   config runs offline, its own normalised images are compared too (this checks ``data.mean``
   / ``data.std``).
2. **Pruned the project's way** (``abcrown-plugins run``, one-shot, no training):
   ``magnitude``: 50 % of the weights (conv and linear), the ONNX import;
   ``channels``: 30 % of the channel units by StructLTH (``struct_lth``), the ``python:`` import
   (convs coupled by a residual add share one unit, so fewer than 30 % of all conv channels may go).
   None of α,β-CROWN's shipped networks has a BatchNorm. The ``python:`` factory puts an exact
   identity BatchNorm2d (gamma 1, beta 0, mean 0, var 1 - eps) after every conv (:func:`write_wrapper`,
   ``*_bn``): the function is unchanged and ``struct_lth`` ranks channels by filter magnitude.
   (The script was written when channel pruning needed a BatchNorm after each conv; convs without
   one are prunable now, masking filter and bias, which zeroes the same channels. The identity
   BatchNorm stays so the README's table reproduces.)
   ``slim`` would rank by |gamma|, all 1 here, so it has nothing to go by without training.
   A network without convolutions has no channel variant.
3. **Same properties.** The dense network is exported with ``abcrown-plugins export``
   (``--n`` correctly classified images, α,β-CROWN's eps in [0,1] pixels); each pruned one
   with ``--dataset vnnlib:DENSE`` (same boxes, same labels), compacted when channels were pruned.
4. **Verified by α,β-CROWN** (:func:`abcrown_plugins.abcrown.vnncomp.run_benchmark`, CPU-sized
   settings, the per-instance timeout ``--timeout``; ``sat`` witnesses re-checked in onnxruntime).
   The time is α,β-CROWN's own per instance (start-up excluded), summed over the instances. The
   timeout bounds its branch and bound; its PGD attack and first bounds come before, so an
   instance may take longer on a slow CPU.

``train/`` of the npy folder is a copy of the test images: no step here trains (epochs 0,
fine-tuning 0), but ``abcrown-plugins run`` loads a training split.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from abcrown_plugins.abcrown.abcrown_env import AbcrownInstall, require_abcrown
from abcrown_plugins.abcrown.vnncomp import run_benchmark
from abcrown_plugins.cli.main import main as cli
from abcrown_plugins.numerics import logits_tolerance

# SDP preprocessing of α,β-CROWN's data_utils.preprocess_cifar (CIFAR_SDP configs give no mean/std).
SDP_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
SDP_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


@dataclass(frozen=True)
class AbNet:
    """One of α,β-CROWN's shipped networks, with the data and normalisation α,β-CROWN uses for it.

    Paths are relative to ``complete_verifier/``. ``mean``/``std``: per channel, [0,1] pixel
    units (from ``config``'s ``data`` section, or α,β-CROWN's loader for its ``data.dataset``);
    ``eps``: L-inf radius in [0,1] pixels (``config``'s ``specification.epsilon`` times std for
    loaders that divide it by std); ``offline_data``: α,β-CROWN's loader for ``config`` reads
    files shipped in the checkout (no download).
    """

    name: str
    factory: str
    weights: str
    config: str
    images: str
    labels: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    offline_data: bool
    note: str = ""

    @property
    def channels(self) -> int:
        return len(self.mean)


NETWORKS: dict[str, AbNet] = {n.name: n for n in (
    AbNet("cifar_cnn_a_adv", "cnn_4layer_adv", "models/sdp/cifar_cnn_a_adv.model",
          "exp_configs/beta_crown/cifar_cnn_a_adv.yaml", "datasets/sdp/cifar/X_sdp.npy", "datasets/sdp/cifar/y_sdp.npy",
          SDP_MEAN, SDP_STD, 2 / 255, True, "CNN-A-Adv (SDP-FO), 2 conv + 2 linear"),
    AbNet("resnet2b", "resnet2b", "models/cifar10_resnet/resnet2b.pth", "exp_configs/beta_crown/cifar_resnet_2b.yaml",
          "datasets/sdp/cifar/X_sdp.npy", "datasets/sdp/cifar/y_sdp.npy", (0.4914, 0.4822, 0.4465),
          (0.2471, 0.2435, 0.2616), 2 / 255, False,
          "CIFAR ResNet-2B, 5 conv (2 residual blocks) + 2 linear; its config loads the CIFAR-10 test set "
          "by download, so the CIFAR-10 test images of datasets/sdp/cifar stand in"),
    AbNet("mnist_conv_small", "mnist_conv_small", "models/eran/mnist_conv_small_nat.pth",
          "exp_configs/beta_crown/mnist_conv_small.yaml", "datasets/eran/mnist_eran/X_eran.npy",
          "datasets/eran/mnist_eran/y_eran.npy", (0.1307,), (0.3081,), 0.12, True, "ERAN ConvSmall (MNIST, natural)"),
    AbNet("mnist_6_100", "mnist_6_100", "models/eran/mnist_6_100_nat.pth", "exp_configs/beta_crown/mnist_6_100.yaml",
          "datasets/eran/mnist_eran/X_eran.npy", "datasets/eran/mnist_eran/y_eran.npy", (0.0,), (1.0,), 0.026, True,
          "ERAN 6x100 MLP (MNIST, natural, no convolution)"),
)}

#: Logits of α,β-CROWN's own loading; run by ABCROWN_PYTHON in complete_verifier/ with it on PYTHONPATH.
#: argv[1]: JSON {"config", "x" (.npy, N x C x H x W in [0,1]), "mean", "std", "offline_data", "n"}.
REFERENCE_SCRIPT = r'''
import json, sys
import numpy as np
import torch
import arguments
from load_model import load_model

req = json.loads(sys.argv[1])
arguments.Config.parse_config(["--config", req["config"], "--device", "cpu"], verbose=False)
model = load_model()
model.eval()
x = torch.from_numpy(np.load(req["x"]).astype(np.float32))
mean = torch.tensor(req["mean"], dtype=torch.float32).view(1, -1, 1, 1)
std = torch.tensor(req["std"], dtype=torch.float32).view(1, -1, 1, 1)
out = {}
with torch.no_grad():
    out["logits"] = model((x - mean) / std).tolist()
    if req["offline_data"]:
        from loading import load_verification_dataset
        data = load_verification_dataset()
        out["own_data_logits"] = model(data["X"][:req["n"]]).tolist()
        out["own_data_labels"] = data["labels"][:req["n"]].tolist()
print("@@reference " + json.dumps(out))
'''

WRAPPER_SOURCE = '''"""α,β-CROWN's model definitions for abcrown-plugins' python: import.

Written by tools/bench_byo_abcrown.py.

Loads {model_defs} by its path; nothing of it is copied. ``NAME_bn`` puts an exact
identity BatchNorm2d after every conv of ``NAME`` (the same function; channel pruning
needs a BatchNorm after a conv).
"""
import importlib.util
from collections import OrderedDict

from torch import nn

_spec = importlib.util.spec_from_file_location("abcrown_model_defs", {model_defs!r})
_defs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_defs)


def with_identity_bn(model):
    """``model`` with every Conv2d replaced by Sequential(conv, BatchNorm2d) computing the same function."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d):
            bn = nn.BatchNorm2d(child.out_channels)
            bn.running_var.fill_(1 - bn.eps)
            setattr(model, name, nn.Sequential(OrderedDict(conv=child, bn=bn)))
        else:
            with_identity_bn(child)
    return model
'''

FACTORY_SOURCE = '''

def {name}():
    return _defs.{factory}()


def {name}_bn():
    return with_identity_bn(_defs.{factory}())
'''


def missing_files(inst: AbcrownInstall, net: AbNet) -> list[str]:
    """The files of ``net`` this checkout lacks (a snapshot may leave large files out)."""
    d = inst.verifier_dir
    return [p for p in ("model_defs.py", net.weights, net.config, net.images, net.labels) if not (d / p).is_file()]


def has_conv(inst: AbcrownInstall, net: AbNet) -> bool:
    """Whether ``net`` has a convolution (a 4-d weight): only then has it channels to prune."""
    return any(v.dim() == 4 for v in _state_dict(inst, net).values())


def _raw_weights(inst: AbcrownInstall, net: AbNet) -> Any:
    return torch.load(inst.verifier_dir / net.weights, map_location="cpu", weights_only=True)


def _state_dict(inst: AbcrownInstall, net: AbNet) -> dict[str, torch.Tensor]:
    """The weights as α,β-CROWN's ``load_model`` reads them: ``state_dict`` key, then a list's first entry."""
    data = _raw_weights(inst, net)
    data = data["state_dict"] if isinstance(data, dict) and "state_dict" in data else data
    return data[0] if isinstance(data, list) else data


def write_wrapper(inst: AbcrownInstall, folder: Path, nets: list[AbNet]) -> Path:
    """A ``python:`` module in ``folder`` with ``NAME()`` and ``NAME_bn()`` for every net."""
    path = folder / "abcrown_nets.py"
    src = WRAPPER_SOURCE.format(model_defs=str(inst.verifier_dir / "model_defs.py"))
    src += "".join(FACTORY_SOURCE.format(name=n.name, factory=n.factory) for n in nets)
    path.write_text(src)
    return path


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_bench_byo_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Prepared:
    """Files of one network in the work folder."""

    net: AbNet
    data: Path          # the npy:DIR folder (X.npy, y.npy; train/ a copy)
    wrapper: Path       # the python: module (write_wrapper)
    weights: Path       # α,β-CROWN's own weights file (re-saved plainly when list-wrapped)
    onnx: Path          # α,β-CROWN's torch model exported with torch.onnx.export
    bn_weights: Path    # state_dict of NAME_bn(): α,β-CROWN's weights and identity BatchNorms
    shape: tuple[int, int, int]


def prepare(inst: AbcrownInstall, net: AbNet, folder: Path, wrapper: Path) -> Prepared:
    """The npy data folder, the ONNX export and the identity-BatchNorm weights of ``net`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    x = np.load(inst.verifier_dir / net.images)
    y = np.load(inst.verifier_dir / net.labels)
    for sub in (data, data / "train"):
        sub.mkdir(parents=True, exist_ok=True)
        np.save(sub / "X.npy", x)
        np.save(sub / "y.npy", y)
    nhwc = x.shape[-1] == net.channels and x.shape[1] != net.channels
    shape = (net.channels, *x.shape[1:3]) if nhwc else tuple(x.shape[1:])
    module = _load_module(wrapper)
    model = getattr(module, net.name)()
    model.load_state_dict(_state_dict(inst, net))
    model.eval()
    onnx = folder / f"{net.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(onnx), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    weights = inst.verifier_dir / net.weights
    raw = _raw_weights(inst, net)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), list):
        # ERAN files hold {"state_dict": [state_dict], ...}; model.checkpoint takes a state_dict or
        # {"state_dict": state_dict}, so the same weights are saved plainly
        weights = folder / f"{net.name}_weights.pth"
        torch.save(_state_dict(inst, net), weights)
    bn_weights = folder / f"{net.name}_bn.pth"
    torch.save(module.with_identity_bn(model).state_dict(), bn_weights)
    return Prepared(net, data, wrapper, weights, onnx, bn_weights, shape)


def pixels(prep: Prepared, n: int | None) -> np.ndarray:
    """The first ``n`` (None: all) test images of the npy folder as the network sees them.

    N x C x H x W float32 in [0,1].
    """
    x = np.load(prep.data / "X.npy")[:n]
    if x.shape[1:] != prep.shape:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def reference_logits(inst: AbcrownInstall, prep: Prepared, n: int, folder: Path) -> dict[str, Any]:
    """α,β-CROWN's logits of the first ``n`` images (:data:`REFERENCE_SCRIPT`), and on its own data when offline."""
    folder.mkdir(parents=True, exist_ok=True)
    name = prep.net.name
    x_path, script, log = folder / f"{name}_x.npy", folder / "abcrown_reference.py", folder / f"{name}_reference.log"
    np.save(x_path, pixels(prep, n))
    script.write_text(REFERENCE_SCRIPT)
    req = {"config": prep.net.config, "x": str(x_path), "mean": list(prep.net.mean), "std": list(prep.net.std),
           "offline_data": prep.net.offline_data, "n": n}
    env = dict(os.environ, PYTHONPATH=str(inst.verifier_dir))
    r = subprocess.run([str(inst.python), str(script), json.dumps(req)], cwd=inst.verifier_dir, env=env,
                       capture_output=True, text=True, timeout=600)
    log.write_text(r.stdout + r.stderr)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("@@reference ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"α,β-CROWN's loading of {name} failed; log: {log}")
    return json.loads(lines[-1][len("@@reference "):])


def imported_models(prep: Prepared) -> dict[str, torch.nn.Module]:
    """The project's imports of the network, normalisation folded in front: ``python:`` (α,β-CROWN's
    model definition and weights file) and ``onnx:`` (the torch export)."""
    from abcrown_plugins.models.imported import import_network

    net = prep.net
    return {
        "python": import_network(f"python:{prep.wrapper}:{net.name}", str(prep.weights), prep.shape, net.mean,
                                 net.std).model,
        "onnx": import_network(f"onnx:{prep.onnx}", None, prep.shape, net.mean, net.std).model,
    }


def logits_check(inst: AbcrownInstall, prep: Prepared, n: int, folder: Path) -> dict[str, Any]:
    """Max |difference| of the project's logits (python:, onnx:) from α,β-CROWN's, with the tolerance."""
    ref = reference_logits(inst, prep, n, folder)
    x = torch.from_numpy(pixels(prep, n))
    pairs = [("", ref["logits"])] + ([("_own_data", ref["own_data_logits"])] if "own_data_logits" in ref else [])
    out: dict[str, Any] = {"n": n, "ok": True}
    for kind, model in imported_models(prep).items():
        with torch.no_grad():
            got = model(x).double().numpy()
        for suffix, reference in pairs:
            r = np.asarray(reference, dtype=np.float64)
            diff, tol = float(np.abs(r - got).max()), logits_tolerance(r)
            out[f"{kind}{suffix}_max_diff"], out[f"tolerance{suffix}"] = diff, tol
            out["ok"] = out["ok"] and diff <= tol
    if "own_data_labels" in ref:
        labels = np.load(prep.data / "y.npy")[:n]
        out["own_data_labels_equal"] = bool((np.asarray(ref["own_data_labels"]) == labels).all())
        out["ok"] = out["ok"] and out["own_data_labels_equal"]
    return out


VARIANTS = ("dense", "magnitude", "channels")


def run_config(prep: Prepared, variant: str, num_examples: int = 20) -> dict[str, Any]:
    """The ``abcrown-plugins run`` config of a pruned variant (one-shot, no training)."""
    net = prep.net
    if variant == "magnitude":
        model = {"arch": f"onnx:{prep.onnx}"}
        pruning = {"method": "magnitude", "rate": 0.5, "scope": "conv+linear"}
    elif variant == "channels":
        model = {"arch": f"python:{prep.wrapper}:{net.name}_bn", "checkpoint": str(prep.bn_weights)}
        pruning = {"method": "struct_lth", "rate": 0.5, "channel_rate": 0.3}
    else:
        raise ValueError(f"no run for variant {variant!r}")
    return {
        "general": {"name": f"byo_{net.name}_{variant}", "seed": 0, "progress": False},
        "model": model,
        "data": {"dataset": f"npy:{prep.data}", "mean": list(net.mean), "std": list(net.std)},
        "training": {"method": "standard", "epochs": 0},
        "pruning": {**pruning, "rounds": 1, "rewind": "none", "finetune_epochs": 0},
        "verification": {"eps": net.eps, "pgd_steps": 0, "num_examples": num_examples},
    }


def prune_runs(prep: Prepared, folder: Path, variants: tuple[str, ...]) -> dict[str, Path]:
    """``abcrown-plugins run`` of each pruned variant; the checkpoint of every variant (dense: magnitude's round 0)."""
    ckpts = {}
    for variant in variants:
        cfg = folder / f"{variant}.yaml"
        cfg.write_text(yaml.safe_dump(run_config(prep, variant), sort_keys=False))
        out = folder / f"run_{variant}"
        if cli(["run", str(cfg), "--output", str(out)]) != 0:
            raise RuntimeError(f"abcrown-plugins run {cfg} failed")
        ckpts[variant] = out / "round_1" / "checkpoint.pt"
        if variant == "magnitude":
            ckpts["dense"] = out / "round_0" / "checkpoint.pt"
    return {v: ckpts[v] for v in VARIANTS if v in ckpts}


def export_all(ckpts: dict[str, Path], folder: Path, n: int, eps: float, timeout: float,
               seed: int = 0) -> dict[str, Path]:
    """``abcrown-plugins export`` of the dense network, then of each pruned one on the dense properties."""
    benches = {"dense": folder / "bench_dense"}
    args = ["export", "--out", str(benches["dense"]), "--timeout", str(timeout), "--force"]
    if cli([*args, "--checkpoint", str(ckpts["dense"]), "--n", str(n), "--eps", repr(eps), "--seed", str(seed)]):
        raise RuntimeError(f"abcrown-plugins export of {ckpts['dense']} failed")
    for variant, ckpt in ckpts.items():
        if variant == "dense":
            continue
        benches[variant] = folder / f"bench_{variant}"
        if cli(["export", "--checkpoint", str(ckpt), "--out", str(benches[variant]), "--timeout", str(timeout),
                "--force", "--dataset", f"vnnlib:{benches['dense']}"]):
            raise RuntimeError(f"abcrown-plugins export of {ckpt} failed")
    return benches


def network_stats(ckpt: Path, prep: Prepared) -> dict[str, Any]:
    """Of the network α,β-CROWN gets (compacted): non-zero and total weights, channel ratio, and clean
    accuracy on every test image of the npy folder."""
    from abcrown_plugins.models import load_model
    from abcrown_plugins.pruning.channels import channel_density

    loaded = load_model(ckpt, compact=True)
    weights = [p for name, p in loaded.model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    cm = loaded.checkpoint.channel_masks
    x, y = torch.from_numpy(pixels(prep, None)), torch.from_numpy(np.load(prep.data / "y.npy"))
    with torch.no_grad():
        correct = sum(int((loaded.model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(256), y.split(256)))
    return {"nonzero_weights": int(sum(int(p.count_nonzero()) for p in weights)),
            "weights": int(sum(p.numel() for p in weights)),
            "channel_ratio": channel_density(cm) if cm else 1.0,
            "clean_acc": correct / len(y)}


def verify(bench: Path, out: Path, abcrown_config: Path | None = None) -> dict[str, Any]:
    """α,β-CROWN on every instance of ``bench`` (``abcrown_config``: its YAML, default the project's CPU-sized
    settings): counts, its own time, every sat witness re-checked."""
    start = time.perf_counter()
    results = run_benchmark(bench, out, abcrown_config)
    wall = time.perf_counter() - start
    counts = {k: sum(r.result == k for r in results) for k in ("unsat", "sat", "timeout", "unknown", "error")}
    times = [r.abcrown_time_s if r.abcrown_time_s is not None else r.runtime_s for r in results]
    return {**counts, "n": len(results), "results": [r.result for r in results],
            "witnesses_checked": all(r.witness_checked == "yes" for r in results if r.result == "sat"),
            "abcrown_time_s": round(sum(times), 2), "abcrown_time_mean_s": round(sum(times) / max(len(times), 1), 2),
            "wall_s": round(wall, 1)}


def bench_network(inst: AbcrownInstall, net: AbNet, folder: Path, wrapper: Path, n: int, timeout: float,
                  logits_n: int = 8) -> dict[str, Any]:
    """Every step of the module docstring for one network; one dict of results."""
    prep = prepare(inst, net, folder, wrapper)
    logits = logits_check(inst, prep, logits_n, folder / "reference")
    variants = ("magnitude", "channels") if has_conv(inst, net) else ("magnitude",)
    ckpts = prune_runs(prep, folder, variants)
    benches = export_all(ckpts, folder, n, net.eps, timeout)
    rows = []
    for variant, bench in benches.items():
        rows.append({"network": net.name, "variant": variant, **network_stats(ckpts[variant], prep),
                     **verify(bench, folder / f"abcrown_{variant}")})
    return {"network": net.name, "eps": net.eps, "logits": logits, "rows": rows,
            "channels": "struct_lth (identity BatchNorm added)" if "channels" in ckpts else "none: no convolution"}


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| network | variant | weights kept | channels kept | clean acc | safe | unsafe | timeout/unknown "
            "| error | α,β-CROWN time (s) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    body = [f"| {r['network']} | {r['variant']} | {r['nonzero_weights'] / r['weights_dense']:.2f} "
            f"| {r['channel_ratio']:.2f} | {r['clean_acc']:.3f} | {r['unsat']}/{r['n']} | {r['sat']} "
            f"| {r['timeout'] + r['unknown']} | {r['error']} | {r['abcrown_time_s']:.1f} |" for r in rows]
    return "\n".join([head, *body])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--n", type=int, default=10, help="instances per network (correctly classified images)")
    ap.add_argument("--timeout", type=float, default=20.0, help="α,β-CROWN timeout per instance, seconds")
    ap.add_argument("--out", default="results/bench_byo_abcrown")
    args = ap.parse_args()
    inst = require_abcrown()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    nets = [NETWORKS[name] for name in args.networks]
    wrapper = write_wrapper(inst, out, nets)
    networks, rows, skipped = [], [], {}
    for net in nets:
        missing = missing_files(inst, net)
        if missing:
            skipped[net.name] = f"missing in the checkout: {', '.join(missing)}"
            print(f"{net.name}: skipped, {skipped[net.name]}", file=sys.stderr)
            continue
        result = bench_network(inst, net, out / net.name, wrapper, args.n, args.timeout)
        dense_weights = result["rows"][0]["weights"]
        for row in result["rows"]:
            row["weights_dense"] = dense_weights
        networks.append(result)
        rows += result["rows"]
        print(f"{net.name}: logits {result['logits']}", file=sys.stderr)
    print(markdown(rows), file=sys.stderr)
    print(json.dumps({"benchmark": "byo_abcrown", "n": args.n, "timeout_s": args.timeout, "device": "cpu",
                      "networks": networks, "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
