"""PNG figures in the manner of the paper's Figures 3 to 7, and the time-series CSV.

Fig. 3: demand over time with and without sharing. Fig. 4: borrowed nodes over time; with two
domains one signed series as the paper draws it (positive: the first domain borrows from the
second; negative: the second borrows from the first). Figs. 5, 6 and 7 are the same kind of
plot (mean completion time of the jobs submitted each day) for the paper's three scenarios:
``completion_figure`` says which one a run draws, and names the file after it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from broker.simulator.metrics import SERIES_FIELDS  # noqa: E402
from broker.simulator.runner import RunOutput  # noqa: E402

DAY = 86400.0


def write_series_csv(path: Path, runs: Sequence[RunOutput]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(("run", "domain", *SERIES_FIELDS))
        for run in runs:
            label = "sharing" if run.sharing else "no_sharing"
            for domain, rows in run.series.items():
                for row in rows:
                    out.writerow((label, domain, *("" if isinstance(v, float) and math.isnan(v)
                                                   else v for v in row)))


def _column(rows, index):
    return [r[index] for r in rows]


def _daily_mean_response(daily: dict[int, list[float]]) -> tuple[list[float], list[float]]:
    """Mean completion (response) time, in hours, of the jobs submitted each day."""
    days = sorted(daily)
    return [d + 0.5 for d in days], [daily[d][1] / daily[d][0] / 3600.0 for d in days]


def signed_borrowed(first: list[tuple], second: list[tuple]) -> list[float]:
    """Fig. 4 as the paper draws it for two domains: VMs the first holds from the second
    (positive) less those the second holds from the first (negative), per interval."""
    return [a - b for a, b in zip(_column(first, 4), _column(second, 4))]


def _runs(runs):
    sharing = next((r for r in runs if r.sharing), None)
    alone = next((r for r in runs if not r.sharing), None)
    return sharing, alone


def make_figures(out: Path, runs: Sequence[RunOutput], capacities: dict[str, int],
                 title: str, completion_figure: int = 5) -> list[Path]:
    sharing, alone = _runs(runs)
    names = list(capacities)
    paths = []

    # Figure 3: demand over time, with and without sharing
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.4 * len(names)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for run, style, label in ((alone, "-", "no sharing"), (sharing, "-", "sharing")):
            if run is None:
                continue
            rows = run.series[name]
            ax.plot([t / DAY for t in _column(rows, 0)], _column(rows, 1), style, lw=0.7,
                    label=label, alpha=0.8)
        ax.axhline(capacities[name], color="k", ls="--", lw=0.8, label="capacity")
        ax.set_ylabel(f"{name}\nnodes wanted")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("day")
    fig.suptitle(f"{title}\ndemand d_a over time")
    fig.tight_layout()
    paths.append(out / "fig3_demand.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    # Figure 4: borrowed nodes over time (sharing run)
    if sharing is not None:
        fig, ax = plt.subplots(figsize=(8, 3))
        if len(names) == 2:
            first, second = (sharing.series[n] for n in names)
            ax.plot([t / DAY for t in _column(first, 0)],
                    signed_borrowed(first, second), lw=0.8,
                    color="C0")
            ax.axhline(0, color="k", lw=0.6)
            ax.set_ylabel(f"+ {names[0]} borrows from {names[1]}\n"
                          f"- {names[1]} borrows from {names[0]}", fontsize=8)
        else:
            for name in names:
                rows = sharing.series[name]
                ax.plot([t / DAY for t in _column(rows, 0)], _column(rows, 4), lw=0.8,
                        label=f"{name} borrowed")
            ax.set_ylabel("VMs borrowed")
            ax.legend(fontsize=7)
        ax.set_xlabel("day")
        ax.set_title(f"{title}\nborrowed nodes over time", fontsize=10)
        fig.tight_layout()
        paths.append(out / "fig4_borrowed.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

    # Figure 5: average completion time over time, with and without sharing
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.4 * len(names)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for run, label in ((alone, "no sharing"), (sharing, "sharing")):
            if run is None:
                continue
            x, y = _daily_mean_response(run.daily[name])
            ax.plot(x, y, lw=0.8, label=label, alpha=0.85)
        ax.set_ylabel(f"{name}\nhours")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("day")
    fig.suptitle(f"{title}\nmean completion time of the jobs submitted each day")
    fig.tight_layout()
    paths.append(out / f"fig{completion_figure}_completion.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths
