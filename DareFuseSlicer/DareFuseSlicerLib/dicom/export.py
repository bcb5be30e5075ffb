"""A run's results as DICOM objects that land in the source study: a Segmentation (SEG) with the segments NETC,
SNFH and ET, and the uncertainty and Grad-CAM++ maps as Parametric Maps, built with highdicom.

Each object references the slices of the reference contrast's source series (one frame per source slice, same
frame of reference), copies the patient and study attributes from them (highdicom does), and gets fresh UIDs.
The segment codes come from the terminology file (terminology.py); the algorithm identification names DareFuse,
the model and its SHA256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .. import __version__, terminology
from ..constants import LABELS
from ..errors import InputError

#: File names in the results folder.
SEG_FILE = "segmentation.dcm"
MAP_FILES = {"uncertainty": "uncertainty.dcm", "gradcam": "gradcam.dcm"}
#: Series numbers of the derived series (after any the scanner uses for a brain study).
SERIES_NUMBERS = {"segmentation": 900, "uncertainty": 901, "gradcam": 902}
MANUFACTURER = "DareFuseSlicer"
#: Maps in [0, 1] are stored as 16-bit integers with a real-world-value slope of 1/65535 (half the size of
#: float32 pixels; steps of 1.5e-5).
MAP_SCALE = 65535
#: JPEG-LS Lossless (pyjpegls, which highdicom installs): the maps are zero outside the head, so the files are a
#: fraction of their uncompressed size, and no value is lost (test_dicom_export reads them back).
MAP_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.80"
#: The results must lie on the source slices' grid, as the pipeline writes them (mm).
GRID_TOLERANCE_MM = 1e-3


#: Patient and study attributes a SEG or map copies from its source (DICOM type 2: present, maybe empty).
#: De-identified series sometimes lack them; highdicom needs them present.
COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: What the source series must carry for the results to land in its study, on its frame of reference.
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def check_source(stack) -> None:
    """InputError unless the results can reference this series (before a run, not after minutes of work)."""
    missing = sorted({k for header in stack.headers for k in REQUIRED if not str(header.get(k, "") or "")})
    if missing:
        raise InputError(f"{stack.label}: {stack.series.name()} has no {', '.join(missing)}, which DICOM results "
                         "need to reference it; write NIfTI results instead.")


def _sources(stack) -> list:
    """The source slices' headers, with the type-2 attributes the SEG copies set empty where absent (the headers
    are this run's copies, read from the files; the files are not touched)."""
    for header in stack.headers:
        for keyword in COPIED_TYPE_2:
            if keyword not in header:
                setattr(header, keyword, "")
    return stack.headers


def _codes(code: terminology.Code):
    import highdicom as hd

    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm(model_info: Optional[dict]):
    """DareFuse, the model's name and version, its SHA256 as a parameter."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = model_info or {}
    name = str(model.get("name") or "model")
    return hd.AlgorithmIdentificationSequence(
        name=f"DareFuse {name}"[:64], family=codes.cid7162.ArtificialIntelligence,
        version=str(model.get("version") or __version__)[:64], source=MANUFACTURER,
        parameters={"model": name, "sha256": str(model.get("sha256") or "unknown")})


def segment_descriptions(model_info: Optional[dict]) -> list:
    """NETC, SNFH and ET (segment numbers = their label values) with the terminology file's codes."""
    import highdicom as hd

    _, segments = terminology.load()
    identification = algorithm(model_info)
    descriptions = []
    for value, name in sorted(LABELS.items()):
        codes = segments[name]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name, segmented_property_category=_codes(codes.category),
            segmented_property_type=_codes(codes.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification, anatomic_regions=[_codes(terminology.BRAIN)],
            display_color=hd.color.CIELabColor.from_rgb(*(255 * c for c in codes.colour))))
    return descriptions


