"""Which series of a study is which contrast: the module's name rule (constants.contrast_of_name, the one that
assigns Slicer volumes by their names) applied to SeriesDescription, then to ProtocolName (Series.contrast).

Only volume series take part (localizers, multi-frame objects and unplaced images are left aside). Where several
series look like one contrast, the one the user named (series UIDs) wins, else an original acquisition over
derived ones (reformats, MPRs); if that leaves more than one, the error lists them for the user to choose.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..constants import CONTRASTS, contrast_name
from ..errors import OptionError
from .series import Series


def _original(series: Series) -> bool:
    image_type = [str(v).upper() for v in (series.headers[0].get("ImageType") or [])]
    return not image_type or image_type[0] == "ORIGINAL"


def _choose(found: List[Series], wanted: Sequence[str]) -> Optional[Series]:
    """The one candidate to use for a contrast: the only one, the one the user named, or the only original
    acquisition among derived ones; None when the choice is the user's."""
    if len(found) == 1:
        return found[0]
    for preferred in ([s for s in found if s.uid in set(wanted)], [s for s in found if _original(s)]):
        if len(preferred) == 1:
            return preferred[0]
    return None


def assign(series: Sequence[Series], label: str, skip: Sequence[str] = (),
           wanted: Sequence[str] = ()) -> Tuple[Dict[str, Series], List[str]]:
    """contrast -> series for the contrasts found (not those in `skip`, which the user gave otherwise), and
    one line per series saying what it became or why it was left aside (for the console and report.json).
    `wanted`: series UIDs the user named, which win where several series look like one contrast."""
    candidates: Dict[str, List[Series]] = {}
    notes: Dict[str, str] = {}  # series UID -> what became of it
    for item in series:
        contrast = item.contrast if item.kind == "volume" else None
        if item.kind != "volume":
            notes[item.uid] = f"left aside ({item.kind})"
        elif contrast is None:
            notes[item.uid] = "left aside (its description names none of T1, T1ce, T2, FLAIR)"
        elif contrast in skip:
            notes[item.uid] = f"left aside ({contrast_name(contrast)} was given on its own)"
        else:
            candidates.setdefault(contrast, []).append(item)
    chosen: Dict[str, Series] = {}
    for contrast, found in ((c, candidates[c]) for c in CONTRASTS if c in candidates):
        best = _choose(found, wanted)
        if best is None:
            raise OptionError(
                f"{label}: the folder holds {len(found)} series that look like {contrast_name(contrast)}: "
                f"{'; '.join(s.listing() for s in found)}. Pick one by its UID ({{series}}).", "series")
        chosen[contrast] = best
        for item in found:
            notes[item.uid] = contrast_name(contrast) if item is best else \
                f"left aside (another {contrast_name(contrast)} series)"
    if not chosen and not skip:
        raise OptionError(f"{label}: none of the folder's {len(series)} series has a description naming T1, T1ce, "
                          "T2 or FLAIR; give each contrast's folder, or pick its series by UID ({series}).", "series")
    return chosen, [f"{item.listing()}: {notes[item.uid]}" for item in series]
