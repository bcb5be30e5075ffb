"""`darefuse segment`, `darefuse demo` and `darefuse batch`: the module's logic on a headless MRML scene.

The work is headless.segment_case (files in, an output folder out, all or nothing); this module parses the
arguments, names the inputs by their flags in messages and prints the progress and the summary.
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..constants import BRATS_SUFFIX, CONTRASTS, OUTPUTS, class_text, contrast_name
from ..errors import Cancelled, DareFuseError, InputError
from ..headless import segment_case, set_threads
from ..pipeline.outputs import OUTPUT_FORMATS
from ..pipeline.process_stats import resident_mb, unmap_large_blocks
from ..progress import ConsoleProgress
from . import terminate_as_interrupt, user_message

BATCH_COLUMNS = ("case_id", "t1", "t1ce", "t2", "flair", "output_dir")
#: Optional: a DICOM study folder whose series are assigned to the contrasts left empty.
OPTIONAL_BATCH_COLUMNS = ("dicom",)
DEMO_OUTPUT_DIR = "darefuse-demo"


def flag_labels(paths, dicom: Optional[str] = None) -> Dict[str, str]:
    """Inputs named in messages as given on the command line: '--t1 PATH', '--dicom FOLDER'."""
    labels = {c: f"--{c} {paths[c]}" for c in CONTRASTS if paths.get(c)}
    return dict(labels, dicom=f"--dicom {dicom}") if dicom else labels


def summary(report: dict, output_dir) -> str:
    shown = class_text(report["predicted_class"], report["class_probabilities"], report.get("gradcam_class"),
                       percent=lambda p: f"{100 * p:.0f} %")
    volumes = report["volumes_ml"]
    text = (f"{shown}, WT {volumes['WT']:.1f} mL, "
            f"TC {volumes['TC']:.1f} mL, ET {volumes['ET']:.1f} mL -> {output_dir}")
    return text + (" [LOW CONFIDENCE]" if report.get("low_confidence") else "")


# -- handlers --------------------------------------------------------------------------------------------------
def _segment(args, extra_writers=()) -> int:
    unmap_large_blocks()
    paths = {c: getattr(args, c) for c in CONTRASTS}
    dicom = getattr(args, "dicom", None)
    with terminate_as_interrupt():
        report = segment_case(paths, args.output_dir, overwrite=args.overwrite, device=args.device,
                              model_path=args.model, outputs=_outputs(args),
                              progress=ConsoleProgress(quiet=args.quiet), threads=args.threads,
                              class_gate=not args.no_class_gate, labels=flag_labels(paths, dicom),
                              series=getattr(args, "series", None) or (), dicom=dicom,
                              output_format=args.output_format, extra_writers=extra_writers,
                              save_registered=getattr(args, "save_registered", False))
    for line in report.get("dicom_study", {}).get("series", []):
        print(f"darefuse: DICOM series {line}", file=sys.stderr)
    for warning in report["warnings"]:
        print(f"darefuse: warning: {warning}", file=sys.stderr)
    print(summary(report, Path(args.output_dir)))
    if report.get("review_message"):
        print(f"review: {report['review_message']} See review.csv and review_regions.nii.gz.")
    return 0


def _demo(args) -> int:
    """The sample case; for DICOM results, written as a DICOM study first, which goes with the results (the
    SEG and maps reference it)."""
    from ..sampledata import sample_case_paths

    if args.output_format == "nifti":
        sample = sample_case_paths()
        paths = {c: str(sample[BRATS_SUFFIX[c]]) for c in CONTRASTS if BRATS_SUFFIX[c] in sample}
        args.t1, args.t1ce, args.t2, args.flair = (paths.get(c) for c in CONTRASTS)
        return _segment(args)
    from ..dicom.synthetic import SAMPLE_STUDY_DIR, write_sample_study

    with tempfile.TemporaryDirectory(prefix="darefuse-sample-dicom-") as study:
        write_sample_study(study)
        args.t1 = args.t1ce = args.t2 = args.flair = None
        args.dicom = study

        def copy_study(staging: Path) -> List[str]:
            shutil.copytree(study, staging / SAMPLE_STUDY_DIR)
            return [SAMPLE_STUDY_DIR]

        return _segment(args, extra_writers=[copy_study])


def read_batch(csv_path) -> List[Dict[str, str]]:
    """The cases of a batch CSV; relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"Batch file {csv_path} does not exist.")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"Batch file {csv_path} is not a readable CSV file: {error}") from None
    missing = [c for c in BATCH_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"Batch file {csv_path} lacks the column(s) {', '.join(missing)}; expected the columns "
                         f"{','.join(BATCH_COLUMNS)}.")
    if not rows:
        raise InputError(f"Batch file {csv_path} holds no case.")
    base = csv_path.absolute().parent
    cases = []
    for number, row in enumerate(rows, start=1):
        case = {"case_id": row["case_id"] or f"row{number}"}
        for column in BATCH_COLUMNS[1:] + OPTIONAL_BATCH_COLUMNS:
            value = row.get(column, "")
            case[column] = str(base / value) if value and not os.path.isabs(value) else value
        cases.append(case)
    return cases


