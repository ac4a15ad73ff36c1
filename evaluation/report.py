"""``python -m evaluation report``: statistics, figures, ``report.md`` and a self-contained
``report.html`` from prediction CSVs (``id, outer_fold, method, probability, label``).

Every metric has a 95 % percentile CI from 1,000 seeded stratified patient-level bootstrap
resamples; the Youden operating point calls each inner model at the threshold chosen on its own
validation fold (never on the reported patients); the reference method is compared with each other method by the paired
DeLong test on the same patients (an MRP method, which leaves out patients without its inputs: on the
patients both were tested on).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.atomic import atomic_write_csv, atomic_write_text

from .decision import NIA, PER_PATIENTS, TARGETS, decision_curve
from .delong import delong_test
from .figures import calibration_figure, decision_figure, pr_figure, roc_figure, save
from .methods import FIGURE_GROUPS, METHODS, is_mrp
from .metrics import metric_summary, youden_threshold
from .subgroups import clinical_table, odds_ratios, subgroup_auroc, with_clinical

COLUMNS = ["id", "outer_fold", "method", "probability", "label"]
ORACLES = {"p_clinical": "clinical + subtype", "p_t0": "+ T0", "p_t0_t1": "+ T0, T1", "p_t0_t2": "+ T0, T1, T2"}
# oracles of the MRP methods (multimodal synthetic cohorts): the truth.csv column a method's inputs
# match (``Method.oracle``); the MRI oracles use the quantities of T0-T2, or of T0 alone for the
# pre-treatment phase (T3 is in no oracle)
MRP_ORACLES = {"p_rhpc": "clinical + rhpc", "p_rhpc_mg": "clinical + rhpc + mammogram",
               "p_rhpc_mri_t0": "clinical + rhpc + MRI T0", "p_rhpc_mg_mri_t0": "clinical + rhpc + mammogram + MRI T0",
               "p_rhpc_mri": "clinical + rhpc + MRI T0-T2", "p_rhpc_mg_mri": "clinical + rhpc + mammogram + MRI T0-T2"}
MRP_REFERENCES = ("mrp", "mrp_mid", "mrp_pre")  # default references of MRP runs without dualtask
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
    keys = ["method", "id", "outer_fold"] + (["val_fold"] if "val_fold" in table else [])  # inner models: one row each
    duplicated = table[table.duplicated(keys, keep=False)]
    if len(duplicated):
        row = duplicated.iloc[0]
        raise ValueError(f"{row.source}: patient {row.id} appears more than once for method {row.method}, outer fold {row.outer_fold}")
    return {name: group.drop(columns="source").sort_values(["outer_fold", "id"]).reset_index(drop=True)
            for name, group in table.groupby("method", sort=False)}


def youden_scores(test: pd.DataFrame, inner: pd.DataFrame | None) -> np.ndarray | None:
    """Each reported patient's probability as called at the Youden operating point (threshold 0.5).

    Every inner model gets its own Youden threshold ``t``, chosen on its predictions for its own
    validation fold, i.e. on probabilities of the kind it is applied to; a test patient's
    soft-voted call is the mean over the inner models of ``logit(p) - logit(t)``, returned as a
    probability so that 0.5 is the threshold (one inner model: exactly ``p >= t``).
    ``inner``: the ``validation_<method>.csv`` rows (``fold``: the patient's, ``val_fold``: the
    model's) of the inner models' validation and test folds.
    """
    if inner is None:
        return None
    method = test.method.iloc[0]
    missing = {"fold", "val_fold"} - set(inner)
    if missing:
        raise ValueError(f"method {method}: inner-model predictions need the column(s) {', '.join(sorted(missing))}")
    shifted = []
    for (fold, val_fold), model in inner.groupby(["outer_fold", "val_fold"]):
        val, tested = model[model.fold == val_fold], model[model.fold == fold]
        if val.label.nunique() < 2:
            raise ValueError(f"method {method}, outer fold {fold}: validation fold {val_fold} needs both classes")
        overlap = set(val.id) & set(test.id[test.outer_fold == fold])
        if overlap:
            raise ValueError(f"method {method}, outer fold {fold}: {len(overlap)} patient(s) in both validation fold "
                             f"{val_fold} and the reported predictions; the Youden threshold must not see reported patients")
        threshold = youden_threshold(val.label, val.probability)
        shifted.append(pd.Series(logit(tested.probability.to_numpy()) - logit(threshold),
                                 index=pd.MultiIndex.from_arrays([tested.outer_fold, tested.id])))
    scores = pd.concat(shifted).groupby(level=[0, 1]).mean()
    keys = pd.MultiIndex.from_arrays([test.outer_fold, test.id])
    if not keys.isin(scores.index).all():
        raise ValueError(f"method {method}: {int((~keys.isin(scores.index)).sum())} reported patient(s) without "
                         "inner-model predictions")
    return 1.0 / (1.0 + np.exp(-scores.loc[keys].to_numpy(float)))


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def common_patients(reference: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    """The patients both methods were tested on (an MRP method sees only the patients with its
    inputs: mammograms, or an MRI visit of its phase)."""
    merged = reference[["id", "label", "probability"]].merge(other[["id", "label", "probability"]], on="id",
                                                              suffixes=("_ref", ""))
    if (merged.label_ref != merged.label).any():
        raise ValueError(f"method {name}: labels differ from the reference method's for the same patients")
    return merged


def same_patients(reference: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    merged = reference[["id", "label", "probability"]].merge(other[["id", "label", "probability"]], on="id",
                                                              suffixes=("_ref", ""), how="outer", indicator=True)
    if (merged["_merge"] != "both").any():
        raise ValueError(f"method {name} was not tested on the same patients as the reference "
                         f"({int((merged['_merge'] != 'both').sum())} patient(s) differ); DeLong's paired test needs the same patients")
    if (merged.label_ref != merged.label).any():
        raise ValueError(f"method {name}: labels differ from the reference method's for the same patients")
    return merged


def fmt(estimate: float, low: float, high: float, digits: int = 3) -> str:
    if not np.isfinite(estimate):
        return "n/a"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


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
    order = list(groups)  # a panel whose methods another panel shows too is left out (e.g. mrp_mid without its phase)
    groups = {g: members for g, members in groups.items()
              if not any(set(members) < set(other) or (set(members) == set(other) and order.index(h) < order.index(g))
                         for h, other in groups.items() if h != g)}
    covered = {m for members in groups.values() for m in members}
    rest = [m for m in names if m not in covered]
    if rest:
        groups["methods"] = ([reference] if reference not in rest else []) + rest
    return groups


@dataclass
class Statistics:
    """Everything computed from the predictions, before any output is written."""
    reference: str
    rows: dict[str, tuple[int, dict]]  # method or oracle label -> (patients, metric_summary)
    delong: dict  # method -> DeLongResult of the reference against it
    clinical: pd.DataFrame | None  # the reference's predictions with clinical fields (--data)
    delong_notes: list[str] = field(default_factory=list)  # comparisons on a subset of patients, or none
    oracle_patients: dict[str, str] = field(default_factory=dict)  # MRP oracle row -> method whose patients it has


def compute_statistics(predictions: dict[str, pd.DataFrame], validation: dict[str, pd.DataFrame] | None,
                       truth: Path | None, data: Path | None, reference: str | None, n_resamples: int,
                       seed: int) -> Statistics:
    """All checks of the inputs happen here, so that an error leaves no output behind."""
    names = list(predictions)
    default = [n for n in ("dualtask",) + MRP_REFERENCES if n in predictions]
    reference = reference or (default[0] if default else names[0])
    if reference not in predictions:
        raise ValueError(f"reference method {reference!r} not among the predictions ({', '.join(names)})")
    ref = predictions[reference]
    clinical = with_clinical(ref, clinical_table(data)) if data is not None else None
    rows = {}
    for name, frame in predictions.items():
        youden = youden_scores(frame, (validation or {}).get(name))
        rows[name] = (len(frame), metric_summary(frame.label, frame.probability, youden_prob=youden,
                                                 n_resamples=n_resamples, seed=seed))
    oracle_patients = {}
    if truth is not None:
        table = pd.read_csv(truth, dtype={"id": str})
        if not all(is_mrp(name) for name in names):  # the two-stage oracles, on the reference's patients
            oracle = ref[["id", "label"]].merge(table, on="id", how="left")
            if oracle["p_t0_t1"].isna().any():
                raise ValueError(f"{truth}: no oracle row for {int(oracle['p_t0_t1'].isna().sum())} reported patient(s)")
            for column in ORACLES:
                summary = metric_summary(oracle.label, oracle[column], None, n_resamples, seed)
                rows[f"oracle {column}"] = (len(oracle), summary)
        for column, owner in mrp_oracles(names).items():  # each on the patients of the first method it matches
            if column not in table:
                raise ValueError(f"{truth}: no column {column} (the oracle of {owner}); a cohort synthesised "
                                 "before it was added lacks it: `python -m preprocessing synth` again with the same "
                                 "seed writes it and leaves every other value and image as it was")
            oracle = predictions[owner][["id", "label"]].merge(table[["id", column]], on="id", how="left")
            if oracle[column].isna().any():
                raise ValueError(f"{truth}: no {column} for {int(oracle[column].isna().sum())} patient(s) of {owner}")
            summary = metric_summary(oracle.label, oracle[column], None, n_resamples, seed)
            rows[f"oracle {column}"] = (len(oracle), summary)
            oracle_patients[f"oracle {column}"] = owner
    delong, notes = {}, []
    for name in names:
        if name == reference:
            continue
        if is_mrp(name) or is_mrp(reference):
            merged = common_patients(ref, predictions[name], name)
            if merged.label.nunique() < 2:
                notes.append(f"{name}: no DeLong test ({len(merged)} patient(s) in common with {reference}, "
                             "not both classes)")
                continue
            if len(merged) < max(len(ref), len(predictions[name])):
                notes.append(f"{name}: on the {len(merged)} patients both methods were tested on "
                             f"({reference} {len(ref)}, {name} {len(predictions[name])})")
        else:
            merged = same_patients(ref, predictions[name], name)
        delong[name] = delong_test(merged.label, merged.probability_ref, merged.probability)
    return Statistics(reference, rows, delong, clinical, notes, oracle_patients)


def mrp_oracles(names: list[str]) -> dict[str, str]:
    """truth.csv column -> the first of ``names`` whose inputs it matches (``Method.oracle``), in
    the order of ``MRP_ORACLES``."""
    owners = {}
    for name in names:
        column = METHODS[name].oracle if name in METHODS else None
        if column is not None:
            owners.setdefault(column, name)
    return {column: owners[column] for column in MRP_ORACLES if column in owners}


def _described(label: str, stats: Statistics | None = None) -> str:
    if label.startswith("oracle "):
        if label[7:] in MRP_ORACLES:
            owner = (stats.oracle_patients if stats else {}).get(label)
            return (f"exact P(pCR | {MRP_ORACLES[label[7:]]}) of the synthetic cohort"
                    + (f", on the patients of {owner}" if owner else ""))
        return f"exact P(pCR | {ORACLES[label[7:]]}) of the synthetic cohort"
    return METHODS[label].description if label in METHODS else ""


def _headline(stats: Statistics) -> list[str]:
    """The paper's claim (dual-task vs Conventional #1; MRP vs the rhpc, iMGrhpc and iMRrhpc
    models of its phase), reported whatever its sign."""
    if stats.reference in MRP_REFERENCES:
        suffix = stats.reference[3:]
        lines = []
        for other in ("mrp_rhpc", "mrp_img", f"mrp_imr{suffix}"):
            if other in stats.delong:
                r = stats.delong[other]
                lines.append(f"MRP{suffix} vs {other}: AUROC {r.auc_a:.3f} vs {r.auc_b:.3f}, difference "
                             f"{r.auc_a - r.auc_b:+.3f}, paired DeLong p "
                             f"{'< 0.001' if r.p_value < 0.001 else f'= {r.p_value:.3f}'}.")
        return lines
    if stats.reference != "dualtask" or "conv1" not in stats.delong:
        return []
    r = stats.delong["conv1"]
    return [f"Dual-task vs Conventional #1: AUROC {r.auc_a:.3f} vs {r.auc_b:.3f}, difference {r.auc_a - r.auc_b:+.3f}, "
            f"paired DeLong p {'< 0.001' if r.p_value < 0.001 else f'= {r.p_value:.3f}'}."]


def _performance_sections(stats: Statistics) -> list[Section]:
    reference, rows, delong = stats.reference, stats.rows, stats.delong
    table2 = pd.DataFrame([{"method": label, "patients": n, **{m: fmt(*summary[m]) for m in TABLE2},
                            f"DeLong p vs {reference}": fmt_p(delong[label].p_value) if label in delong else "",
                            "description": _described(label, stats)} for label, (n, summary) in rows.items()])
    extra = [m for m in next(iter(rows.values()))[1] if m not in TABLE2]
    detail = pd.DataFrame([{"method": label, **{m: fmt(*summary[m]) if m in summary else "" for m in extra}}
                           for label, (n, summary) in rows.items()])
    sections = [
        Section("Performance (Table 2 style)", _headline(stats) + [
            "Sensitivity and specificity at probability 0.5 (the paper's operating point). "
            f"p: two-sided paired DeLong test of {reference} against each method, on the same patients"
            + (" (MRP methods: on the patients both were tested on, see the DeLong section)."
               if stats.delong_notes else ".")], [table2]),
        Section("Operating points and calibration", [
            "PPV/NPV at 0.5; sensitivity/specificity/PPV/NPV at the Youden operating point: each inner model called at "
            "the threshold chosen on its own validation fold, the calls soft-voted on the logit scale; "
            "calibration intercept (calibration-in-the-large, ideal 0) and slope (ideal 1) by logistic "
            "recalibration; ECE over 10 equal-width bins."], [detail])]
    if delong or stats.delong_notes:
        sections.append(Section(f"Paired DeLong tests ({reference} vs each method)", stats.delong_notes, [pd.DataFrame([{
            "method": name, f"AUROC {reference}": f"{r.auc_a:.3f}", "AUROC method": f"{r.auc_b:.3f}",
            "difference": f"{r.auc_a - r.auc_b:+.3f}", "z": f"{r.z:.2f}", "p": fmt_p(r.p_value)}
            for name, r in delong.items()])] if delong else []))
    return sections


def _curve_sections(stats: Statistics, predictions: dict[str, pd.DataFrame], groups: dict[str, list[str]],
                    figures: Path) -> list[Section]:
    roc, pr = [], []
    for group, members in groups.items():
        curves = {m: predictions[m] for m in members}
        roc_legends = {m: f"{m} {fmt(*stats.rows[m][1]['AUROC'])}" for m in members}
        pr_legends = {m: f"{m} {fmt(*stats.rows[m][1]['AUPRC'])}" for m in members}
        roc.append(save(roc_figure(curves, roc_legends, f"ROC: {group}"), figures, f"roc_{group}")[0])
        pr.append(save(pr_figure(curves, pr_legends, f"Precision-recall: {group}"), figures, f"pr_{group}")[0])
    return [Section("ROC curves", ["Legend: AUROC [95 % CI]."], figures=roc),
            Section("Precision-recall curves", ["Legend: average precision [95 % CI]."], figures=pr)]


def _decision_sections(curves: dict[str, pd.DataFrame], out: Path, n_resamples: int, seed: int) -> list[Section]:
    frames, paths = [], []
    for target in TARGETS:
        by_method = {m: decision_curve(f.label, f.probability, target=target, n_resamples=n_resamples, seed=seed)
                     for m, f in curves.items()}
        frames += [f.assign(method=m) for m, f in by_method.items()]
        paths.append(save(decision_figure(by_method, target), out / "figures", f"dca_{target}")[0])
    dca = pd.concat(frames, ignore_index=True)
    atomic_write_csv(dca, out / "decision_curves.csv")
    at = dca[dca.threshold.isin([0.2, 0.5, 0.8])]
    table = pd.DataFrame({
        "target": at.target, "method": at.method, "threshold": at.threshold,
        "net_benefit": [fmt(r.net_benefit, r.net_benefit_low, r.net_benefit_high) for r in at.itertuples()],
        "net_benefit_all": at.net_benefit_all.round(3),
        f"interventions avoided per {PER_PATIENTS:,}": [
            fmt(*r, digits=1) for r in at[[NIA, f"{NIA}_low", f"{NIA}_high"]].itertuples(index=False)]})
    text = (f"Net benefit with 95 % bootstrap bands; net interventions avoided per {PER_PATIENTS:,} patients (the "
            "MRP paper's Fig. 5) against treating all. non_pcr: identify non-responders before/mid treatment (event "
            "non-pCR, probability 1 - P(pCR)); pcr: identify responders before surgery. Full curves: "
            "decision_curves.csv.")
    return [Section("Decision curves", [text], [table], paths),
            Section("Calibration", [], figures=[save(calibration_figure(curves), out / "figures", "calibration")[0]])]


def _clinical_sections(stats: Statistics, out: Path, n_resamples: int, seed: int) -> list[Section]:
    groups = subgroup_auroc(stats.clinical, n_resamples=n_resamples, seed=seed)
    atomic_write_csv(groups, out / "subgroups.csv")
    ors = odds_ratios(stats.clinical)
    atomic_write_csv(ors, out / "odds_ratios.csv")
    return [
        Section(f"Subgroups ({stats.reference})", ["AUROC [95 % CI] within each level; n/a where a level holds one class."],
                [groups.assign(auroc=[fmt(r.auroc, r.low, r.high) for r in groups.itertuples()]).drop(columns=["low", "high"])]),
        Section("Odds ratios of pCR", ["Each level against the field's most common level; 95 % CI (Woolf; +0.5 per "
                                       "cell where one is zero), Fisher's exact p. All reported patients."],
                [ors.assign(odds_ratio=[fmt(r.odds_ratio, r.low, r.high) for r in ors.itertuples()],
                            p_value=ors.p_value.map(fmt_p)).drop(columns=["low", "high"])])]


def _console_summary(stats: Statistics) -> str:
    lines = [f"{'method':<32}{'patients':>9}  {'AUROC [95% CI]':<24}{'sensitivity':>12}{'specificity':>12}  DeLong p"]
    for label, (n, summary) in stats.rows.items():
        p = fmt_p(stats.delong[label].p_value) if label in stats.delong else ""
        lines.append(f"{label:<32}{n:>9}  {fmt(*summary['AUROC']):<24}{summary['sensitivity @0.5'][0]:>12.3f}"
                     f"{summary['specificity @0.5'][0]:>12.3f}  {p}")
    return "\n".join(lines + _headline(stats))


def build_report(predictions: dict[str, pd.DataFrame], out: Path, validation: dict[str, pd.DataFrame] | None = None,
                 truth: Path | None = None, data: Path | None = None, reference: str | None = None,
                 about: dict | None = None, n_resamples: int = 1000, seed: int = 0) -> Report:
    """Compute every statistic, write the CSV tables and figures under ``out``; return the content."""
    stats = compute_statistics(predictions, validation, truth, data, reference, n_resamples, seed)
    ref = predictions[stats.reference]
    atomic_write_csv(pd.DataFrame([{"method": label, "patients": n, "metric": metric, "estimate": e, "low": lo, "high": hi}
                                   for label, (n, summary) in stats.rows.items()
                                   for metric, (e, lo, hi) in summary.items()]), out / "metrics.csv")
    atomic_write_csv(pd.DataFrame([{"reference": stats.reference, "method": name, **vars(result)}
                                   for name, result in stats.delong.items()]), out / "delong.csv")
    header = Section("Run", [f"- {k}: {v}" for k, v in (about or {}).items()] + [
        f"- predictions: {len(predictions)} method(s), {len(ref)} patients ({int(ref.label.sum())} pCR), "
        f"outer fold(s) {', '.join(str(f) for f in sorted(ref.outer_fold.unique()))}",
        f"- CIs: 95 % percentile intervals from {n_resamples} stratified patient-level bootstrap resamples (seed {seed})",
        "- Youden operating point: " + ("each inner model at the threshold chosen on its own validation fold, "
                                        "soft-voted on the logit scale" if validation
                                        else "not reported (no inner-model predictions given)")])
    groups = figure_groups(list(predictions), stats.reference)
    main_panel = {m: predictions[m] for m in next(iter(groups.values()))}
    sections = ([header] + _performance_sections(stats) + _curve_sections(stats, predictions, groups, out / "figures")
                + _decision_sections(main_panel, out, n_resamples, seed)
                + (_clinical_sections(stats, out, n_resamples, seed) if stats.clinical is not None else []))
    return Report(sections, _console_summary(stats))


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
