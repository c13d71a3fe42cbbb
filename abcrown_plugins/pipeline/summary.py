"""summary.csv, summary.md and the verified-accuracy plot of an iterative-pruning run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from abcrown_plugins.report import markdown_table, plot_xy, write_csv, write_markdown

COLUMNS = ["round", "remain_ratio", "remaining_weights", "std_acc", "verified_acc", "eps", "verifier",
           "instability", "unstable_ratio", "instability_bn", "unstable_ratio_bn", "train_acc",
           "train_time_s", "verify_time_s", "time_s", "n_test"]

MD_COLUMNS = ["round", "remain_ratio", "std_acc", "verified_acc", "unstable_ratio", "instability", "time_s"]
MD_HEADERS = ["round", "remaining weights", "clean acc", "verified acc", "unstable ReLUs", "instability",
              "time (s)"]


def write_summary(cfg, out: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_csv(out / "summary.csv", rows, COLUMNS)
    eps = cfg.verification.eps
    lines = [
        f"# {cfg.general.name}: iterative pruning with {cfg.training.method} training",
        "",
        f"- model `{cfg.model.arch}` on `{cfg.data.dataset}`, seed {cfg.general.seed}, config hash `{cfg.hash()}`",
        f"- pruning: {cfg.pruning.method}, {cfg.pruning.rate:.0%} of the remaining `{cfg.pruning.scope}` weights "
        f"per round, rewind to {cfg.pruning.rewind}",
        f"- verified accuracy: {cfg.verification.method.upper()} bounds, L-inf eps = {eps:.6g} "
        f"({eps * 255:.3g}/255) on [0,1] pixels; a verified example is provably robust (sound bounds), "
        "so verified accuracy is a lower bound of robust accuracy",
        "",
        markdown_table(rows, MD_COLUMNS, MD_HEADERS),
        "",
    ]
    write_markdown(out / "summary.md", "\n".join(lines))
    if cfg.output.plot and rows:
        xs = [r["remain_ratio"] for r in rows]
        plot_xy(out / "verified_acc.png",
                {"verified accuracy": (xs, [r["verified_acc"] for r in rows]),
                 "clean accuracy": (xs, [r["std_acc"] for r in rows])},
                xlabel="remaining weights (%)", ylabel="accuracy (%)",
                title=f"{cfg.model.arch} on {cfg.data.dataset}, eps={eps * 255:.3g}/255", invert_x=True)
