"""Command line: ``python -m preprocessing {synth,prepare,summary,bench} ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .mammography import MG_SIZE
from .synth_mammo import MAMMOGRAPHY_SHARE


def _salt(prepared: Path) -> str | None:
    """The pseudonym key of a prepared cohort, None when its ids are not pseudonyms."""
    from .prepare import pseudonym_salt

    datalist = json.loads((prepared / "datalist.json").read_text())
    return pseudonym_salt(prepared, create=False) if datalist.get("pseudonymized") else None


def _mg_size(text: str) -> tuple[int, int]:
    try:
        rows, columns = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWS,COLUMNS (e.g. 1024,512), got '{text}'") from None
    if rows < 8 or columns < 8:
        raise argparse.ArgumentTypeError("mammogram size must be at least 8,8")
    return rows, columns


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocessing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic I-SPY2-like raw cohort (DICOM + clinical.csv)")
    synth.add_argument("--out", type=Path, required=True, help="raw cohort folder to create")
    synth.add_argument("--patients", type=int, default=240)
    synth.add_argument("--sites", type=int, default=None,
                       help="sites (default: 3 for the native layout, 5 for ispy2: one per site protocol)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    synth.add_argument("--resolution", choices=("demo", "full"), default="demo",
                       help="demo: 2-2.5 mm pixels, 4-5 mm slices; full: about 0.7 mm pixels, 2 mm slices")
    synth.add_argument("--layout", choices=("native", "ispy2"), default="native",
                       help="native: this project's raw form (clinical.csv, trial tags); ispy2: as TCIA publishes "
                            "I-SPY2 (ISPY2/<PatientID>/<study>/<series>/, ISPY2_clinical.xlsx, SEG, PE2/SER)")
    synth.add_argument("--mammography-share", type=float, default=MAMMOGRAPHY_SHARE,
                       help="native layout: share of patients with pre-treatment mammograms (L/R CC/MLO; none at "
                            "the last of several sites)")
    synth.add_argument("--visits", choices=("all", "realistic"), default="all",
                       help="native layout: every patient has MRI at T0-T3, or a per-site realistic subset")

    prep = sub.add_parser("prepare", help="raw DICOM cohort -> NIfTI kinetic maps + MONAI datalist")
    prep.add_argument("--raw", type=Path, required=True, help="folder with the DICOM files (any layout)")
    cohort = prep.add_mutually_exclusive_group()
    cohort.add_argument("--preset", default=None, help="cohort schema preset: synthetic (default) or ispy2")
    cohort.add_argument("--schema", type=Path, default=None, help="cohort schema YAML file (see README)")
    prep.add_argument("--clinical", type=Path, default=None,
                      help="clinical table, CSV or Excel (default: the schema's table under --raw)")
    prep.add_argument("--out", type=Path, required=True, help="prepared cohort folder")
    prep.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    prep.add_argument("--size", type=int, default=32, help="output cube edge in voxels")
    prep.add_argument("--spacing", type=float, default=2.0, help="isotropic output spacing in mm")
    prep.add_argument("--visits", default="T0,T1,T2", help="visits a patient must have")
    prep.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    prep.add_argument("--patient-tag", default=None,
                      help="DICOM keyword of the patient key (default: ClinicalTrialSubjectID, else PatientID)")
    prep.add_argument("--ftv-source", choices=("pe", "seg"), default="pe",
                      help="FTV mask from the PE rule (pe) or from the study's Analysis Mask DICOM SEG "
                           "where present (seg; TCIA I-SPY2), else the PE rule")
    prep.add_argument("--pseudonymize", choices=("auto", "yes", "no"), default="auto",
                      help="replace study ids by salted hashes; auto: when the patient key is PatientID "
                           "(salt: $PCR_PSEUDONYM_SALT, else a key file written beside --out)")
    prep.add_argument("--mg-size", type=_mg_size, default=MG_SIZE, metavar="ROWS,COLUMNS",
                      help="size of the prepared mammograms (the paper's 1024,512 on a GPU)")

    summary = sub.add_parser("summary", help="print the summary of a prepared cohort")
    summary.add_argument("prepared", type=Path)
    summary.add_argument("--truth", type=Path, default=None,
                         help="truth.csv of a synthetic cohort: print its oracle AUROCs over the prepared patients")

    agree = sub.add_parser("agreement", help="FTV of a prepared synthetic cohort against its true tumour volumes")
    agree.add_argument("prepared", type=Path)
    agree.add_argument("--truth", type=Path, required=True, help="truth.csv of the synthetic raw cohort")
    agree.add_argument("--column", default="tumour_ml", help="truth column prefix (ispy2 layout: ftv_ml is the SEG's)")

    bench = sub.add_parser("bench", help="prepare throughput and memory vs a plain DICOM->NIfTI conversion")
    bench.add_argument("--raw", type=Path, required=True, help="raw cohort (generated there if absent)")
    bench.add_argument("--workdir", type=Path, required=True, help="scratch folder for outputs")
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--patients", type=int, default=240, help="cohort size if the raw cohort is generated")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from .parallel import default_workers
    from .prepare import Options, PrepareError, prepare
    from .schema import SchemaError, load_schema, preset
    from .summary import format_summary, summarize
    from .synth import synthesize

    workers = getattr(args, "workers", None) or default_workers()
    try:
        if args.command == "synth":
            if args.layout == "ispy2":
                from .synth_ispy2 import PROTOCOLS
                from .synth_ispy2 import synthesize as synthesize_ispy2

                info = synthesize_ispy2(args.out, args.patients, args.sites or len(PROTOCOLS), args.seed, workers,
                                        args.resolution)
            else:
                info = synthesize(args.out, args.patients, args.sites or 3, args.seed, workers, args.resolution,
                                  args.mammography_share, args.visits)
            print(f"wrote {info['files']} DICOM files for {info['patients']} patients at {info['sites']} sites "
                  f"(pCR rate {info['pCR rate']:.1%}) to {args.out}")
        elif args.command == "prepare":
            options = Options(size=args.size, spacing=args.spacing,
                              required_visits=tuple(v.strip() for v in args.visits.split(",") if v.strip()),
                              ftv_source=args.ftv_source)
            schema = load_schema(args.schema) if args.schema else preset(args.preset or "synthetic")
            prepare(args.raw, args.out, options, workers, args.seed, schema=schema, clinical=args.clinical,
                    pseudonymize={"auto": None, "yes": True, "no": False}[args.pseudonymize],
                    patient_tag=args.patient_tag, mg_size=args.mg_size)
            print(format_summary(summarize(args.out)))
        elif args.command == "summary":
            salt = _salt(args.prepared) if args.truth else None
            print(format_summary(summarize(args.prepared, args.truth, salt)))
        elif args.command == "agreement":
            from .agreement import format_agreement, ftv_agreement

            print(format_agreement(ftv_agreement(args.prepared, args.truth, args.column, _salt(args.prepared))))
        elif args.command == "bench":
            from .bench import run_benchmark

            run_benchmark(args.raw, args.workdir, args.workers, args.patients)
    except (PrepareError, SchemaError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
