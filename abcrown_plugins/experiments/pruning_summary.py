"""summary.csv, summary.md and the verified-accuracy plot of an iterative-pruning run.

Columns (fractions in [0,1] unless a unit is named): ``remain_ratio`` is the method's
unit (weights, or channels for channel methods); ``pgd_acc`` counts examples that PGD
with re-checked counterexamples does not break (an upper bound of robust accuracy);
``verified_acc`` is a lower bound (sound bounds; IBP, or the tighter of CROWN and IBP);
``verify_peak_mem_mib`` is the peak memory growth during verification, measured as
``verify_mem_how`` says (``rss_hwm``: Linux peak resident set after resetting it;
``cuda_max_allocated`` on GPU) and ``verify_batch_size`` the images per verification batch
(``verification.batch_size``, or the measured one when it is null); ``instability``/``unstable_ratio`` are on IBP
pre-activation bounds, the ``_bn`` ones on pre-BN bounds normalised by gamma;
``lottery_ticket`` marks pruned rounds that match or beat the dense round on both clean
and verified accuracy (α,β-CROWN's verified accuracy when it was measured, else IBP/CROWN's).

With ``verification.method abcrown`` the ``abcrown_*`` columns hold α,β-CROWN's complete
verification of the first ``verification.num_examples`` test images (a misclassified image
counts as not verified): ``abcrown_verified_acc``, the counts of each verdict, the mean and
max α,β-CROWN time per instance (inside its process, start-up excluded) and the peak memory
of its process (``abcrown_mem_how``: resident memory on CPU, CUDA allocator peak on GPU).
``abcrown_cost.png`` shows the per-instance time and memory of every round against its
remaining weights; each round's instances are in ``round_R/abcrown.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from abcrown_plugins.report import markdown_table, new_figure, plot_xy, save_figure, write_csv, write_markdown

COLUMNS = ["round", "method", "remain_ratio", "weight_remain_ratio", "channel_remain_ratio", "remaining_weights",
           "std_acc", "pgd_acc", "verified_acc", "verified_acc_ibp", "eps", "verifier",
           "instability", "unstable_ratio", "instability_bn", "unstable_ratio_bn", "train_acc",
           "train_time_s", "verify_time_s", "verify_peak_mem_mib", "verify_mem_how", "verify_batch_size", "pgd_time_s", "time_s",
           "n_test", "lottery_ticket", "abcrown_verified_acc", "abcrown_safe", "abcrown_unsafe", "abcrown_timeout",
           "abcrown_unknown", "abcrown_error", "abcrown_misclassified", "abcrown_time_mean_s", "abcrown_time_max_s",
           "abcrown_peak_mem_mib", "abcrown_mem_how"]

MD_COLUMNS = ["round", "remain_ratio", "std_acc", "verified_acc", "pgd_acc", "unstable_ratio", "instability",
              "verify_time_s", "verify_peak_mem_mib", "lottery_ticket"]
MD_HEADERS = ["round", "remaining {unit}", "clean acc", "verified acc", "PGD acc", "unstable ReLUs", "instability",
              "verify time (s)", "verify peak mem (MiB)", "lottery ticket"]


def verified_key(rows: Sequence[dict[str, Any]]) -> str:
    """The verified-accuracy column the rules use: α,β-CROWN's when every row has it, else IBP/CROWN's."""
    return "abcrown_verified_acc" if rows and all(r.get("abcrown_verified_acc") is not None for r in rows) \
        else "verified_acc"


def mark_lottery_tickets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``lottery_ticket``: round > 0 matching or beating round 0 on clean and verified acc."""
    if not rows:
        return []
    dense, key = rows[0], verified_key(rows)
    return [{**row, "lottery_ticket": bool(row["round"] > 0 and row["std_acc"] >= dense["std_acc"]
                                             and row[key] >= dense[key])} for row in rows]


