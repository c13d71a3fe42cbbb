"""A VNN-COMP benchmark folder from a checkpoint.

Layout written by :func:`export_benchmark`::

    DIR/onnx/NET.onnx            the network, normalisation inside, BN folded, masks folded
    DIR/vnnlib/PROP.vnnlib       one local-robustness property per instance (VNN-LIB 1.0, or 2.0 on request)
    DIR/instances.csv            onnx/NET.onnx,vnnlib/PROP.vnnlib,TIMEOUT   (no header)
    DIR/generate_properties.py   `python generate_properties.py SEED` redraws the properties
    DIR/benchmark.json           the settings generate_properties.py reads
    DIR/data/test_images.npy     the test split the properties are drawn from (uint8 N x C x H x W, or float32)
    DIR/data/test_labels.npy     its labels (int64 N): the labels of the task the network classifies

Properties are drawn (the default) or copied. Drawn: by a seeded permutation
of the test split; images the ONNX network misclassifies are skipped (their
property would be trivially sat), so every instance is a real robustness
question; the box is ``clip(x ± eps, 0, 1)``. Copied: when the test split carries
exact input boxes (``--dataset vnnlib:DIR``, the properties of another
benchmark), each instance states the very same box and label as the original
file (none skipped; ``data/box_lower.npy``, ``data/box_upper.npy`` replace the
images, ``copied_from`` in benchmark.json and a comment in every file name the
original), so "the same properties, dense vs pruned" is one export per network.

The folder is self-contained: ``generate_properties.py`` is
:mod:`.generate_properties_template`, which needs numpy and onnxruntime only, and
:func:`generate_properties` runs the same code. A transfer checkpoint's test
split carries its task's labels when the caller says how to get them
(``dataset_for``, :func:`abcrown_plugins.experiments.run_export`), else it is
refused with one line.

Nothing is half-written: the folder is built in a hidden sibling
(``.DIR.tmp-*``) and renamed into place at the end, under a lock (``.DIR.lock``)
that keeps two exports apart; an export killed before its rename leaves a
sibling the next export of ``DIR`` removes. Redrawing writes the new properties
beside the old ones and commits them by replacing ``instances.csv``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from abcrown_plugins.checkpoints import ModelMeta
from abcrown_plugins.config.kinds import Eps, Float, KindError, parse_value
from abcrown_plugins.data import ImageDataset, load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.export import generate_properties_template as standalone
from abcrown_plugins.export.onnx_io import export_onnx
from abcrown_plugins.fileio import (
    FileLock,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    make_temp_dir,
    new_file_mode,
    remove_stale_temps,
    write_error,
)
from abcrown_plugins.models import load_model

MAX_TOTAL_TIMEOUT_S = 6 * 3600
TEMPLATE = Path(standalone.__file__)


def parse_eps(text: str | float) -> float:
    try:
        return Eps().parse(text)
    except KindError as e:
        raise UserError(f"eps: {e}") from None


def _test_split(meta: ModelMeta, data_root: str | None,
                dataset_for: Callable[[ModelMeta], ImageDataset] | None, dataset: str | None = None) -> ImageDataset:
    """The test split the checkpoint's network classifies (its task's labels for a transfer checkpoint).

    ``dataset`` (a registry name) overrides the checkpoint's own data set.
    """
    if dataset is not None:
        test = load_dataset(dataset, "test", data_root)
    elif dataset_for is not None:
        test = dataset_for(meta)
    elif meta.task is not None:
        what = f"attribute task '{meta.task.attribute}'" if meta.task.attribute else "a multi-head base network"
        raise UserError(f"the checkpoint classifies {what} of {meta.task.base_dataset}, not {meta.dataset}'s "
                        "labels; export a plain checkpoint, or call abcrown_plugins.experiments.run_export")
    else:
        test = load_dataset(meta.dataset, "test", data_root)
    if test.info.shape != tuple(meta.input_shape) or test.info.num_classes != meta.num_classes:
        raise UserError(f"the checkpoint's network takes {tuple(meta.input_shape)} images with {meta.num_classes} "
                        f"classes but its test split {test.info.name} has {test.info.shape} and "
                        f"{test.info.num_classes}; pass the checkpoint of that data set")
    return test


def _save_array(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))


def _check_total(n: int, timeout: float) -> None:
    if n * timeout > MAX_TOTAL_TIMEOUT_S:
        raise UserError(f"{n} instances x {timeout:g} s = {n * timeout / 3600:.1f} h exceeds VNN-COMP's 6 h per "
                        "benchmark; lower --n or --timeout")


def _mode(test: ImageDataset, n: int | None, eps: float | None, timeout: float) -> int:
    """The number of instances; checks that ``n``/``eps`` fit the mode (drawn or copied, module docstring)."""
    if test.boxes is not None:
        if eps is not None:
            raise UserError(f"--eps does not apply to {test.info.name}: its properties are copied with their own "
                            "boxes; drop --eps")
        if n is not None and n > len(test):
            raise UserError(f"--n {n} exceeds the {len(test)} properties of {test.info.name}; lower --n")
        n = len(test) if n is None else n
    elif n is None or eps is None:
        raise UserError(f"--n and --eps are required: the properties are drawn from the test split of "
                        f"{test.info.name} as x ± eps (only --dataset vnnlib:DIR copies given boxes)")
    _check_total(n, timeout)
    return n


def export_benchmark(checkpoint: str | Path, out: str | Path, n: int | None, eps: float | None, seed: int,
                     timeout: float = 60.0, data_root: str | None = None, force: bool = False,
                     dataset_for: Callable[[ModelMeta], ImageDataset] | None = None, dataset: str | None = None,
                     vnnlib_version: int = 1) -> dict[str, Any]:
    """Write a benchmark folder for ``checkpoint`` (a path or ``zoo:NAME``) at ``out``; returns a summary dict.

    ``dataset_for(meta)``: the test split the network classifies (default: the
    checkpoint's data set; a transfer checkpoint needs it); ``dataset``, a data
    set name, overrides both. A test split with input boxes (``vnnlib:DIR``)
    gives copied properties: ``eps`` must be ``None`` and ``n`` (default: all)
    caps their number; otherwise ``n`` and ``eps`` are required. ``vnnlib_version``:
    1 (VNN-LIB 1.0, what α,β-CROWN reads) or 2. The folder appears complete or
    not at all (module docstring).
    """
    out = Path(out)
    if n is not None and n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    timeout = parse_value(Float(), timeout, "--timeout")
    if timeout <= 0:
        raise UserError(f"--timeout must be positive, got {timeout:g}")
    if n is not None:
        _check_total(n, timeout)
    if seed < 0:
        raise UserError(f"--seed must be an integer >= 0, got {seed}")
    if eps is not None and not 0 <= eps < 1:
        raise UserError(f"--eps must be in [0, 1) (pixels in [0,1], e.g. 2/255), got {eps:g}")
    if vnnlib_version not in standalone.VNNLIB_VERSIONS:
        raise UserError(f"--vnnlib-version must be 1 or 2, got {vnnlib_version!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder '{out}' is a file; pass another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output folder '{out}' exists and is not empty; pass --force to replace it")
    loaded = load_model(checkpoint, compact=True)
    model, meta, compacted = loaded.model, loaded.meta, loaded.compacted
    test = _test_split(meta, data_root, dataset_for, dataset)
    n = _mode(test, n, eps, timeout)
    shape = meta.input_shape
    net = f"{meta.net_name}_{meta.data_name}" + ("_compact" if compacted else "")
    net = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in net)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    lock = FileLock(out.parent / f".{out.name}.lock", f"output folder '{out}' is being exported by another run; "
                                                      "wait for it to end or pass another --out")
    try:
        remove_stale_temps(out.parent, prefix=f".{out.name}.tmp-", suffix="", recursive=False)
        tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
        try:
            max_diff = export_onnx(model, tmp / "onnx" / f"{net}.onnx", shape)
            settings = {"onnx": f"onnx/{net}.onnx", "dataset": test.info.name, "num_classes": meta.num_classes,
                        "input_shape": list(shape), "eps": eps, "n": n, "timeout": timeout,
                        "vnnlib_version": vnnlib_version, "source": "draw",
                        "data": [standalone.DATA_IMAGES, standalone.DATA_LABELS],
                        "checkpoint": str(loaded.path.resolve()), "checkpoint_sha256": file_sha256(loaded.path),
                        "compacted": compacted, "onnx_max_abs_diff": max_diff}
            if test.boxes is not None:
                scheme, _, origin = test.info.name.partition(":")
                folder = str(Path(origin).expanduser().resolve()) if scheme == "vnnlib" else test.info.name
                settings.update(source="vnnlib", data=[standalone.DATA_BOX_LOWER, standalone.DATA_BOX_UPPER,
                                                       standalone.DATA_LABELS],
                                copied_from={"folder": folder, "files": list(test.boxes.sources)})
                _save_array(tmp / standalone.DATA_BOX_LOWER, test.boxes.lower.numpy())
                _save_array(tmp / standalone.DATA_BOX_UPPER, test.boxes.upper.numpy())
            else:
                _save_array(tmp / standalone.DATA_IMAGES, test.storage().numpy())
            _save_array(tmp / standalone.DATA_LABELS, test.labels.numpy())
            atomic_write_text(tmp / "benchmark.json", json.dumps(settings, indent=2) + "\n")
            script = tmp / "generate_properties.py"
            atomic_write_bytes(script, lambda f: f.write(TEMPLATE.read_bytes()))
            os.chmod(script, new_file_mode() | ((new_file_mode() & 0o444) >> 2))  # executable where readable
            drawn = generate_properties(tmp, seed)
            _swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise write_error(out, e) from None
    finally:
        (out.parent / f".{out.name}.lock").unlink(missing_ok=True)
        lock.release()
    return {**settings, "out": str(out), "instances": len(drawn), "seed": seed, "indices": drawn}


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an old ``out`` is moved aside first, then removed."""
    if out.exists():
        old = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
        os.replace(out, old / "old")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def generate_properties(folder: str | Path, seed: int) -> list[int]:
    """(Re)draw the properties of a benchmark folder; returns the indices used.

    The code of the folder's ``generate_properties.py``
    (:func:`.generate_properties_template.draw`): test images in the order of a
    permutation seeded by ``seed``, those the ONNX network classifies correctly,
    up to ``n`` (or, for copied properties, all of them in order or ``n`` chosen
    by ``seed``); the old properties stay until the new ones are complete.
    """
    try:
        return standalone.draw(folder, seed)
    except standalone.BenchmarkError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise write_error(Path(folder) / "instances.csv", e) from None


def generate_properties_main(folder: Path, argv: list[str]) -> int:
    """What the ``generate_properties.py`` of folders exported before they carried their own code calls:
    the folder's code now (such a folder lacks ``data/`` and is told, in one line, to be exported again)."""
    return standalone.main(list(argv), Path(folder))