def run_batch(cases: List[Dict[str, str]], overwrite: bool = False, device: str = "cpu", model_path=None,
              outputs=OUTPUTS, quiet: bool = False, stream=None, class_gate: bool = True,
              output_format: str = "nifti") -> List[dict]:
    """Run every case, continuing past failures. Returns one row per case: case_id, status ("ok", "failed",
    "error"), message, seconds, predicted_class, WT/TC/ET mL, resident memory after the case (MB)."""
    from ..logic import DareFuseLogic

    stream = stream or sys.stdout
    logic = DareFuseLogic(in_process=True)  # one model load for the whole batch, in this process
    rows = []
    for number, case in enumerate(cases, start=1):
        prefix = f"[{number}/{len(cases)}] {case['case_id']}"
        started = time.perf_counter()
        row = {"case_id": case["case_id"], "status": "ok", "message": "", "predicted_class": "",
               "wt_ml": "", "tc_ml": "", "et_ml": ""}
        try:
            if not case["output_dir"]:
                raise InputError("no output_dir given for this case.")
            paths, dicom = {c: case[c] for c in CONTRASTS}, case.get("dicom") or None
            report = segment_case(paths, case["output_dir"], overwrite=overwrite,
                                  device=device, model_path=model_path, outputs=outputs, logic=logic,
                                  class_gate=class_gate, labels=flag_labels(paths, dicom), dicom=dicom,
                                  output_format=output_format, progress=ConsoleProgress(prefix + " ", quiet=quiet))
            row.update(predicted_class=report["predicted_class"], wt_ml=report["volumes_ml"]["WT"],
                       tc_ml=report["volumes_ml"]["TC"], et_ml=report["volumes_ml"]["ET"])
            row["message"] = summary(report, case["output_dir"])
        except Cancelled:
            raise
        except DareFuseError as error:
            row.update(status="failed", message=user_message(error))
        except Exception as error:  # noqa: BLE001 - a bug in one case must not stop the others
            row.update(status="error", message=f"internal error ({type(error).__name__}: {error})")
        gc.collect()
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["resident_mb"] = round(resident_mb(), 1)
        rows.append(row)
        print(f"{prefix}: {row['status']}: {row['message']}", file=stream, flush=True)
    return rows


def write_batch_report(rows: List[dict], path) -> None:
    """The per-case table as CSV, written to a temporary name and renamed (never half-written)."""
    path = Path(path)
    columns = ["case_id", "status", "message", "seconds", "predicted_class", "wt_ml", "tc_ml", "et_ml",
               "resident_mb"]
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def _batch(args) -> int:
    cases = read_batch(args.csv)
    if args.report:
        report_dir = Path(args.report).absolute().parent
        if not report_dir.is_dir():
            raise InputError(f"--report {args.report}: folder {report_dir} does not exist.")
    set_threads(args.threads)
    unmap_large_blocks()
    with terminate_as_interrupt():
        rows = run_batch(cases, overwrite=args.overwrite, device=args.device, model_path=args.model,
                         outputs=_outputs(args), quiet=args.quiet, class_gate=not args.no_class_gate,
                         output_format=args.output_format)
    if args.report:
        write_batch_report(rows, args.report)
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"darefuse batch: {len(rows) - len(failed)} of {len(rows)} cases done"
          + (f"; failed: {', '.join(r['case_id'] for r in failed)}" if failed else "."))
    return 1 if failed else 0


