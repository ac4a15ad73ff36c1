"""``python -m evaluation benchmark``: the comparison of Jing & Wang (Table 2) over the bundles.

Every method (two-stage dual-task, Conventional #1 and #2, the five ablations, the stage-1
teacher on T0-T2, the classical logistic regressions) by nested cross-validation on one cohort,
then the report. The CPU profile soft-votes two inner models per outer fold (validation = the two
folds preceding the test fold), each trained with the bundles' CPU profile (16^3 voxels, widths
x0.125, 30 epochs), two trainings at once with one torch thread each, so that the whole
comparison fits in about an hour on two cores; the GPU profile is the paper's: every inner split
(soft voting over four models), full widths, 150 epochs. MRP methods (``--method``) are trained
with the mrp_fusion bundle's profile, and the run description quotes that one.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from preprocessing.atomic import atomic_write_json

from .cv import Predictions, nested_cv
from .methods import DUALTASK, MRP, TEACHER, TWO_STAGE, Method, is_mrp, parse_methods
from .runner import Runner, merged_settings, threads_per_job

# cpu: two inner splits per outer fold (soft voting over two models), the CPU profile's epochs,
# two trainings at once with one torch thread each: about an hour on 2 cores
BENCHMARK_PROFILES = {"cpu": {"inner_folds": 2, "jobs": 2}, "gpu": {"inner_folds": None, "jobs": 1}}


def bundle_settings(profile: str, bundle: str = TEACHER) -> dict:
    """Top-level training settings of ``bundle`` under ``profile`` (mrp_fusion's with the mammograms' size)."""
    merged = merged_settings(bundle, ("train",), profile)
    keys = ("epochs", "widen_factor", "spatial_size", "batch_size", "learning_rate", "ema_momentum", "seed") + (
        ("mg_size",) if bundle == MRP else ())
    return {k: merged[k] for k in keys}


def _averaging(momentum: float | None) -> str:
    return f"moving average of the weights (momentum {momentum})" if momentum else "no weight average"


def profile_text(profile: str, methods: list[Method], epochs: int | None = None) -> str:
    """The run description's profile: the settings of the bundles the methods train, so that a run
    of MRP methods quotes mrp_fusion's profile and not the pCR bundles'; bundles are named when MRP
    methods are among them or when several are described (a mixed run, or stage-2 settings that
    differ from the teacher's)."""
    mrp = [m for m in methods if is_mrp(m.name)]
    described: list[tuple[str, dict]] = []
    if len(mrp) < len(methods):
        teacher, dualtask = bundle_settings(profile, TEACHER), bundle_settings(profile, DUALTASK)
        described += ([(f"{TEACHER}, {DUALTASK}", teacher)] if teacher == dualtask
                      else [(TEACHER, teacher), (DUALTASK, dualtask)])
    if mrp:
        described.append((MRP, bundle_settings(profile, MRP)))
    parts = []
    for label, s in described:
        s = {**s, **({"epochs": epochs} if epochs is not None else {})}
        name = f"{label}: " if mrp or len(described) > 1 else ""
        mammograms = f"mammogram pixels {s['mg_size'] or 'as prepared'}, " if "mg_size" in s else ""
        parts.append(f"{name}epochs {s['epochs']}, widen_factor {s['widen_factor']}, input voxels "
                     f"{s['spatial_size'] or 'as prepared'}, {mammograms}batch size {s['batch_size']}, "
                     f"learning rate {s['learning_rate']}, {_averaging(s['ema_momentum'])}")
    return f"{profile}: " + "; ".join(parts)


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_benchmark(data: Path, out: Path, profile: str, epochs: int | None = None, seed: int = 0,
                  methods: str | None = None, jobs: int | None = None) -> tuple[Predictions, dict]:
    """Train and test every method; return the predictions and the run description
    (also written to ``OUT/benchmark.json``)."""
    chosen = parse_methods(methods or ",".join(TWO_STAGE))  # the MRP methods need a multimodal cohort: by name only
    inner_folds = BENCHMARK_PROFILES[profile]["inner_folds"]
    jobs = jobs or BENCHMARK_PROFILES[profile]["jobs"]
    runner = Runner(data, out, profile, epochs, seed, threads=threads_per_job(jobs))
    reused = len(list(out.glob("models/*/*/trained.json")))
    started = time.perf_counter()
    predictions = nested_cv(runner, chosen, inner_folds=inner_folds, jobs=jobs)
    wall = time.perf_counter() - started
    trained = len(list(out.glob("models/*/*/trained.json")))
    entries = json.loads((data / "datalist.json").read_text())["training"]
    folds = sorted({e["fold"] for e in entries})
    pcr = sum(e["label"] for e in entries) / len(entries)
    about = {
        "cohort": f"{data} ({len(entries)} patients, pCR rate {pcr:.1%}, folds {folds}, datalist digest {runner.cohort})",
        "profile": profile_text(profile, chosen, epochs),
        "design": f"{len(folds)} outer folds x {inner_folds or len(folds) - 1} inner split(s) per outer fold "
                  f"({f'validated on the {inner_folds} fold(s) preceding the test fold' if inner_folds else 'every other fold validates once'}), "
                  "soft voting over the inner models",
        "seeds": f"training seed {seed}; bootstrap seed 0",
        "methods": ", ".join(m.name for m in chosen),
        "models": f"{trained} trained models ({reused} reused from an earlier run of the same settings)",
        "wall time": f"{wall / 60:.1f} min for training and testing ({jobs} training task(s) at once, "
                     f"{runner.threads or torch.get_num_threads()} torch thread(s) each)",
        "machine": _device(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    atomic_write_json(about, out / "benchmark.json")
    return predictions, about