def best_round(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best subnetwork: highest verified accuracy (:func:`verified_key`), then clean accuracy, then the
    smallest remain ratio."""
    if not rows:
        return None
    key = verified_key(rows)
    return max(rows, key=lambda row: (row[key], row["std_acc"], -row["remain_ratio"]))


def write_summary(cfg, out: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_csv(out / "summary.csv", rows, COLUMNS)
    eps = cfg.verification.eps
    p = cfg.pruning
    unit = "channels" if rows and rows[0].get("structure") == "channels" else "weights"
    rate = p.channel_rate if unit == "channels" else p.rate
    best = best_round(rows)
    complete = cfg.verification.method == "abcrown"
    bounds = "IBP" if complete else cfg.verification.method.upper()
    md_columns, md_headers = list(MD_COLUMNS), [h.format(unit=unit) for h in MD_HEADERS]
    if complete:
        md_columns[4:4] = ["abcrown_verified_acc", "abcrown_timeout", "abcrown_time_mean_s", "abcrown_peak_mem_mib"]
        md_headers[4:4] = ["α,β-CROWN verified", "timeouts", "α,β-CROWN s/inst", "α,β-CROWN peak MiB"]
    lines = [
        f"# {cfg.general.name}: iterative pruning ({p.method}) with {cfg.training.method} training",
        "",
        f"- model `{cfg.model.arch}` on `{cfg.data.dataset}`, seed {cfg.general.seed}, config hash `{cfg.hash()}`",
        f"- pruning: {p.method}, {rate:.0%} of the remaining {unit} per round "
        f"({p.scope if unit == 'weights' else 'prunable convs'}), rewind to {p.rewind}",
        f"- verified accuracy: {bounds} bounds, L-inf eps = {eps:.6g} "
        f"({eps * 255:.3g}/255) on [0,1] pixels; a verified example is provably robust (sound bounds), "
        "so verified accuracy is a lower bound of robust accuracy and PGD accuracy an upper bound",
    ]
    if complete:
        lines.append(f"- α,β-CROWN verified accuracy: complete verification of the first "
                     f"{cfg.verification.num_examples or 'all'} test images, {cfg.verification.timeout:g} s per "
                     "instance; misclassified images count as not verified; the best round and the lottery tickets "
                     "use it")
    lines += ["", markdown_table(rows, md_columns, md_headers), ""]
    if best is not None and len(rows) == p.rounds + 1:
        key = verified_key(rows)
        tickets = [str(row["round"]) for row in rows if row.get("lottery_ticket")]
        lines += [f"Best subnetwork: round {best['round']} (remaining {best['remain_ratio']:.4g}, verified "
                  f"{best[key]:.2%}{' by α,β-CROWN' if key != 'verified_acc' else ''}, clean {best['std_acc']:.2%}). "
                  f"Certified lottery tickets (match or beat the dense network on clean and verified accuracy): "
                  f"{', '.join(tickets) if tickets else 'none'}.", ""]
    write_markdown(out / "summary.md", "\n".join(lines))
    if cfg.output.plot and rows:
        xs = [r["remain_ratio"] for r in rows]
        series = {f"verified accuracy ({bounds})": (xs, [r["verified_acc"] for r in rows])}
        if complete and all(r.get("abcrown_verified_acc") is not None for r in rows):
            series["verified accuracy (α,β-CROWN)"] = (xs, [r["abcrown_verified_acc"] for r in rows])
        series["clean accuracy"] = (xs, [r["std_acc"] for r in rows])
        plot_xy(out / "verified_acc.png", series, xlabel=f"remaining {unit} (%)", ylabel="accuracy (%)",
                title=f"{cfg.model.arch} on {cfg.data.dataset}, eps={eps * 255:.3g}/255", invert_x=True)
        if complete:
            plot_abcrown_cost(out, rows, unit)


def plot_abcrown_cost(out: Path, rows: Sequence[dict[str, Any]], unit: str) -> None:
    """``abcrown_cost.png``: α,β-CROWN time and peak memory per instance (box per round) against remaining ``unit``."""
    per_round = []
    for row in rows:
        path = out / f"round_{row['round']}" / "abcrown.csv"
        if not path.is_file():
            continue
        with open(path) as f:
            inst = [r for r in csv.DictReader(f) if r["result"] != "misclassified" and r["time_s"]]
        per_round.append((row["remain_ratio"], [float(r["time_s"]) for r in inst],
                          [float(r["peak_rss_mib"]) for r in inst if r["peak_rss_mib"]]))
    if not per_round:
        return
    fig, (ax_t, ax_m) = new_figure(figsize=(10, 4), ncols=2)
    labels = [f"{100 * x:.3g}" for x, _, _ in per_round]
    for ax, values, ylabel in ((ax_t, [t for _, t, _ in per_round], "α,β-CROWN time per instance (s)"),
                               (ax_m, [m for _, _, m in per_round], "peak memory of α,β-CROWN (MiB)")):
        ax.boxplot([v if v else [float("nan")] for v in values], tick_labels=labels)
        ax.set_xlabel(f"remaining {unit} (%)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")
    fig.suptitle("α,β-CROWN cost per instance against sparsity (boxes: quartiles, whiskers 1.5 IQR)", fontsize=9)
    save_figure(fig, out / "abcrown_cost.png")
