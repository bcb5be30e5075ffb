"""Names and rules shared by the data engine, the network, the pipeline and the Slicer side (one home each)."""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

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
#: `darefuse adapt` keeps a teacher's pseudo-label where its one-pass uncertainty K / sum(alpha) is below this
#: (an untuned first choice: nothing has been measured at a simulated site yet; the card records the value used).
PSEUDO_LABEL_MAX_UNCERTAINTY = 0.2
#: What the data engine writes a data set as: BraTS 2023 NIfTI files, or a DICOM study per case.
DATASET_FORMATS = ("nifti", "dicom")


def contrast_name(contrast: str) -> str:
    """'T1ce' for 't1ce'; an unknown name unchanged."""
    return CONTRAST_NAMES.get(contrast, contrast)


def class_text(predicted: str, probabilities: Mapping[str, float], head: Optional[str] = None,
               percent=lambda p: f"{p:.0%}") -> str:
    """How a run's class is shown: 'glioma (88%)', the class head's probability; when a rule replaced the class
    head's answer (head, its arg-max), that answer instead: 'glioma (by a rule; class head: meningioma 88%)'."""
    if not head or head == predicted:
        return f"{predicted} ({percent(probabilities.get(predicted, 0.0))})"
    return f"{predicted} (by a rule; class head: {head} {percent(probabilities.get(head, 0.0))})"


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


# -- which contrast a name says: Slicer volume names, file names, DICOM series descriptions -----------------------
#: Name tokens for each contrast, checked in this order (FLAIR before T2 so "t2_flair" is FLAIR; T1ce before T1).
#: "tirm" and "dark fluid" are Siemens' FLAIR names.
NAME_TOKENS = (
    ("flair", ("flair", "t2f", "t2flair", "tirm", "darkfluid")),
    ("t1ce", ("t1ce", "t1c", "t1gd", "t1post")),
    ("t2", ("t2", "t2w")),
    ("t1", ("t1", "t1n", "t1w")),
)
#: Beside a T1 token, these say a contrast agent was given ("T1 MPRAGE post Gd", "Ax T1 FSPGR +C", "T1 SE KM")...
AGENT_TOKENS = frozenset(("post", "gd", "gad", "gado", "contrast", "ce", "c", "km", "postcontrast", "postgd"))
#: ...unless one of these says it was not ("T1 pre Gd", "T1 native", "T1 WO").
NO_AGENT_TOKENS = frozenset(("pre", "precontrast", "native", "nativ", "without", "wo"))
#: Series of other kinds whose names carry a T1/T2 token: diffusion, susceptibility, perfusion, angiography, T2*,
#: localizers. A name with one of these is none of the four contrasts.
OTHER_KIND_TOKENS = frozenset(("dwi", "diff", "adc", "trace", "dti", "swi", "star", "t2star", "perfusion", "perf",
                               "pwi", "dsc", "dce", "asl", "tof", "mra", "localizer", "loc", "scout", "survey"))
_EXTENSIONS = re.compile(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd|seg\.nrrd)$", re.IGNORECASE)


def _contrast_tokens(tokens: list) -> Tuple[Optional[str], set]:
    """The contrast the tokens name and the indices of the tokens that say it."""
    for contrast, words in NAME_TOKENS:
        for index, token in enumerate(tokens):
            if token in words:
                return contrast, {index}
        # "T2 FLAIR" and "dark fluid" split into two tokens: also try neighbouring pairs
        for index in range(len(tokens) - 1):
            if tokens[index] + tokens[index + 1] in words:
                return contrast, {index, index + 1}
    return None, set()


def contrast_of_name(name: str) -> Tuple[Optional[str], str]:
    """(contrast, case stem) for a volume name such as 'BraTS-GLI-00001-000-t1c.nii.gz', 'T2 FLAIR' or a DICOM
    series description such as 'T1 MPRAGE post Gd'. The one rule for assigning inputs by name, in Slicer
    (inputs.auto_assign_inputs) and for DICOM series (dicom/assign.py).

    The stem is the name without the tokens that say the contrast, to group volumes of one case (so 'T1 MPRAGE'
    and 'T1 MPRAGE post Gd' share the stem 'mprage'). (None, name) if no token, or a token of another kind.
    """
    plain = _EXTENSIONS.sub("", name.strip())
    tokens = [token for token in re.split(r"[^0-9a-zA-Z]+", plain.lower()) if token]
    if OTHER_KIND_TOKENS.intersection(tokens):
        return None, plain.lower()
    contrast, used = _contrast_tokens(tokens)
    if contrast == "t1" and AGENT_TOKENS.intersection(tokens) and not NO_AGENT_TOKENS.intersection(tokens):
        contrast = "t1ce"
        used |= {index for index, token in enumerate(tokens) if token in AGENT_TOKENS}
    if contrast is None:
        return None, plain.lower()
    return contrast, "-".join(token for index, token in enumerate(tokens) if index not in used)
