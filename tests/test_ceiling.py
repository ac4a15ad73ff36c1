"""`python -m evaluation ceiling`: regressions on measured and exact image quantities beside the oracles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation.__main__ import main
from evaluation.baselines import bundle_data, feature_table
from evaluation.ceiling import FEATURE_SETS, ORACLES, ceiling_table, out_of_fold


def _truth(prepared, path, informative: bool):
    """truth.csv whose exact quantities determine the label (or are noise)."""
    entries = json.loads((prepared / "datalist.json").read_text())["training"]
    rng = np.random.default_rng(0)
    label = np.array([e["label"] for e in entries], dtype=float)
    signal = label if informative else 0.0
    table = pd.DataFrame({"id": [e["id"] for e in entries]})
    for visit in ("T0", "T1", "T2"):
        table[f"y_{visit}"] = signal + 0.1 * rng.standard_normal(len(entries))
    for name in ORACLES:
        table[name] = np.clip(0.5 + 0.3 * (label - 0.5) + 0.01 * rng.standard_normal(len(entries)), 0, 1)
    table.to_csv(path, index=False)
    return path


def test_rows_and_what_the_regressions_see(fake_prepared, tmp_path):
    table = ceiling_table(fake_prepared, _truth(fake_prepared, tmp_path / "truth.csv", True), n_resamples=50)
    assert list(table.row) == [f"regression {n}" for n in FEATURE_SETS] + [f"oracle {n}" for n in ORACLES]
    assert table.AUROC.between(0, 1).all() and (table.low <= table.AUROC).all() and (table.AUROC <= table.high).all()
    exact = table.set_index("row").AUROC
    # exact quantities that are the label (plus noise) are read perfectly out of fold; the same
    # regression on noise is not
    assert exact["regression exact_t0_t1 (no clinical)"] == 1.0
    noise = ceiling_table(fake_prepared, _truth(fake_prepared, tmp_path / "noise.csv", False), n_resamples=50)
    assert noise.set_index("row").AUROC["regression exact_t0_t1 (no clinical)"] < 0.9
    assert "y_T2" not in table.set_index("row").inputs["regression exact_t0_t1"]


def test_a_fold_is_predicted_without_its_own_labels(fake_prepared):
    datalist = json.loads((fake_prepared / "datalist.json").read_text())
    entries, fields = datalist["training"], datalist["clinical_fields"]
    table = feature_table(entries, fields, "ftv_t2")
    label = np.array([e["label"] for e in entries])
    fold = np.array([e["fold"] for e in entries])
    columns = ["log_ftv_T0", "log_ftv_change_T1"]
    age = bundle_data().ClinicalEncoding(fields).age_index
    before = out_of_fold(table, columns, label, fold, age)
    flipped = np.where(fold == 0, 1 - label, label)
    after = out_of_fold(table, columns, flipped, fold, age)
    assert after[fold == 0] == pytest.approx(before[fold == 0])
    assert not np.allclose(after[fold != 0], before[fold != 0])


def test_cli(fake_prepared, tmp_path, capsys):
    truth = _truth(fake_prepared, tmp_path / "truth.csv", True)
    assert main(["ceiling", "--data", str(fake_prepared), "--truth", str(truth), "--resamples", "20"]) == 0
    assert "oracle p_t0_t1" in capsys.readouterr().out
    pd.read_csv(truth).iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    assert main(["ceiling", "--data", str(fake_prepared), "--truth", str(tmp_path / "short.csv")]) == 2
    assert "short.csv: no row for patient FAKE000" in capsys.readouterr().err
