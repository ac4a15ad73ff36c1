"""The bundle benchmark runs end to end (figures are not asserted: speed lives in benchmarks)."""

from __future__ import annotations

import re

from bundle_utils import BUNDLES, forget_scripts
from evaluation.bench import bench


def test_bench_prints_every_figure(fake_prepared):
    try:
        report = bench(fake_prepared, "pcr_teacher", "cpu", epochs=1, rounds=1, teacher_features=None,
                       val_fold=1, test_fold=2)
    finally:
        forget_scripts(str(BUNDLES / "pcr_teacher"))  # the benchmark imports the bundle in this process
    for label in ("bundle trainer", "hand-written loop", "throughput ratio", "inference latency", "peak RSS"):
        assert label in report
    assert float(re.search(r"ratio trainer / loop: ([0-9.]+)", report).group(1)) > 0
