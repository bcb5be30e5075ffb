"""Writing a run's results: NIfTI layers, report.json and overview.png, all or nothing.

Everything is written into a temporary folder beside the target (same file system, so the final move is a
rename) and moved into place only when complete. A failed or cancelled write leaves the target as it was.
A folder that already holds results is replaced only with overwrite=True; other files in it are kept.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..constants import CONTRASTS, LABEL_COLOURS, LABELS, class_text
from ..dicom.export import MAP_FILES, SEG_FILE
from ..dicom.synthetic import SAMPLE_STUDY_DIR
from ..errors import OptionError
from ..progress import CancelFn, check_cancel
from . import diskspace

PathLike = Union[str, Path]
#: Written for whole-head (raw) studies only: the brain mask, and with save_registered the co-registered contrasts.
FRONT_END_FILES = ("brain_mask.nii.gz",) + tuple(f"registered_{contrast}.nii.gz" for contrast in CONTRASTS)
#: What a run with every layer writes in the default format (nifti), and what the DICOM format adds.
NIFTI_RESULT_FILES = (
    "segmentation.nii.gz", "segmentation.seg.nrrd", "uncertainty.nii.gz", "difference_prior.nii.gz",
    "tumour_free.nii.gz", "gradcam.nii.gz", "report.json", "scene.mrb", "overview.png", "review.csv",
    "review_regions.nii.gz",
)
DICOM_RESULT_FILES = (SEG_FILE, *MAP_FILES.values())
RESULT_FILES = NIFTI_RESULT_FILES + FRONT_END_FILES + DICOM_RESULT_FILES + (SAMPLE_STUDY_DIR,)
#: What a run writes besides report.json and overview.png: today's NIfTI layers and Slicer files, the DICOM
#: objects (SEG, Parametric Maps), or both.
OUTPUT_FORMATS = ("nifti", "dicom", "both")
#: Writes a file into the staging folder and returns the names it wrote (e.g. the .seg.nrrd and scene.mrb).
ExtraWriter = Callable[[Path], Iterable[str]]
#: Writing is gzip-bound and SimpleITK releases the GIL while it compresses, so the files are written in
#: parallel threads. Measured on the BraTS-size sample (2 cores): 1 thread 6.0 s, 2 threads 5.1 s, 3 threads
#: no faster; each thread added about 40 MB to the peak.
WRITER_THREADS = 2


def check_output_dir(output_dir: PathLike, overwrite: bool = False) -> Path:
    """The target folder as an absolute path, or an InputError if results there would be overwritten
    without `overwrite`, or if it cannot be created. Called before a run so the user does not wait for
    minutes to learn that, and again before moving the results into place."""
    path = Path(output_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OptionError(f"{{output_dir}} {path} is a file, not a folder.", output_dir="Output folder")
    if path.is_dir() and not overwrite:
        existing = [name for name in RESULT_FILES if (path / name).exists()]
        if existing:
            raise OptionError(
                f"{{output_dir}} {path} already holds results ({', '.join(existing[:3])}"
                f"{', ...' if len(existing) > 3 else ''}); nothing was overwritten. Allow overwriting ({{overwrite}}) "
                "to replace them, or choose another folder.", output_dir="Output folder", overwrite="overwrite=True"
            )
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise OptionError(f"{{output_dir}} {path} cannot be created: {ancestor} is not a writable folder.",
                          output_dir="Output folder")
    return path


def describe_model(model) -> Dict[str, Optional[str]]:
    """Name, version and SHA256 of a model loaded by network.store.load_model (from its card)."""
    card = getattr(model, "card", None) or {}
    return {
        "name": card.get("name") or card.get("architecture") or type(model).__name__,
        "version": card.get("version"),
        "architecture": card.get("architecture") or type(model).__name__,
        "sha256": card.get("sha256"),
        "weights_file": card.get("weights_file"),
    }


def _image_layers(result, save_registered: bool = False) -> List[Tuple[str, Callable[[], sitk.Image]]]:
    """(file name, function making the image) per NIfTI layer: the 4-D reconstruction is assembled only when
    its turn to be written comes, so that it does not sit in memory while the other files are written."""
    layers: List[Tuple[str, Callable[[], sitk.Image]]] = []
    if result.label is not None:
        layers.append(("segmentation.nii.gz", lambda: sitk.Cast(result.label, sitk.sitkUInt8)))
    for name, image in (("uncertainty.nii.gz", result.uncertainty),
                        ("difference_prior.nii.gz", result.difference_prior),
                        ("gradcam.nii.gz", result.gradcam)):
        if image is not None:
            layers.append((name, lambda image=image: image))
    review = getattr(result, "review", None)
    if review is not None and result.label is not None:
        # The region of rank k labelled k (at most the review's max_regions), 0 elsewhere.
        layers.append(("review_regions.nii.gz", lambda: _image_like_label(review.label_map, result.label)))
    if result.tumour_free:
        # One 4-D file over the given contrasts; their order is in report.json ("tumour_free_contrasts").
        layers.append(("tumour_free.nii.gz", lambda: sitk.JoinSeries(list(result.tumour_free.values()))))
    brain_mask = getattr(result, "brain_mask", None)
    if brain_mask is not None:
        layers.append(("brain_mask.nii.gz", lambda: sitk.Cast(brain_mask, sitk.sitkUInt8)))
    if save_registered:  # the contrasts co-registered onto the reference grid (whole-head input)
        for contrast, image in (getattr(result, "registered", None) or {}).items():
            layers.append((f"registered_{contrast}.nii.gz", lambda image=image: image))
    return layers


def build_report(result, model_info: Optional[dict], files: Sequence[str]) -> dict:
    return {
        "darefuse_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "predicted_class": result.predicted_class,
        "class_probabilities": result.class_probabilities,
        "gradcam_class": result.gradcam_class,
        "low_confidence": result.low_confidence,
        "volumes_ml": result.volumes_ml,
        "reference": result.inputs.get("reference"),
        "inputs": result.inputs,
        "tumour_free_contrasts": list(result.tumour_free),
        "front_end": getattr(result, "front_end", None) or {"input_kind": "preprocessed"},
        "warnings": result.warnings,
        "timings_s": result.timings,
        "model": model_info or {},
        "settings": result.settings,
        "labels": {str(value): name for value, name in LABELS.items()},
        "review_regions": result.review.table() if getattr(result, "review", None) is not None else [],
        "review_message": result.review.message if getattr(result, "review", None) is not None else
        "No review regions: the segmentation was not computed.",
        "unshown_parts": getattr(result, "unshown", []),
        "files": sorted(files),
    }


def _staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=str(target.parent)))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the results folder should not be
    return staging


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it, and
    setting it for a moment races with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(staging: Path, target: Path, overwrite: bool, written: Sequence[str]) -> None:
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(staging, target)  # atomic: the folder appears complete or not at all
        return
    check_output_dir(target, overwrite)  # another run may have written there meanwhile
    # The folder holds other files (and, with overwrite, older results): move the old results aside, move
    # the new ones in, and put the old ones back if anything fails, so that nothing is lost half-way.
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=str(target.parent)))
    moved_old: List[str] = []
    moved_new: List[str] = []
    try:
        for name in RESULT_FILES:
            if (target / name).exists():
                os.replace(target / name, backup / name)
                moved_old.append(name)
        for name in written:
            os.replace(staging / name, target / name)
            moved_new.append(name)
    except BaseException:
        for name in moved_new:
            os.replace(target / name, staging / name)
        for name in moved_old:
            os.replace(backup / name, target / name)
        os.rmdir(backup)  # empty again; fails loudly (keeping the old results) if a restore did not happen
        raise
    shutil.rmtree(backup, ignore_errors=True)  # the replaced results
    shutil.rmtree(staging, ignore_errors=True)


def write_outputs(result, output_dir: PathLike, overwrite: bool = False, model_info: Optional[dict] = None,
                  extra_writers: Sequence[ExtraWriter] = (), cancel: Optional[CancelFn] = None,
                  overview: bool = True, nifti: bool = True, report_extra: Optional[dict] = None,
                  save_registered: bool = False) -> Dict[str, Path]:
    """Write a PipelineResult into `output_dir`, all or nothing (see the module docstring).

    extra_writers(staging_folder) write further files (the .seg.nrrd and scene.mrb of the Slicer side, DICOM
    objects) into the same staging folder so that they appear together with the rest; they run in a worker
    thread, in parallel with the NIfTI files and the overview. nifti=False leaves the NIfTI layers out.
    report_extra: further entries of report.json. Returns name -> final path.
    Raises diskspace.DiskFull (saying how much space is needed) when the disk cannot hold the results.
    """
    target = check_output_dir(output_dir, overwrite)
    needed = diskspace.estimate_bytes(result, copies=1 + bool(extra_writers))
    diskspace.check_free_space(target, needed)
    started = time.perf_counter()
    staging = _staging_dir(target)
    try:
        def task(write: Callable[[], Iterable[str]]) -> List[str]:
            check_cancel(cancel)
            return list(write())

        def write_nifti(name: str, make: Callable[[], sitk.Image]) -> Callable[[], List[str]]:
            return lambda: (sitk.WriteImage(make(), str(staging / name), useCompression=True), [name])[1]

        # The slow writers first, so the pool's threads finish together.
        tasks = [lambda w=writer: w(staging) for writer in extra_writers]
        tasks += [write_nifti(name, make) for name, make in (_image_layers(result, save_registered) if nifti else [])]
        if getattr(result, "review", None) is not None:
            from .review import regions_csv  # SciPy: not at import, where a bad call is refused within a second

            tasks.append(lambda: [_write_text(staging / "review.csv", regions_csv(result.review.table()))])
        if overview:
            tasks.append(lambda: (render_overview(result, staging / "overview.png"), ["overview.png"])[1])
        with ThreadPoolExecutor(WRITER_THREADS) as pool:
            written = [name for names in pool.map(task, tasks) for name in names]
        result.timings["write"] = round(time.perf_counter() - started, 3)
        report = dict(build_report(result, model_info, written + ["report.json"]), **(report_extra or {}))
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        written.append("report.json")
        check_cancel(cancel)
        _move_into_place(staging, target, overwrite, written)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if diskspace.ran_out_of_space(error, target, needed):
            raise diskspace.disk_full(target, needed) from None
        raise
    return {name: target / name for name in written}


def _write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


# -- overview.png ------------------------------------------------------------------------------------------

#: Orientation letter of an index axis -> (physical axis x/y/z, whether it runs against L, P or S).
_AXIS_OF_LETTER = {"L": (0, False), "R": (0, True), "P": (1, False), "A": (1, True), "S": (2, False), "I": (2, True)}


def _lps_array(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """A view of the image's voxels in LPS axis order (z: inferior->superior, y: anterior->posterior,
    x: right->left) and its spacing (x, y, z), so that slices display the same whatever the file's
    orientation. The same axes as sitk.DICOMOrient(image, "LPS"), but as a numpy view: no copy of the volume."""
    letters = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    array = sitk.GetArrayViewFromImage(image)  # numpy axis 2 - k is index axis k
    source = [0, 0, 0]
    spacing = np.zeros(3)
    flips = []
    for index_axis, letter in enumerate(letters):
        physical, reverse = _AXIS_OF_LETTER[letter]
        source[2 - physical] = 2 - index_axis  # numpy axis (z, y, x order) of this physical axis
        spacing[physical] = image.GetSpacing()[index_axis]
        if reverse:
            flips.append(2 - physical)
    oriented = np.transpose(array, source)
    for axis in flips:
        oriented = np.flip(oriented, axis)
    return oriented, spacing


def _window(array: np.ndarray) -> Tuple[float, float]:
    values = array[array != 0] if np.any(array != 0) else array.ravel()
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _centre(label: Optional[np.ndarray], anatomy: np.ndarray) -> Tuple[int, int, int]:
    """Centre of the tumour (WT), else of the imaged object."""
    for mask in ((label > 0) if label is not None else None, anatomy != anatomy.min()):
        if mask is not None and mask.any():
            return tuple(int(round(c)) for c in np.argwhere(mask).mean(0))
    return tuple(s // 2 for s in anatomy.shape)


def _slices(array: np.ndarray, centre: Tuple[int, int, int]) -> List[np.ndarray]:
    z, y, x = centre
    return [array[z], array[:, y, :], array[:, :, x]]  # axial, coronal, sagittal


#: How many review regions the overview marks with their rank.
OVERVIEW_REGIONS = 5
REVIEW_COLOUR = (0.0, 0.85, 1.0, 0.45)


def _review_marks(regions: np.ndarray, top: int = OVERVIEW_REGIONS) -> List[Tuple[int, Tuple[int, int, int]]]:
    """(rank, (z, y, x)) of the top regions of an oriented region map: each region's voxel nearest its centre of
    mass, as pipeline/review.py places a region's centre."""
    from scipy import ndimage

    marks = []
    for rank, extent in enumerate(ndimage.find_objects(regions)[:top], start=1):
        if extent is None:
            continue
        where = np.argwhere(regions[extent] == rank)
        nearest = where[int(np.argmin(((where - where.mean(0)) ** 2).sum(1)))]
        marks.append((rank, tuple(int(v) for v in nearest + [s.start for s in extent])))
    return marks