def _frames(image: sitk.Image, stack) -> np.ndarray:
    """The image's voxels as one frame per source slice, in the stack's order (after a check of the grid)."""
    same = (tuple(image.GetSize()) == tuple(stack.size)
            and np.allclose(image.GetOrigin(), stack.origin, atol=GRID_TOLERANCE_MM)
            and np.allclose(image.GetSpacing(), stack.spacing, atol=GRID_TOLERANCE_MM)
            and np.allclose(image.GetDirection(), stack.direction, atol=1e-6))
    if not same:
        raise ValueError("the result is not on the grid of the reference series' slices")
    return sitk.GetArrayFromImage(image)  # (z, y, x): frame k is source slice k


def _equipment(model_info: Optional[dict]) -> dict:
    name = str((model_info or {}).get("name") or "model")
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": f"DareFuse {name}"[:64],
            "software_versions": __version__, "device_serial_number": f"DareFuseSlicer-{__version__}"}


def write_segmentation(label: sitk.Image, stack, model_info: Optional[dict], path) -> Path:
    """The label image (0 background, 1 NETC, 2 SNFH, 3 ET) as a binary DICOM SEG beside the source series."""
    import highdicom as hd

    frames = _frames(label, stack).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=_sources(stack), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model_info), series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["segmentation"], sop_instance_uid=hd.UID(), instance_number=1,
        series_description="DareFuse tumour segmentation", content_label="DAREFUSE",
        content_description="NETC, SNFH and ET (BraTS 2023 labels)",
        omit_empty_frames=bool(frames.any()),  # a SEG needs at least one frame
        **_equipment(model_info))
    seg.save_as(str(path))
    return Path(path)


def _frame_anatomy():
    """The brain, unpaired: highdicom leaves the Frame Anatomy out of a Parametric Map, and without it the
    General Series' Laterality is required (dciodvfy reports its absence as an error)."""
    from pydicom.dataset import Dataset

    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [_codes(terminology.BRAIN)]
    anatomy.FrameLaterality = "U"
    return anatomy


def write_parametric_map(image: sitk.Image, stack, model_info: Optional[dict], path, kind: str,
                         explanation: str) -> Path:
    """A map with values in [0, 1] (uncertainty, Grad-CAM++) as a DICOM Parametric Map beside the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = np.clip(_frames(image, stack).astype(np.float64), 0.0, 1.0)
    frames = np.round(values * MAP_SCALE).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=kind[:16], lut_explanation=explanation[:64], unit=codes.UCUM.NoUnits, value_range=(0, MAP_SCALE),
        slope=1.0 / MAP_SCALE, intercept=0.0)
    pmap = hd.pm.ParametricMap(
        source_images=_sources(stack), pixel_array=frames, series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS[kind], sop_instance_uid=hd.UID(), instance_number=1,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=MAP_SCALE / 2, window_width=MAP_SCALE)],
        content_label=kind.upper()[:16], content_description=explanation[:64],
        series_description=f"DareFuse {explanation}"[:64], transfer_syntax_uid=MAP_TRANSFER_SYNTAX,
        **_equipment(model_info))
    pmap.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy()]
    pmap.save_as(str(path))
    return Path(path)


def write_results(result, stack, model_info: Optional[dict], folder) -> List[str]:
    """The SEG and the maps a run produced, into `folder`; returns the file names written."""
    folder = Path(folder)
    written: List[str] = []
    if result.label is not None:
        write_segmentation(result.label, stack, model_info, folder / SEG_FILE)
        written.append(SEG_FILE)
    maps: Dict[str, tuple] = {
        "uncertainty": (result.uncertainty, "uncertainty (K / sum of Dirichlet alpha)"),
        "gradcam": (result.gradcam, f"Grad-CAM++ map, class {result.gradcam_class}"),
    }
    for kind, (image, explanation) in maps.items():
        if image is not None:
            write_parametric_map(image, stack, model_info, folder / MAP_FILES[kind], kind, explanation)
            written.append(MAP_FILES[kind])
    return written
