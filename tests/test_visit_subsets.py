"""MRI visit subsets (``synth --visits realistic``): drawn per site, absent visits stay absent."""

from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import pytest

from preprocessing.prepare import Options, prepare
from preprocessing.synth import VISIT_SUBSETS, synthesize, visit_subsets


def test_subsets_follow_each_sites_probabilities():
    sites = [f"S0{k}" for k in (1, 2, 3)] * 4000
    chosen = visit_subsets(sites, seed=0)
    for k, site in enumerate(("S01", "S02", "S03")):
        counts = Counter(v for s, v in zip(sites, chosen) if s == site)
        for pattern, p in VISIT_SUBSETS[k].items():
            assert counts[pattern] / 4000 == pytest.approx(p, abs=0.02)
    assert all(v[0] == "T0" for v in chosen)  # every patient has the pre-treatment scan
    assert visit_subsets(sites, seed=0) == chosen


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("subsets")
    for visits in ("all", "realistic"):
        synthesize(root / visits, patients=8, sites=3, seed=2, workers=2, mammography_share=0.0, visits=visits)
    return root


def _digests(raw):
    return {p.relative_to(raw): hashlib.sha256(p.read_bytes()).hexdigest() for p in (raw / "dicom").rglob("*.dcm")}


def test_missing_visits_are_not_written_and_the_others_unchanged(cohorts):
    truth = pd.read_csv(cohorts / "realistic" / "truth.csv")
    assert (truth["visits"] != "T0,T1,T2,T3").any(), "seed 2 should give some patient a subset"
    complete, subset = _digests(cohorts / "all"), _digests(cohorts / "realistic")
    assert subset and set(subset) < set(complete)
    assert all(complete[path] == digest for path, digest in subset.items())


def test_prepare_keeps_what_exists(cohorts, tmp_path):
    truth = pd.read_csv(cohorts / "realistic" / "truth.csv").set_index("id")
    datalist = prepare(cohorts / "realistic", tmp_path / "t0", Options(size=16, spacing=4.0, required_visits=("T0",)),
                       workers=2)
    assert len(datalist["training"]) == len(truth)
    for entry in datalist["training"]:
        assert ",".join(sorted(entry["ftv_ml"])) == truth.loc[entry["id"], "visits"]
    datalist = prepare(cohorts / "realistic", tmp_path / "t012", Options(size=16, spacing=4.0), workers=2)
    kept = {e["id"] for e in datalist["training"]}
    assert kept == {i for i, v in truth["visits"].items() if {"T0", "T1", "T2"} <= set(v.split(","))}
    exclusions = pd.read_csv(tmp_path / "t012" / "exclusions.csv")
    assert exclusions["reason"].str.startswith("missing visit(s)").sum() == len(truth) - len(kept)