def _overview_rows(result) -> List[Tuple[str, Optional[np.ndarray], dict]]:
    """(title, oriented layer, style) per row of the overview."""
    label = _lps_array(result.label)[0] if result.label is not None else None
    rows: List[Tuple[str, Optional[np.ndarray], dict]] = [("anatomy", None, {})]
    if label is not None:
        rows.append(("segmentation", label, {}))
    review = getattr(result, "review", None)
    if review is not None and review.regions:
        regions = _image_like_label(review.label_map, result.label)
        # A copy: _lps_array's view would outlive the temporary image it looks into.
        rows.append(("review regions", np.array(_lps_array(regions)[0]), {}))
    if result.uncertainty is not None:
        # Below the overlay threshold (the model card's review settings) transparent, as in the slice views.
        floor = (result.settings.get("review") or {}).get("overlay_threshold", 0.02)
        rows.append(("uncertainty", _lps_array(result.uncertainty)[0],
                     {"cmap": "inferno", "vmin": 0, "vmax": 1, "shown_above": floor}))
    if result.difference_prior is not None:
        prior = _lps_array(result.difference_prior)[0]
        top = float(np.percentile(prior[prior > 0], 99.5)) if np.any(prior > 0) else 1.0
        rows.append(("difference prior", prior, {"cmap": "viridis", "vmin": 0, "vmax": max(top, 1e-6)}))
    if result.gradcam is not None:
        rows.append((f"Grad-CAM++ ({result.gradcam_class})", _lps_array(result.gradcam)[0],
                     {"cmap": "jet", "vmin": 0, "vmax": 1}))
    return rows


