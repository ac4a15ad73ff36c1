"""Report figures (matplotlib, PNG + SVG): ROC and precision-recall curves of several methods on
one axes with the area [95 % CI] in the legend (Jing & Wang Fig. 2-4), decision curves (Gao et
al. Fig. 5) and a calibration diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from preprocessing.atomic import atomic_path  # noqa: E402

from .decision import NIA, PER_PATIENTS, TARGETS  # noqa: E402

FORMATS = ("png", "svg")


def save(fig, folder: Path, stem: str) -> list[Path]:
    """``folder/stem.png`` and ``.svg``, each written to a temporary name and then renamed."""
    paths = [folder / f"{stem}.{fmt}" for fmt in FORMATS]
    for path in paths:
        with atomic_path(path) as tmp:
            # no creation date in the SVG, so that identical figures are identical files
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight",
                        metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def _axes(title: str):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.set_title(title)
    return fig, ax


def roc_figure(curves: dict[str, pd.DataFrame], legends: dict[str, str], title: str = "ROC curves"):
    """``curves``: method -> frame with ``label``, ``probability``; ``legends``: method -> text."""
    fig, ax = _axes(title)
    for name, frame in curves.items():
        display = RocCurveDisplay.from_predictions(frame.label, frame.probability, ax=ax, plot_chance_level=False)
        display.line_.set_label(legends[name])  # the legend text already holds the area and its CI
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def pr_figure(curves: dict[str, pd.DataFrame], legends: dict[str, str], title: str = "Precision-recall curves"):
    fig, ax = _axes(title)
    for name, frame in curves.items():
        display = PrecisionRecallDisplay.from_predictions(frame.label, frame.probability, ax=ax)
        display.line_.set_label(legends[name])
    prevalence = next(iter(curves.values())).label.mean()
    ax.axhline(prevalence, ls=":", color="grey", lw=1, label=f"pCR rate {prevalence:.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize="small")
    return fig


def decision_figure(curves: dict[str, pd.DataFrame], target: str):
    """``curves``: method -> ``evaluation.decision_curve`` frame for ``target``. Left: net benefit
    against treat all and treat none; right: net interventions avoided per 1,000 patients, the
    MRP paper's Fig. 5 (0 = treat all)."""
    fig, (ax, avoided) = plt.subplots(1, 2, figsize=(11, 5))
    fig.suptitle(f"Decision curves: {TARGETS[target]}")
    first = next(iter(curves.values()))
    for name, frame in curves.items():
        line, = ax.plot(frame.threshold, frame.net_benefit, label=name)
        avoided.plot(frame.threshold, frame[NIA], color=line.get_color(), label=name)
        if "net_benefit_low" in frame:
            ax.fill_between(frame.threshold, frame.net_benefit_low, frame.net_benefit_high, color=line.get_color(),
                            alpha=0.15, lw=0)
            avoided.fill_between(frame.threshold, frame[f"{NIA}_low"], frame[f"{NIA}_high"], color=line.get_color(),
                                 alpha=0.15, lw=0)
    ax.plot(first.threshold, first.net_benefit_all, color="black", ls="--", lw=1, label="treat all")
    ax.axhline(0, color="grey", lw=1, label="treat none")
    top = max(first.net_benefit_all.max(), max(f.net_benefit.max() for f in curves.values()))
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05, top + 0.05), xlim=(0, 1))
    ax.legend(loc="upper right", fontsize="small")
    avoided.axhline(0, color="black", ls="--", lw=1, label="treat all")
    # at low thresholds the division by pt / (1 - pt) sends the curves far below 0: the axis keeps the
    # clinically relevant range up to the largest possible value (every patient without the event spared)
    avoided.set(xlabel="threshold probability", ylabel=f"net interventions avoided per {PER_PATIENTS:,} patients",
                xlim=(0, 1), ylim=(-PER_PATIENTS / 4, PER_PATIENTS))
    avoided.legend(loc="upper left", fontsize="small")
    return fig


def calibration_figure(curves: dict[str, pd.DataFrame], n_bins: int = 10):
    fig, ax = _axes("Calibration")
    for name, frame in curves.items():
        observed, predicted = calibration_curve(frame.label, frame.probability, n_bins=n_bins, strategy="uniform")
        ax.plot(predicted, observed, marker="o", ms=4, label=name)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.set(xlabel="mean predicted P(pCR)", ylabel="observed pCR rate", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize="small")
    return fig
