"""PNG plots with matplotlib's non-interactive backend."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from abcrown_plugins.checkpoints import atomic_write_bytes


def plot_xy(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
            ylabel: str, title: str, invert_x: bool = False, percent_axes: bool = True) -> None:
    """Line plot of named (x, y) series with markers, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in series.items():
        scale = 100.0 if percent_axes else 1.0
        ax.plot([x * scale for x in xs], [y * scale for y in ys], marker="o", label=label)
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: str | Path) -> None:
    """Lay out, render to PNG in memory, close, and write ``path`` atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
