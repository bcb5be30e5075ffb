"""Files: BraTS 2023 names, a manifest per data set, and the bundled sample case (SHA256-checked)."""
from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import BRATS_SUFFIX, CLASSES, CONTRASTS, DATASET_FORMATS
from ..errors import InputError, OptionError
# The sample case and the BraTS file names have their home in sampledata.py (no heavy imports there).
from ..sampledata import SAMPLE_DIR, SAMPLE_PREFIX, file_names, sample_case_paths, sha256  # noqa: F401
from .acquisition import grid_by_name
from .engine import make_case
from .site import SITE_COLUMN, site_style

# Default grid mix of a generated data set, cycled per block of four cases (one of each class), so
# every class sees every grid: 70 % BraTS grid, then a 1 mm RAS-stored matrix, 3 mm and 5 mm slices.
GRID_MIX = ("brats",) * 7 + ("iso_ras", "ax_3mm", "ax_thick")

# Share of clinical cases in a "mixed" data set; each case decides from its own seed (MIX_STREAM).
CLINICAL_SHARE = 0.5
MIX_STREAM = (20261122, 2)
ACQUISITION_MODES = ("brats", "clinical", "mixed")

# Per-contrast acquisition columns, each prefixed with the contrast's BraTS suffix (t1n_size, ...):
# grid size and spacing (x y z), plane and tilt (clinical), slice thickness, motion summary (rotation angle
# in degrees, brain-centre shift in mm) and to_ref: the 3x4 affine [A | b] (12 numbers, row-major) taking
# this contrast's LPS points to the reference's (x_ref = A x + b).
CONTRAST_COLUMNS = ("size", "spacing", "plane", "tilt_deg", "slice_mm", "rot_deg", "shift_mm", "to_ref")
MANIFEST_COLUMNS = ("case_id", "tumour_class", "seed", "grid", "size", "spacing", "lesion_count",
                    "netc_ml", "snfh_ml", "et_ml",
                    "t1n", "t1c", "t2w", "t2f", "seg", "t1n_free", "t1c_free", "t2w_free", "t2f_free",
                    "subtype", "acquisition", "randomised", "reference", "brainmask") + tuple(
    f"{BRATS_SUFFIX[c]}_{column}" for c in CONTRASTS for column in CONTRAST_COLUMNS)
# Columns that manifests written before the clinical engine lack, with the value they mean there.
_DEFAULTS = {"acquisition": "brats", "randomised": "0", "reference": BRATS_SUFFIX[CONTRASTS[0]]}


def _write(image: sitk.Image, path: Path) -> None:
    # ITK's NIfTI writer goes through zlib's gzopen, whose header has mtime 0: same voxels, same bytes.
    sitk.WriteImage(image, str(path), True)