def _image_like_label(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
    image.CopyInformation(reference)
    return image


def _draw_review(ax, base_view: int, regions: np.ndarray, marks, aspect: float, origin: str) -> None:
    """The regions projected onto a view (any region along the line of sight), numbered by rank."""
    projected = (regions > 0).any(axis=base_view)
    ax.imshow(np.where(projected[..., None], REVIEW_COLOUR, (0, 0, 0, 0)), origin=origin, aspect=aspect,
              interpolation="nearest")
    for rank, (z, y, x) in marks:
        column, row = ((x, y), (x, z), (y, z))[base_view]
        ax.text(column, row, str(rank), color="white", fontsize=8, fontweight="bold", ha="center", va="center",
                bbox={"boxstyle": "circle,pad=0.15", "facecolor": "black", "alpha": 0.6, "linewidth": 0})


def render_overview(result, path: PathLike, dpi: int = 110) -> None:
    """Orthogonal slices through the tumour centre: the anatomy with each layer over it (one row per layer);
    the review regions projected onto each view, the top OVERVIEW_REGIONS numbered by rank.

    Axial slices are shown in radiological convention (the patient's right on the left), as Slicer does.
    """
    # Figure and the Agg canvas directly, not pyplot: no global backend switch inside Slicer.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    anatomy, spacing = _lps_array(result.display_image)
    rows = _overview_rows(result)
    centre = _centre(rows[1][1] if len(rows) > 1 and rows[1][0] == "segmentation" else None, anatomy)
    sx, sy, sz = spacing
    aspects = [sy / sx, sz / sx, sz / sy]
    origins = ["upper", "lower", "lower"]
    low, high = _window(anatomy)
    background = anatomy.min()
    colours = np.zeros((4, 4), np.float32)
    for value, name in LABELS.items():
        colours[value] = LABEL_COLOURS[name] + (0.5,)

    figure = Figure(figsize=(9.0, 2.6 * len(rows) + 0.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for row, (title, layer, style) in enumerate(rows):
        layer_slices = _slices(layer, centre) if layer is not None else [None] * 3
        marks = _review_marks(layer) if title == "review regions" else []
        for col, (view, base, over) in enumerate(zip(("axial", "coronal", "sagittal"), _slices(anatomy, centre),
                                                        layer_slices)):
            ax = axes[row, col]
            ax.imshow(base, cmap="gray", vmin=low, vmax=high, origin=origins[col], aspect=aspects[col],
                      interpolation="nearest")
            if title == "segmentation":
                ax.imshow(colours[np.clip(over, 0, 3)], origin=origins[col], aspect=aspects[col],
                          interpolation="nearest")
            elif title == "review regions":
                _draw_review(ax, col, layer, marks, aspects[col], origins[col])
            elif over is not None:
                # Shown over the imaged object only (the map itself is kept whole in its file).
                floor = style.get("shown_above", 0.02 * style["vmax"])
                shown = np.ma.masked_where((over <= floor) | (base == background), over)
                ax.imshow(shown, alpha=0.55, origin=origins[col], aspect=aspects[col], interpolation="nearest",
                          **{k: v for k, v in style.items() if k != "shown_above"})
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, fontsize=9)
            if col == 0:
                ax.set_ylabel(title, fontsize=9)
    _heading(figure, result)
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    figure.savefig(str(path), dpi=dpi)


def _heading(figure, result) -> None:
    volumes = result.volumes_ml
    heading = (f"{class_text(result.predicted_class, result.class_probabilities, result.gradcam_class)}   "
               f"WT {volumes['WT']:.1f} mL   "
               f"TC {volumes['TC']:.1f} mL   ET {volumes['ET']:.1f} mL")
    if result.low_confidence:
        heading += "   LOW CONFIDENCE"
    figure.suptitle(heading, fontsize=10)
    figure.text(0.5, 0.005, "NETC red, SNFH green, ET yellow; review regions cyan, projected onto each view, the "
                f"top {OVERVIEW_REGIONS} numbered by rank; axial in radiological convention (R on the left)",
                ha="center", fontsize=7)
