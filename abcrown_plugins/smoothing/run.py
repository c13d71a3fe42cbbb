"""Certify a data set with randomized smoothing: resumable TSV, certified-accuracy table and plot.

Output folder::

    certify.tsv              one row per example: idx, label, predict, radius, correct, time
                             (first line: a comment with the settings and the 1 - alpha guarantee)
    certified_accuracy.md    certified accuracy at each smoothing.radii entry
    certified_accuracy.png   certified accuracy against the L2 radius

``certify.tsv`` is rewritten atomically after every example; a run started
again with the same settings skips the indices already in it. Example ``idx``
draws its noise from a generator seeded by ``(seed, idx)`` only, so a resumed
run writes the same rows as an uninterrupted one. The rows do not depend on
``smoothing.batch_size`` either (the noise stream is cut into batches of any size,
:func:`~abcrown_plugins.smoothing.certify.noise_batches`); null there means the
batch size is measured (:func:`certify_batch_size`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.errors import UserError
from abcrown_plugins.report import markdown_table, new_figure, save_figure, write_markdown
from abcrown_plugins.runtime import progress
from abcrown_plugins.smoothing.certify import ABSTAIN, certify, check_settings, noise_batches, sample_counts
from abcrown_plugins.tuning import Calibration, choose_batch_size, choose_option, default_budget_mib, model_digest

__all__ = ["CERTIFY_CANDIDATES", "COLUMNS", "ENGINES", "SmoothingSettings", "certified_accuracy",
           "certify_batch_size", "certify_dataset", "certify_example", "certify_layout", "example_generator",
           "example_indices", "open_tsv", "read_tsv", "resolve_batch_size", "write_report", "write_tsv"]

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
#: ``smoothing.engine``: the network itself, or the exact differential engine beside it
#: (:mod:`abcrown_plugins.differential.run`).
ENGINES = ("dense", "differential")
#: Batch sizes :func:`certify_batch_size` times (those above ``n`` are replaced by ``n``).
CERTIFY_CANDIDATES = (100, 200, 500, 1000, 2000)


@dataclass(frozen=True)
class SmoothingSettings:
    """The ``smoothing`` config section, validated (sigma > 0, 0 < alpha < 1, n0 <= n).

    ``batch_size`` None: measured when the first example is certified
    (:func:`resolve_batch_size`); certificates do not depend on it.
    """

    sigma: float
    n0: int
    n: int
    alpha: float
    batch_size: int | None
    num_examples: int | None = None
    skip: int = 1
    split: str = "test"
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    engine: str = "dense"

    def __post_init__(self) -> None:
        check_settings(self.sigma, self.alpha, self.n, self.n0, 1 if self.batch_size is None else self.batch_size)
        if self.engine not in ENGINES:
            raise UserError(f"smoothing.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.skip < 1:
            raise UserError(f"smoothing.skip must be >= 1, got {self.skip}")
        if self.num_examples is not None and self.num_examples < 1:
            raise UserError(f"smoothing.num_examples must be >= 1 or null, got {self.num_examples}")

    @classmethod
    def from_config(cls, cfg) -> "SmoothingSettings":
        s = cfg.smoothing
        return cls(sigma=s.sigma, n0=s.n0, n=s.n, alpha=s.alpha, batch_size=s.batch_size,
                   num_examples=s.num_examples, skip=s.skip, split=s.split, radii=tuple(s.radii), engine=s.engine)

    def guarantee(self) -> str:
        return (f"each prediction and radius holds with probability >= 1 - alpha = {1 - self.alpha:.6g} "
                f"(sigma={self.sigma:g}, n0={self.n0}, n={self.n}, alpha={self.alpha:g})")


_CHOSEN: dict[tuple, int] = {}


def certify_batch_size(forward: Callable[[Tensor], Tensor], x: Tensor, settings: SmoothingSettings,
                       num_classes: int, device: torch.device | str = "cpu", *,
                       cache_dir: Path | None = None, reps: int = 3) -> Calibration:
    """The forward batch size of certification, measured on ``forward`` (``tuning.choose_batch_size``).

    Times :func:`~abcrown_plugins.smoothing.certify.sample_counts` of one batch
    (noise and forward) on ``x`` (one ``C x H x W`` input on ``device``) at each
    of :data:`CERTIFY_CANDIDATES` (at most ``settings.n``), ``reps`` interleaved rounds (three: ~7 s
    on ``cnn_7layer`` at 1 thread, once per model, device and thread count; one round picked a batch
    11 % slower than the best on a flat curve, measured by ``tools/bench_throughput.py``);
    cached per network structure (:func:`~abcrown_plugins.tuning.model_digest`
    without weights when ``forward`` is a module, else its type: the speed of
    dense kernels does not depend on the weights' values), input shape, device
    and thread count. Memory budget: half of the memory free now
    (:func:`~abcrown_plugins.tuning.default_budget_mib`).
    """
    device = torch.device(device)
    n = settings.n
    cands = sorted({min(c, n) for c in CERTIFY_CANDIDATES})
    model = (model_digest(forward, weights=False) if isinstance(forward, torch.nn.Module)
             else f"{type(forward).__module__}.{getattr(forward, '__qualname__', type(forward).__qualname__)}")
    key = {"model": model, "device": str(device), "input": tuple(x.shape), "dtype": str(x.dtype)}
    generator = torch.Generator(device=device).manual_seed(0)

    def run(b: int) -> None:
        with torch.no_grad():
            sample_counts(forward, x, b, settings.sigma, num_classes, b, generator)

    return choose_batch_size("certify", run, cands, key=key, budget_mib=default_budget_mib(device),
                             cache_dir=cache_dir, reps=reps, device=device)


def inference_form(model: torch.nn.Module) -> torch.nn.Module:
    """A channels-last copy of ``model`` (eval mode) for certification: each convolution with the eval
    BatchNorm after it folded into one (``torch.fx.experimental.optimization.fuse``) and ReLUs in place
    where no other operation reads their input; the same function up to float rounding.

    A network fx cannot trace keeps its modules (only the layout changes). ``tools/bench_throughput.py``
    times the form the run picks against the model's own conv roofline.
    """
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(model).eval()
    try:
        net = fuse(net)
    except Exception:  # noqa: BLE001 - untraceable: keep the modules as they are
        return net.to(memory_format=torch.channels_last)
    safe: dict[str, bool] = {}
    for node in net.graph.nodes:
        if node.op == "call_module" and isinstance(net.get_submodule(node.target), torch.nn.ReLU):
            src = node.args[0] if node.args else None
            ok = (isinstance(src, torch.fx.Node) and src.op != "placeholder" and len(src.users) == 1
                  and not node.kwargs)
            safe[node.target] = safe.get(node.target, True) and ok
    for target, ok in safe.items():
        if ok:
            net.get_submodule(target).inplace = True
    return net.to(memory_format=torch.channels_last)


def certify_layout(model: torch.nn.Module, x: Tensor, settings: SmoothingSettings,
                   device: torch.device | str = "cpu", *, cache_dir: Path | None = None, reps: int = 3) -> str:
    """``"channels_last"`` when :func:`inference_form` of ``model`` (channels-last, conv+BatchNorm folded;
    ``x``: one ``C x H x W`` input on ``device``) runs a batch of noisy inputs faster than ``model`` does,
    else ``"nchw"``; cached like the batch size.

    Timed on ``min(settings.batch_size, n, 100)`` inputs (100 when the batch size is None), interleaved, medians
    (:func:`~abcrown_plugins.tuning.choose_option`). A network without a 2-D convolution is ``"nchw"``
    without timing. The two forms round differently (logits differ by ~1e-7), so only the
    argmaxes, hence the counts, are the same; tests check them on fixed seeds.
    """
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return "nchw"
    device = torch.device(device)
    b = min(settings.batch_size or 100, 100, settings.n)
    batch = next(noise_batches(x, b, settings.sigma, b, torch.Generator(device=device).manual_seed(0)))
    last = inference_form(model)
    key = {"model": model_digest(model, weights=False), "device": str(device), "input": tuple(x.shape),
           "batch": b, "form": "fused"}

    def run(net):
        def call() -> None:
            with torch.no_grad():
                net(batch)
        return call

    return choose_option("certify-layout", {"nchw": run(model), "channels_last": run(last)}, key=key,
                         cache_dir=cache_dir, reps=reps, device=device).name


def resolve_batch_size(settings: SmoothingSettings, forward: Callable[[Tensor], Tensor], x: Tensor,
                       num_classes: int, device: torch.device | str = "cpu") -> SmoothingSettings:
    """``settings`` with a batch size: its own, or :func:`certify_batch_size`'s on ``forward`` (measured once
    per forward, input shape, device and thread count in this process). Only the speed depends on it (a
    forward whose id outlived it could at worst inherit another's batch size)."""
    if settings.batch_size is not None:
        return settings
    memo = (id(forward), tuple(x.shape), str(device), torch.get_num_threads(), settings.n)
    if memo not in _CHOSEN:
        _CHOSEN[memo] = certify_batch_size(forward, x, settings, num_classes, device).batch_size
    return dataclasses.replace(settings, batch_size=_CHOSEN[memo])


def example_indices(num: int, skip: int, num_examples: int | None) -> list[int]:
    """Every ``skip``-th index of ``range(num)``, at most ``num_examples`` of them."""
    out = list(range(0, num, skip))
    return out if num_examples is None else out[:num_examples]


def _header(settings: SmoothingSettings, seed: int, tag: str) -> str:
    return (f"# randomized smoothing (Cohen et al. 2019): {settings.guarantee()}; seed={seed}; {tag}; "
            f"predict -1 = abstain; radius = certified L2 radius in [0,1] pixel units; time in seconds")


def read_rows(path: str | Path, columns: Sequence[str], what: str,
              parse: Callable[[list[str]], dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``(comment line, rows)`` of a TSV the project wrote (comment, header ``columns``, rows), each row parsed."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or not lines[0].startswith("#") or lines[1].split("\t") != list(columns):
        raise UserError(f"'{path}' is not a {what} written by abcrown-plugins; pass another --output")
    return lines[0], [parse(line.split("\t")) for line in lines[2:] if line.strip()]


def read_tsv(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(comment line, rows)`` of a ``certify.tsv``; rows typed (idx/label/predict/correct int, radius/time float)."""
    return read_rows(path, COLUMNS, "certify.tsv", lambda v: {
        "idx": int(v[0]), "label": int(v[1]), "predict": int(v[2]), "radius": float(v[3]), "correct": int(v[4]),
        "time": float(v[5])})


def _write_tsv(path: Path, header: str, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    buf.write(header + "\n" + "\t".join(COLUMNS) + "\n")
    for r in rows:
        buf.write(f"{r['idx']}\t{r['label']}\t{r['predict']}\t{float(r['radius'])!r}\t{r['correct']}\t{r['time']:.4f}\n")
    atomic_write_text(path, buf.getvalue())


def open_tsv(out_dir: str | Path, settings: SmoothingSettings, seed: int, tag: str) -> tuple[Path, str, list[dict]]:
    """``(path, header, rows already certified)`` of ``out_dir/certify.tsv``.

    A TSV whose comment line differs (other settings, seed or tag) is refused
    instead of mixed.
    """
    path = Path(out_dir) / "certify.tsv"
    header = _header(settings, seed, tag)
    rows: list[dict[str, Any]] = []
    if path.is_file():
        old_header, rows = read_tsv(path)
        if old_header != header:
            raise UserError(f"'{path}' was written with other settings ({old_header[2:90]}...); "
                            f"pass another --output or delete it")
    return path, header, rows


def write_tsv(path: Path, header: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write the rows (sorted by index) under ``header``, atomically."""
    _write_tsv(path, header, sorted(rows, key=lambda r: r["idx"]))


def example_generator(seed: int, idx: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator of example ``idx``: seeded by ``(seed, idx)`` only, on ``device``.

    Every certifier of a data set (dense, differential) draws example ``idx``'s
    noise from a generator in this state, so their rows are comparable.
    """
    return torch.Generator(device=torch.device(device)).manual_seed(seed * 1_000_003 + idx)


def certify_example(forward: Callable[[Tensor], Tensor], dataset, idx: int, settings: SmoothingSettings,
                    device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
    """The TSV row of example ``idx``; its noise comes from :func:`example_generator` ``(seed, idx)``.

    A ``settings.batch_size`` of None is measured first (:func:`resolve_batch_size`)."""
    device = torch.device(device)
    x, label = dataset[idx]
    settings = resolve_batch_size(settings, forward, x.to(device), dataset.info.num_classes, device)
    generator = example_generator(seed, idx, device)
    res = certify(forward, x.to(device), settings.n0, settings.n, settings.alpha, settings.sigma,
                  dataset.info.num_classes, settings.batch_size, generator)
    return {"idx": idx, "label": int(label), "predict": res.prediction, "radius": res.radius,
            "correct": int(res.prediction == label and res.prediction != ABSTAIN), "time": res.time_s}


def certify_dataset(forward: Callable[[Tensor], Tensor], dataset, settings: SmoothingSettings, out_dir: str | Path,
                    device: torch.device | str = "cpu", seed: int = 0, tag: str = "",
                    desc: str = "certify") -> list[dict[str, Any]]:
    """Certify ``dataset`` (an :class:`~abcrown_plugins.data.ImageDataset`) into ``out_dir/certify.tsv``, in this process.

    ``forward`` maps noisy inputs on ``device`` to logits (the caller puts a model
    in eval mode). ``tag`` (e.g. the checkpoint) goes into the TSV's comment line
    (:func:`open_tsv`). The TSV is rewritten after every example. Returns every
    row, old and new, in index order.
    """
    path, header, rows = open_tsv(out_dir, settings, seed, tag)
    done = {r["idx"] for r in rows}
    todo = [i for i in example_indices(len(dataset), settings.skip, settings.num_examples) if i not in done]
    for idx in progress(todo, desc=desc, total=len(todo)):
        rows.append(certify_example(forward, dataset, idx, settings, device, seed))
        rows.sort(key=lambda r: r["idx"])
        _write_tsv(path, header, rows)
    if not path.is_file():
        _write_tsv(path, header, rows)
    return rows


def certified_accuracy(rows: Sequence[dict[str, Any]], radii: Sequence[float]) -> list[float]:
    """Fraction of rows that are correct with certified radius >= r, for each r (0.0 for no rows)."""
    n = len(rows)
    return [sum(1 for row in rows if row["correct"] and row["radius"] >= r) / n if n else 0.0 for r in radii]


def write_report(rows: Sequence[dict[str, Any]], settings: SmoothingSettings, out_dir: str | Path,
                 title: str = "certified accuracy") -> list[dict[str, Any]]:
    """Write ``certified_accuracy.md`` and ``.png``; returns the table rows ``{radius, certified_acc}``."""
    out_dir = Path(out_dir)
    radii = sorted(settings.radii)
    table = [{"radius": r, "certified_acc": a} for r, a in zip(radii, certified_accuracy(rows, radii))]
    abstain = sum(1 for r in rows if r["predict"] == ABSTAIN)
    text = (f"# {title}\n\n{len(rows)} examples; {abstain} abstentions. Randomized smoothing (Cohen et al. 2019): "
            f"{settings.guarantee()}. An example counts at radius r when the smoothed prediction is the label "
            f"and its certified L2 radius (in [0,1] pixel units) is >= r.\n\n"
            + markdown_table(table, ["radius", "certified_acc"], ["L2 radius", "certified accuracy"]))
    write_markdown(out_dir / "certified_accuracy.md", text)
    _plot(out_dir / "certified_accuracy.png", rows, radii, settings, title)
    return table


def _plot(path: Path, rows, radii, settings: SmoothingSettings, title: str) -> None:
    top = max([*radii, *(r["radius"] for r in rows), 1e-3]) * 1.05
    grid = [top * i / 200 for i in range(201)]
    fig, ax = new_figure()
    ax.plot(grid, [100 * a for a in certified_accuracy(rows, grid)], label="certified accuracy")
    ax.plot(radii, [100 * a for a in certified_accuracy(rows, radii)], "o", label="table radii")
    ax.set_xlabel("L2 radius ([0,1] pixels)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title(f"{title} (sigma={settings.sigma:g}, n={settings.n}, p >= {1 - settings.alpha:g})", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
