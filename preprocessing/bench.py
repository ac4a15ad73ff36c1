"""``python -m preprocessing bench``: prepare throughput and memory against a plain conversion.

Both stages run as child processes on the same raw cohort with the same number of workers, one
after the other in one run; the peak resident memory of each process tree is sampled with psutil.
The baseline only converts every DICOM series to NIfTI with ITK's series reader (GDCM), the
conversion any pipeline starts with; ``prepare`` also selects phases, computes the kinetic maps
and FTV, resamples, crops and writes the datalist.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil


def _convert_directory(args) -> int:
    """Every series in one folder -> NIfTI with ITK (GDCM series reader); returns series count."""
    import itk

    folder, out = args
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    names = itk.GDCMSeriesFileNames.New(Directory=folder)
    uids = names.GetSeriesUIDs()
    for uid in uids:
        image = itk.imread(names.GetFileNames(uid), itk.F)
        itk.imwrite(image, str(Path(out) / (hashlib.sha256(uid.encode()).hexdigest()[:16] + ".nii.gz")))
    return len(uids)


def plain_conversion(raw: Path, out: Path, workers: int) -> int:
    folders = sorted({str(p.parent) for p in Path(raw).rglob("*.dcm")})
    Path(out).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_convert_directory, [(f, str(out)) for f in folders]))


def _measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) summed over the process tree of ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return time.perf_counter() - start, peak / 2**20


def run_benchmark(raw: Path, workdir: Path, workers: int, patients: int) -> dict:
    raw, workdir = Path(raw), Path(workdir)
    py = sys.executable
    if not (raw / "clinical.csv").exists():
        print(f"generating a {patients}-patient synthetic cohort in {raw} ...", flush=True)
        subprocess.run([py, "-m", "preprocessing", "synth", "--out", str(raw), "--patients", str(patients),
                        "--workers", str(workers)], check=True)
    for name in ("prepared", "plain"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    n_files = sum(1 for _ in raw.rglob("*.dcm"))
    prep_s, prep_mb = _measure([py, "-m", "preprocessing", "prepare", "--raw", str(raw),
                                "--out", str(workdir / "prepared"), "--workers", str(workers)])
    plain_s, plain_mb = _measure([py, "-c", "import sys; from preprocessing.bench import plain_conversion; "
                                  "plain_conversion(sys.argv[1], sys.argv[2], int(sys.argv[3]))",
                                  str(raw), str(workdir / "plain"), str(workers)])
    datalist = json.loads((workdir / "prepared" / "datalist.json").read_text())
    studies = sum(len(e["ftv_ml"]) for e in datalist["training"])
    result = {
        "dicom_files": n_files, "studies": studies, "workers": workers,
        "prepare_s": round(prep_s, 1), "prepare_studies_per_min": round(studies / prep_s * 60, 1),
        "prepare_peak_rss_mb": round(prep_mb), "plain_conversion_s": round(plain_s, 1),
        "plain_conversion_peak_rss_mb": round(plain_mb),
        "time_ratio_prepare_over_plain": round(prep_s / plain_s, 2),
    }
    print(json.dumps(result, indent=2))
    return result
