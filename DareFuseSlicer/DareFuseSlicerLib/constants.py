"""Names and rules shared by the data engine, the network, the pipeline and the Slicer side (one home each)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

# Input contrasts in network channel order.
CONTRASTS = ("t1", "t1ce", "t2", "flair")
#: How each contrast is named to users (messages, the module panel's selectors, figures).
CONTRAST_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
#: Which given contrast is shown beneath the overlays: the one where tumours show best.
DISPLAY_ORDER = ("flair", "t1ce", "t2", "t1")
# BraTS 2023 file suffixes for each contrast (CASE-t1n.nii.gz, ...).
BRATS_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
# Labels as BraTS 2023 writes them.
LABELS = {1: "NETC", 2: "SNFH", 3: "ET"}
LABEL_NAMES = {
    "NETC": "Non-enhancing tumour core",
    "SNFH": "Surrounding non-enhancing FLAIR hyperintensity",
    "ET": "Enhancing tumour",
}
# Colours used by BraTS figures (RGB 0..1).
LABEL_COLOURS = {"NETC": (1.0, 0.0, 0.0), "SNFH": (0.0, 1.0, 0.0), "ET": (1.0, 1.0, 0.0)}
# Nested regions evaluated by BraTS, as sets of labels.
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
# Image-level tumour classes, in classifier output order.
CLASSES = ("no_tumour", "glioma", "meningioma", "metastasis")

#: The optional layers a run can produce (the class and the volumes are always computed).
OUTPUTS = ("segmentation", "uncertainty", "prior", "gradcam")


def contrast_name(contrast: str) -> str:
    """'T1ce' for 't1ce'; an unknown name unchanged."""
    return CONTRAST_NAMES.get(contrast, contrast)


def _given(inputs: Union[Mapping[str, Any], Iterable[str]]) -> set:
    if isinstance(inputs, Mapping):
        return {name for name, value in inputs.items() if value is not None}
    return set(inputs)


def reference_contrast(inputs: Union[Mapping[str, Any], Iterable[str]]) -> str:
    """The reference contrast, whose grid every output is on: T1 when given, else the first given of T1ce, T2,
    FLAIR. inputs: contrast names, or contrast -> image/node/path (None counts as not given)."""
    given = _given(inputs)
    for name in CONTRASTS:
        if name in given:
            return name
    from .errors import InputError

    raise InputError("No input contrast was given: give at least one of T1, T1ce, T2 or FLAIR.")


def display_contrast(inputs: Union[Mapping[str, Any], Iterable[str]]) -> str:
    """The given contrast shown beneath the overlays (DISPLAY_ORDER)."""
    given = _given(inputs)
    return next(name for name in DISPLAY_ORDER if name in given)
