"""``python -m evaluation report``: statistics, figures, ``report.md`` and a self-contained
``report.html`` from prediction CSVs (``id, outer_fold, method, probability, label``).

Every metric has a 95 % percentile CI from 1,000 seeded stratified patient-level bootstrap
resamples; the Youden operating point is chosen per outer fold on validation predictions (never
on the reported patients); the reference method is compared with each other method by the paired
DeLong test on the same patients.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.atomic import atomic_write_csv, atomic_write_text

from .decision import PER_PATIENTS, TARGETS, decision_curve
from .delong import delong_test
from .figures import calibration_figure, decision_figure, pr_figure, roc_figure, save
from .methods import FIGURE_GROUPS, METHODS
from .metrics import metric_summary, youden_threshold
from .subgroups import clinical_table, odds_ratios, subgroup_auroc, with_clinical

COLUMNS = ["id", "outer_fold", "method", "probability", "label"]
ORACLES = {"p_clinical": "clinical + subtype", "p_t0": "+ T0", "p_t0_t1": "+ T0, T1", "p_t0_t2": "+ T0, T1, T2"}
TABLE2 = ("AUROC", "sensitivity @0.5", "specificity @0.5", "AUPRC", "Brier")


def read_predictions(paths: list[Path]) -> dict[str, pd.DataFrame]:
    """method -> predictions, from one or more CSVs; errors name the file and the problem."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found")
        frame = pd.read_csv(path, dtype={"id": str, "method": str})
        missing = [c for c in COLUMNS if c not in frame]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(COLUMNS)})")
        if frame[["probability", "label"]].isna().any().any():
            raise ValueError(f"{path}: empty probability or label in {int(frame[['probability', 'label']].isna().any(axis=1).sum())} row(s)")
        if not frame.label.isin((0, 1)).all() or not frame.probability.between(0, 1).all():
            raise ValueError(f"{path}: label must be 0/1 and probability within [0, 1]")
        frames.append(frame.assign(source=str(path)))
    table = pd.concat(frames, ignore_index=True)
    duplicated = table[table.duplicated(["method", "id", "outer_fold"], keep=False)]
    if len(duplicated):
        row = duplicated.iloc[0]
        raise ValueError(f"{row.source}: patient {row.id} appears more than once for method {row.method}, outer fold {row.outer_fold}")
    return {name: group.drop(columns="source").sort_values(["outer_fold", "id"]).reset_index(drop=True)
            for name, group in table.groupby("method", sort=False)}


def youden_per_patient(test: pd.DataFrame, validation: pd.DataFrame | None) -> np.ndarray | None:
    """Each test patient's Youden threshold: chosen on the validation predictions of its outer fold."""
    if validation is None:
        return None
    thresholds = {}
    for fold in test.outer_fold.unique():
        val = validation[validation.outer_fold == fold]
        if val.label.nunique() < 2:
            raise ValueError(f"method {test.method.iloc[0]}, outer fold {fold}: validation predictions need both classes")
        overlap = set(val.id) & set(test.id[test.outer_fold == fold])
        if overlap:
            raise ValueError(f"method {test.method.iloc[0]}, outer fold {fold}: {len(overlap)} patient(s) in both the "
                             "validation and the reported predictions; the Youden threshold must not see reported patients")
        thresholds[fold] = youden_threshold(val.label, val.probability)
    return test.outer_fold.map(thresholds).to_numpy(float)


