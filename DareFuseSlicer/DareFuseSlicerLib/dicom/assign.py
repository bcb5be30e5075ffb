"""Which series of a study is which contrast: the module's name rules (contrast_of_name, the same that assign
Slicer volumes by their names) applied to SeriesDescription, then to ProtocolName.

Only volume series take part (localizers, multi-frame objects and unplaced images are left aside). Where several
series look like one contrast, an original acquisition wins over derived ones (reformats, MPRs); if that leaves
more than one, the choice is the user's (--t1 FOLDER --series UID), and the error lists them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..constants import CONTRASTS
from ..errors import InputError
from .series import Series

DISPLAY = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


def contrast_of_series(series: Series) -> Optional[str]:
    """The contrast its description names, else the one its protocol name names, else None."""
    from ..logic import contrast_of_name  # the module's one name rule

    for text in (series.description, series.protocol):
        contrast = contrast_of_name(text)[0] if text else None
        if contrast is not None:
            return contrast
    return None


def _original(series: Series) -> bool:
    image_type = [str(v).upper() for v in (series.headers[0].get("ImageType") or [])]
    return not image_type or image_type[0] == "ORIGINAL"


def assign(series: Sequence[Series], label: str, skip: Sequence[str] = ()) -> Tuple[Dict[str, Series], List[str]]:
    """contrast -> series for the contrasts found (not those in `skip`, which the user gave otherwise), and
    one line per series saying what it became or why it was left aside (for the console and report.json)."""
    candidates: Dict[str, List[Series]] = {}
    notes: Dict[str, str] = {}  # series UID -> what became of it
    for item in series:
        contrast = contrast_of_series(item) if item.kind == "volume" else None
        if item.kind != "volume":
            notes[item.uid] = f"left aside ({item.kind})"
        elif contrast is None:
            notes[item.uid] = "left aside (its description names none of T1, T1ce, T2, FLAIR)"
        elif contrast in skip:
            notes[item.uid] = f"left aside ({DISPLAY[contrast]} was given with --{contrast})"
        else:
            candidates.setdefault(contrast, []).append(item)
    chosen: Dict[str, Series] = {}
    for contrast in CONTRASTS:
        found = candidates.get(contrast, [])
        originals = [s for s in found if _original(s)]
        if len(found) > 1 and len(originals) == 1:
            found = originals + [s for s in found if s is not originals[0]]
        elif len(found) > 1:
            folder = series[0].folder
            raise InputError(
                f"{label}: the folder holds {len(found)} series that look like {DISPLAY[contrast]}: "
                f"{'; '.join(s.listing() for s in found)}. Pick one with --{contrast} {folder} --series UID.")
        if found:
            chosen[contrast] = found[0]
            notes[found[0].uid] = DISPLAY[contrast]
            notes.update({s.uid: f"left aside (a derived {DISPLAY[contrast]})" for s in found[1:]})
    if not chosen and not skip:
        raise InputError(f"{label}: none of the folder's {len(series)} series has a description naming "
                         "T1, T1ce, T2 or FLAIR; give each contrast's folder or series with --t1 ... --series UID.")
    return chosen, [f"{item.listing()}: {notes[item.uid]}" for item in series]
