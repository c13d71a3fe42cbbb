"""summary.csv, summary.md and the verified-accuracy plot of an iterative-pruning run.

Columns (fractions in [0,1] unless a unit is named): ``remain_ratio`` is the method's
unit (weights, or channels for channel methods); ``pgd_acc`` counts examples that PGD
with re-checked counterexamples does not break (an upper bound of robust accuracy);
``verified_acc`` is a lower bound (sound bounds; IBP, or the tighter of CROWN and IBP);
``verify_peak_mem_mib`` is the peak memory growth during verification, measured as
``verify_mem_how`` says (``rss_hwm``: Linux peak resident set after resetting it;
``cuda_max_allocated`` on GPU); ``instability``/``unstable_ratio`` are on IBP
pre-activation bounds, the ``_bn`` ones on pre-BN bounds normalised by gamma;
``lottery_ticket`` marks pruned rounds that match or beat the dense round on both clean
and verified accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from abcrown_plugins.report import markdown_table, plot_xy, write_csv, write_markdown

COLUMNS = ["round", "method", "remain_ratio", "weight_remain_ratio", "channel_remain_ratio", "remaining_weights",
           "std_acc", "pgd_acc", "verified_acc", "verified_acc_ibp", "eps", "verifier",
           "instability", "unstable_ratio", "instability_bn", "unstable_ratio_bn", "train_acc",
           "train_time_s", "verify_time_s", "verify_peak_mem_mib", "verify_mem_how", "pgd_time_s", "time_s",
           "n_test", "lottery_ticket"]

MD_COLUMNS = ["round", "remain_ratio", "std_acc", "verified_acc", "pgd_acc", "unstable_ratio", "instability",
              "verify_time_s", "verify_peak_mem_mib", "lottery_ticket"]
MD_HEADERS = ["round", "remaining {unit}", "clean acc", "verified acc", "PGD acc", "unstable ReLUs", "instability",
              "verify time (s)", "verify peak mem (MiB)", "lottery ticket"]


def mark_lottery_tickets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``lottery_ticket``: round > 0 matching or beating round 0 on clean and verified acc."""
    if not rows:
        return []
    dense = rows[0]
    return [{**row, "lottery_ticket": bool(row["round"] > 0 and row["std_acc"] >= dense["std_acc"]
                                             and row["verified_acc"] >= dense["verified_acc"])} for row in rows]


def best_round(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best subnetwork: highest verified accuracy, then clean accuracy, then the smallest remain ratio."""
    if not rows:
        return None
    return max(rows, key=lambda row: (row["verified_acc"], row["std_acc"], -row["remain_ratio"]))


def write_summary(cfg, out: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_csv(out / "summary.csv", rows, COLUMNS)
    eps = cfg.verification.eps
    p = cfg.pruning
    unit = "channels" if rows and rows[0].get("structure") == "channels" else "weights"
    rate = p.channel_rate if unit == "channels" else p.rate
    best = best_round(rows)
    lines = [
        f"# {cfg.general.name}: iterative pruning ({p.method}) with {cfg.training.method} training",
        "",
        f"- model `{cfg.model.arch}` on `{cfg.data.dataset}`, seed {cfg.general.seed}, config hash `{cfg.hash()}`",
        f"- pruning: {p.method}, {rate:.0%} of the remaining {unit} per round "
        f"({p.scope if unit == 'weights' else 'prunable convs'}), rewind to {p.rewind}",
        f"- verified accuracy: {cfg.verification.method.upper()} bounds, L-inf eps = {eps:.6g} "
        f"({eps * 255:.3g}/255) on [0,1] pixels; a verified example is provably robust (sound bounds), "
        "so verified accuracy is a lower bound of robust accuracy and PGD accuracy an upper bound",
        "",
        markdown_table(rows, MD_COLUMNS, [h.format(unit=unit) for h in MD_HEADERS]),
        "",
    ]
    if best is not None and len(rows) == p.rounds + 1:
        tickets = [str(row["round"]) for row in rows if row.get("lottery_ticket")]
        lines += [f"Best subnetwork: round {best['round']} (remaining {best['remain_ratio']:.4g}, verified "
                  f"{best['verified_acc']:.2%}, clean {best['std_acc']:.2%}). Certified lottery tickets "
                  f"(match or beat the dense network on clean and verified accuracy): "
                  f"{', '.join(tickets) if tickets else 'none'}.", ""]
    write_markdown(out / "summary.md", "\n".join(lines))
    if cfg.output.plot and rows:
        xs = [r["remain_ratio"] for r in rows]
        plot_xy(out / "verified_acc.png",
                {"verified accuracy": (xs, [r["verified_acc"] for r in rows]),
                 "clean accuracy": (xs, [r["std_acc"] for r in rows])},
                xlabel=f"remaining {unit} (%)", ylabel="accuracy (%)",
                title=f"{cfg.model.arch} on {cfg.data.dataset}, eps={eps * 255:.3g}/255", invert_x=True)