def write_case(case, out_dir, tumour_free: bool = True) -> dict:
    """Write the case with BraTS 2023 names; returns manifest key (t1n, ..., seg, t1n_free, ...) -> path.

    Images are stored as int16 like scanner data (the engine already rounds them to whole units).
    tumour_free=False leaves out the tumour-free twins (the bundled sample case).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = file_names(case.case_id)
    paths = {}
    for contrast in CONTRASTS:
        suffix = BRATS_SUFFIX[contrast]
        pairs = [(suffix, case.images[contrast])]
        if tumour_free:
            pairs.append((f"{suffix}_free", case.tumour_free[contrast]))
        for key, image in pairs:
            paths[key] = out / names[key]
            _write(sitk.Cast(image, sitk.sitkInt16), paths[key])
    paths["seg"] = out / names["seg"]
    _write(sitk.Cast(case.label, sitk.sitkUInt8), paths["seg"])
    if getattr(case, "acquisition", "brats") == "clinical":
        paths["brainmask"] = out / names["brainmask"]
        _write(sitk.Cast(case.brain_mask, sitk.sitkUInt8), paths["brainmask"])
    return paths


def _numbers(values, fmt: str = "g") -> str:
    return "x".join(format(float(v), fmt) for v in values)


def _contrast_columns(case) -> dict:
    row = {}
    acquisitions = case.meta.get("contrasts")
    for contrast in CONTRASTS:
        key = BRATS_SUFFIX[contrast]
        if acquisitions is None:  # BraTS-style: every contrast on the segmentation's grid, no motion
            geometry = case.images[contrast]
            info = {"size": geometry.GetSize(), "spacing": geometry.GetSpacing(), "plane": "", "tilt_deg": "",
                    "slice_mm": geometry.GetSpacing()[2], "rot_deg": 0.0, "shift_mm": 0.0,
                    "to_reference": np.eye(3, 4)}
        else:
            info = acquisitions[contrast]
        row[f"{key}_size"] = "x".join(str(int(n)) for n in info["size"])
        row[f"{key}_spacing"] = _numbers(info["spacing"], ".6g")
        row[f"{key}_plane"] = info["plane"]
        row[f"{key}_tilt_deg"] = "" if info["tilt_deg"] == "" else f"{info['tilt_deg']:.3f}"
        row[f"{key}_slice_mm"] = f"{info['slice_mm']:.6g}"
        row[f"{key}_rot_deg"] = f"{info['rot_deg']:.4f}"
        row[f"{key}_shift_mm"] = f"{info['shift_mm']:.4f}"
        row[f"{key}_to_ref"] = " ".join(repr(float(v)) for v in np.asarray(info["to_reference"]).ravel())
    return row


def _manifest_row(case, paths, out: Path) -> dict:
    v = case.meta["volumes_ml"]
    row = {
        "case_id": case.case_id, "tumour_class": case.tumour_class, "seed": case.meta["seed"],
        "grid": case.meta["grid"], "size": "x".join(str(s) for s in case.meta["size"]),
        "spacing": "x".join(f"{s:g}" for s in case.meta["spacing"]), "lesion_count": case.meta["lesion_count"],
        "netc_ml": f"{v['NETC']:.3f}", "snfh_ml": f"{v['SNFH']:.3f}", "et_ml": f"{v['ET']:.3f}",
        "subtype": case.meta["subtype"], "acquisition": case.meta.get("acquisition", "brats"),
        "randomised": int(bool(case.meta.get("randomised", False))),
        "reference": BRATS_SUFFIX[case.meta.get("reference", CONTRASTS[0])], "brainmask": "",
    }
    row.update({key: Path(p).relative_to(out).as_posix() for key, p in paths.items()})
    row.update(_contrast_columns(case))
    return row


def case_acquisition(seed: int, mode: str) -> str:
    """The acquisition of the case with this seed in a data set of the given mode (mixed: CLINICAL_SHARE
    of the cases are clinical, decided by the seed alone, so any worker count gives the same set)."""
    if mode != "mixed":
        return mode
    return "clinical" if np.random.default_rng([int(seed), *MIX_STREAM]).random() < CLINICAL_SHARE else "brats"


def _write_dicom(case, out: Path) -> dict:
    """The case as a DICOM study (one series folder per contrast) and its label as NIfTI; manifest key -> path.
    No tumour-free twins: DICOM studies are inputs for `darefuse segment`, not training data."""
    from ..dicom.synthetic import write_case as write_study

    written = write_study(case, out)
    paths = {BRATS_SUFFIX[c]: written[c] for c in CONTRASTS}
    paths["seg"] = written["seg"]
    if getattr(case, "acquisition", "brats") == "clinical":  # the brain mask stays NIfTI too, beside the label
        paths["brainmask"] = out / file_names(case.case_id)["brainmask"]
        _write(sitk.Cast(case.brain_mask, sitk.sitkUInt8), paths["brainmask"])
    return paths


def _make_and_write(seed: int, tumour_class: str, grid: str, out: Path, file_format: str = "nifti",
                    acquisition: str = "brats", randomise_brats: bool = False, site: str = None) -> dict:
    if acquisition == "clinical":
        case = make_case(seed, tumour_class, acquisition="clinical", site=site)
    else:
        case = make_case(seed, tumour_class, grid, randomise=randomise_brats or None, site=site)
    # A site has no tumour-free twins.
    paths = _write_dicom(case, out) if file_format == "dicom" else write_case(case, out, tumour_free=site is None)
    row = _manifest_row(case, paths, out)
    if site is not None:
        row[SITE_COLUMN] = site
    return row


def generate(out_dir, n: int, seed: int, progress=True, grids=None, overwrite: bool = False, workers: int = 1,
             file_format: str = "nifti", acquisition: str = "brats", randomise_brats: bool = False,
             site: str = None) -> Path:
    """Write n cases (classes balanced: case i has class CLASSES[i % 4], seed seed + i) and manifest.csv.

    progress: True for a tqdm bar, False for none, or a callable progress(fraction, message).
    grids: grid names of BraTS-style cases, cycled per block of four cases (default GRID_MIX).
    acquisition: "brats", "clinical" (each contrast on its own grid) or "mixed" (see case_acquisition).
    randomise_brats: domain-randomised intensities for BraTS-style cases too (clinical ones always are).
    workers: processes making cases at once. Each case depends on its own seed alone, so the files and the
    manifest are byte-identical for any number of workers.
    file_format: "nifti" (BraTS 2023 files) or "dicom" (a DICOM study per case, <id>/NN_<series>/0001.dcm ...,
    the label as <id>-seg.nii.gz; the manifest's contrast columns name the series folders).
    site: a named site style (site.SITES): its cases on its grid (unless grids are given), no tumour-free
    twins, and a `site` column after the usual ones (other data sets' manifests keep their bytes).
    """
    if int(n) < 1:
        raise InputError(f"n: the number of cases must be at least 1, got {n}")
    if int(seed) < 0:
        raise InputError(f"seed: must be >= 0, got {seed}")
    if int(workers) < 1:
        raise InputError(f"workers: must be at least 1, got {workers}")
    if file_format not in DATASET_FORMATS:
        raise OptionError(f"{{file_format}} must be one of {', '.join(DATASET_FORMATS)}, got {file_format!r}",
                          "file_format")
    if acquisition not in ACQUISITION_MODES:
        raise OptionError(f"{{acquisition}} must be one of {', '.join(ACQUISITION_MODES)}, got {acquisition!r}",
                          "acquisition")
    if grids and acquisition == "clinical":
        raise OptionError("{grids}: clinical cases draw each contrast's own grid; give none", "grids")
    if site is not None:
        if randomise_brats:
            raise OptionError("{randomise_brats}: a site keeps its own intensities", "randomise_brats")
        site = site_style(site).name
    grids = tuple(grids) if grids else ((site_style(site).grid,) if site else GRID_MIX)
    for g in grids:
        grid_by_name(g)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OptionError(f"{{out}}: {out} is not empty; choose an empty folder or allow overwriting ({{overwrite}})",
                          "out", overwrite="overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=int(n), desc="phantoms", unit="case")
    manifest = out / "manifest.csv"
    jobs = [(int(seed) + i, CLASSES[i % len(CLASSES)], grids[(i // len(CLASSES)) % len(grids)], out, file_format,
             case_acquisition(int(seed) + i, acquisition), bool(randomise_brats), site) for i in range(int(n))]
    pool = ProcessPoolExecutor(min(int(workers), len(jobs))) if int(workers) > 1 else None
    try:
        # map() yields in case order, so the manifest's rows are in the same order for any pool.
        rows = pool.map(_make_and_write, *zip(*jobs)) if pool else (_make_and_write(*job) for job in jobs)
        with open(manifest, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS + ((SITE_COLUMN,) if site else ()))
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow(row)
                fh.flush()  # a partial set is usable (and inspectable) while the rest is generated
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress((i + 1) / int(n), row["case_id"])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    return manifest


def read_manifest(path) -> list:
    """Rows as dicts; manifests from before the clinical engine read as BraTS-style (their new columns
    filled: acquisition brats, reference t1n, the others empty)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for column in MANIFEST_COLUMNS:
            row.setdefault(column, _DEFAULTS.get(column, ""))
    return rows


def to_reference(row: dict, suffix: str) -> np.ndarray:
    """A manifest row's 3x4 affine taking contrast `suffix`'s (t1n, t1c, t2w, t2f) LPS points to the
    reference's; the identity where the row has none (BraTS-style cases, older manifests)."""
    text = row.get(f"{suffix}_to_ref", "")
    if not text:
        return np.eye(3, 4)
    return np.array([float(v) for v in text.split()]).reshape(3, 4)