# -- argument parsing ------------------------------------------------------------------------------------------
def _outputs(args) -> tuple:
    return tuple(o for o in OUTPUTS if o not in (args.skip or []))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results already in the output folder (never done without it)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--model", default=None,
                        help="a .safetensors model with its .card.json beside it (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the network (default: torch's)")
    parser.add_argument("--skip", action="append", choices=[o for o in OUTPUTS if o != "segmentation"],
                        help="leave out an optional layer (repeatable); the class and volumes are always reported")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default="nifti",
                        help="nifti (default): NIfTI layers, .seg.nrrd and scene.mrb; dicom: a DICOM SEG (NETC, SNFH, "
                             "ET) and the uncertainty and Grad-CAM++ maps as DICOM Parametric Maps in the source "
                             "study (needs the reference contrast as a DICOM series); both. report.json and "
                             "overview.png always")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--no-class-gate", action="store_true",
                        help="keep the tumour segments even when the class head says no tumour (the model card's "
                             "class gate otherwise leaves them empty, with a warning)")


def register(subparsers) -> None:
    segment = subparsers.add_parser(
        "segment", help="segment one case (any non-empty subset of T1, T1ce, T2, FLAIR)",
        description="Segment, measure and explain one case. Writes, on the reference grid (T1 when given, else "
                    "the first given of T1ce, T2, FLAIR): segmentation.nii.gz / .seg.nrrd, uncertainty.nii.gz, "
                    "difference_prior.nii.gz, tumour_free.nii.gz, gradcam.nii.gz, report.json, scene.mrb, "
                    "overview.png (and with --output-format dicom or both: segmentation.dcm, uncertainty.dcm, "
                    "gradcam.dcm); for whole-head (not skull-stripped) input also brain_mask.nii.gz. All files "
                    "appear together when complete, or none.")
    for contrast in CONTRASTS:
        segment.add_argument(f"--{contrast}", metavar="FILE|DIR",
                             help=f"{contrast_name(contrast)} volume: an image file, or a folder of DICOM slices")
    segment.add_argument("--series", action="append", metavar="UID",
                         help="the DICOM series to use (SeriesInstanceUID) where a folder holds several (repeatable)")
    segment.add_argument("--dicom", metavar="DIR",
                         help="a DICOM study folder: its series are assigned to the contrasts not given otherwise, "
                              "by their descriptions (SeriesDescription, ProtocolName); the choice is reported")
    segment.add_argument("--output-dir", required=True, help="folder for the results")
    segment.add_argument("--save-registered", action="store_true",
                         help="whole-head input: also write each contrast co-registered onto the reference grid "
                              "(registered_<contrast>.nii.gz)")
    _common(segment)
    segment.set_defaults(handler=_segment)

    demo = subparsers.add_parser("demo", help="run `segment` on the bundled sample case",
                                 description="Segment the bundled sample case (SHA256-checked).")
    demo.add_argument("--output-dir", default=DEMO_OUTPUT_DIR, help=f"default ./{DEMO_OUTPUT_DIR}")
    _common(demo)
    demo.set_defaults(handler=_demo)

    batch = subparsers.add_parser(
        "batch", help="segment the cases of a CSV file, continuing past failures",
        description="Segment every case of a CSV file with the columns case_id,t1,t1ce,t2,flair,output_dir "
                    "(image files or DICOM series folders; empty cells for missing contrasts; relative paths are "
                    "relative to the CSV file) and optionally dicom (a study folder assigned by series "
                    "descriptions). A case that fails is reported and the others go on; the exit status is 1 if "
                    "any case failed.")
    batch.add_argument("csv", help="the cases")
    batch.add_argument("--report", default=None, help="also write the per-case results to this CSV file")
    _common(batch)
    batch.set_defaults(handler=_batch)