def same_patients(reference: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    merged = reference[["id", "label", "probability"]].merge(other[["id", "label", "probability"]], on="id",
                                                              suffixes=("_ref", ""), how="outer", indicator=True)
    if (merged["_merge"] != "both").any():
        raise ValueError(f"method {name} was not tested on the same patients as the reference "
                         f"({int((merged['_merge'] != 'both').sum())} patient(s) differ); DeLong's paired test needs the same patients")
    if (merged.label_ref != merged.label).any():
        raise ValueError(f"method {name}: labels differ from the reference method's for the same patients")
    return merged


def fmt(estimate: float, low: float, high: float) -> str:
    if not np.isfinite(estimate):
        return "n/a"
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # PNG paths (an SVG sits beside each)


@dataclass
class Report:
    """The report's content; ``summary`` is the short text printed on the console."""
    sections: list[Section]
    summary: str


def figure_groups(names: list[str], reference: str) -> dict[str, list[str]]:
    """The paper's figure panels (main comparison, visits, inputs) among the given methods; any
    other methods share one panel with the reference."""
    groups = {g: [m for m in members if m in names] for g, members in FIGURE_GROUPS.items()}
    groups = {g: members for g, members in groups.items() if len(members) >= 2}
    covered = {m for members in groups.values() for m in members}
    rest = [m for m in names if m not in covered]
    if rest:
        groups["methods"] = ([reference] if reference not in rest else []) + rest
    return groups


def build_report(predictions: dict[str, pd.DataFrame], out: Path, validation: dict[str, pd.DataFrame] | None = None,
                 truth: Path | None = None, data: Path | None = None, reference: str | None = None,
                 about: dict | None = None, n_resamples: int = 1000, seed: int = 0) -> Report:
    """Compute every statistic, write the CSV tables and figures under ``out``; return the content."""
    names = list(predictions)
    reference = reference or ("dualtask" if "dualtask" in predictions else names[0])
    if reference not in predictions:
        raise ValueError(f"reference method {reference!r} not among the predictions ({', '.join(names)})")
    ref = predictions[reference]
    joined = with_clinical(ref, clinical_table(data)) if data is not None else None  # fails before any output
    rows = {}  # label -> (patients, summary)
    for name, frame in predictions.items():
        youden = youden_per_patient(frame, (validation or {}).get(name))
        rows[name] = (len(frame), metric_summary(frame.label, frame.probability, youden, n_resamples, seed))
    if truth is not None:
        oracle = ref[["id", "label"]].merge(pd.read_csv(truth, dtype={"id": str}), on="id", how="left")
        if oracle["p_t0_t1"].isna().any():
            raise ValueError(f"{truth}: no oracle row for {int(oracle['p_t0_t1'].isna().sum())} reported patient(s)")
        for column in ORACLES:
            rows[f"oracle {column}"] = (len(oracle), metric_summary(oracle.label, oracle[column], None, n_resamples, seed))
    delong = {}
    for name in names:
        if name != reference:
            merged = same_patients(ref, predictions[name], name)
            delong[name] = delong_test(merged.label, merged.probability_ref, merged.probability)

    metrics = pd.DataFrame([{"method": label, "patients": n, "metric": metric, "estimate": e, "low": lo, "high": hi}
                            for label, (n, summary) in rows.items() for metric, (e, lo, hi) in summary.items()])
    atomic_write_csv(metrics, out / "metrics.csv")
    delong_frame = pd.DataFrame([{"reference": reference, "method": name, **vars(result)} for name, result in delong.items()])
    atomic_write_csv(delong_frame, out / "delong.csv")

    def described(label: str) -> str:
        if label.startswith("oracle "):
            return f"exact P(pCR | {ORACLES[label[7:]]}) of the synthetic cohort"
        return METHODS[label].description if label in METHODS else ""

    table2 = pd.DataFrame([{"method": label, "patients": n, **{m: fmt(*summary[m]) for m in TABLE2},
                            f"DeLong p vs {reference}": fmt_p(delong[label].p_value) if label in delong else "",
                            "description": described(label)} for label, (n, summary) in rows.items()])
    extra_metrics = [m for m in next(iter(rows.values()))[1] if m not in TABLE2]
    detail = pd.DataFrame([{"method": label, **{m: fmt(*summary[m]) if m in summary else "" for m in extra_metrics}}
                           for label, (n, summary) in rows.items()])
    sections = []
    header = Section("Run", [f"- {k}: {v}" for k, v in (about or {}).items()] + [
        f"- predictions: {len(names)} method(s), {len(ref)} patients ({int(ref.label.sum())} pCR), "
        f"outer fold(s) {', '.join(str(f) for f in sorted(ref.outer_fold.unique()))}",
        f"- CIs: 95 % percentile intervals from {n_resamples} stratified patient-level bootstrap resamples (seed {seed})",
        f"- Youden threshold: {'chosen per outer fold on validation predictions' if validation else 'not reported (no validation predictions given)'}"])
    sections.append(header)
    headline = []
    if reference == "dualtask" and "conv1" in delong:  # the paper's claim, reported whatever its sign
        r = delong["conv1"]
        headline = [f"Dual-task vs Conventional #1: AUROC {r.auc_a:.3f} vs {r.auc_b:.3f}, difference "
                    f"{r.auc_a - r.auc_b:+.3f}, paired DeLong p = {fmt_p(r.p_value)}."]
    sections.append(Section("Performance (Table 2 style)", headline + [
        f"Sensitivity and specificity at probability 0.5 (the paper's operating point). "
        f"p: two-sided paired DeLong test of {reference} against each method, on the same patients."], [table2]))
    sections.append(Section("Operating points and calibration", [
        "PPV/NPV at 0.5; sensitivity/specificity/PPV/NPV at the Youden threshold chosen on validation data; "
        "calibration intercept (calibration-in-the-large, ideal 0) and slope (ideal 1) by logistic recalibration; "
        "ECE over 10 equal-width bins."], [detail]))
    if delong:
        sections.append(Section(f"Paired DeLong tests ({reference} vs each method)", [], [pd.DataFrame([{
            "method": name, f"AUROC {reference}": f"{r.auc_a:.3f}", "AUROC method": f"{r.auc_b:.3f}",
            "difference": f"{r.auc_a - r.auc_b:+.3f}", "z": f"{r.z:.2f}", "p": fmt_p(r.p_value)} for name, r in delong.items()])]))

    figures = out / "figures"
    legends = {name: f"{name} {fmt(*rows[name][1]['AUROC'])}" for name in names}
    ap_legends = {name: f"{name} {fmt(*rows[name][1]['AUPRC'])}" for name in names}
    groups = figure_groups(names, reference)
    roc_paths, pr_paths = [], []
    for group, members in groups.items():
        curves = {m: predictions[m] for m in members}
        roc_paths.append(save(roc_figure(curves, legends, f"ROC: {group}"), figures, f"roc_{group}")[0])
        pr_paths.append(save(pr_figure(curves, ap_legends, f"Precision-recall: {group}"), figures, f"pr_{group}")[0])
    sections.append(Section("ROC curves", ["Legend: AUROC [95 % CI]."], figures=roc_paths))
    sections.append(Section("Precision-recall curves", ["Legend: average precision [95 % CI]."], figures=pr_paths))

    main = next(iter(groups.values()))
    curves = {m: predictions[m] for m in main}
    dca_frames, dca_paths = [], []
    for target in TARGETS:
        frames = {m: decision_curve(f.label, f.probability, target=target, n_resamples=n_resamples, seed=seed)
                  for m, f in curves.items()}
        dca_frames += [f.assign(method=m) for m, f in frames.items()]
        dca_paths.append(save(decision_figure(frames, target), figures, f"dca_{target}")[0])
    dca = pd.concat(dca_frames, ignore_index=True)
    atomic_write_csv(dca, out / "decision_curves.csv")
    at = dca[dca.threshold.isin([0.2, 0.5, 0.8])]
    sections.append(Section("Decision curves", [
        f"Net benefit with 95 % bootstrap bands; net interventions avoided per {PER_PATIENTS} patients against "
        "treating all. non_pcr: identify non-responders before/mid treatment (event non-pCR, probability 1 - P(pCR)); "
        "pcr: identify responders before surgery. Full curves: decision_curves.csv."],
        [at.assign(net_benefit=at.apply(lambda r: fmt(r.net_benefit, r.net_benefit_low, r.net_benefit_high), axis=1),
                   interventions_avoided=at.apply(lambda r: fmt(r.net_intervention_avoided, r.nia_low, r.nia_high), axis=1),
                   net_benefit_all=at.net_benefit_all.round(3))
         [["target", "method", "threshold", "net_benefit", "net_benefit_all", "interventions_avoided"]]],
        dca_paths))
    sections.append(Section("Calibration", [], figures=[save(calibration_figure(curves), figures, "calibration")[0]]))

    if joined is not None:
        groups_table = subgroup_auroc(joined, n_resamples=n_resamples, seed=seed)
        atomic_write_csv(groups_table, out / "subgroups.csv")
        ors = odds_ratios(joined)
        atomic_write_csv(ors, out / "odds_ratios.csv")
        sections.append(Section(f"Subgroups ({reference})", ["AUROC [95 % CI] within each level; n/a where a level "
                                                             "holds one class."], [groups_table.assign(
            auroc=[fmt(r.auroc, r.low, r.high) for r in groups_table.itertuples()]).drop(columns=["low", "high"])]))
        sections.append(Section("Odds ratios of pCR", ["Each level against the field's most common level; 95 % CI "
                                                       "(Woolf; +0.5 per cell where one is zero), Fisher's exact p. All reported patients."], [ors.assign(
            odds_ratio=[fmt(r.odds_ratio, r.low, r.high) for r in ors.itertuples()],
            p_value=ors.p_value.map(fmt_p)).drop(columns=["low", "high"])]))

    summary_lines = [f"{'method':<32}{'patients':>9}  {'AUROC [95% CI]':<24}{'sensitivity':>12}{'specificity':>12}  DeLong p"]
    for label, (n, summary) in rows.items():
        p = fmt_p(delong[label].p_value) if label in delong else ""
        summary_lines.append(f"{label:<32}{n:>9}  {fmt(*summary['AUROC']):<24}{summary['sensitivity @0.5'][0]:>12.3f}"
                             f"{summary['specificity @0.5'][0]:>12.3f}  {p}")
    return Report(sections, "\n".join(summary_lines + headline))


def to_markdown(report: Report, out: Path, title: str) -> str:
    parts = [f"# {title}"]
    for section in report.sections:
        parts.append(f"## {section.title}")
        bullets = [t for t in section.text if t.startswith("- ")]
        parts += (["\n".join(bullets)] if bullets else []) + [t for t in section.text if not t.startswith("- ")]
        parts += [table.to_markdown(index=False) for table in section.tables]
        parts += [f"![{p.stem}]({p.relative_to(out).as_posix()}) ([SVG]({p.with_suffix('.svg').relative_to(out).as_posix()}))"
                  for p in section.figures]
    return "\n\n".join(parts) + "\n"


def to_html(report: Report, title: str) -> str:
    """One file: tables inline, figures embedded as base64 PNG."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in report.sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        text = [t[2:] for t in section.text if t.startswith("- ")]
        if text:
            body.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in text) + "</ul>")
        body += [f"<p>{html.escape(t)}</p>" for t in section.text if not t.startswith("- ")]
        body += [table.to_html(index=False, border=0, classes="table") for table in section.tables]
        for path in section.figures:
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<figure><img alt="{path.stem}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:90%;margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}"
             "img{max-width:48%;display:inline-block}figure{display:inline;margin:0}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(report: Report, out: Path, title: str = "pCR prediction: evaluation report") -> tuple[Path, Path]:
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(to_markdown(report, out, title), md)
    atomic_write_text(to_html(report, title), page)
    return md, page
